"""A miniature `neftune compare` end to end: tiny Llama, tiny data, baseline + alpha5 x 2 seeds.
Checks that compare.json's numbers are exactly the runs' own, that a rerun reuses every run and eval,
and that report/index.html renders in headless Chromium with every figure decoded."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neftune.compare import compare, seed_stats, select_variant
from neftune.config import load_config

DATA = str(Path(__file__).parent / "assets" / "tiny_alpaca.jsonl")


def sweep_cfg(model_dir, out):
    return load_config(None, [
        f"model={model_dir}", f"output_dir={out}", f"data.path={DATA}", "data.eval_size=4", "data.max_length=256",
        "max_steps=2", "per_device_train_batch_size=4", "learning_rate=1e-3", "save_steps=0", "logging_steps=1",
        "clean_loss_steps=1", "report_to=[jsonl]", "eval.sets=[heldout]", "eval.num_samples=4", "eval.max_new_tokens=8",
        "eval.overfit_samples=4", "eval.capability_samples=4", "eval.judge=offline", "eval.bootstrap=50",
        "compare.variants=[{name: alpha5, neftune_noise_alpha: 5}]", "compare.seeds=[0, 1]"])


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
    return {"heldout.win_rate": judge.get("win_rate"), "heldout.lc_win_rate": judge.get("lc_win_rate"),
            "heldout.avg_chars": res["sets"]["heldout"]["length"]["chars_mean"],
            "heldout.diversity": res["sets"]["heldout"]["diversity"]["diversity"],
            "rouge_l": res["overfit"]["rouge_l"], "bleu": res["overfit"]["bleu"], "heldout_loss": res["heldout_loss"],
            "capability": res["capability"]["accuracy"], "train_loss": summ["train_loss"],
            "clean_loss": clean[-1] if clean else None, "train_wall_time_s": summ["wall_time_s"]}[key]


def test_table_numbers_are_the_runs_numbers(sweep):
    out, table = sweep
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk == json.loads(json.dumps(table))
    assert [r["name"] for r in on_disk["rows"]] == ["baseline", "alpha5"]
    for name in ("baseline-seed0", "baseline-seed1", "alpha5-seed0", "alpha5-seed1"):
        assert (out / "runs" / name / "summary.json").exists() and (out / "runs" / name / "eval" / "results.json").exists()
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
    assert on_disk["selection"]["chosen"] == "alpha5"


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
    assert len(re.findall(r"^\[compare\] \d+/10 (train|generate|judge) \S+ .*reused", printed, re.M)) == 10, printed
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again["rows"] == json.loads(json.dumps(table["rows"]))
    assert "report:" in printed


def test_selection_rule_ties_and_one_seed():
    def row(name, lc, loss, n=2):
        lcs = [lc - 1, lc + 1][:n] if n == 2 else [lc]
        return {"name": name, "alpha": 5.0, "distribution": "uniform",
                "metrics": {"heldout.lc_win_rate": seed_stats(lcs), "heldout_loss": seed_stats([loss] * n)}}

    rows = [row("baseline", 50, 2.0), row("a5", 60, 1.9), row("a10", 60.5, 2.1), row("a15", 40, 1.5)]
    sel = select_variant(rows, "lc_win_rate", "heldout_loss", "heldout")
    assert sel["chosen"] == "a5" and sel["broke_tie"] and sel["tied"] == ["a10", "a5"]  # tie -> lower held-out loss
    assert sel["margin_exceeds_spread"] is False and "does NOT exceed" in sel["statement"]
    one = [row("baseline", 50, 2.0, 1), row("a5", 60, 1.9, 1), row("a10", 55, 2.1, 1)]
    sel = select_variant(one, "lc_win_rate", "heldout_loss", "heldout")
    assert sel["chosen"] == "a5" and sel["margin"] == pytest.approx(5.0) and "spread is unknown" in sel["statement"]


def _chromium():
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=600)
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")
    return exe


def test_report_renders_in_headless_chromium(sweep, tmp_path):
    out, table = sweep
    index = out / "report" / "index.html"
    page = index.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained, opens offline
    assert (out / "report" / "report.md").exists() and len(list((out / "report").glob("*.png"))) >= 4
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, dom[:2000]
    assert int(m.group(2)) >= 4 and m.group(1) == m.group(2), m.group(0)  # every embedded figure decoded
    text = re.sub(r"<[^>]+>", " ", dom)
    for needle in ("win rate", "LC win rate", "Chosen: alpha5", "baseline", "alpha5", "Caveats"):
        assert needle in text, needle
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", index.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
