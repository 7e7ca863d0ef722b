"""The one owner of the run-directory layout: every path, every typed read, every atomic write.

Like nanochat's checkpoint_manager.py or torchtune's checkpointer, naming and atomicity live here and
nowhere else; the trainer, the evaluation stages, the sweep and the report call these functions.

    RUN/                                a `neftune train` run
      config.yaml  summary.json  metrics.jsonl  runs/ (tensorboard)
      model.safetensors + config.json | adapter_model.safetensors + adapter_config.json, tokenizer files
      data/train.jsonl  data/heldout.jsonl       the normalized records actually used
      checkpoint-N/                              complete checkpoints (.tmp-checkpoint-N/ while writing)
      eval/config.yaml                           the eval settings of the last evaluation
      eval/generations/<set>.json                AlpacaEval-format answers (+ <set>.meta.json: how they were made,
                                                 <set>.<weights>.partial.jsonl: the resumable cache)
      eval/scores.json                           single-model metrics (generation stage)
      eval/judgments/<set>.json                  verdicts of this run (A) against another run's answers (B)
      eval/results.json  eval/summary.md         everything above merged (what compare reads)
    SWEEP/                              a `neftune compare` sweep
      config.yaml  runs/<name>-seed<S>/  runs/<name>-frac<F>-seed<S>/  compare.json  report/

Writes that other code reads back are atomic (tmp file + fsync + os.replace): a kill leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import NeftuneError

PathLike = str | Path
CONFIG, SUMMARY, METRICS, TENSORBOARD = "config.yaml", "summary.json", "metrics.jsonl", "runs"
RECORDS = ("train", "heldout", "trained")  # trained: the examples the run optimised on
_CKPT, _TMP_CKPT, TRAINER_STATE = "checkpoint-", ".tmp-checkpoint-", "trainer_state.json"
_EVAL, _GENERATIONS, _JUDGMENTS = "eval", "generations", "judgments"


# ----------------------------------------------------------------------------- atomic IO
def atomic_write(path: PathLike, data: str | bytes) -> None:
    """Write `data` to `path` via a temporary file in the same dir, fsync'ed, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: PathLike, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: PathLike, rows) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: PathLike) -> dict:
    """The JSON object in `path`, or {} when it does not exist."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeftuneError(f"{p}: unreadable JSON ({e}); delete it to redo the step that writes it") from None


def read_jsonl(path: PathLike) -> list[dict]:
    """Every parsable line; a line cut by a kill mid-write is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ----------------------------------------------------------------------------- a training run
def config_path(run: PathLike) -> Path:
    return Path(run) / CONFIG


