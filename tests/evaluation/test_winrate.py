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
