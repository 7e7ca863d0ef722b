"""The aggregate stage of `neftune compare`: every number of the sweep table, read from files only.

`aggregate(sweep, cfg)` reads each run's summary.json, metrics.jsonl, config.yaml and eval/results.json
(through neftune.rundir) and returns the table written to compare.json: per-run values, mean and
t-interval over seeds per variant, the alpha selection and the data-size curve. It loads no model and
runs no judge, so it can be rerun (and extended with new statistics) on a finished sweep.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from . import paired, rundir
from .config import Config
from .decision import decide_variant, study_names
from .errors import ConfigError, NeftuneError

# metric key -> (label, where it comes from, path inside that file, better direction).
# "{set}" keys are expanded per eval set. `source` is "eval" (RUN/eval/results.json), "summary"
# (RUN/summary.json) or "metrics" (the last value in RUN/metrics.jsonl).
PER_SET = {
    "win_rate": ("win rate %", "eval", ["sets", "{set}", "judge", "win_rate"], "higher"),
    "lc_win_rate": ("LC win rate %", "eval", ["sets", "{set}", "judge", "lc_win_rate"], "higher"),
    "avg_chars": ("avg answer chars", "eval", ["sets", "{set}", "length", "chars_mean"], None),
    "diversity": ("diversity", "eval", ["sets", "{set}", "diversity", "diversity"], None),
}
PER_RUN = {
    "rouge_l": ("ROUGE-L to train answers", "eval", ["overfit", "rouge_l"], None),
    "bleu": ("BLEU to train answers", "eval", ["overfit", "bleu"], None),
    "heldout_loss": ("held-out loss", "eval", ["heldout_loss"], "lower"),
    "capability": ("capability accuracy", "eval", ["capability", "accuracy"], "higher"),
    "train_loss": ("final train loss", "summary", ["train_loss"], "lower"),
    "clean_loss": ("final clean loss", "metrics", ["clean_loss"], "lower"),
    "train_wall_time_s": ("train wall time s", "summary", ["wall_time_s"], None),
}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------- statistics
def seed_stats(values) -> dict:
    """Mean over seeds with a 95% t-interval half-width (None with fewer than 2 seeds)."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "se": None, "half_width": None}
    mean = sum(vals) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "se": None, "half_width": None}
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    se = std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "se": se, "half_width": float(t.ppf(0.975, n - 1)) * se}


def metric_keys(sets: list[str]) -> list[str]:
    return [f"{s}.{k}" for s in sets for k in PER_SET] + list(PER_RUN)


def metric_spec(key: str):
    """(label, source, path, direction) of a metric key such as `heldout.lc_win_rate`."""
    if "." in key:
        sname, k = key.rsplit(".", 1)
        label, src, path, better = PER_SET[k]
        return f"{label} ({sname})", src, [sname if p == "{set}" else p for p in path], better
    return PER_RUN[key]


