"""A miniature `neftune compare` end to end: tiny Llama, tiny data, baseline + alpha5 x 2 seeds.
Checks that compare.json's numbers are exactly the runs' own, that the wall time is split by stage, and
that a rerun reuses every stage. (The report itself is tested in tests/test_report.py.)"""

import json
import math
import re
from pathlib import Path

import pytest
from test_train import cfg_for

from neftune.compare import compare


def sweep_cfg(model_dir, out, *extra):
    """The miniature sweep: tests/test_train.py's tiny run, 2 steps, evaluated (also used by tests/test_launch.py);
    `extra` overrides come last and win."""
    return cfg_for(
        model_dir,
        out,
        "max_steps=2",
        "save_steps=0",
        "clean_loss_steps=1",
        "eval.sets=[heldout]",
        "eval.num_samples=4",
        "eval.max_new_tokens=8",
        "eval.overfit_samples=4",
        "eval.capability_samples=4",
        "eval.judge=offline",
        "eval.bootstrap=50",
        "compare.variants=[{name: alpha5, neftune_noise_alpha: 5}]",
        "compare.seeds=[0, 1]",
        *extra,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("sweep")
    table = compare(sweep_cfg(tiny_llama_dir, out))
    return out, table


def _file_value(run: Path, key: str):
    """The same number, read straight from the run's own files (independently of neftune.compare)."""
    res = json.loads((run / "eval" / "results.json").read_text())
    summ = json.loads((run / "summary.json").read_text())
    judge = res["sets"]["heldout"].get("judge") or {}
    clean = [json.loads(l).get("clean_loss") for l in (run / "metrics.jsonl").read_text().splitlines()]
    clean = [c for c in clean if c is not None]
    return {
        "heldout.win_rate": judge.get("win_rate"),
        "heldout.lc_win_rate": judge.get("lc_win_rate"),
        "heldout.avg_chars": res["sets"]["heldout"]["length"]["chars_mean"],
        "heldout.diversity": res["sets"]["heldout"]["diversity"]["diversity"],
        "rouge_l": res["overfit"]["rouge_l"],
        "bleu": res["overfit"]["bleu"],
        "heldout_loss": res["heldout_loss"],
        "capability": res["capability"]["accuracy"],
        "train_loss": summ["train_loss"],
        "clean_loss": clean[-1] if clean else None,
        "train_wall_time_s": summ["wall_time_s"],
    }[key]


def test_table_numbers_are_the_runs_numbers(sweep):
    out, table = sweep
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk == json.loads(json.dumps(table))
    assert [r["name"] for r in on_disk["rows"]] == ["baseline", "alpha5"]
    for name in ("baseline-seed0", "baseline-seed1", "alpha5-seed0", "alpha5-seed1"):
        assert (out / "runs" / name / "summary.json").exists() and (
            out / "runs" / name / "eval" / "results.json"
        ).exists()
    assert (out / "config.yaml").exists()
    for row in on_disk["rows"]:
        assert row["seeds"] == [0, 1]
        for key, stat in row["metrics"].items():
            for run, value in zip(row["runs"], stat["values"]):
                assert value == _file_value(out / run, key), (row["name"], run, key)
            vals = [v for v in stat["values"] if v is not None]
            if vals:
                assert math.isclose(stat["mean"], sum(vals) / len(vals)) and stat["n"] == len(vals)
    base, var = on_disk["rows"]
    assert base["metrics"]["heldout.win_rate"]["values"] == [None, None]  # the reference has no judge
    assert all(v is not None for v in var["metrics"]["heldout.lc_win_rate"]["values"])
    assert all(v is not None for v in var["metrics"]["clean_loss"]["values"])
    # each variant is judged against the baseline of the same seed
    for s in (0, 1):
        res = json.loads((out / "runs" / f"alpha5-seed{s}" / "eval" / "results.json").read_text())
        assert Path(res["against"]).name == f"baseline-seed{s}"
    sel = on_disk["selection"]  # one of the two sentences, from paired intervals (tests/test_aggregate.py)
    assert sel["chosen"] in (None, "alpha5") and ("beats the baseline" in sel["statement"]) == (
        sel["chosen"] is not None
    )
    assert (out / "report" / "index.html").exists() and (out / "report" / "report.md").exists()


def test_wall_time_split_by_stage(sweep, capsys):
    out, _table = sweep
    split = json.loads((out / "compare.json").read_text())["wall_time"]
    stages = split["stages_s"]
    assert set(stages) == {"conversion", "training", "generation", "judging", "report"}
    assert stages["training"] > 0 and stages["generation"] > 0 and stages["judging"] > 0 and stages["report"] > 0
    # the stages account for (nearly) all of the invocation's wall time
    assert sum(stages.values()) + split["other_s"] == pytest.approx(split["total_s"], abs=0.05)
    assert 0 <= split["other_s"] <= max(1.0, 0.05 * split["total_s"]), split
    assert split["install_s"] is None and "NEFTUNE_INSTALL_SECONDS" in split["note"]


def test_rerun_reuses_every_run_and_eval(sweep, tiny_llama_dir, monkeypatch, capsys):
    out, table = sweep
    files = sorted((out / "runs").glob("*/summary.json")) + sorted((out / "runs").glob("*/eval/results.json"))
    before = {p: p.stat().st_mtime_ns for p in files}

    def boom(*a, **k):
        raise AssertionError("a finished run or eval was redone")

    monkeypatch.setattr("neftune.train.train", boom)
    monkeypatch.setattr("neftune.modeling.load_trained", boom)  # generating answers needs a model
    monkeypatch.setattr("neftune.evaluation.judge.make_judge", boom)  # judging needs a judge
    again = compare(sweep_cfg(tiny_llama_dir, out))
    printed = capsys.readouterr().out
    # 4 runs trained, 4 generated, 2 variants judged: every stage reused
    assert len(re.findall(r"^\[compare\] \d+/10 (train|generate|judge) \S+ .*reused", printed, re.MULTILINE)) == 10, (
        printed
    )
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again["rows"] == json.loads(json.dumps(table["rows"]))
    assert "report:" in printed and "[compare] wall time" in printed
