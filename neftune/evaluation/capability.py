"""Capability retention, offline: multiple-choice accuracy by answer log-likelihood.

The paper checks on the OpenLLM leaderboard tasks (MMLU, ARC, HellaSwag, TruthfulQA) that NEFTune
does not cost knowledge or reasoning. Those datasets are fetched from a hub at run time; this
module gives the same kind of check with no network, plus a pass-through to lm-evaluation-harness
for users who have it and a network.

Question source: ``assets/mc_questions.jsonl`` is a small original set written for this project
(60 questions, 4 choices each: arithmetic, geography, science, commonsense, language, general
knowledge), released under the project's licence. We looked for real benchmark data first: the
``lm-eval`` wheel ships task YAMLs and code that download MMLU from the hub, and no question data
besides MMLU chain-of-thought few-shot exemplars baked into prompt text; no package in the
environment ships an MMLU-style set. The set is easy on purpose: it detects a *drop* in basic
knowledge after finetuning (compare base vs. finetuned on the same questions), it is not a
leaderboard number.

Scoring follows lm-evaluation-harness's loglikelihood tasks: context ``"Question: {q}\\nAnswer:"``,
continuation ``" {choice}"``, continuation tokens = tokens of context+continuation past the
context's own tokens (so the join is tokenized as in running text). ``accuracy`` picks the choice
with the highest summed log-prob (harness ``acc``); ``accuracy_norm`` the highest mean log-prob per
token. (The harness's ``acc_norm`` divides by the choice's character length instead.)
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from ..errors import DataError, NeftuneError
from ..modeling import backbone_and_head, logit_transform

DEFAULT_QUESTIONS = Path(__file__).parent / "assets" / "mc_questions.jsonl"
SOURCE = "neftune mc_questions v1 (original, project licence)"


def load_questions(path=None, n: Optional[int] = None) -> list[dict]:
    """Validated questions `{question, choices, answer, subject}` (first n in file order; None = all)."""
    p = Path(path) if path is not None else DEFAULT_QUESTIONS
    if not p.is_file():
        raise DataError(p, None, "file not found")
    out = []
    for line_no, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(p, line_no, "invalid JSON", e.msg) from None
        if not isinstance(rec, dict):
            raise DataError(p, line_no, "not an object")
        q, choices, ans = rec.get("question"), rec.get("choices"), rec.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise DataError(p, line_no, "missing question")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataError(p, line_no, "choices must be a list of >= 2 non-empty strings")
        if len(set(choices)) != len(choices):
            raise DataError(p, line_no, "duplicate choices")
        if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise DataError(p, line_no, "answer index out of range", f"answer={ans!r}, {len(choices)} choices")
        out.append({"question": q, "choices": choices, "answer": ans, "subject": str(rec.get("subject", ""))})
    if not out:
        raise DataError(p, None, "no questions")
    return out[:n] if n is not None else out


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_requests(tokenizer, questions: Sequence[dict], add_bos: bool = True) -> list[tuple[list[int], int]]:
    """One (token ids, n continuation tokens) per (question, choice), questions in order, choices in order."""
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = [bos] if add_bos and bos is not None else []
    reqs = []
    for q in questions:
        context = f"Question: {q['question']}\nAnswer:"
        ctx = _encode(tokenizer, context)
        for choice in q["choices"]:
            whole = _encode(tokenizer, context + " " + choice)
            cont = whole[len(ctx) :]
            if whole[: len(ctx)] != ctx or not cont:
                # The join re-tokenized the end of the context (rare with byte-level BPE): fall back
                # to encoding the two parts separately, like the harness does for such merges.
                whole, cont = ctx + _encode(tokenizer, " " + choice), _encode(tokenizer, " " + choice)
            reqs.append((prefix + whole, len(cont)))
    return reqs


def choice_logprobs(
    model, tokenizer, questions: Sequence[dict], batch_size: int = 8, progress: bool = True, add_bos: bool = True
) -> list[list[tuple[float, int]]]:
    """Per question, per choice: (sum of continuation token log-probs, number of continuation tokens)."""
    from tqdm.auto import tqdm

    reqs = build_requests(tokenizer, questions, add_bos)
    backbone, head = backbone_and_head(model)
    transform = logit_transform(model)  # Granite/Cohere scaling, Gemma soft-cap: as the loss applies them
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    scores: list[Optional[float]] = [None] * len(reqs)
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]))  # similar lengths share a batch
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="capability", unit="batch"):
                idxs = order[start : start + batch_size]
                width = max(len(reqs[i][0]) for i in idxs)
                ids = torch.full((len(idxs), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                labels = torch.full_like(ids, -100)
                for row, i in enumerate(idxs):  # right padding: positions are 0..len-1 without fuss
                    toks, n_cont = reqs[i]
                    ids[row, : len(toks)] = torch.tensor(toks)
                    mask[row, : len(toks)] = 1
                    labels[row, len(toks) - n_cont : len(toks)] = torch.tensor(toks[len(toks) - n_cont :])
                hidden = backbone(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).last_hidden_state
                # Output head only where a continuation token is predicted: Gemma's 262k vocab
                # would otherwise make full-sequence logits the bulk of the cost.
                target = labels[:, 1:].to(device)
                keep = target != -100
                logits = transform(head(hidden[:, :-1][keep]).float())
                tok_lp = torch.log_softmax(logits, -1).gather(-1, target[keep].unsqueeze(-1)).squeeze(-1)
                rows = keep.nonzero()[:, 0]
                sums = torch.zeros(len(idxs), dtype=torch.float64, device=tok_lp.device)
                sums.index_add_(0, rows, tok_lp.double())
                for row, i in enumerate(idxs):
                    scores[i] = float(sums[row])
    finally:
        if was_training:
            model.train()
    out, k = [], 0
    for q in questions:
        out.append([(scores[k + j], reqs[k + j][1]) for j in range(len(q["choices"]))])
        k += len(q["choices"])
    return out


def mc_accuracy(
    model, tokenizer, questions: Sequence[dict], batch_size: int = 8, progress: bool = True, add_bos: bool = True
) -> dict:
    """{"accuracy" (argmax summed log-prob), "accuracy_norm" (argmax mean log-prob per token), "n", "source",
    "correct": [0|1 per question, in order] (summed log-prob rule, for paired statistics)}."""
    if not questions:
        raise NeftuneError("mc_accuracy: no questions")
    lps = choice_logprobs(model, tokenizer, questions, batch_size, progress, add_bos)
    correct, hit_norm = [], 0
    for q, per_choice in zip(questions, lps):
        sums = [s for s, _ in per_choice]
        means = [s / n for s, n in per_choice]
        correct.append(int(max(range(len(sums)), key=sums.__getitem__) == q["answer"]))
        hit_norm += int(max(range(len(means)), key=means.__getitem__) == q["answer"])
    n = len(questions)
    return {"accuracy": sum(correct) / n, "accuracy_norm": hit_norm / n, "n": n, "source": SOURCE, "correct": correct}


def lm_eval_passthrough(
    model_dir: str,
    tasks: Sequence[str],
    *,
    num_fewshot: Optional[int] = None,
    batch_size: int = 8,
    limit: Optional[float] = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Run lm-evaluation-harness (`lm_eval.simple_evaluate`) on a model dir or a LoRA run dir.

    Returns the harness's `results` mapping (task -> metrics). Its task data comes from a hub, so
    this needs a network; it is an opt-in beside the offline `mc_accuracy`.
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise NeftuneError(
            "lm-evaluation-harness is not installed: `pip install lm-eval` (its tasks download "
            "their data from the Hugging Face hub, so it also needs network access). "
            "The offline check is neftune.evaluation.capability.mc_accuracy."
        )
    import lm_eval

    from ..assets import resolve_model

    run = Path(model_dir)
    adapter = run / "adapter_config.json"
    if adapter.exists():  # LoRA run dir: the harness loads base + peft adapter itself
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise NeftuneError(f"{adapter}: no base_model_name_or_path")
        model_args = f"pretrained={resolve_model(base)},peft={run},dtype={dtype}"
    else:
        model_args = f"pretrained={resolve_model(str(model_dir))},dtype={dtype}"
    try:
        res = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            limit=limit,
            device=device,
        )
    except Exception as e:  # network/task errors surface deep in the harness; name the call instead
        raise NeftuneError(f"lm_eval on {model_dir} (tasks {list(tasks)}) failed: {type(e).__name__}: {e}") from e
    return dict(res.get("results", {})) if isinstance(res, dict) else {}
