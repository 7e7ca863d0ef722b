"""Paired statistics: hierarchical bootstrap, labelled spreads, design arithmetic and the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neftune import stats


def _sweep(rng, effects: dict, seeds=3, prompts=60, seed_sd=0.3, item_sd=1.0, binary=False):
    """Baseline plus variants with a per-variant planted shift; each variant gets its own noise.
    Items share a per-prompt difficulty across arms (that is what pairing removes)."""
    difficulty = rng.normal(0, 1.0, size=prompts)

    def arm(shift):
        out = {}
        for s in range(seeds):
            x = difficulty + rng.normal(0, seed_sd) + rng.normal(0, item_sd, size=prompts) + shift
            out[s] = list((x > 0).astype(float)) if binary else list(x)
        return out

    return arm(0.0), {name: arm(eff) for name, eff in effects.items()}


def test_paired_difference_point_estimate_and_method():
    base = {0: [1.0, 2.0, 3.0], 1: [2.0, 2.0, 2.0]}
    var = {0: [2.0, 2.0, 4.0], 1: [2.0, 3.0, 5.0]}  # diffs: seed0 [1, 0, 1], seed1 [0, 1, 3]
    r = stats.paired_difference(var, base, n_boot=500)
    assert r["diff"] == pytest.approx(np.mean([2 / 3, 4 / 3]))
    assert r["method"] == "hierarchical bootstrap: seeds, then prompts within seed, B=500"
    assert r["ci"][0] <= r["diff"] <= r["ci"][1]
    assert r["seed_spread"] == pytest.approx(np.std([2 / 3, 4 / 3], ddof=1))
    assert r["se_prompts"] == pytest.approx(np.std([1, 0, 1, 0, 1, 3], ddof=1) / math.sqrt(6))


def test_missing_items_dropped_pairwise_and_counted():
    base = [[1.0, None, 3.0, 4.0]]
    var = [[2.0, 5.0, float("nan"), 6.0]]
    r = stats.paired_difference(var, base, n_boot=200)
    assert r["n_dropped"] == 2 and r["n_items"] == [2]
    assert r["diff"] == pytest.approx(1.5)
    assert "1 seed" in r["method"] and "seeds, then" not in r["method"]
    assert r["seed_spread"] is None and r["var_b_estimable"] is False


def test_mismatched_items_refused():
    with pytest.raises(ValueError, match="seed 0"):
        stats.paired_difference({0: [1, 2]}, {0: [1, 2, 3]})


def test_constant_baseline_for_head_to_head_verdicts():
    r = stats.paired_difference({0: [1, 1, 0.5, 0], 1: [1, 0, 1, 1]}, 0.5, n_boot=200)
    assert r["diff"] == pytest.approx(np.mean([0.625, 0.75]) - 0.5)


def test_labelled_spreads():
    assert stats.alpacaeval_se([1, 0, 0.5, None, 1]) == pytest.approx(np.std([1, 0, 0.5, 1], ddof=1) / 2)
    assert stats.seed_spread({0: [1, 3], 1: [5, None], 2: [0, 0]}) == pytest.approx(np.std([2, 5, 0], ddof=1))
    assert stats.seed_spread({0: [1, 2]}) is None


def test_per_run_difference_t_interval():
    r = stats.per_run_difference({0: 1.0, 1: 1.2, 2: 1.1}, {0: 0.8, 1: 0.9, 2: 1.0})
    d = np.array([0.2, 0.3, 0.1])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_0.975 with 2 df
    assert r["diff"] == pytest.approx(d.mean())
    assert r["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert "paired t interval over 3 seeds" in r["method"]
    one = stats.per_run_difference([1.0], [0.5])
    assert one["ci"] is None and "no interval" in one["method"]


def test_interval_covers_true_difference():
    """Over 200 synthetic paired datasets the 95% interval covers the planted difference 90–99% of the time."""
    rng = np.random.default_rng(1)
    true, hits, n_sets = 0.4, 0, 200
    for k in range(n_sets):
        base, variants = _sweep(rng, {"v": true}, seeds=4, prompts=30, seed_sd=0.1)
        r = stats.paired_difference(variants["v"], base, n_boot=400, seed=k)
        hits += r["ci"][0] <= true <= r["ci"][1]
    assert 0.90 * n_sets <= hits <= 0.99 * n_sets


def test_decision_not_distinguishable_when_variants_equal_baseline():
    rng = np.random.default_rng(2)
    base, variants = _sweep(rng, {"α=5": 0.0, "α=10": 0.0, "α=15": 0.0}, seeds=2, prompts=24, binary=True)
    d = stats.decide(variants, base, "win rate", target=0.05, unit="points")
    assert d["chosen"] is None
    assert d["statement"].startswith("no variant is distinguishable from the baseline at this size")
    assert "(80% power, 5% level)" in d["statement"] and "prompts ×" in d["statement"]
    assert d["mde"] > 0 and d["design"]["seeds"] >= 2
    # The proposed design detects the target by the same formula.
    vb = np.mean([r["var_b"] for r in d["results"].values()])
    vw = np.mean([r["var_w"] for r in d["results"].values()])
    assert stats.minimum_detectable_effect(vb, vw, d["design"]["seeds"], d["design"]["prompts"]) <= 0.05 + 1e-9
    for r in d["results"].values():
        assert r["method"].startswith("hierarchical bootstrap: seeds, then prompts within seed")


def test_decision_names_planted_variant_and_judges_runner_up():
    rng = np.random.default_rng(3)
    base, variants = _sweep(rng, {"α=5": 1.0, "α=10": 0.0, "α=15": 0.05}, seeds=3, prompts=60)
    d = stats.decide(variants, base, "held-out score")
    assert d["chosen"] == "α=5"
    assert d["statement"].startswith("α=5 beats the baseline on held-out score by +")
    assert d["runner_up"] in ("α=10", "α=15")
    assert d["runner_up_distinguishable"] is True
    assert d["runner_up_margin"]["ci"][0] > 0


def test_decision_lower_is_better():
    rng = np.random.default_rng(4)
    base, variants = _sweep(rng, {"α=5": -1.0, "α=10": 0.0}, seeds=3, prompts=60)
    d = stats.decide(variants, base, "held-out loss", higher_is_better=False)
    assert d["chosen"] == "α=5" and "by -" in d["statement"]


def test_design_for_formula():
    p, s = stats.design_for(5.0, var_b=0.0, var_w=2500.0, min_seeds=1)
    # var_w / (S P) <= (5 / 2.8016)^2  ->  P >= 2500 / 3.185 = 785
    assert s == 1 and p == math.ceil(2500 / (5 / (stats.Z_975 + stats.Z_80)) ** 2)
    p, s = stats.design_for(5.0, var_b=10.0, var_w=2500.0, min_seeds=2)
    assert 10.0 / s <= (5 / (stats.Z_975 + stats.Z_80)) ** 2 / 2
    assert stats.minimum_detectable_effect(10.0, 2500.0, s, p) <= 5.0


def test_decision_lists_worse_variants_and_says_so():
    rng = np.random.default_rng(5)
    base, variants = _sweep(rng, {"α=5": -1.0, "α=10": 0.0}, seeds=3, prompts=60)
    d = stats.decide(variants, base, "score")
    assert d["chosen"] is None and d["worse"] == ["α=5"]
    assert d["statement"].startswith("no variant is distinguishably better than the baseline at this size")
    assert "α=5: worse than the baseline on score" in d["statement"]


def test_design_never_proposes_fewer_prompts_than_the_sweep_has():
    """Seed-to-seed spread dominates, within-seed spread is small: more seeds are needed, and the design
    keeps the sweep's 14 prompts instead of advising fewer (it once read "4 prompts × 77 seeds")."""
    rng = np.random.default_rng(7)
    base, variants = _sweep(rng, {"α=5": 0.0}, seeds=2, prompts=14, seed_sd=1.0, item_sd=0.01)
    d = stats.decide(variants, base, "score", target=0.05, unit="similarity")
    assert d["chosen"] is None
    assert d["design"]["prompts"] >= 14 and d["design"]["seeds"] > 2
    assert f"{d['design']['prompts']} prompts × {d['design']['seeds']} seeds" in d["statement"]
    assert stats.design_for(5.0, var_b=10.0, var_w=1.0, min_seeds=2, min_prompts=14)[0] == 14
