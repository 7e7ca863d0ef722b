"""What one evaluation covers: its parts and its prompt sets (which records, under which name).

Both stages need these (stage 1 answers the sets, stage 2 judges them), so they live apart from
either stage's module.
"""

from __future__ import annotations

from pathlib import Path

from .. import rundir
from ..config import Config
from ..errors import NeftuneError

PARTS = ("generate", "metrics", "loss", "overfit", "judge", "capability", "exact")


def check_parts(cfg: Config) -> set:
    parts = set(cfg.eval.parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise NeftuneError(f"eval.parts: unknown {sorted(unknown)}; choose from {PARTS}")
    return parts


def eval_records(run_dir, name: str, cfg: Config) -> list[dict]:
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
            require_answer=False,
        )
    n = cfg.eval.num_samples if name != "train" else cfg.eval.overfit_samples
    return recs[:n] if n else recs


def set_name(name: str) -> str:
    return name if name in ("heldout", "mt-bench", "train", "exact") else Path(name).stem
