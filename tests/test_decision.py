"""compare.select_by lc_win_rate decides on length-controlled per-item scores (NEFTune makes answers longer,
and judges favour longer answers): a variant that wins only by being longer is not chosen; without per-item
lengths the decision runs on the raw judge metric and the sentence says so."""

import json

import numpy as np
import pytest
from synthetic_sweep import make_sweep

from neftune.aggregate import aggregate
from neftune.evaluation.winrate import win_rate_summary
from neftune.paired import lc_adjusted

B = 400


def _rewrite(root, fn):
    for p in root.glob("runs/*/eval/results.json"):
        res = json.loads(p.read_text())
        fn(p.parent.parent.name, res)
        p.write_text(json.dumps(res))


def test_lc_adjusted_mean_is_the_runs_lc_win_rate():
    rng = np.random.default_rng(0)
    n = 60
    la, lb = rng.integers(100, 900, n).astype(float), rng.integers(100, 700, n).astype(float)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * np.tanh((la - lb) / 300)))).astype(float)
    y[:5] = 0.5  # draws
    ids = [f"p{i}" for i in range(n)]
    verdicts = dict(zip(ids, y.tolist())) | {"none": None}
    adj = lc_adjusted(verdicts, dict(zip(ids, la)) | {"none": 5.0}, dict(zip(ids, lb)))
    assert adj["none"] is None and len(adj) == n + 1
    lc = win_rate_summary(y.tolist(), la.tolist(), lb.tolist(), n_boot=10)["lc_win_rate"]
    assert 100 * np.mean([adj[k] for k in ids]) == pytest.approx(lc, abs=1e-6)
    assert abs(lc - 100 * y.mean()) > 1  # the adjustment did something on this data
    assert set(lc_adjusted(verdicts, None, dict(zip(ids, lb))).values()) == {None}  # no lengths: no score


def _longer_wins(tmp_path, n=120):
    """alpha5's answers are longer on average and the judge's verdicts follow the length difference only."""
    cfg = make_sweep(tmp_path, {"alpha5": 0.0}, n=n)
    rng = np.random.default_rng(7)
    chars = {s: rng.normal(500, 150, n).round() for s in (0, 1)}

    def fn(run, res):
        seed = int(run.rsplit("seed", 1)[1])
        items = res["sets"]["heldout"]["items"]
        if run.startswith("baseline"):
            items["chars"] = chars[seed].tolist()
            return
        delta = rng.normal(250, 200, n)
        items["chars"] = (chars[seed] + delta).tolist()
        p_win = 1 / (1 + np.exp(-3 * np.tanh(delta / 200)))
        j = res["sets"]["heldout"]["judge"]["items"]
        j["verdict"] = (rng.random(n) < p_win).astype(float).tolist()
        j["margin"], j["basis"] = [None] * n, ["reference"] * n

    _rewrite(tmp_path, fn)
    return cfg


def test_lc_win_rate_does_not_choose_a_variant_that_only_wins_by_length(tmp_path):
    cfg = _longer_wins(tmp_path)
    cfg.compare.select_by = "win_rate"
    raw = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert raw["metric_key"] == "heldout.win_rate.reference" and raw["chosen"] == "alpha5"
    cfg.compare.select_by = "lc_win_rate"
    lc = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert lc["metric_key"] == "heldout.lc_win_rate.reference" and lc["length_controlled"] is True
    assert lc["chosen"] is None and lc["statement"].startswith("no variant is distinguishable")
    assert "not length-controlled" not in lc["statement"]


def test_lc_win_rate_without_lengths_says_it_decided_on_the_raw_metric(tmp_path):
    cfg = make_sweep(tmp_path, {"alpha5": 1.0})
    _rewrite(tmp_path, lambda run, res: res["sets"]["heldout"]["items"].pop("chars"))
    sel = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert cfg.compare.select_by == "lc_win_rate" and sel["metric_key"] == "heldout.margin.reference"
    assert sel["length_controlled"] is False and sel["chosen"] == "alpha5"
    assert "Decided on the raw judge margin, not length-controlled: select_by is lc_win_rate, but " in sel["statement"]
