"""Paired differences variant − baseline for the sweep table (compare.json rows' ``paired``).

Reads each run's per-item lists (RUN/eval/results.json, docs: the per-item results contract) and its
metrics.jsonl through neftune.rundir, pairs a variant with the baseline of the same seed, item by item
*by id* (never by position: every arm is laid out on the sorted union of ids, a missing side is None and
neftune.stats drops and counts the pair), and hands the arrays to neftune.stats. Every result carries
the ``method`` string of its interval, i.e. what it resamples.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import rundir, stats
from .errors import DataError

BASES = ("reference", "llm", "prompt-proxy")
# item metric -> (label, where the items live, value field, better direction, item noun, decision target).
# "{set}" is expanded per eval set. Paths are inside RUN/eval/results.json.
RUN_ITEMS = {
    "heldout_nll": ("held-out loss (per-example NLL)", ["heldout", "items"], "nll", "lower", "examples", 0.05),
    "train_clean_nll": (
        "clean train loss (trained examples, per-example NLL)",
        ["train_clean", "items"],
        "nll",
        "lower",
        "examples",
        0.05,
    ),
    "overlap_rouge_l": ("ROUGE-L to trained answers", ["overfit", "items"], "rouge_l", None, "prompts", 0.02),
    "overlap_bleu": ("BLEU to trained answers", ["overfit", "items"], "bleu", None, "prompts", 1.0),
    "capability": (
        "capability accuracy (fraction correct)",
        ["capability", "items"],
        "correct",
        "higher",
        "questions",
        0.05,
    ),
    "exact_accuracy": (
        "exact-answer accuracy (fraction correct)",
        ["exact", "items"],
        "correct",
        "higher",
        "questions",
        0.05,
    ),
    "exact_tokens": ("exact-answer length (tokens)", ["exact", "items"], "tokens", None, "questions", 5.0),
}
SET_ITEMS = {
    "tokens": ("answer length (tokens)", ["sets", "{set}", "items"], "tokens", None, "prompts", 10.0),
    "chars": ("answer length (chars)", ["sets", "{set}", "items"], "chars", None, "prompts", 50.0),
    "diversity": ("per-answer diversity", ["sets", "{set}", "items"], "diversity", None, "prompts", 0.05),
}
# judge rows: one per basis; the baseline side is a constant (the verdict is already head-to-head)
JUDGE_ITEMS = {
    "win_rate": ("win rate − 50 (points)", "verdict", "higher", 50.0, 5.0),
    "margin": ("judge margin (similarity, variant − baseline)", "margin", "higher", 0.0, 0.05),
}
LC_LABEL = "LC win rate − 50 (points; {set}, {basis} verdicts length-adjusted by each run's LC fit, held fixed)"


# ----------------------------------------------------------------------------- reading
def _dig(d, path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def item_map(res: dict, path: list, field: str, basis: str | None = None, where="a run's results") -> dict | None:
    """{id: value} of one per-item list (None when the run has no such items). A repeated id is a
    DataError naming `where` (the results file): keeping one of its values would pair the wrong items."""
    items = _dig(res, path)
    if not isinstance(items, dict) or not isinstance(items.get("id"), list) or field not in items:
        return None
    first: dict = {}
    for i, k in enumerate(map(str, items["id"])):
        if k in first:
            raise DataError(
                where,
                None,
                "duplicate_id",
                f"id {k!r} appears twice in {'.'.join(path)} (items {first[k]} and {i}); ids must be unique",
            )
        first[k] = i
    vals = items[field]
    keep = items.get("basis") if basis is not None else None
    out = {}
    for i, (k, v) in enumerate(zip(items["id"], vals)):
        if keep is not None and (i >= len(keep) or keep[i] != basis):
            continue
        out[str(k)] = None if v is None else _num(v)
    return out


def lc_adjusted(verdicts: dict | None, len_a: dict | None, len_b: dict | None) -> dict | None:
    """{id: length-adjusted verdict} of one run: the verdict minus what the run's LC fit (neftune.evaluation.
    winrate, the same GLM and sigma as its lc_win_rate) attributes to the item's length difference,
    y - (sigmoid(b0 + phi*x) - sigmoid(b0)). b0 is unpenalised, so the mean over the fitted items is exactly
    sigmoid(b0), the run's LC win rate: a per-item score the paired bootstrap can resample. The fit is not
    redone per resample, so the interval leaves out the uncertainty of phi. None per item without a
    verdict or either answer length (and for every item when a side has no lengths at all)."""
    if verdicts is None:
        return None
    if not len_a or not len_b:
        return {k: None for k in verdicts}
    import numpy as np

    from .evaluation.winrate import _sigmoid, fit_length_controlled, length_feature

    # sorted: the fit's float sums must not depend on the order a results file lists its items in
    ids = sorted(
        k for k, v in verdicts.items() if v is not None and len_a.get(k) is not None and len_b.get(k) is not None
    )
    out = dict.fromkeys(verdicts)
    if not ids:
        return out
    y = np.array([verdicts[k] for k in ids])
    x = length_feature(np.array([float(len_a[k] - len_b[k]) for k in ids]))
    if x is not None:
        b0, phi = fit_length_controlled(y[None, :], x[None, :])[0]
        y = y - (_sigmoid(b0 + phi * x) - _sigmoid(b0))
    out.update(zip(ids, map(float, y)))
    return out


def epoch_clean_losses(metrics: list[dict]) -> dict:
    """{epoch number: {step: clean_loss}} from metrics.jsonl (epoch number = ceil(fractional epoch), ≥ 1;
    records without `epoch` count as epoch 1)."""
    out: dict = {}
    for r in metrics:
        loss, step = _num(r.get("clean_loss")), r.get("step")
        if loss is None or step is None:
            continue
        ep = max(1, math.ceil(_num(r.get("epoch")) or 1))
        out.setdefault(ep, {})[str(step)] = loss
    return out


class Runs:
    """Every run of a table (rows as aggregate.variant_row builds them), each file read once."""

    def __init__(self, sweep: Path, rows: list[dict]):
        self.sweep, self.rows = Path(sweep), {r["name"]: r for r in rows}
        self.res = {
            (r["name"], s): rundir.read_results(self.sweep / d) for r in rows for s, d in zip(r["seeds"], r["runs"])
        }
        self.clean = {
            (r["name"], s): epoch_clean_losses(rundir.read_metrics(self.sweep / d))
            for r in rows
            for s, d in zip(r["seeds"], r["runs"])
        }

    def maps(self, name: str, path: list, field: str, basis: str | None = None) -> dict:
        return {
            s: item_map(self.res[(name, s)], path, field, basis, where=rundir.results_path(self.sweep / d))
            for s, d in zip(self.rows[name]["seeds"], self.rows[name]["runs"])
        }

    def lc_maps(self, name: str, set_name: str, basis: str) -> dict:
        """{seed: {id: length-adjusted verdict}}: the verdicts of `basis`, the lengths of this run's and the
        same-seed baseline's answers (their results.json, sets.<set>.items.chars)."""
        verdicts = self.maps(name, ["sets", set_name, "judge", "items"], "verdict", basis)
        mine = self.maps(name, ["sets", set_name, "items"], "chars")
        base = self.maps("baseline", ["sets", set_name, "items"], "chars") if "baseline" in self.rows else {}
        return {s: lc_adjusted(verdicts[s], mine[s], base.get(s)) for s in verdicts}

    def last_epoch(self) -> int | None:
        eps = [max(c) for (n, _), c in self.clean.items() if n == "baseline" and c]
        return min(eps) if eps else None

    def judge_bases(self, set_name: str) -> list[str]:
        found = {
            b
            for res in self.res.values()
            for b in (_dig(res, ["sets", set_name, "judge", "items", "basis"]) or [])
            if b
        }
        return [b for b in BASES if b in found] + sorted(found - set(BASES))


