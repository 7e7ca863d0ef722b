"""The selection of `neftune compare`: one sentence that follows from paired intervals (neftune.stats.decide).

`compare.select_by` (a table metric name) picks the per-item metric the decision runs on, on the judge's
headline basis only (reference, else llm, else prompt-proxy): for lc_win_rate the length-adjusted verdicts
(paired.lc_adjusted: each run's mean is its LC win rate; without per-item answer lengths the raw metric
below, and the sentence says so); for win_rate the judge's continuous margin where the judge has one, else
its verdicts (win-rate points against 50); held-out per-example NLL for heldout_loss;
the step-paired clean loss of the last epoch for train_loss/clean_loss; and so on. When a sweep has no
per-item data for it (results written before the per-item contract), the per-run values are used, one
item per seed, and the sentence says so.
"""

from __future__ import annotations

from . import paired, stats

# select_by -> item metric key ("{main}" = the main eval set)
SELECT_ITEMS = {
    "heldout_loss": "heldout_nll",
    "avg_chars": "{main}.chars",
    "diversity": "{main}.diversity",
    "rouge_l": "overlap_rouge_l",
    "bleu": "overlap_bleu",
    "capability": "capability",
    "train_loss": "clean_loss_last_epoch",
    "clean_loss": "clean_loss_last_epoch",
}
# a bootstrap over fewer seeds than this, one value each, spans only the observed values: no honest interval
MIN_SEEDS_PER_RUN = 3
UNITS = {"heldout_nll": "nats", "clean_loss_last_epoch": "nats", "overlap_bleu": "BLEU points"}


def _candidates(select_by: str, runs: paired.Runs, main: str) -> list[str]:
    bases = runs.judge_bases(main)
    raw = [f"{main}.{k}.{b}" for b in bases for k in ("margin", "win_rate")]
    if select_by == "lc_win_rate":  # length-adjusted verdicts; raw only when no run has answer lengths
        return [f"{main}.lc_win_rate.{b}" for b in bases] + raw
    if select_by == "win_rate":
        return raw
    return [SELECT_ITEMS[select_by].format(main=main)] if select_by in SELECT_ITEMS else []


# select_by lc_win_rate decided on a raw judge metric: said in the statement, with the reason
NOT_LC = (
    "Decided on the raw judge {what}, not length-controlled: select_by is lc_win_rate, but the runs' results "
    "have no per-item answer lengths (sets.{main}.items.chars) to adjust the verdicts by."
)


def _unit(key: str) -> str:
    if ".win_rate." in key or ".lc_win_rate." in key:
        return "points"
    return UNITS.get(key) or (
        "similarity"
        if ".margin." in key
        else "tokens"
        if key.endswith("tokens")
        else "chars"
        if key.endswith("chars")
        else "(metric units)"
    )


def selection_data(runs: paired.Runs, rows: list[dict], cfg, sets: list[str], main: str):
    """(key, spec, arrays, baseline) of the first candidate with data; per-run fallback; None if nothing."""
    names = [r["name"] for r in rows[1:]]
    specs = paired.item_specs(runs, sets)
    for key in _candidates(cfg.compare.select_by, runs, main):
        if key in specs:
            arr = paired.arrays(runs, specs[key], names)
            if arr is not None:
                base = specs[key]["const"] if specs[key]["const"] is not None else arr["baseline"]
                return key, specs[key], arr, base
    from .aggregate import PER_RUN, metric_spec  # (aggregate imports this module)

    for sel in (cfg.compare.select_by, "heldout_loss"):  # per-run values, one per seed
        tkey = sel if sel in PER_RUN else f"{main}.{sel}"
        arr = {
            r["name"]: {s: [v] for s, v in zip(r["seeds"], r["metrics"].get(tkey, {}).get("values", []))} for r in rows
        }
        if any(v[0] is not None for n in names for v in arr[n].values()):
            base = 50.0 if "win_rate" in tkey else arr["baseline"]
            spec = {
                "label": f"{tkey} (per run: one value per seed, no per-item data)",
                "items": "runs",
                "better": metric_spec(tkey)[3],
                "target": 5.0 if "win_rate" in tkey else 0.05,
            }
            return tkey, spec, arr, base
    return None


