"""Paired statistics for ``neftune compare``: variant − baseline, same seed, same prompts.

Every interval says what it resamples (the ``method`` string of each result). Shapes used here:

* per-item data: one sequence of per-item values per seed, as ``{seed: [v_0, v_1, ...]}`` or a list of
  lists in seed order. Variant and baseline are paired by seed (the mapping key, or the position) and
  by item position, so item ``i`` of seed ``s`` must be the same prompt/example in both. ``None`` and
  NaN are missing: the pair is dropped (in either arm) and counted.
* per-run data: one number per seed (e.g. the final clean train loss), paired by seed.

Variance model for the design arithmetic: the paired difference of item ``i`` under seed ``s`` is
``d[s, i] = mu + a_s + e[s, i]`` with between-seed variance ``var_b = Var(a_s)`` and within-seed item
variance ``var_w = Var(e)``. A design with ``S`` seeds and ``P`` items per seed estimates ``mu`` (the
mean of seed means) with ``SE = sqrt(var_b / S + var_w / (S * P))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _st

PerSeed = Mapping | Sequence
Z_975 = float(_st.norm.ppf(0.975))
Z_80 = float(_st.norm.ppf(0.80))


# --------------------------------------------------------------------------- input handling
def _by_seed(data: PerSeed) -> dict:
    if isinstance(data, Mapping):
        return {k: list(v) for k, v in data.items()}
    return {i: list(v) for i, v in enumerate(data)}


def _as_float(v) -> float:
    return math.nan if v is None else float(v)


def _pair(variant: PerSeed, baseline) -> tuple[list, list, int]:
    """Per-seed arrays of paired differences (missing pairs dropped), the seed keys, the dropped count.

    ``baseline`` may be a number: a constant reference (e.g. 0.5 for head-to-head verdicts)."""
    var = _by_seed(variant)
    if isinstance(baseline, (int, float)):
        base = {k: [float(baseline)] * len(v) for k, v in var.items()}
    else:
        base = _by_seed(baseline)
    seeds = [k for k in var if k in base]
    if not seeds:
        raise ValueError(f"variant seeds {sorted(var, key=str)} and baseline seeds {sorted(base, key=str)} share none")
    diffs, keys, dropped = [], [], 0
    for k in seeds:
        if len(var[k]) != len(base[k]):
            raise ValueError(f"seed {k!r}: {len(var[k])} variant items but {len(base[k])} baseline items")
        d = np.array([_as_float(a) for a in var[k]]) - np.array([_as_float(b) for b in base[k]])
        ok = np.isfinite(d)
        dropped += int((~ok).sum())
        if ok.any():
            diffs.append(d[ok])
            keys.append(k)
    return diffs, keys, dropped


def variance_components(diffs: Sequence[np.ndarray]) -> dict:
    """Method-of-moments ``var_w`` (pooled within-seed item variance, ddof 1) and ``var_b``
    (variance of seed means minus the part the items explain, floored at 0; 0 with one seed,
    where it cannot be estimated: ``var_b_estimable`` says so)."""
    within = [np.var(d, ddof=1) * (len(d) - 1) for d in diffs if len(d) > 1]
    dof = sum(len(d) - 1 for d in diffs if len(d) > 1)
    var_w = float(sum(within) / dof) if dof else 0.0
    means = np.array([d.mean() for d in diffs])
    n_bar = float(np.mean([len(d) for d in diffs]))
    if len(diffs) > 1:
        var_b = max(0.0, float(np.var(means, ddof=1)) - var_w / n_bar)
    else:
        var_b = 0.0
    return {"var_b": var_b, "var_w": var_w, "var_b_estimable": len(diffs) > 1}


# --------------------------------------------------------------------------- labelled spreads
def alpacaeval_se(values: Sequence) -> float | None:
    """AlpacaEval's standard error of a set's score: std (ddof 1) of the per-prompt values over
    sqrt(#prompts), missing values dropped. For a win rate the values are the verdicts (0, 0.5, 1,
    or ×100). Ignores seeds: it is the prompt-sampling error of one run."""
    v = np.array([_as_float(x) for x in values])
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None


def seed_spread(per_seed: PerSeed) -> float | None:
    """Seed spread: std (ddof 1) of the per-seed means (missing items dropped); None with < 2 seeds."""
    means = []
    for v in _by_seed(per_seed).values():
        a = np.array([_as_float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v])])
        a = a[np.isfinite(a)]
        if len(a):
            means.append(a.mean())
    return float(np.std(means, ddof=1)) if len(means) > 1 else None


# --------------------------------------------------------------------------- paired differences
def hierarchical_bootstrap(diffs: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean of seed means: resample seeds with replacement,
    then items with replacement within each drawn seed (a fresh item resample per draw). With one
    seed this is a plain bootstrap over items."""
    rng = np.random.default_rng(seed)
    S = len(diffs)
    seed_idx = rng.integers(0, S, size=(n_boot, S)) if S > 1 else np.zeros((n_boot, 1), dtype=int)
    # For every original seed, one item-resample mean per (replicate, slot); a slot uses the row of the
    # seed it drew, so each draw of a seed gets its own, independent item resample.
    item_means = np.stack([d[rng.integers(0, len(d), size=(n_boot, S, len(d)))].mean(axis=-1) for d in diffs])
    picked = item_means[seed_idx, np.arange(n_boot)[:, None], np.arange(S)[None, :]]
    return picked.mean(axis=1)