def align(per_name: dict) -> dict:
    """{name: {seed: {id: v}}} -> {name: {seed: [v]}} laid out on each seed's sorted union of ids."""
    seeds = {s for m in per_name.values() for s in m}
    out = {n: {} for n in per_name}
    for s in seeds:
        ids = sorted({k for m in per_name.values() for k in (m.get(s) or {})})
        for n, m in per_name.items():
            if s in m:
                out[n][s] = [(m[s] or {}).get(k) for k in ids]
    return out


# ----------------------------------------------------------------------------- the metrics
def item_specs(runs: Runs, sets: list[str]) -> dict:
    """Every per-item metric with data in this sweep: key -> spec dict (loader + labels)."""
    specs = {}
    for k, (label, path, field, better, noun, target) in RUN_ITEMS.items():
        specs[k] = {
            "label": label,
            "better": better,
            "items": noun,
            "target": target,
            "load": (lambda n, p=path, f=field: runs.maps(n, p, f)),
            "const": None,
        }
    for s in sets:
        for k, (label, path, field, better, noun, target) in SET_ITEMS.items():
            p = [s if x == "{set}" else x for x in path]
            specs[f"{s}.{k}"] = {
                "label": f"{label} ({s})",
                "better": better,
                "items": noun,
                "target": target,
                "load": (lambda n, p=p, f=field: runs.maps(n, p, f)),
                "const": None,
            }
        for b in runs.judge_bases(s):
            for k, (label, field, better, const, target) in JUDGE_ITEMS.items():
                scale = 100.0 if field == "verdict" else 1.0
                specs[f"{s}.{k}.{b}"] = {
                    "label": f"{label} ({s}, {b} verdicts)",
                    "better": better,
                    "items": "prompts",
                    "target": target,
                    "const": const,
                    "scale": scale,
                    "load": (lambda n, s=s, f=field, b=b: runs.maps(n, ["sets", s, "judge", "items"], f, b)),
                }
            specs[f"{s}.lc_win_rate.{b}"] = {
                "label": LC_LABEL.format(set=s, basis=b),
                "better": "higher",
                "items": "prompts",
                "target": 5.0,
                "const": 50.0,
                "scale": 100.0,
                "load": (lambda n, s=s, b=b: runs.lc_maps(n, s, b)),
            }
    last = runs.last_epoch()
    if last is not None:
        specs["clean_loss_last_epoch"] = {
            "label": f"clean training loss, last epoch (epoch {last}; paired by step)",
            "better": "lower",
            "items": "steps",
            "target": 0.05,
            "const": None,
            "load": (lambda n: {s: runs.clean[(n, s)].get(last) for s in runs.rows[n]["seeds"]}),
        }
    return specs


