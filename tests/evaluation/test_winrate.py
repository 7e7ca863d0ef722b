"""Raw and length-controlled win rates."""

from __future__ import annotations

import numpy as np
import pytest

from neftune.evaluation.winrate import win_rate_summary

# A is longer on 8 items and shorter on 2; lengths vary.
LEN_A = [300, 250, 400, 500, 350, 320, 280, 260, 100, 120]
LEN_B = [100, 120, 130, 90, 150, 140, 110, 100, 300, 250]


def test_counts_rate_and_unusable_excluded():
    s = win_rate_summary([1.0, 0.0, 0.5, None, 1.0, None], [5, 6, 7, 1000, 9, 1], [5, 5, 5, 1, 5, 2], n_boot=200)
    assert (s["wins"], s["losses"], s["draws"], s["unusable"], s["n"]) == (2, 1, 1, 2, 4)
    assert s["win_rate"] == pytest.approx(100 * 2.5 / 4)
    assert s["win_rate_se"] == pytest.approx(100 * np.std([1, 0, 0.5, 1], ddof=1) / 2)
    assert s["avg_len_a"] == pytest.approx(np.mean([5, 6, 7, 9]))  # unusable items' lengths excluded
    assert s["avg_len_b"] == pytest.approx(5.0)


def test_lc_equals_raw_when_lengths_equal():
    v = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0]
    s = win_rate_summary(v, [50] * 8, [50] * 8, n_boot=200)
    assert s["lc_win_rate"] == pytest.approx(s["win_rate"], abs=1e-6)
    assert s["lc_length_coef"] == 0.0
    assert s["lc_win_rate_ci"] == pytest.approx(s["win_rate_ci"], abs=1e-6)


def test_lc_also_equals_raw_when_length_differences_constant():
    # Delta is the same on every item: its std is 0, so the length term is dropped.
    v = [1.0, 0.0, 1.0, 1.0]
    s = win_rate_summary(v, [60, 70, 80, 90], [50, 60, 70, 80], n_boot=100)
    assert s["lc_win_rate"] == pytest.approx(75.0, abs=1e-6)


def test_lc_discounts_length_bias_toward_50_in_both_directions():
    longer_wins = [1.0 if a > b else 0.0 for a, b in zip(LEN_A, LEN_B)]  # A (mostly longer) wins 8/10
    s = win_rate_summary(longer_wins, LEN_A, LEN_B, n_boot=300)
    assert s["win_rate"] == 80.0
    assert 50.0 <= s["lc_win_rate"] < s["win_rate"] - 5
    assert s["lc_length_coef"] > 0

    shorter_loses = [0.0 if a > b else 1.0 for a, b in zip(LEN_A, LEN_B)]  # A loses when longer: 20%
    s2 = win_rate_summary(shorter_loses, LEN_A, LEN_B, n_boot=300)
    assert s2["win_rate"] == 20.0
    assert s2["win_rate"] + 5 < s2["lc_win_rate"] <= 50.0
    assert s2["lc_length_coef"] < 0


def test_cis_contain_point_estimates_and_are_reproducible():
    rng = np.random.default_rng(3)
    n = 80
    v = list(rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.2, 0.5]))
    la, lb = list(rng.integers(20, 900, n)), list(rng.integers(20, 900, n))
    s = win_rate_summary(v, la, lb, n_boot=500, seed=1)
    lo, hi = s["win_rate_ci"]
    assert lo <= s["win_rate"] <= hi and hi - lo > 1
    lo, hi = s["lc_win_rate_ci"]
    assert lo <= s["lc_win_rate"] <= hi
    assert win_rate_summary(v, la, lb, n_boot=500, seed=1) == s


def test_no_usable_verdicts_and_bad_input():
    s = win_rate_summary([None, None], [1, 2], [3, 4])
    assert s["n"] == 0 and s["unusable"] == 2 and s["win_rate"] is None and s["lc_win_rate"] is None
    with pytest.raises(ValueError):
        win_rate_summary([1.0], [1, 2], [1])
    with pytest.raises(ValueError):
        win_rate_summary([0.7], [1], [1])


# --------------------------------------------------------------------------- basis rows, LC flag
def test_bases_kept_apart_and_no_basis_excluded():
    v = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    bases = ["reference", "reference", "prompt-proxy", "prompt-proxy", "prompt-proxy", None, None]
    s = win_rate_summary(v, [10] * 7, [10] * 7, n_boot=100, bases=bases)
    assert s["basis"] == "reference" and s["win_rate"] == pytest.approx(100.0) and s["n"] == 2
    assert s["by_basis"]["prompt-proxy"]["win_rate"] == pytest.approx(0.0)
    assert s["by_basis"]["prompt-proxy"]["n"] == 3
    assert set(s["by_basis"]) == {"reference", "prompt-proxy"}
    assert s["no_basis"] == 2  # the two no-basis wins are in no rate
    only_proxy = win_rate_summary([1.0, 0.0], [1, 2], [2, 1], n_boot=50, bases=["prompt-proxy", "prompt-proxy"])
    assert only_proxy["basis"] == "prompt-proxy" and only_proxy["win_rate"] == pytest.approx(50.0)