def paired_difference(
    variant: PerSeed, baseline, n_boot: int = 2000, seed: int = 0, level: float = 0.95, items: str = "prompts"
) -> dict:
    """Paired difference variant − baseline of a per-item metric, with a hierarchical-bootstrap interval.

    ``baseline`` is per-seed, per-item data like ``variant`` or a constant (e.g. 0.5 when the values
    are head-to-head verdicts of the variant against the baseline). ``items`` names the items in the
    method string ("prompts", "examples").

    Returns ``diff`` (mean of per-seed mean differences), ``ci`` [lo, hi] (percentile interval at
    ``level``), ``method``, ``n_seeds``, ``n_items`` (usable pairs per seed), ``n_dropped`` (pairs with
    a missing side), ``se_prompts`` (AlpacaEval-convention SE over all usable pairs, seeds pooled),
    ``seed_spread`` (std of per-seed mean differences; None with one seed), ``var_b``, ``var_w``,
    ``var_b_estimable`` (see ``variance_components``) and ``diffs`` (per-seed arrays, for ``decide``).
    """
    diffs, keys, dropped = _pair(variant, baseline)
    out = {"n_dropped": dropped, "seeds": keys, "n_seeds": len(diffs), "n_items": [len(d) for d in diffs]}
    if not diffs:
        out.update(
            diff=None,
            ci=None,
            method="no usable pairs",
            se_prompts=None,
            seed_spread=None,
            var_b=None,
            var_w=None,
            var_b_estimable=False,
            diffs=[],
        )
        return out
    if len(diffs) > 1:
        method = f"hierarchical bootstrap: seeds, then {items} within seed, B={n_boot}"
    else:
        method = f"bootstrap over {items} (1 seed: seed-to-seed variation not resampled), B={n_boot}"
    reps = hierarchical_bootstrap(diffs, n_boot=n_boot, seed=seed)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    seed_means = np.array([d.mean() for d in diffs])
    out.update(
        diff=float(seed_means.mean()),
        ci=[float(lo), float(hi)],
        method=method,
        se_prompts=alpacaeval_se(np.concatenate(diffs)),
        seed_spread=float(seed_means.std(ddof=1)) if len(diffs) > 1 else None,
        diffs=diffs,
        **variance_components(diffs),
    )
    return out


