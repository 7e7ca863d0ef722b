"""The sweep report, built from a synthetic sweep directory (files only, no training): every figure
and section is drawn from the files, HTML and Markdown carry the same content with data escaped,
and the page renders in headless Chromium with every figure decoded."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neftune import rundir
from neftune.aggregate import aggregate
from neftune.config import load_config
from neftune.report import (
    FIGURES,
    SECTIONS,
    build_blocks,
    draw_figures,
    to_markdown,
    write_report,
)

NASTY = "Say <script>alert(1)</script> and ``` then | pipes # and *stars*"


def make_sweep(root: Path, judge: str = "offline", fractions=()) -> tuple:
    """A finished 2-variant x 2-seed sweep written straight into the rundir layout."""
    cfg = load_config(None, [f"output_dir={root}", "eval.sets=[heldout]", f"eval.judge={judge}",
                             "compare.variants=[{name: alpha5, neftune_noise_alpha: 5}]", "compare.seeds=[0, 1]",
                             f"compare.data_fractions={list(fractions)}"])
    rundir.write_config(root, cfg)
    prompts = [NASTY, "What is the capital of France?", "Name a colour.", "Count to three."]
    for frac in [None, *fractions]:
        for name, alpha in (("baseline", 0.0), ("alpha5", 5.0)):
            for seed in (0, 1):
                run = rundir.sweep_run_dir(root, rundir.run_name(name, seed, frac))
                rc = load_config(None, [f"output_dir={run}", f"neftune_noise_alpha={alpha}", f"seed={seed}"])
                rundir.write_config(run, rc)
                rundir.write_summary(run, {"steps": 4, "train_loss": 2.0 - alpha / 10 - seed / 100, "wall_time_s": 1.5,
                                           "n_train": 16 if frac is None else 8, "versions": {"torch": "x"}})
                rundir.write_jsonl(rundir.metrics_path(run), [{"step": s, "loss": 3.0 - s / 4, "clean_loss": 2.9 - s / 4}
                                                              for s in range(1, 5)])
                outs = [f"{name} answer {i} " * (3 + int(alpha)) for i in range(len(prompts))]
                rundir.write_json(rundir.generations_path(run, "heldout"),
                                  [{"instruction": p, "output": o, "generator": run.name, "dataset": "heldout"}
                                   for p, o in zip(prompts, outs)])
                judged = {"win_rate": 60.0 + seed, "lc_win_rate": 55.0 + seed, "verdicts": [1.0, 0.0, 0.5, 1.0]}
                res = {"sets": {"heldout": {"n": 4, "length": {"chars_mean": 40.0 + alpha},
                                            "diversity": {"diversity": 0.5},
                                            **({"judge": judged} if alpha and judge != "none" else {})}},
                       "heldout_loss": 1.8 - alpha / 100 + seed / 100, "overfit": {"rouge_l": 0.2, "bleu": 3.0},
                       "capability": {"accuracy": 0.5}}
                rundir.write_json(rundir.results_path(run), res)
    return cfg, aggregate(root, cfg)


def test_aggregate_reads_the_sweep_from_files(tmp_path):
    _cfg, table = make_sweep(tmp_path, fractions=(0.5,))
    base, var = table["rows"]
    assert (base["name"], var["name"], var["alpha"]) == ("baseline", "alpha5", 5.0)
    assert var["metrics"]["heldout.win_rate"]["values"] == [60.0, 61.0] and var["metrics"]["heldout.win_rate"]["mean"] == 60.5
    assert base["metrics"]["heldout.win_rate"]["values"] == [None, None]
    assert table["selection"]["chosen"] == "alpha5"
    assert [c["n_train"] for c in table["data_curve"]] == [8, 16]
    assert [r["runs"][0] for r in table["fraction_rows"]] == ["runs/baseline-frac0.5-seed0", "runs/alpha5-frac0.5-seed0"]


def test_every_figure_and_section_from_files(tmp_path):
    cfg, table = make_sweep(tmp_path, fractions=(0.5,))
    out = rundir.report_dir(tmp_path)
    out.mkdir(parents=True)
    figs = draw_figures(tmp_path, table, out)
    assert set(figs) == set(FIGURES) and all((out / f).stat().st_size > 1000 for f in figs.values())
    blocks = build_blocks(tmp_path, table, cfg, figs)
    assert [b[2] for b in blocks if b[0] == "h"][:4] == ["NEFTune sweep: " + tmp_path.name, "Chosen alpha", "Results",
                                                         "Figures"]
    assert all(callable(s) for s in SECTIONS)
    examples = next(b[1] for b in blocks if b[0] == "examples")
    assert examples[0]["verdict"] == "alpha5 wins" and examples[1]["verdict"] == "baseline wins"


def test_html_and_markdown_escape_data_and_drop_figures_without_data(tmp_path):
    cfg, table = make_sweep(tmp_path)
    index = write_report(tmp_path, table, cfg)
    md = (index.parent / "report.md").read_text()
    page = index.read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "````" in md  # a fence longer than the data's own ``` run
    for heading in ("Chosen alpha", "Results", "Figures", "Runs", "Caveats", "Resolved sweep config"):
        assert f"<h2>{heading}</h2>" in page and f"## {heading}" in md
    assert (index.parent / "winrate_vs_alpha.png").exists() and not (index.parent / "data_size.png").exists()
    # the same sweep without a judge: the win-rate figure has no data and its old PNG must go
    cfg, table = make_sweep(tmp_path, judge="none")
    write_report(tmp_path, table, cfg)
    assert not (index.parent / "winrate_vs_alpha.png").exists() and (index.parent / "loss.png").exists()
    assert "winrate_vs_alpha.png" not in to_markdown(build_blocks(tmp_path, table, cfg, {}))


def _chromium():
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, check=False, capture_output=True, timeout=600)
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")
    return exe


def test_report_renders_in_headless_chromium(tmp_path):
    cfg, table = make_sweep(tmp_path / "sweep")
    index = write_report(tmp_path / "sweep", table, cfg)
    page = index.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained, opens offline
    assert (index.parent / "report.md").exists() and len(list(index.parent.glob("*.png"))) >= 4
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
                         check=False, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, dom[:2000]
    assert int(m.group(2)) >= 4 and m.group(1) == m.group(2), m.group(0)  # every embedded figure decoded
    text = re.sub(r"<[^>]+>", " ", dom)
    for needle in ("win rate", "LC win rate", "Chosen: alpha5", "baseline", "alpha5", "Caveats"):
        assert needle in text, needle
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", index.as_uri()],
                   check=False, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
