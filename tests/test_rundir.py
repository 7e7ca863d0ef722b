"""neftune.rundir: the one owner of the run-directory layout. Atomic writes, checkpoint naming and
listing, typed reads, and a guard that no other module spells a run-directory path itself."""

import ast
import os
from pathlib import Path

import pytest

import neftune
from neftune import rundir
from neftune.config import load_config
from neftune.errors import NeftuneError

RUN_FILES = (
    "summary.json",
    "config.yaml",
    "metrics.jsonl",
    "checkpoint-",
    "trainer_state.json",
    "results.json",
    "heldout.jsonl",
    "train.jsonl",
    "summary.md",
    "compare.json",
    "scores.json",
    "generations/",
    "eval/",
    "judgments",
    ".partial.jsonl",
    ".meta.json",
)
# Prose for users (help text) may name the layout, as docs do.
PROSE = {"cli.py": ("writes RUN_DIR/eval/",)}


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "f.json"
    rundir.write_json(p, {"a": 1})
    assert rundir.read_json(p) == {"a": 1}

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        rundir.atomic_write(p, "x" * 10_000)
    assert rundir.read_json(p) == {"a": 1}  # the old file survives a failed write
    assert [f.name for f in p.parent.iterdir()] == ["f.json"]  # and no temporary file is left behind


def test_checkpoint_naming_listing_commit_and_cleanup(tmp_path):
    run = tmp_path / "run"
    for step in (2, 10, 4):
        tmp = rundir.checkpoint_tmp_path(run, step)
        tmp.mkdir(parents=True)
        (tmp / "weights.bin").write_bytes(b"w")
        rundir.commit_checkpoint(tmp, run, step, keep=None)
    rundir.checkpoint_path(run, 12).mkdir()  # no trainer_state: a copy cut short, never listed
    rundir.checkpoint_tmp_path(run, 14).mkdir()  # a kill during a save
    assert [p.name for p in rundir.list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert (
        rundir.latest_checkpoint(run) == rundir.checkpoint_path(run, 10)
        and rundir.checkpoint_step(run / "checkpoint-10") == 10
    )
    assert rundir.remove_incomplete_checkpoints(run) == [".tmp-checkpoint-14"]
    tmp = rundir.checkpoint_tmp_path(run, 16)
    tmp.mkdir()
    rundir.commit_checkpoint(tmp, run, 16, keep=2)
    assert [p.name for p in rundir.list_checkpoints(run)] == ["checkpoint-10", "checkpoint-16"]
    assert rundir.latest_checkpoint(tmp_path / "nothing") is None


def test_typed_reads(tmp_path):
    cfg = load_config(None, ["neftune_noise_alpha=7", "eval.num_samples=3", f"output_dir={tmp_path}"])
    rundir.write_config(tmp_path, cfg)
    assert rundir.read_config(tmp_path) == cfg
    with pytest.raises(NeftuneError, match="not a neftune run dir"):
        rundir.read_config(tmp_path / "empty")
    with pytest.raises(NeftuneError, match="heldout.jsonl: missing"):
        rundir.read_records(tmp_path, "heldout")
    rundir.write_records(tmp_path, "heldout", [{"id": "1"}, {"id": "2"}])
    assert [r["id"] for r in rundir.read_records(tmp_path, "heldout")] == ["1", "2"]
    rundir.metrics_path(tmp_path).write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # a line cut by a kill
    assert rundir.read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert rundir.read_summary(tmp_path) == {} and not rundir.is_finished(tmp_path)
    rundir.write_summary(tmp_path, {"steps": 3})
    assert rundir.read_summary(tmp_path) == {"steps": 3} and rundir.is_finished(tmp_path)
    assert rundir.read_generations(tmp_path, "heldout") == [] and rundir.read_results(tmp_path) == {}
    assert (
        rundir.sweep_run_dir(tmp_path, rundir.run_name("alpha5", 1, 0.5)) == tmp_path / "runs" / "alpha5-frac0.5-seed1"
    )


def _code_strings(path: Path):
    """String constants in code (docstrings excluded: prose may name the files)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            yield n.lineno, n.value


def test_no_run_directory_path_outside_rundir():
    pkg = Path(neftune.__file__).parent
    offenders = []
    for f in sorted(pkg.rglob("*.py")):
        if f.name == "rundir.py":
            continue
        text = f.read_text(encoding="utf-8")
        if "yaml.safe_load" in text and f.name != "config.py":
            offenders.append(f"{f.relative_to(pkg)}: yaml.safe_load (read run configs with rundir.read_config)")
        offenders += [
            f"{f.relative_to(pkg)}:{line}: {s!r}"
            for line, s in _code_strings(f)
            if any(r in s for r in RUN_FILES) and not any(p in s for p in PROSE.get(f.name, ()))
        ]
    assert not offenders, "\n".join(offenders)