def per_run_difference(variant: PerSeed, baseline: PerSeed, level: float = 0.95) -> dict:
    """Paired difference of a per-run metric (one number per seed), t interval over seeds.

    Returns ``diff``, ``ci`` (None with < 2 seeds: no interval is possible), ``method``, ``n_seeds``,
    ``seed_spread`` (std of the per-seed differences) and ``n_dropped``."""

    def one_each(data):  # {seed: x} or [x per seed] -> {seed: [x]}
        items = data.items() if isinstance(data, Mapping) else enumerate(data)
        return {k: [v] for k, v in items}

    diffs, keys, dropped = _pair(
        one_each(variant), baseline if isinstance(baseline, (int, float)) else one_each(baseline)
    )
    d = np.array([x[0] for x in diffs])
    out = {"n_seeds": len(d), "seeds": keys, "n_dropped": dropped}
    if len(d) == 0:
        return {**out, "diff": None, "ci": None, "seed_spread": None, "method": "no usable seeds"}
    if len(d) == 1:
        return {
            **out,
            "diff": float(d[0]),
            "ci": None,
            "seed_spread": None,
            "method": "1 seed: no interval over seeds is possible",
        }
    sd = float(d.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, len(d) - 1)) * sd / np.sqrt(len(d))
    return {
        **out,
        "diff": float(d.mean()),
        "ci": [float(d.mean() - half), float(d.mean() + half)],
        "seed_spread": sd,
        "method": f"paired t interval over {len(d)} seeds ({len(d) - 1} df)",
    }


# --------------------------------------------------------------------------- design arithmetic
def design_se(var_b: float, var_w: float, seeds: int, prompts: float) -> float:
    """SE of the mean of seed means: sqrt(var_b / S + var_w / (S · P))."""
    return math.sqrt(var_b / seeds + var_w / (seeds * prompts))


def minimum_detectable_effect(var_b: float, var_w: float, seeds: int, prompts: float) -> float:
    """MDE at 80% power and a two-sided 5% level: (z_0.975 + z_0.8) · SE (normal approximation)."""
    return (Z_975 + Z_80) * design_se(var_b, var_w, seeds, prompts)


def design_for(target: float, var_b: float, var_w: float, min_seeds: int = 1, min_prompts: int = 1) -> tuple[int, int]:
    """(P prompts, S seeds) whose MDE is at most ``target``, never smaller than the current design.

    Needed: SE ≤ target / (z_0.975 + z_0.8) =: t. Rule: S is the smallest count ≥ ``min_seeds`` with
    var_b / S ≤ t² / 2 (the seed term spends at most half the variance budget), then
    P = ceil(var_w / (S · t² − var_b)), at least ``min_prompts`` (a design that needs more seeds keeps
    its prompts: "4 prompts × 77 seeds" for a 14-prompt sweep would read as advice to drop prompts)."""
    t2 = (target / (Z_975 + Z_80)) ** 2
    seeds = max(int(min_seeds), 1, math.ceil(2 * var_b / t2) if t2 > 0 else 1)
    room = seeds * t2 - var_b
    prompts = max(1, math.ceil(var_w / room)) if var_w > 0 else 1
    return max(prompts, int(min_prompts)), seeds


# --------------------------------------------------------------------------- the decision
def _fmt(x: float) -> str:
    return f"{x:+.3g}" if abs(x) < 1000 else f"{x:+.0f}"


