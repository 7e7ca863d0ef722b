"""Win rates of model A against model B from per-prompt pairwise verdicts.

A verdict is 1.0 (A wins), 0.0 (B wins), 0.5 (draw) or None (the judge could not decide: excluded
from every rate and reported as ``unusable``, never guessed).

Length-controlled (LC) win rate: a simplified AlpacaEval-2-style GLM. Judges favour longer
answers and NEFTune makes answers longer, so a raw win rate mixes "better" with "longer". We fit

    P(A wins | item) = sigmoid(b0 + phi * tanh(delta / sigma)),  delta = len_a - len_b (chars),

with sigma the sample standard deviation (ddof 1, as AlpacaEval) of delta over the set, by
Newton/IRLS on the soft-label log-likelihood (draws are label 0.5), and read it at zero length
difference: LC = 100 * sigmoid(b0). This is AlpacaEval's ``length_controlled_minimal`` model, not
its ``length_controlled_v1``: no instruction-difficulty term, no regularisation toward gamed
baselines, and no L1/cross-validated penalty. tanh bounds the length term so a few extreme items
cannot dominate. A tiny L2 penalty on phi only (not on b0, which carries the answer) keeps phi finite
when the winner is perfectly separated by length. If sigma == 0 (all differences equal) the length
term is unidentifiable and is dropped, so LC equals the raw rate.

On small sets this fit is unstable (12 items can move it 20 points from the raw rate). Like
AlpacaEval (``get_is_extreme_changes``: abs 10 points, relative 1/4) the summary flags an LC rate
that lies below min(raw - raw/4, raw - 10) or above max(raw + (100 - raw)/4, raw + 10):
``lc_unstable`` is True and ``lc_warning`` says why; a report should print it next to the number.

Intervals are 95% percentile bootstraps over prompts (``n_boot`` resamples, fixed ``seed``); the LC
bootstrap refits the model on every resample with sigma fixed at the full-set value, so the
feature transform is the same for the point estimate and its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

PHI_L2 = 1e-2  # "tiny": negligible unless phi would otherwise run off to infinity
MAX_ITER = 100
MAX_STEP = 5.0  # damping: a Newton step larger than this is scaled down (separable data)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form


def length_feature(delta: np.ndarray) -> Optional[np.ndarray]:
    """The GLM's length term tanh(delta / sd(delta)) (delta = len_a - len_b per item), None when the lengths
    give no spread (fewer than 2 items, or all differences equal): then the fit is the intercept alone."""
    sigma = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    return np.tanh(delta / sigma) if sigma > 0 else None


def fit_length_controlled(y: np.ndarray, x: Optional[np.ndarray]) -> np.ndarray:
    """Batched soft-label logistic regression by damped Newton.

    y: (B, n) labels in [0, 1]; x: (B, n) length feature or None (intercept only).
    Returns the coefficients (B, 2) as [b0, phi] (phi = 0 without a feature)."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    B, n = y.shape
    k = 1 if x is None else 2
    X = np.ones((B, n, k))
    if x is not None:
        X[:, :, 1] = np.atleast_2d(x)
    pen = np.zeros(k)
    if k == 2:
        pen[1] = PHI_L2
    w = np.zeros((B, k))
    for _ in range(MAX_ITER):
        p = _sigmoid(np.einsum("bnk,bk->bn", X, w))
        grad = np.einsum("bnk,bn->bk", X, y - p) - pen * w
        h = p * (1.0 - p)
        H = np.einsum("bnk,bn,bnj->bkj", X, h, X) + np.diag(pen) + 1e-10 * np.eye(k)
        step = np.linalg.solve(H, grad[..., None])[..., 0]
        big = np.max(np.abs(step), axis=1, keepdims=True)
        step = step * np.minimum(1.0, MAX_STEP / np.maximum(big, 1e-300))
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    if k == 1:
        w = np.concatenate([w, np.zeros((B, 1))], axis=1)
    return w


LC_METHOD = (
    "simplified AlpacaEval-2-style GLM (verdict ~ b0 + phi*tanh(dlen/sd), read at dlen = 0; "
    "no instruction-difficulty term, no regularisation toward gamed baselines, no L1/CV)"
)
LC_WARN_ABS, LC_WARN_REL = 10.0, 4.0  # AlpacaEval's get_is_extreme_changes defaults