def arrays(runs: Runs, spec: dict, names: list[str]) -> dict | None:
    """{name: {seed: [v]}} for baseline + names, aligned by id; None when no variant has data."""
    loaded = {n: spec["load"](n) for n in ({"baseline", *names} if spec["const"] is None else set(names))}
    if not any(v is not None for n in names for m in loaded[n].values() for v in (m or {}).values()):
        return None  # e.g. an LLM judge's margins: all null
    scale = spec.get("scale", 1.0)
    out = align(loaded)
    return {n: {s: [None if v is None else v * scale for v in vs] for s, vs in m.items()} for n, m in out.items()}


def verdict_word(diff, ci, better) -> str:
    """What the interval supports: resolved (which way) or not."""
    if ci is None or diff is None:
        return "no interval"
    if ci[0] <= 0 <= ci[1]:
        return "not resolved (interval includes 0)"
    up = ci[0] > 0
    how = "higher" if up else "lower"
    if better:
        how += ", better" if (better == "higher") == up else ", worse"
    return f"resolved: {how}"


def _clean(r: dict, spec: dict) -> dict:
    keep = ("diff", "ci", "method", "n_seeds", "n_items", "n_dropped", "se_prompts", "seed_spread")
    out = {k: r.get(k) for k in keep}
    out.update(
        label=spec["label"], better=spec["better"], resolved=verdict_word(r.get("diff"), r.get("ci"), spec["better"])
    )
    if "se_prompts" in r:
        out["se_label"] = f"AlpacaEval-convention SE over {spec['items']} (paired differences, seeds pooled)"
    out["seed_spread_label"] = "seed spread: std over seeds of the per-seed mean difference"
    return out


