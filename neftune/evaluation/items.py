"""Per-item values of one run's evaluation (the per-item results contract in docs/DESIGN.md).

Every per-item list in results.json sits beside an `id` list. Ids come from the records themselves
(`data.record_id`) or from fixed question lists, never from the training seed or the variant, so a
consumer pairs a variant with its baseline by id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .. import rundir
from ..config import Config
from ..errors import NeftuneError

TRAINED_SOURCE = "prompts this run trained on (data/trained.jsonl)"
CLEAN_SOURCE = "examples this run trained on, no noise, eval mode (no dropout)"


def finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def item_ids(records: list[dict]) -> list[str]:
    """Stable ids of a set's items (the same across the runs of a sweep)."""
    from ..data import record_id

    return [record_id(r, i) for i, r in enumerate(records)]


def trained_records(run: Path) -> tuple[list[dict], str]:
    """The examples the run optimised on, and what they are; a run from before data/trained.jsonl
    existed falls back to train.jsonl (most of which a short run never saw), and says so."""
    if rundir.records_path(run, "trained").exists():
        return rundir.read_records(run, "trained"), TRAINED_SOURCE
    train, trained = (rundir.records_path(run, s).relative_to(run) for s in ("train", "trained"))
    return rundir.read_records(run, "train"), f"first records of {train} (no {trained} in this run)"


def capped_fraction(flags: list) -> float | None:
    """Share of True among the known flags (None: not recorded, e.g. answers cached by an older version)."""
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def example_losses(model, tok, cfg: Config, records: list[dict]) -> dict:
    """{"loss": pooled mean token NLL, "items": {"id", "nll" (mean token NLL per example), "tokens"}}: no
    noise, eval mode. An example with no supervised token left after truncation has no loss: left out."""
    from ..data import tokenize_example
    from ..modeling import per_example_loss

    ids, ex = [], []
    for rid, r in zip(item_ids(records), records):
        try:
            ex.append(tokenize_example(r, tok, cfg.data.template, cfg.data.max_length, cfg.data.train_on_inputs, True))
            ids.append(rid)
        except NeftuneError:
            pass
    per = per_example_loss(model, ex, 8, tok.pad_token_id)
    total, n = sum(nll * k for nll, k in per if k), sum(k for _, k in per)
    return {
        "loss": finite(total / n) if n else None,
        "items": {"id": ids, "nll": [finite(nll) for nll, _ in per], "tokens": [k for _, k in per]},
    }


def train_clean(model, tok, cfg: Config, run: Path) -> dict:
    """Clean per-example loss of the final weights on (the first eval.train_loss_samples of) the
    examples the run trained on: how far the run memorised its training set."""
    recs, source = trained_records(run)
    out = example_losses(model, tok, cfg, recs[: cfg.eval.train_loss_samples])
    out["source"] = CLEAN_SOURCE if source == TRAINED_SOURCE else source + ", no noise, eval mode (no dropout)"
    return out


def exact_results(answer: Callable[[list[dict], list], list[str]], tok, cfg: Config) -> dict:
    """The exact-answer set (evaluation/exact.py). `answer(records, capped)` answers chat records the
    way every eval set is answered (the caller's batched path, template, decoding, saved generations)
    and fills `capped`."""
    from .exact import exact_answer_eval
    from .metrics import length_lists, length_stats

    capped: list = []

    def generate(questions: list[str]) -> list[str]:
        return answer([{"messages": [{"role": "user", "content": q}]} for q in questions], capped)

    res = exact_answer_eval(generate, n=cfg.eval.exact_samples, seed=0, code=cfg.eval.exact_code)
    rows = res.pop("items")
    responses = [r["response"] for r in rows]
    res["length"] = length_stats(responses, tok)
    res["capped_fraction"] = capped_fraction(capped)
    res["items"] = {
        "id": [r["id"] for r in rows],
        "correct": [int(r["correct"]) for r in rows],
        "tokens": length_lists(responses, tok)["tokens"],
        "kind": [r["kind"] for r in rows],
    }
    return res
