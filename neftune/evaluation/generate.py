"""Batched, resumable answer generation for evaluation, plus the AlpacaEval output format.

Prompts arrive fully rendered (the caller applies the training template). We tokenize them the way
training does: no tokenizer-added special tokens (some tokenizers would append EOS, which would tell
the model the prompt is already answered) and BOS prepended once, as the data module does.

Batching: prompts are sorted longest first (similar lengths share a batch, so little padding, and an
out-of-memory shows up in the first batch rather than the last) and left-padded, so every row's last
prompt token sits at the same position and new tokens are appended after it. transformers derives
position ids from the attention mask, so a left-padded row decodes exactly like the same prompt
alone (tests compare against a per-prompt loop). Plain greedy decoding (the default preset) runs
`greedy.greedy_generate`, a lean loop over the model's forward that drops finished rows from the batch;
sampling and repetition-penalty presets use `model.generate`.

Resume: with ``cache_path`` each finished answer is appended to a JSONL file and fsync'ed per batch;
a rerun regenerates only what is missing. A line cut off by a kill mid-write is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import DataError, NeftuneError
from ..packed import packed_linears
from ..rundir import atomic_write as _atomic_write
from .greedy import greedy_generate

# The NEFTune repo's eval decodes greedily with repetition_penalty=1.2 (their "original" setting).
PRESETS = {"greedy": {"repetition_penalty": None}, "original": {"repetition_penalty": 1.2}}


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def encode_prompt(tokenizer, prompt: str, add_bos: bool = True) -> list[int]:
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _eos_ids(model, tokenizer) -> list[int]:
    """EOS of the tokenizer (what training appends) plus any the model's generation config lists
    (Gemma's <end_of_turn>, SmolLM2's <|im_end|>), so chat-template runs stop too."""
    ids = []
    for v in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in v if isinstance(v, (list, tuple)) else [v]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def _settings_key(**settings) -> str:
    """Fingerprint of the decoding settings: cached answers made with other settings are stale."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _load_cache(path: Path, prompts: Sequence[str], settings: str, capped: Optional[dict] = None) -> dict[int, str]:
    """Valid cached answers by index (and their `capped` flags into `capped`, None where an older
    cache has none). Rewrites the file without a torn last line, so later appends do not glue a new
    record onto a half-written one."""
    if not path.exists():
        return {}
    done: dict[int, str] = {}
    good_lines = []
    raw = path.read_bytes().decode("utf-8", errors="replace")
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
            idx, sha, out = int(rec["idx"]), rec["prompt_sha"], rec["output"]
        except (ValueError, KeyError, TypeError):
            continue  # torn line from an interrupted write, or garbage: regenerate that item
        if rec.get("settings", settings) != settings or not isinstance(out, str):
            continue
        if 0 <= idx < len(prompts) and sha == prompt_sha(prompts[idx]):
            done[idx] = out
            if capped is not None:
                capped[idx] = rec.get("capped")
            good_lines.append(line)
    if len(good_lines) != len(raw.splitlines()) or (raw and not raw.endswith("\n")):
        _atomic_write(path, "".join(l + "\n" for l in good_lines))
    return done