def per_run_series(runs: Runs, name: str, set_name: str) -> dict:
    """Per-run numbers: final clean train loss and the headline LC win rate (per seed)."""
    out = {}
    for s in runs.rows[name]["seeds"]:
        clean = runs.clean[(name, s)]
        last = [clean[e][k] for e in sorted(clean)[-1:] for k in sorted(clean[e], key=lambda x: float(x))[-1:]]
        out.setdefault("final_clean_loss", {})[s] = last[0] if last else None
        out.setdefault("lc_win_rate", {})[s] = _num(
            _dig(runs.res[(name, s)], ["sets", set_name, "judge", "lc_win_rate"])
        )
    return out


def paired_rows(runs: Runs, sets: list[str], main_set: str, names: list[str], n_boot: int = 2000) -> dict:
    """{variant name: {metric key: paired difference to the baseline}} for every metric with data."""
    specs = item_specs(runs, sets)
    out: dict = {n: {} for n in names}
    for key, spec in specs.items():
        arr = arrays(runs, spec, names)
        if arr is None:
            continue
        base = spec["const"] if spec["const"] is not None else arr["baseline"]
        for n in names:
            if any(v is not None for vs in arr[n].values() for v in vs):
                r = stats.paired_difference(arr[n], base, n_boot=n_boot, items=spec["items"])
                out[n][key] = _clean(r, spec)
    base_run = per_run_series(runs, "baseline", main_set)
    for n in names:
        mine = per_run_series(runs, n, main_set)
        spec = {"label": "final clean train loss (per run)", "better": "lower"}
        if any(v is not None for v in mine["final_clean_loss"].values()):
            out[n]["final_clean_loss"] = _clean(
                stats.per_run_difference(mine["final_clean_loss"], base_run["final_clean_loss"]), spec
            )
        if any(v is not None for v in mine["lc_win_rate"].values()):
            r = stats.per_run_difference(mine["lc_win_rate"], 50.0)
            r["method"] = "per-run LC fits (headline basis) − 50; " + r["method"] + " (prompts not resampled)"
            out[n]["lc_win_rate"] = _clean(r, {"label": f"LC win rate − 50 (points, {main_set})", "better": "higher"})
    return out


def epoch_curve(runs: Runs, name: str) -> dict:
    """{epoch: mean over seeds of the per-run mean clean loss in that epoch} (JSON keys are strings)."""
    per: dict = {}
    for s in runs.rows[name]["seeds"]:
        for ep, steps in runs.clean[(name, s)].items():
            per.setdefault(ep, []).append(sum(steps.values()) / len(steps))
    return {str(ep): sum(v) / len(v) for ep, v in sorted(per.items())}


def capped(runs: Runs, name: str, sets: list[str]) -> dict:
    """Capped-answer fraction per run (seed): {set, 'trained prompts' (the overlap probe) or 'exact': [per seed]}."""
    seeds = runs.rows[name]["seeds"]
    out = {s: [_num(_dig(runs.res[(name, x)], ["sets", s, "capped_fraction"])) for x in seeds] for s in sets}
    out["trained prompts"] = [_num(_dig(runs.res[(name, x)], ["overfit", "capped_fraction"])) for x in seeds]
    out["exact"] = [_num(_dig(runs.res[(name, x)], ["exact", "capped_fraction"])) for x in seeds]
    return {k: v for k, v in out.items() if any(x is not None for x in v)}


def judge_notes(runs: Runs, sets: list[str]) -> dict:
    """Per set, what the judge actually produced: verdict counts per basis, verdicts without a basis,
    and the runs whose LC fit AlpacaEval's rule flags as unstable (with the warning)."""
    out = {}
    for s in sets:
        bases: dict = {}
        no_basis, unstable, judges = 0, [], set()
        for (name, seed), res in runs.res.items():
            j = _dig(res, ["sets", s, "judge"])
            if not isinstance(j, dict):
                continue
            judges.add(str(j.get("judge")))
            for b in _dig(j, ["items", "basis"]) or []:
                bases[b or "none"] = bases.get(b or "none", 0) + 1
            no_basis += int(j.get("no_basis") or 0)
            if j.get("lc_unstable"):
                unstable.append({"run": f"{name}-seed{seed}", "warning": j.get("lc_warning")})
        if judges:
            out[s] = {
                "judge": sorted(judges),
                "verdicts_by_basis": bases,
                "no_basis": no_basis,
                "lc_unstable": unstable,
            }
    return out
