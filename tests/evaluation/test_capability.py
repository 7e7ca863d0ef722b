"""Multiple-choice log-likelihood accuracy: batched == unbatched, forced answers win, asset is valid."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from neftune.errors import DataError, NeftuneError
from neftune.evaluation import capability
from neftune.evaluation.capability import (
    build_requests,
    choice_logprobs,
    lm_eval_passthrough,
    load_questions,
    mc_accuracy,
)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", params=["llama", "gemma"])
def model_tok(request):
    return _load(request.getfixturevalue(f"tiny_{request.param}_dir"))


def _reference(model, tok, questions):
    """Straightforward: one full forward per (question, choice), full logits, no padding."""
    out = []
    for q in questions:
        ctx = f"Question: {q['question']}\nAnswer:"
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        per = []
        for c in q["choices"]:
            whole = tok(ctx + " " + c, add_special_tokens=False)["input_ids"]
            assert whole[: len(ctx_ids)] == ctx_ids
            ids = torch.tensor([[tok.bos_token_id] + whole])
            n_cont = len(whole) - len(ctx_ids)
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].float(), -1)
            T = ids.shape[1]
            per.append((sum(float(lp[t - 1, ids[0, t]]) for t in range(T - n_cont, T)), n_cont))
        out.append(per)
    return out


def _acc(questions, lps, norm):
    picks = [max(range(len(p)), key=lambda j: p[j][0] / (p[j][1] if norm else 1)) for p in lps]
    return sum(int(k == q["answer"]) for k, q in zip(picks, questions)) / len(questions)


def test_batched_equals_unbatched(model_tok):
    model, tok = model_tok
    qs = load_questions(n=10)
    got = choice_logprobs(model, tok, qs, batch_size=7, progress=False)  # batches span questions
    ref = _reference(model, tok, qs)
    for g, r in zip(got, ref):
        assert [n for _, n in g] == [n for _, n in r]
        assert [s for s, _ in g] == pytest.approx([s for s, _ in r], abs=1e-4)
    res = mc_accuracy(model, tok, qs, batch_size=7, progress=False)
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["accuracy_norm"] <= 1.0
    assert res["accuracy"] == _acc(qs, ref, False) and res["accuracy_norm"] == _acc(qs, ref, True)
    assert res["n"] == 10 and "original" in res["source"]


class BoostHead(torch.nn.Module):
    """Output head wrapper adding a large logit to chosen token ids."""

    def __init__(self, head, boost_ids, amount=40.0):
        super().__init__()
        self.head, self.amount = head, amount
        self.register_buffer("bias", torch.zeros(head.out_features))
        self.bias[list(boost_ids)] = amount

    def forward(self, h):
        return self.head(h) + self.bias


def test_forced_choice_is_picked(tiny_llama_dir, tiny_tokenizer):
    model, tok = _load(tiny_llama_dir)
    q = {
        "question": "What is the capital of France?",
        "choices": ["dog", "Paris", "0123", "{ }"],
        "answer": 1,
        "subject": "test",
    }
    reqs = build_requests(tok, [q])
    conts = [set(ids[len(ids) - n :]) for ids, n in reqs]
    assert all(not (conts[1] & c) for j, c in enumerate(conts) if j != 1)  # disjoint token sets
    wrong = dict(q, answer=3)
    model.lm_head = BoostHead(model.lm_head, conts[1])
    res = mc_accuracy(model, tok, [q, wrong], batch_size=3, progress=False)
    assert res["accuracy"] == 0.5 and res["accuracy_norm"] == 0.5
    lps = choice_logprobs(model, tok, [q], progress=False)[0]
    assert max(range(4), key=lambda j: lps[j][0]) == 1


def test_asset_is_valid_and_loader_validates(tmp_path):
    qs = load_questions()
    assert len(qs) >= 57  # EvalConfig.capability_samples default
    for q in qs:
        assert len(q["choices"]) == 4 and 0 <= q["answer"] < 4 and q["subject"]
    assert len({q["question"] for q in qs}) == len(qs)
    assert load_questions(n=5) == qs[:5]

    def bad(rec, match):
        p = tmp_path / "q.jsonl"
        p.write_text(
            json.dumps({"question": "ok?", "choices": ["a", "b"], "answer": 0}) + "\n" + json.dumps(rec) + "\n"
        )
        with pytest.raises(DataError, match=match) as e:
            load_questions(p)
        assert e.value.line == 2

    bad({"question": "q", "choices": ["a", "b"], "answer": 2}, "out of range")
    bad({"question": "q", "choices": ["a", "b"], "answer": -1}, "out of range")
    bad({"question": "q", "choices": ["a", "b"], "answer": True}, "out of range")
    bad({"question": "q", "choices": ["a"], "answer": 0}, "choices")
    bad({"question": "q", "choices": ["a", "a"], "answer": 0}, "duplicate")
    bad({"choices": ["a", "b"], "answer": 0}, "question")
    with pytest.raises(DataError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")


def test_lm_eval_passthrough(monkeypatch, tmp_path):
    real_find_spec = capability.importlib.util.find_spec
    monkeypatch.setattr(
        capability.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real_find_spec(name, *a)
    )
    with pytest.raises(NeftuneError, match="pip install lm-eval"):
        lm_eval_passthrough(str(tmp_path), ["mmlu"])

    calls = {}
    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = lambda **kw: calls.update(kw) or {"results": {"arc_easy": {"acc,none": 0.5}}}
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setattr(capability.importlib.util, "find_spec", lambda name, *a: object())
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base"}))
    assert lm_eval_passthrough(str(tmp_path), ["arc_easy"], limit=4) == {"arc_easy": {"acc,none": 0.5}}
    assert (
        calls["model"] == "hf"
        and f"peft={tmp_path}" in calls["model_args"]
        and "pretrained=/base" in calls["model_args"]
    )
    assert calls["tasks"] == ["arc_easy"] and calls["limit"] == 4


@pytest.mark.parametrize(
    "family, kw",
    [("Granite", {"logits_scaling": 8.0}), ("Cohere", {"logit_scale": 0.0625})],
    ids=["granite-logits_scaling", "cohere-logit_scale"],
)
def test_logit_transforms_are_applied_like_the_models_forward(family, kw, tiny_tokenizer):
    """Capability scoring applies the model's own logit transform (modeling.logit_transform), not only
    Gemma's soft-cap: the log-probs equal those of the model's full forward."""
    import transformers

    from tests.conftest import TINY_DIMS

    tok = tiny_tokenizer
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{family}Config")(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **TINY_DIMS,
        **kw,
    )
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).eval()
    qs = load_questions(n=3)
    got = choice_logprobs(model, tok, qs, batch_size=5, progress=False)
    ref = _reference(model, tok, qs)
    for g, r in zip(got, ref):
        assert [s for s, _ in g] == pytest.approx([s for s, _ in r], abs=1e-4)