def lc_is_extreme(raw: float, lc: float, abs_diff: float = LC_WARN_ABS, rel_diff: float = LC_WARN_REL) -> bool:
    """AlpacaEval's warning rule: LC below min(raw - raw/rel, raw - abs) or above
    max(raw + (100 - raw)/rel, raw + abs) (both rates in percent)."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (100.0 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def _percentile_ci(samples: np.ndarray) -> list:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


BASES = ("reference", "llm", "prompt-proxy")  # a summary's headline basis: the first one present


def win_rate_summary(
    verdicts: Sequence[Optional[float]],
    len_a: Sequence[float],
    len_b: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    bases: Optional[Sequence[Optional[str]]] = None,
) -> dict:
    """Raw and length-controlled win rates of A over B, in percent, with 95% bootstrap intervals.

    Returns ``win_rate``, ``win_rate_se`` (AlpacaEval convention: SE of the mean verdict over prompts),
    ``win_rate_ci``, ``lc_win_rate``, ``lc_win_rate_ci``, ``lc_length_coef`` (phi; > 0 means the judge
    favours the longer answer), ``lc_method`` (what the LC model is), ``lc_unstable`` and
    ``lc_warning`` (AlpacaEval's extreme-change rule, see the module doc; None when stable), ``wins``,
    ``losses``, ``draws``, ``unusable``, ``n`` (usable verdicts), ``avg_len_a``, ``avg_len_b`` (chars,
    usable items). With no usable verdict the rates are None.

    ``bases`` (one per verdict: "reference", "prompt-proxy", "llm", or None) keeps verdicts of
    different kinds apart: the top-level numbers are those of ONE basis, named in ``basis`` (the
    first of reference, llm, prompt-proxy that occurs); ``by_basis`` holds a full summary per basis
    present (separate rows for a report); ``no_basis`` counts verdicts without a basis, which are in
    no win rate.
    """
    if not (len(verdicts) == len(len_a) == len(len_b)):
        raise ValueError(f"verdicts ({len(verdicts)}), len_a ({len(len_a)}) and len_b ({len(len_b)}) differ in length")
    for v in verdicts:
        if v is not None and v not in (0.0, 0.5, 1.0):
            raise ValueError(f"a verdict must be 1.0, 0.0, 0.5 or None, got {v!r}")
    if bases is None:
        return _summary(verdicts, len_a, len_b, n_boot, seed)
    if len(bases) != len(verdicts):
        raise ValueError(f"bases ({len(bases)}) and verdicts ({len(verdicts)}) differ in length")
    by_basis = {}
    for b in [b for b in BASES if b in bases] + sorted({b for b in bases if b is not None and b not in BASES}):
        idx = [i for i, x in enumerate(bases) if x == b]
        by_basis[b] = _summary(
            [verdicts[i] for i in idx], [len_a[i] for i in idx], [len_b[i] for i in idx], n_boot, seed
        )
    head = next(iter(by_basis), None)
    out = dict(by_basis[head]) if head is not None else _summary([], [], [], n_boot, seed)
    out.update(basis=head, by_basis=by_basis, no_basis=sum(b is None for b in bases))
    return out


def _summary(verdicts, len_a, len_b, n_boot: int, seed: int) -> dict:
    keep = [i for i, v in enumerate(verdicts) if v is not None]
    y = np.array([float(verdicts[i]) for i in keep])
    la = np.array([float(len_a[i]) for i in keep])
    lb = np.array([float(len_b[i]) for i in keep])
    n = len(keep)
    out = {
        "wins": int(np.sum(y == 1.0)),
        "losses": int(np.sum(y == 0.0)),
        "draws": int(np.sum(y == 0.5)),
        "unusable": len(verdicts) - n,
        "n": n,
        "avg_len_a": float(la.mean()) if n else None,
        "avg_len_b": float(lb.mean()) if n else None,
        "lc_method": LC_METHOD,
    }
    if n == 0:
        out.update(
            win_rate=None,
            win_rate_se=None,
            win_rate_ci=None,
            lc_win_rate=None,
            lc_win_rate_ci=None,
            lc_length_coef=None,
            lc_unstable=None,
            lc_warning=None,
        )
        return out

    out["win_rate"] = 100.0 * float(y.mean())
    # Standard error of a mean of {0, 0.5, 1} values; undefined (reported 0) for a single item.
    out["win_rate_se"] = 100.0 * float(y.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    x = length_feature(la - lb)
    w = fit_length_controlled(y[None, :], None if x is None else x[None, :])[0]
    out["lc_win_rate"] = 100.0 * float(_sigmoid(w[0]))
    out["lc_length_coef"] = float(w[1])
    out["lc_unstable"] = lc_is_extreme(out["win_rate"], out["lc_win_rate"])
    out["lc_warning"] = (
        (
            f"LC win rate {out['lc_win_rate']:.1f}% is far from the raw {out['win_rate']:.1f}% "
            f"(AlpacaEval's rule: > {LC_WARN_ABS:g} points and > 1/{LC_WARN_REL:g} of the room); "
            f"the length fit on {n} verdicts is not trustworthy"
        )
        if out["lc_unstable"]
        else None
    )

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(max(1, int(n_boot)), n))
    out["win_rate_ci"] = _percentile_ci(100.0 * y[idx].mean(axis=1))
    wb = fit_length_controlled(y[idx], None if x is None else x[idx])
    out["lc_win_rate_ci"] = _percentile_ci(100.0 * _sigmoid(wb[:, 0]))
    return out