def _device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    preset: str = "greedy",
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: Optional[float] = None,
    seed: int = 0,
    cache_path: Optional[Union[str, Path]] = None,
    generator_name: str = "model",
    dataset_name: str = "eval",
    instructions: Optional[Sequence[str]] = None,
    progress: bool = True,
    add_bos: bool = True,
    fast_greedy: bool = True,
    capped: Optional[list] = None,
    pack_weights: bool = True,
) -> list[str]:
    """Answer every prompt; returns the decoded new text (special tokens skipped, stripped) in input order.

    preset: greedy | original (greedy + repetition_penalty 1.2); an explicit repetition_penalty wins.
    cache_path: JSONL of finished answers (`idx`, `prompt_sha`, `output`, plus `settings`, and
    `instruction`/`generator`/`dataset` so the partial file is readable); reruns resume from it.
    capped: a list to fill with, per prompt in input order, whether its answer hit max_new_tokens
    without an EOS (True/False; None for a cached answer from before this flag was recorded).
    Sampling (do_sample) is seeded per batch from `seed`, so it is reproducible for the same
    batching but a resumed run may sample its remaining items differently than an uninterrupted one.
    fast_greedy: plain greedy (no sampling, no repetition penalty) runs `greedy.greedy_generate`, a
    lean loop over the model's forward (same tokens as `generate`, several times faster on CPU);
    False forces `model.generate`.
    pack_weights: on CPU in fp32, run the linear layers on oneDNN-packed copies of their weights while
    generating (`packed.py`: the decode step's skinny matmuls ~2-3x faster; one extra copy of the
    weights in memory meanwhile). Same tokens, gated by the tests; False keeps plain `F.linear`.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if preset not in PRESETS:
        raise NeftuneError(f"unknown decoding preset {preset!r}; expected one of {sorted(PRESETS)}")
    if instructions is not None and len(instructions) != len(prompts):
        raise NeftuneError(f"instructions ({len(instructions)}) and prompts ({len(prompts)}) differ in length")
    rep = repetition_penalty if repetition_penalty is not None else PRESETS[preset]["repetition_penalty"]
    batch_size = max(1, int(batch_size))
    prompts = list(prompts)

    settings = _settings_key(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        rep=rep,
        add_bos=add_bos,
        **({"temperature": temperature, "top_p": top_p, "seed": seed} if do_sample else {}),
    )
    cache = Path(cache_path) if cache_path is not None else None
    hit_cap: dict = {}
    done = _load_cache(cache, prompts, settings, hit_cap) if cache is not None else {}
    outputs: list[Optional[str]] = [done.get(i) for i in range(len(prompts))]
    todo = [i for i in range(len(prompts)) if outputs[i] is None]
    if not todo:
        return _report_capped(outputs, hit_cap, capped)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    if pad_id is None:
        raise NeftuneError("tokenizer has neither a pad nor an EOS token; cannot pad a batch")
    # A fresh GenerationConfig rather than the model's own: checkpoints ship sampling defaults
    # (Gemma: top_k=64, top_p=0.95) that would otherwise leak into what we call greedy.
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if rep is not None and rep != 1.0:
        gen_kwargs["repetition_penalty"] = rep
    gen_config = GenerationConfig(**gen_kwargs)
    lean = fast_greedy and not do_sample and (rep is None or rep == 1.0)

    encoded = {i: encode_prompt(tokenizer, prompts[i], add_bos) for i in todo}
    order = sorted(todo, key=lambda i: -len(encoded[i]))  # stable: equal lengths keep input order
    device = _device(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    fh = open(cache, "a", encoding="utf-8") if cache is not None else None
    bar = tqdm(
        total=len(prompts),
        initial=len(prompts) - len(todo),
        disable=not progress,
        desc=f"generate {dataset_name}",
        unit="answer",
    )
    try:
        with packed_linears(model, batch_size, enabled=pack_weights):
            for start in range(0, len(order), batch_size):
                idxs = order[start : start + batch_size]
                batch = [encoded[i] for i in idxs]
                if lean:
                    new = greedy_generate(
                        model, batch, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, device=device
                    )
                else:
                    new = _generate_batch(model, batch, gen_config, pad_id, device, seed + start)
                for row, i in enumerate(idxs):
                    outputs[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
                    hit_cap[i] = _hit_cap(new[row], eos_ids, max_new_tokens)
                if fh is not None:
                    recs = [
                        {
                            "idx": i,
                            "prompt_sha": prompt_sha(prompts[i]),
                            "output": outputs[i],
                            "settings": settings,
                            "generator": generator_name,
                            "dataset": dataset_name,
                            "capped": hit_cap[i],
                            **({"instruction": instructions[i]} if instructions is not None else {}),
                        }
                        for i in idxs
                    ]
                    _append_synced(fh, recs)
                bar.update(len(idxs))
    finally:
        bar.close()
        if fh is not None:
            fh.close()
        if was_training:
            model.train()
    return _report_capped(outputs, hit_cap, capped)


def _append_synced(fh, recs: list[dict]) -> None:
    """One JSONL line per finished answer, fsync'ed: a kill loses at most the batch being decoded."""
    for rec in recs:
        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _generate_batch(model, batch: list[list[int]], gen_config, pad_id: int, device, seed: int) -> torch.Tensor:
    """`model.generate` on one left-padded batch (sampling seeded per batch); returns the new token ids."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):  # left padding
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config
        )
    return out[:, width:].cpu()


# --- capped flag (issue 11): separable from the decoding loop above
def _hit_cap(new_ids, eos_ids: Sequence[int], max_new_tokens: int) -> bool:
    """The answer used all max_new_tokens and none of them is an EOS (a finished row is padded after
    its EOS, and generation only stops early when every row has finished)."""
    ids = [int(t) for t in new_ids]
    return len(ids) >= max_new_tokens and not any(t in eos_ids for t in ids)


def _report_capped(outputs: list, hit_cap: dict, capped: Optional[list]) -> list[str]:
    if capped is not None:
        capped[:] = [hit_cap.get(i) for i in range(len(outputs))]
    return [o for o in outputs]  # type: ignore[misc]


# --------------------------------------------------------------------------- AlpacaEval format
def write_alpaca_eval(
    path,
    instructions: Sequence[str],
    outputs: Sequence[str],
    generator: str,
    dataset: Union[str, Sequence[str]] = "eval",
) -> None:
    """AlpacaEval `model_outputs` JSON: [{"instruction","output","generator","dataset"}], written atomically."""
    if len(instructions) != len(outputs):
        raise NeftuneError(f"{path}: {len(instructions)} instructions but {len(outputs)} outputs")
    datasets = [dataset] * len(outputs) if isinstance(dataset, str) else list(dataset)
    if len(datasets) != len(outputs):
        raise NeftuneError(f"{path}: {len(datasets)} dataset names but {len(outputs)} outputs")
    rows = [
        {"instruction": i, "output": o, "generator": generator, "dataset": d}
        for i, o, d in zip(instructions, outputs, datasets)
    ]
    _atomic_write(Path(path), json.dumps(rows, ensure_ascii=False, indent=2) + "\n")


def read_alpaca_eval(path) -> list[dict]:
    """Load and validate an AlpacaEval outputs file; DataError names the file and the bad entry."""
    p = Path(path)
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(p, None, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(p, getattr(e, "lineno", None), "invalid JSON", str(e)) from None
    if not isinstance(rows, list):
        raise DataError(p, None, "not a JSON list", f"got {type(rows).__name__}")
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(p, None, "entry is not an object", f"entry {n}")
        for key in ("instruction", "output", "generator"):
            if not isinstance(row.get(key), str):
                raise DataError(p, None, f"missing or non-string '{key}'", f"entry {n}")
    return rows
