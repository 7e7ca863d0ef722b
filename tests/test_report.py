"""The sweep report, built from a synthetic sweep directory (files only, no training): every figure
and section is drawn from the files, HTML and Markdown carry the same content with data escaped,
and the page renders in headless Chromium with every figure decoded."""

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synthetic_sweep

from neftune import rundir
from neftune.aggregate import aggregate
from neftune.report import (
    FIGURES,
    SECTIONS,
    _md,
    build_blocks,
    draw_figures,
    to_markdown,
    write_report,
)

HEADINGS = (
    "Decision",
    "Paired differences to the baseline (variant − baseline, 95% interval)",
    "Answers that hit the token cap",
    "NEFTune vs the alternatives",
    "Clean training loss per epoch",
    "Data-size study",
    "Figures",
    "Wall time",
    "Runs",
    "Caveats",
    "Resolved sweep config",
)


def make_sweep(root: Path, judge: str = "offline", fractions=(), effects=None) -> tuple:
    """A finished sweep (baseline, alpha5 with a planted effect, a weight-decay baseline) x 2 seeds."""
    cfg = synthetic_sweep.make_sweep(
        root,
        {"alpha5": 1.0, "wd": 0.0} if effects is None else effects,
        alphas={"wd": 0.0},
        judge=judge,
        fractions=fractions,
        n=16,
    )
    table = aggregate(root, cfg, n_boot=200)
    table["wall_time"] = {
        "stages_s": {"training": 10.0, "generation": 5.0},
        "other_s": 1.0,
        "total_s": 16.0,
        "install_s": None,
        "note": "synthetic",
    }
    return cfg, table


def test_every_figure_and_section_from_files(tmp_path):
    cfg, table = make_sweep(tmp_path, fractions=(0.5,))
    out = rundir.report_dir(tmp_path)
    out.mkdir(parents=True)
    figs = draw_figures(tmp_path, table, out)
    assert set(figs) == set(FIGURES) and all((out / f).stat().st_size > 1000 for f in figs.values())
    blocks = build_blocks(tmp_path, table, cfg, figs)
    heads = [b[2] for b in blocks if b[0] == "h"]
    assert heads[0] == "NEFTune sweep: " + tmp_path.name and all(h in heads for h in HEADINGS)
    assert all(callable(s) for s in SECTIONS)
    text = to_markdown(blocks)
    assert "alpha5 beats the baseline on" in text and "Runner-up wd" in text
    assert "resolved: lower, better" in text and "not resolved" in text  # worded from the intervals
    assert "steps within seed" in text and "examples within seed" in text  # every interval says what it resamples
    assert "LC win rate unstable in alpha5-seed1" in text and "had no basis" in text  # caveats from the data
    # capped answers: per run, and per set over all runs with the worst run named (synthetic: trained
    # prompts 12.5 % in every run; held-out capped where a planted length reaches the cap)
    assert "Over all runs: " in text and "trained prompts 12.5% over 6 runs (worst 12.5%, " in text
    examples = next(b[1] for b in blocks if b[0] == "examples")
    assert {e["verdict"] for e in examples} <= {"alpha5 wins", "baseline wins", "draw", "no verdict"}


def test_equal_variants_report_says_not_distinguishable(tmp_path):
    cfg, table = make_sweep(tmp_path, effects={"alpha5": 0.0})
    md = (write_report(tmp_path, table, cfg).parent / "report.md").read_text()
    assert "no variant is distinguishable from the baseline at this size" in md and "beats the baseline on" not in md
    assert "## Data-size study" in md and "Not run" in md


def test_html_and_markdown_escape_data_and_drop_figures_without_data(tmp_path):
    cfg, table = make_sweep(tmp_path)
    index = write_report(tmp_path, table, cfg)
    md = (index.parent / "report.md").read_text()
    page = index.read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "````" in md  # a fence longer than the data's own ``` run
    for heading in HEADINGS:
        assert f"<h2>{html.escape(heading)}</h2>" in page and f"## {_md(heading)}" in md
    assert (index.parent / "winrate_vs_alpha.png").exists() and not (index.parent / "data_size.png").exists()
    # the same sweep without a judge: the win-rate figure has no data and its old PNG must go
    cfg, table = make_sweep(tmp_path, judge="none")
    write_report(tmp_path, table, cfg)
    assert not (index.parent / "winrate_vs_alpha.png").exists() and (index.parent / "loss.png").exists()
    assert "winrate_vs_alpha.png" not in to_markdown(build_blocks(tmp_path, table, cfg, {}))


def _chromium():
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True,
            check=False,
            capture_output=True,
            timeout=600,
        )
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
    flags = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        flags + ["--virtual-time-budget=5000", "--dump-dom", index.as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, dom[:2000]
    assert int(m.group(2)) >= 4 and m.group(1) == m.group(2), m.group(0)  # every embedded figure decoded
    text = re.sub(r"<[^>]+>", " ", dom)
    for needle in ("win rate", "LC win rate", "alpha5 beats the baseline", "NEFTune vs the alternatives", "Caveats"):
        assert needle in text, needle
    shot = tmp_path / "shot.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", index.as_uri()],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


def test_main_table_shows_the_per_prompt_lc_score_the_decision_runs_on():
    """select_by lc_win_rate decides on `<set>.lc_win_rate.<basis>` (bootstrap over prompts); the main table and
    forest plot show that column, beside the per-run LC win rate (paired t over seeds)."""
    from neftune.figures import main_columns

    table = {
        "main_set": "heldout",
        "rows": [{}, {"paired": {"heldout.lc_win_rate.reference": {}, "lc_win_rate": {}, "heldout_nll": {}}}],
    }
    cols = dict(main_columns(table))
    assert cols["heldout.lc_win_rate.reference"] == "LC win rate − 50 (reference verdicts, per prompt)"
    assert cols["lc_win_rate"] == "LC win rate − 50 (per run)" and "heldout_nll" in cols