def decide_variant(runs: paired.Runs, rows: list[dict], cfg, sets: list[str], main: str, n_boot: int = 2000) -> dict:
    """compare.json["selection"]: `statement` (one of the two forms, plus the runner-up margin judged by the
    same kind of interval), `chosen` (a variant name or None) and the numbers behind them."""
    by = {r["name"]: r for r in rows}
    data = selection_data(runs, rows, cfg, sets, main)
    if data is None:
        return {"chosen": None, "statement": "no variant has a value to select on", "metric": None, "results": {}}
    key, spec, arr, base = data
    higher = (spec["better"] or "higher") == "higher"
    variants = {
        n: arr[n] for n in by if n != "baseline" and any(v is not None for vs in arr.get(n, {}).values() for v in vs)
    }
    n_seeds = len(cfg.compare.seeds)
    if spec["items"] == "runs" and n_seeds < MIN_SEEDS_PER_RUN:
        return _too_few(variants, base, spec, key, n_seeds, higher, cfg.compare.select_by)
    d = stats.decide(
        variants,
        base,
        metric=spec["label"],
        higher_is_better=higher,
        target=spec["target"],
        unit=_unit(key),
        n_boot=n_boot,
        items=spec["items"],
    )
    sign = 1.0 if higher else -1.0
    ranked = sorted(
        (n for n, r in d["results"].items() if r["diff"] is not None),
        key=lambda n: sign * d["results"][n]["diff"],
        reverse=True,
    )
    out = {k: d[k] for k in ("chosen", "rule", "worse", "mde", "design")}
    out.update(
        statement=d["statement"] + ".",
        metric=spec["label"],
        metric_key=key,
        select_by=cfg.compare.select_by,
        better="higher" if higher else "lower",
        ranked=ranked,
        results={
            n: {k: r[k] for k in ("diff", "ci", "method", "n_seeds", "n_items", "n_dropped")}
            for n, r in d["results"].items()
        },
    )
    out["length_controlled"] = ".lc_win_rate." in key or key.endswith("lc_win_rate")
    if cfg.compare.select_by == "lc_win_rate" and (".margin." in key or ".win_rate." in key):
        what = "margin" if ".margin." in key else "verdicts (win rate)"
        out["statement"] += " " + NOT_LC.format(what=what, main=main)
    if out["chosen"]:
        out.update(alpha=by[out["chosen"]]["alpha"], distribution=by[out["chosen"]]["distribution"])
    out.update(_runner_up(variants, ranked, n_boot, spec["items"], out["chosen"]))
    if out.get("runner_up_sentence"):
        out["statement"] += " " + out["runner_up_sentence"]
    return out


def _too_few(variants: dict, base, spec: dict, key: str, n_seeds: int, higher: bool, select_by: str) -> dict:
    """Per-run data only, and too few seeds for an interval: no claim, and the point ranking for the data study."""
    diff = {
        n: stats.per_run_difference(
            {s: v[0] for s, v in m.items()}, base if isinstance(base, float) else {s: v[0] for s, v in base.items()}
        )["diff"]
        for n, m in variants.items()
    }
    ranked = sorted(
        (n for n in diff if diff[n] is not None), key=lambda n: diff[n] * (1 if higher else -1), reverse=True
    )
    stmt = (
        f"no variant is distinguishable from the baseline at this size: {spec['label']} has one value per run "
        f"and {n_seeds} seed(s), too few for an interval (at least {MIN_SEEDS_PER_RUN} needed), so the smallest "
        "difference this design can detect cannot be estimated."
    )
    return {
        "chosen": None,
        "statement": stmt,
        "metric": spec["label"],
        "metric_key": key,
        "rule": "no interval",
        "select_by": select_by,
        "length_controlled": key.endswith("lc_win_rate"),
        "better": "higher" if higher else "lower",
        "ranked": ranked,
        "worse": [],
        "mde": None,
        "design": None,
        "results": {n: {"diff": d, "ci": None, "method": "no interval: too few seeds"} for n, d in diff.items()},
        "runner_up": None,
        "runner_up_margin": None,
        "runner_up_distinguishable": None,
    }


def _runner_up(variants: dict, ranked: list[str], n_boot: int, items: str, chosen: str | None = None) -> dict:
    """The margin best − runner-up, a paired difference with the same interval. "Best" is the chosen
    variant when there is one (not necessarily the largest point difference: that one's interval may
    include 0), else the best point estimate, named as such since it beat nothing."""
    if len(ranked) < 2:
        return {
            "runner_up": None,
            "runner_up_margin": None,
            "runner_up_distinguishable": None,
            "runner_up_sentence": "Only one variant has data: there is no runner-up.",
        }
    top = chosen or ranked[0]
    ru = next(n for n in ranked if n != top)
    m = stats.paired_difference(variants[top], variants[ru], n_boot=n_boot, items=items)
    if m["diff"] is None:
        return {
            "runner_up": ru,
            "runner_up_margin": None,
            "runner_up_distinguishable": None,
            "runner_up_sentence": None,
        }
    dist = bool(m["ci"][0] > 0 or m["ci"][1] < 0)
    lead = "Runner-up" if chosen else f"Best point estimate {top}, runner-up"
    text = f"{lead} {ru}: {top} − {ru} = {m['diff']:+.3g} [{m['ci'][0]:+.3g}, {m['ci'][1]:+.3g}] ({m['method']}); " + (
        "the interval excludes 0, so the two are distinguishable."
        if dist
        else "the interval includes 0, so the two are not distinguishable."
    )
    return {
        "runner_up": ru,
        "runner_up_margin": {"diff": m["diff"], "ci": m["ci"], "method": m["method"]},
        "runner_up_distinguishable": dist,
        "runner_up_sentence": text,
    }


def study_names(selection: dict, rows: list[dict]) -> list[str]:
    """The variants of the data-size study: the chosen one (or, when none is distinguishable, the best
    noise variant by point difference) and the best regularizer baseline (alpha 0) by the same metric."""
    by = {r["name"]: r for r in rows}
    ranked = [n for n in selection.get("ranked", []) if n in by]
    first = selection.get("chosen") or next((n for n in ranked if by[n]["alpha"] > 0), None)
    reg = next((n for n in ranked if by[n]["alpha"] == 0), None)
    return [n for n in dict.fromkeys([first, reg]) if n]