def decide(
    variants: Mapping[str, PerSeed],
    baseline,
    metric: str,
    higher_is_better: bool = True,
    target: float = 5.0,
    unit: str = "points",
    n_boot: int = 2000,
    seed: int = 0,
    items: str = "prompts",
) -> dict:
    """The selection's one sentence, from paired intervals on the selection metric.

    ``variants`` maps a display name ("α=5") to per-seed, per-item values, paired with ``baseline``
    (same layout, or a constant) as in ``paired_difference``.

    Rule: a variant *beats* the baseline when its 95% hierarchical-bootstrap interval of the paired
    difference excludes 0 in the good direction (above 0 if ``higher_is_better``). Among those, the
    chosen one has the largest point difference in the good direction. The runner-up is the variant
    with the next-best point difference (among all variants); the margin chosen − runner-up is itself
    a paired difference with the same kind of interval, and ``runner_up_distinguishable`` says whether
    that interval excludes 0.

    If no variant beats the baseline, the sentence gives the design's minimum detectable effect
    (80% power, 5% level) from the variance components averaged over variants, at the current number
    of seeds S and mean items per seed P (``minimum_detectable_effect``), and the P × S that would
    detect ``target`` (``design_for``, keeping at least the current seeds and prompts). Variants whose interval
    excludes 0 in the bad direction are listed in ``worse`` and the sentence then says "no variant is
    distinguishably better" instead of "distinguishable".

    Returns ``statement``, ``chosen`` (name or None), ``rule``, ``results`` (name → paired_difference
    without the raw arrays), ``runner_up``, ``runner_up_margin`` ({diff, ci, method} or None),
    ``runner_up_distinguishable``, ``worse``, ``mde``, ``design`` ({prompts, seeds} for ``target``).
    """
    sign = 1.0 if higher_is_better else -1.0
    res = {name: paired_difference(v, baseline, n_boot=n_boot, seed=seed, items=items) for name, v in variants.items()}
    usable = {k: r for k, r in res.items() if r["diff"] is not None}
    better = [k for k, r in usable.items() if sign * r["ci"][0 if sign > 0 else 1] > 0]
    worse = [k for k, r in usable.items() if sign * r["ci"][1 if sign > 0 else 0] < 0]
    ranked = sorted(usable, key=lambda k: sign * usable[k]["diff"], reverse=True)
    rule = (
        "a variant beats the baseline when the 95% interval of its paired difference excludes 0 in the "
        f"{'upward' if sign > 0 else 'downward'} direction; among those, the largest difference is chosen"
    )
    out = {
        "rule": rule,
        "metric": metric,
        "worse": worse,
        "chosen": None,
        "runner_up": None,
        "runner_up_margin": None,
        "runner_up_distinguishable": None,
        "mde": None,
        "design": None,
        "results": {k: {kk: vv for kk, vv in r.items() if kk != "diffs"} for k, r in res.items()},
    }
    if better:
        chosen = max(better, key=lambda k: sign * usable[k]["diff"])
        r = usable[chosen]
        out["chosen"] = chosen
        out["statement"] = (
            f"{chosen} beats the baseline on {metric} by {_fmt(r['diff'])} "
            f"[{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}] ({r['method']})"
        )
        rest = [k for k in ranked if k != chosen]
        if rest:
            ru = rest[0]
            m = paired_difference(variants[chosen], variants[ru], n_boot=n_boot, seed=seed, items=items)
            out["runner_up"] = ru
            if m["diff"] is not None:
                out["runner_up_margin"] = {"diff": m["diff"], "ci": m["ci"], "method": m["method"]}
                out["runner_up_distinguishable"] = bool(m["ci"][0] > 0 or m["ci"][1] < 0)
        return out
    out["statement"], out["mde"], out["design"] = _no_winner(usable, metric, worse, target, unit, items)
    return out


def _no_winner(usable: dict, metric: str, worse: list, target: float, unit: str, items: str):
    what = "distinguishably better than" if worse else "distinguishable from"
    if not usable:
        return f"no variant is {what} the baseline at this size (no usable pairs on {metric})", None, None
    var_b = float(np.mean([r["var_b"] for r in usable.values()]))
    var_w = float(np.mean([r["var_w"] for r in usable.values()]))
    seeds = round(float(np.mean([r["n_seeds"] for r in usable.values()])))
    prompts = float(np.mean([np.mean(r["n_items"]) for r in usable.values()]))
    mde = minimum_detectable_effect(var_b, var_w, seeds, prompts)
    p, s = design_for(target, var_b, var_w, min_seeds=seeds, min_prompts=math.ceil(prompts))
    stmt = (
        f"no variant is {what} the baseline at this size; the smallest difference this design can detect "
        f"(80% power, 5% level) is {mde:.3g} {unit}; detecting {target:g} {unit} would take about "
        f"{p} {items} × {s} seeds"
    )
    if worse:
        stmt += f" ({', '.join(worse)}: worse than the baseline on {metric})"
    return stmt, mde, {"prompts": p, "seeds": s}