def test_lc_flag_follows_alpacaeval_rule():
    from alpaca_eval.metrics.glm_winrate import get_is_extreme_changes

    from neftune.evaluation.winrate import lc_is_extreme

    for raw in (0.0, 5.0, 20.0, 50.0, 54.2, 80.0, 100.0):
        for lc in np.linspace(0, 100, 41):
            assert lc_is_extreme(raw, lc) == bool(get_is_extreme_changes(raw, lc)), (raw, lc)


def test_small_set_with_length_confound_is_flagged():
    # 12 items, A wins exactly when longer: the LC fit runs far from the raw rate and says so.
    v = [1.0] * 7 + [0.0] * 5
    la = [300, 320, 280, 310, 290, 305, 100, 120, 130, 110, 125, 115]
    lb = [100, 110, 120, 105, 115, 108, 290, 300, 280, 310, 295, 305]
    s = win_rate_summary(v, la, lb, n_boot=100)
    assert s["lc_unstable"] is True and "not trustworthy" in s["lc_warning"]
    assert "no instruction-difficulty term" in s["lc_method"]
    stable = win_rate_summary([1.0, 0.0] * 50, [100] * 100, [100] * 100, n_boot=50)
    assert stable["lc_unstable"] is False and stable["lc_warning"] is None


# --------------------------------------------------------------------------- cross-check with alpaca_eval
def _synthetic(n, length_bias, rng):
    """Verdicts of A (the model) vs B (the baseline) whose win probability depends on the length gap.
    With a length bias, A is also longer on average (NEFTune's case), so LC must move below raw."""
    la = rng.integers(200, 1200, size=n) + (400 if length_bias else 0)
    lb = rng.integers(200, 1200, size=n)
    delta = (la - lb) / np.std(la - lb, ddof=1)
    p = 1 / (1 + np.exp(-(0.4 + length_bias * np.tanh(delta))))
    u = rng.random(n)
    v = np.where(u < p - 0.05, 1.0, np.where(u < p + 0.05, 0.5, 0.0))  # some draws
    return list(v), la, lb


@pytest.mark.parametrize("length_bias", [0.0, 1.5])
def test_lc_agrees_with_alpaca_eval_minimal_glm(length_bias, monkeypatch, tmp_path):
    """Same verdicts and lengths into alpaca_eval's `length_controlled_minimal` (L1, cross-validated)
    and ours (unpenalised apart from a tiny L2 on phi): with 400 items both fits are determined, and
    agree within 1.5 win-rate points."""
    pd = pytest.importorskip("pandas")
    from alpaca_eval.metrics import glm_winrate

    n = 400
    # The minimal GLM never uses instruction difficulty, but still fetches df_gamed.csv at call time:
    # a local stand-in with the columns it reads (model, index, instruction_difficulty). No network.
    gamed = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "x", "index": range(n), "instruction_difficulty": 0.0}).to_csv(gamed, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda *a, **k: str(gamed))

    v, la, lb = _synthetic(n, length_bias, np.random.default_rng(7))
    # alpaca_eval: output_1 / generator_1 is the baseline (our B); preference 2 = output_2 wins, 1.5 draw.
    pref = {1.0: 2.0, 0.0: 1.0, 0.5: 1.5}
    df = pd.DataFrame(
        {
            "index": range(n),
            "generator_1": "baseline",
            "generator_2": "model",
            "output_1": ["x" * int(k) for k in lb],
            "output_2": ["x" * int(k) for k in la],
            "preference": [pref[x] for x in v],
            "annotator": "test",
        }
    )
    ref = glm_winrate.get_length_controlled_winrate(
        df, glm_name="length_controlled_minimal", save_weights_dir=None, is_add_glm_preference_inplace=False
    )
    ours = win_rate_summary(v, la, lb, n_boot=20)
    assert ours["win_rate"] == pytest.approx(ref["win_rate"], abs=1e-6)
    assert ours["lc_win_rate"] == pytest.approx(ref["length_controlled_winrate"], abs=1.5)
    if length_bias:
        # The planted bias is real: both LC rates fall well below the raw rate.
        assert ours["lc_win_rate"] < ours["win_rate"] - 5 and ref["length_controlled_winrate"] < ref["win_rate"] - 5