def _dig(d, path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def run_values(run_dir: Path, sets: list[str]) -> dict:
    """Every table metric of one finished, evaluated run, read verbatim from its files."""
    res, summ = rundir.read_results(run_dir), rundir.read_summary(run_dir)
    clean = [r["clean_loss"] for r in rundir.read_metrics(run_dir) if isinstance(r.get("clean_loss"), (int, float))]
    src = {"eval": res, "summary": summ, "metrics": {"clean_loss": clean[-1] if clean else None}}
    return {k: _dig(src[metric_spec(k)[1]], metric_spec(k)[2]) for k in metric_keys(sets)}


# ----------------------------------------------------------------------------- variants
def variants_of(cfg: Config) -> list[dict]:
    """The baseline plus the configured variants, names checked (they become directory names)."""
    out = [{"name": "baseline", "neftune_noise_alpha": 0.0}]
    seen = {"baseline"}
    for v in cfg.compare.variants:
        name = str(v.get("name", ""))
        if not SAFE_NAME.match(name) or name in seen:
            raise ConfigError(
                f"compare.variants: name {name!r} must be unique, not 'baseline', and use only "
                "letters, digits, '.', '_', '-'"
            )
        seen.add(name)
        out.append(dict(v))
    if not cfg.compare.seeds:
        raise ConfigError("compare.seeds: need at least one seed")
    return out


def sweep_sets(cfg: Config) -> tuple[list[str], str]:
    """The eval set names of the table and the main one (selection, figures): heldout when evaluated."""
    from .evaluation.run import set_name

    sets = [set_name(s) for s in cfg.eval.sets]
    return sets, "heldout" if "heldout" in sets else (sets[0] if sets else "heldout")


def fractions_of(cfg: Config) -> list[float]:
    fractions = sorted({float(f) for f in cfg.compare.data_fractions if float(f) != 1.0})
    if any(not 0 < f < 1 for f in fractions):
        raise ConfigError(f"compare.data_fractions: fractions must be in (0, 1], got {cfg.compare.data_fractions}")
    return fractions


def variant_row(sweep: Path, variant: dict, seeds: list[int], sets: list[str], fraction=None) -> dict:
    """One table row: a variant's per-seed values (read from its run dirs) and their seed statistics."""
    runs = []
    for s in seeds:
        run = rundir.sweep_run_dir(sweep, rundir.run_name(variant["name"], s, fraction))
        if not rundir.is_finished(run) or not rundir.results_path(run).exists():
            raise NeftuneError(f"{run}: not trained and evaluated yet; run `neftune compare` with this sweep's config")
        runs.append(
            {
                "seed": s,
                "dir": str(run.relative_to(sweep)),
                "cfg": rundir.read_config(run),
                "n_train": rundir.read_summary(run).get("n_train"),
                "values": run_values(run, sets),
            }
        )
    rc, keys = runs[0]["cfg"], metric_keys(sets)
    return {
        "name": variant["name"],
        "alpha": rc.neftune_noise_alpha,
        "distribution": rc.neftune_distribution,
        "fraction": fraction or 1.0,
        "n_train": runs[0]["n_train"],
        "seeds": [r["seed"] for r in runs],
        "runs": [r["dir"] for r in runs],
        "metrics": {
            k: {"values": [r["values"][k] for r in runs], **seed_stats([r["values"][k] for r in runs])} for k in keys
        },
    }


def aggregate(sweep, cfg: Config, with_fractions: bool = True, n_boot: int = 2000) -> dict:
    """The sweep table (compare.json's content) from the run dirs' files. `with_fractions=False` stops
    after the decision (compare needs the chosen variant before it trains the data-size runs)."""
    sweep = Path(sweep)
    variants, seeds, fractions = variants_of(cfg), [int(s) for s in cfg.compare.seeds], fractions_of(cfg)
    sets, main_set = sweep_sets(cfg)
    rows = [variant_row(sweep, v, seeds, sets) for v in variants]
    runs = paired.Runs(sweep, rows)
    names = [r["name"] for r in rows[1:]]
    diffs = paired.paired_rows(runs, sets, main_set, names, n_boot=n_boot)
    for r in rows:
        r["paired"] = diffs.get(r["name"], {})
        r["clean_loss_by_epoch"] = paired.epoch_curve(runs, r["name"])
        r["capped_fraction"] = paired.capped(runs, r["name"], sets)
    selection = decide_variant(runs, rows, cfg, sets, main_set, n_boot=n_boot)
    study = study_names(selection, rows)
    frac_rows, curve = [], []
    if with_fractions and fractions and study:
        by_name = {v["name"]: v for v in variants}
        for f in fractions:
            fr = [variant_row(sweep, by_name[n], seeds, sets, f) for n in ["baseline", *study]]
            fdiffs = paired.paired_rows(paired.Runs(sweep, fr), sets, main_set, study, n_boot=n_boot)
            for r in fr:
                r["paired"] = fdiffs.get(r["name"], {})
            frac_rows += fr
        for r in frac_rows + [r for r in rows if r["name"] in study]:
            if r["name"] != "baseline":
                curve.append(
                    {"name": r["name"], "fraction": r["fraction"], "n_train": r["n_train"], "paired": r["paired"]}
                )
        curve.sort(key=lambda c: (c["name"], c["fraction"]))
    keys = metric_keys(sets)
    return {
        "sweep_dir": str(sweep),
        "sets": sets,
        "main_set": main_set,
        "seeds": seeds,
        "metrics": {
            k: {"label": metric_spec(k)[0], "source": metric_spec(k)[1], "better": metric_spec(k)[3]} for k in keys
        },
        "rows": rows,
        "fraction_rows": frac_rows,
        "data_study": study,
        "data_curve": curve,
        "selection": selection,
        "judge_notes": paired.judge_notes(runs, sets),
        "skipped_fractions": bool(fractions) and not study,
    }
