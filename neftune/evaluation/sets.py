"""What one evaluation covers: its parts and its prompt sets (which records, under which name).

Both stages need these (stage 1 answers the sets, stage 2 judges them), so they live apart from
either stage's module.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .. import rundir
from ..config import Config
from ..errors import NeftuneError

PARTS = ("generate", "metrics", "loss", "overfit", "judge", "capability", "exact")
# The keys `neftune eval` may set besides eval.*: how a data-file eval set is read. Everything else
# (model, data.template, data.max_length, seed, training keys) is the run's, read from RUN/config.yaml.
EVAL_DATA_KEYS = ("data.format", "data.columns", "data.on_bad_record")
# Set names the evaluation itself uses: each is one slot of eval/generations/, scores.json and
# judgments/, so no user file may take it (its answers would overwrite or be overwritten).
RESERVED = {
    "heldout": "the run's held-out split",
    "mt-bench": "the MT-Bench first turns",
    "train": "the overfitting probe's answers to training prompts (part overfit)",
    "trained": "the examples the run trained on (data/trained.jsonl)",
    "exact": "the exact-answer set (part exact)",
}
# Entries of eval.sets that name a built-in set rather than a file ("train"/"exact" are slots of
# other parts, not sets: listing them would share the slot with that part).
BUILTIN = ("heldout", "mt-bench", "trained")


def check_parts(cfg: Config) -> set:
    parts = set(cfg.eval.parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise NeftuneError(f"eval.parts: unknown {sorted(unknown)}; choose from {PARTS}")
    return parts


def eval_records(run_dir, name: str, cfg: Config, skipped: Counter | None = None) -> list[dict]:
    """The set's records (first eval.num_samples). A data file is read with data.format/columns/
    on_bad_record; with `skip`, its bad records are counted per reason in `skipped`."""
    from ..data import load_records, mtbench_records

    if name in rundir.RECORDS:  # "heldout" / "train": the records the run actually used
        recs = rundir.read_records(run_dir, name)
    elif name == "mt-bench":
        recs = mtbench_records()
    else:
        recs = load_records(
            name,
            format=cfg.data.format,
            columns=cfg.data.columns or None,
            on_bad_record=cfg.data.on_bad_record,
            skipped=skipped,
            require_answer=False,
        )
    n = cfg.eval.num_samples if name != "train" else cfg.eval.overfit_samples
    return recs[:n] if n else recs


def set_name(name: str) -> str:
    return name if name in ("heldout", "mt-bench", "train", "exact") else Path(name).stem


def check_sets(cfg: Config) -> list[str]:
    """The set names of eval.sets, one slot each: two entries with one name (`a/test.json`,
    `b/test.json`) or a file named like a built-in set (`train.json`) are refused before any
    generation, instead of silently sharing answers, scores and verdicts."""
    seen: dict = {}
    for entry in map(str, cfg.eval.sets):
        name = set_name(entry)
        if entry in ("train", "exact"):
            raise NeftuneError(
                f"eval.sets: {entry!r} is not an eval set; the name is reserved for {RESERVED[entry]} "
                f"(eval sets: {', '.join(BUILTIN)} or data files)"
            )
        if entry not in BUILTIN and name in RESERVED:
            raise NeftuneError(
                f"eval.sets: the file {entry} would be saved as set {name!r}, a name reserved for "
                f"{RESERVED[name]}; rename the file"
            )
        if name in seen:
            raise NeftuneError(
                f"eval.sets: {seen[name]} and {entry} would share the set name {name!r} "
                f"({rundir.generations_path('RUN', name)}); list a set once and give data files distinct names"
            )
        seen[name] = entry
    return list(seen)