def write_config(run: PathLike, cfg, path: PathLike | None = None) -> None:
    """The resolved Config as YAML (run/config.yaml unless `path` says otherwise)."""
    import yaml

    from .config import to_dict

    atomic_write(path or config_path(run), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_config(run: PathLike, path: PathLike | None = None):
    """The Config a run was trained with (or the one saved at `path`)."""
    import yaml

    from .config import from_dict

    p = Path(path) if path is not None else config_path(run)
    if not p.exists():
        raise NeftuneError(f"{run}: not a neftune run dir (no {p.name})")
    return from_dict(yaml.safe_load(p.read_text(encoding="utf-8")) or {})


def summary_path(run: PathLike) -> Path:
    return Path(run) / SUMMARY


def is_finished(run: PathLike) -> bool:
    """summary.json is written last by `neftune train`: its presence means the run finished."""
    return summary_path(run).exists()


def write_summary(run: PathLike, summary: dict) -> None:
    write_json(summary_path(run), summary)


def read_summary(run: PathLike) -> dict:
    return read_json(summary_path(run))


def metrics_path(run: PathLike) -> Path:
    return Path(run) / METRICS


def read_metrics(run: PathLike) -> list[dict]:
    return read_jsonl(metrics_path(run))


def tensorboard_dir(run: PathLike) -> Path:
    return Path(run) / TENSORBOARD


def records_path(run: PathLike, split: str) -> Path:
    if split not in RECORDS:
        raise ValueError(f"records split must be one of {RECORDS}, got {split!r}")
    return Path(run) / "data" / f"{split}.jsonl"


def write_records(run: PathLike, split: str, records) -> None:
    write_jsonl(records_path(run, split), records)


def read_records(run: PathLike, split: str) -> list[dict]:
    p = records_path(run, split)
    if not p.exists():
        raise NeftuneError(f"{p}: missing (was the run trained with neftune train?)")
    return read_jsonl(p)


def weights_fingerprint(run: PathLike) -> str:
    """Size + mtime of the saved weights: a run retrained in place never reuses stale answers."""
    import hashlib

    parts = []
    for f in sorted(Path(run).glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_path(run: PathLike, step: int) -> Path:
    return Path(run) / f"{_CKPT}{step}"


def checkpoint_tmp_path(run: PathLike, step: int) -> Path:
    """Where checkpoint-N is written before commit_checkpoint renames it in."""
    return Path(run) / f"{_TMP_CKPT}{step}"


def is_complete_checkpoint(path: PathLike) -> bool:
    return (Path(path) / TRAINER_STATE).exists()


def checkpoint_step(path: PathLike) -> int:
    """The optimizer step a complete checkpoint was saved at."""
    return int(read_trainer_state(path)["global_step"])


def list_checkpoints(run: PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (trainer_state.json is written last, then the dir is renamed in)."""
    out = Path(run)
    if not out.exists():
        return []
    ckpts = [p for p in out.glob(f"{_CKPT}*") if p.name[len(_CKPT) :].isdigit() and is_complete_checkpoint(p)]
    return sorted(ckpts, key=lambda p: int(p.name[len(_CKPT) :]))


def latest_checkpoint(run: PathLike) -> Path | None:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def remove_incomplete_checkpoints(run: PathLike) -> list[str]:
    """Delete checkpoints a kill interrupted mid-save (never loaded); returns their names."""
    stale = sorted(Path(run).glob(f"{_TMP_CKPT}*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def read_trainer_state(path: PathLike) -> dict:
    """A complete checkpoint's trainer_state.json: global_step plus the run's counters at that step."""
    return read_json(Path(path) / TRAINER_STATE)


def commit_checkpoint(
    tmp: PathLike, run: PathLike, step: int, keep: int | None = None, counters: dict | None = None
) -> Path:
    """Make the fully written `tmp` dir checkpoint-`step`: trainer_state.json (global_step + `counters`)
    last, every file fsync'ed, one rename; then keep only the newest `keep` checkpoints. Main process only."""
    tmp, final = Path(tmp), checkpoint_path(run, step)
    (tmp / TRAINER_STATE).write_text(json.dumps({"global_step": step, **(counters or {})}))
    for f in tmp.iterdir():  # durable before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- evaluation
def eval_dir(run: PathLike) -> Path:
    return Path(run) / _EVAL


def eval_config_path(run: PathLike) -> Path:
    return eval_dir(run) / CONFIG


def remove_eval(run: PathLike) -> None:
    """Drop a run's evaluation (its answers belong to weights about to be replaced)."""
    shutil.rmtree(eval_dir(run), ignore_errors=True)


def generations_path(run: PathLike, set_name: str) -> Path:
    return eval_dir(run) / _GENERATIONS / f"{set_name}.json"


def generations_meta_path(run: PathLike, set_name: str) -> Path:
    return eval_dir(run) / _GENERATIONS / f"{set_name}.meta.json"


def generations_cache_path(run: PathLike, set_name: str, fingerprint: str) -> Path:
    return eval_dir(run) / _GENERATIONS / f"{set_name}.{fingerprint}.partial.jsonl"


def read_generations(run: PathLike, set_name: str) -> list[dict]:
    """A run's AlpacaEval-format answers to a set ([] when it has none)."""
    p = generations_path(run, set_name)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else []


def scores_path(run: PathLike) -> Path:
    return eval_dir(run) / "scores.json"


def judgments_path(run: PathLike, set_name: str) -> Path:
    """Verdicts of this run's answers against another run's: they belong to the judged run (A)."""
    return eval_dir(run) / _JUDGMENTS / f"{set_name}.json"


def results_path(run: PathLike) -> Path:
    return eval_dir(run) / "results.json"


def read_results(run: PathLike) -> dict:
    return read_json(results_path(run))


def eval_summary_path(run: PathLike) -> Path:
    return eval_dir(run) / "summary.md"


def file_sha256(path: PathLike) -> str | None:
    import hashlib

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


# ----------------------------------------------------------------------------- a sweep
def run_name(name: str, seed: int, fraction: float | None = None) -> str:
    return f"{name}-frac{fraction:g}-seed{seed}" if fraction is not None else f"{name}-seed{seed}"


def sweep_run_dir(sweep: PathLike, name: str) -> Path:
    return Path(sweep) / "runs" / name


def compare_path(sweep: PathLike) -> Path:
    return Path(sweep) / "compare.json"


def read_compare(sweep: PathLike) -> dict:
    return read_json(compare_path(sweep))


def report_dir(sweep: PathLike) -> Path:
    return Path(sweep) / "report"


# A previous run's artefacts: finding one of these in output_dir means another run lives there.
_RUN_FILES = ("*.safetensors", SUMMARY)
# Deleted by overwrite_output_dir: the HF save_pretrained outputs, metrics, tensorboard events, data records,
# evaluation, checkpoints. File patterns, not whole folders (`runs/` is also a sweep's folder of runs);
# config.yaml is rewritten; anything else in the dir is left alone.
_OVERWRITTEN = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    SUMMARY,
    METRICS,
    f"{TENSORBOARD}/events.out.tfevents.*",
    *(f"data/{split}.jsonl" for split in RECORDS),
    "eval",
    f"{_CKPT}*",
    f"{_TMP_CKPT}*",
)


def previous_run(out: Path) -> list[str]:
    """The names of a previous run's artefacts in `out` (summary.json, final weights, complete checkpoints)."""
    if not out.is_dir():
        return []
    found = sorted({p.name for pattern in _RUN_FILES for p in out.glob(pattern)})
    return found + [p.name for p in list_checkpoints(out)]


def remove_previous_run(out: Path) -> list[str]:
    """Delete a previous run's artefacts from `out` (overwrite_output_dir=true); returns their names."""
    gone = sorted({p for pattern in _OVERWRITTEN for p in out.glob(pattern)})
    for p in gone:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return [str(p.relative_to(out)) for p in gone]
