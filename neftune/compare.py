"""`neftune compare`: baseline (alpha=0) vs NEFTune variants, seeds x variants, evaluated, reported.

    sweep_dir/
      config.yaml                      the resolved sweep config
      runs/baseline-seed{S}/           one `neftune train` run dir each (+ eval/ inside)
      runs/{variant}-seed{S}/
      runs/{name}-frac{F}-seed{S}/     data-size study (baseline + the chosen variant)
      compare.json                     the aggregated table (per-run numbers + mean/interval over seeds)
      report/index.html, report.md, *.png

Every step is idempotent so an interrupted sweep resumes by rerunning the same command: a run with
summary.json is reused, a run with checkpoints resumes from the latest one, an eval is reused when
its results.json is newer than the run and was made with the same eval settings and baseline.
Every variant is judged against the baseline of the *same seed* (same data order, same init), so
seed-to-seed noise cancels in the pairwise comparison as much as it can.
"""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path
from typing import Optional

import yaml

from .config import Config, _apply, from_dict, save_config, to_dict, validate
from .errors import ConfigError, NeftuneError
from .tracking import read_metrics

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
    res = _load_json(run_dir / "eval" / "results.json")
    summ = _load_json(run_dir / "summary.json")
    clean = [r["clean_loss"] for r in read_metrics(run_dir) if isinstance(r.get("clean_loss"), (int, float))]
    src = {"eval": res, "summary": summ, "metrics": {"clean_loss": clean[-1] if clean else None}}
    return {k: _dig(src[metric_spec(k)[1]], metric_spec(k)[2]) for k in metric_keys(sets)}


def _load_json(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


# ----------------------------------------------------------------------------- run configs
def variants_of(cfg: Config) -> list[dict]:
    """The baseline plus the configured variants, names checked (they become directory names)."""
    out = [{"name": "baseline", "neftune_noise_alpha": 0.0}]
    seen = {"baseline"}
    for v in cfg.compare.variants:
        name = str(v.get("name", ""))
        if not SAFE_NAME.match(name) or name in seen:
            raise ConfigError(f"compare.variants: name {name!r} must be unique, not 'baseline', and use only "
                              "letters, digits, '.', '_', '-'")
        seen.add(name)
        out.append(dict(v))
    if not cfg.compare.seeds:
        raise ConfigError("compare.seeds: need at least one seed")
    return out


def run_name(name: str, seed: int, fraction: Optional[float] = None) -> str:
    return f"{name}-frac{fraction:g}-seed{seed}" if fraction is not None else f"{name}-seed{seed}"


def run_config(cfg: Config, variant: dict, seed: int, out_dir: Path, n_train: Optional[int] = None,
               fraction: Optional[float] = None) -> Config:
    """The sweep config + the variant's overrides, this seed, this dir (and the data fraction)."""
    rc = copy.deepcopy(cfg)
    _apply(rc, {k: v for k, v in variant.items() if k != "name"}, f"compare.variants[{variant['name']}]")
    rc.seed = int(seed)
    rc.output_dir = str(out_dir)
    rc.resume_from_checkpoint = None
    if fraction is not None:
        rc.data.num_train_samples = max(1, round(fraction * n_train))
        if rc.max_steps > 0:  # same number of epochs at every data size
            rc.max_steps = max(1, round(rc.max_steps * fraction))
    validate(rc)
    return rc


def _training_part(cfg: Config) -> dict:
    """The config keys that define what a run *trains* (eval/compare settings and paths excluded)."""
    d = to_dict(cfg)
    for k in ("output_dir", "resume_from_checkpoint", "eval", "compare", "report_to", "save_steps", "save_total_limit"):
        d.pop(k, None)
    return d


def _check_same_training(rc: Config, run_dir: Path):
    """A reused/resumed run must have been trained with this config, or the sweep would mix settings."""
    p = run_dir / "config.yaml"
    if not p.exists():
        return
    old = _training_part(from_dict(yaml.safe_load(p.read_text(encoding="utf-8"))))
    new = _training_part(rc)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise NeftuneError(f"{run_dir} was trained with a different config ({', '.join(diff)} differ); "
                           "use a new output_dir or delete that run dir to retrain it")


# ----------------------------------------------------------------------------- the sweep
class _Progress:
    def __init__(self, total: int):
        self.i, self.total = 0, total

    def __call__(self, what: str, name: str, note: str = ""):
        self.i += 1
        print(f"[compare] {self.i}/{self.total} {what} {name}{' ' + note if note else ''}", flush=True)


def train_run(rc: Config, prog: _Progress, name: str) -> dict:
    """Train (or reuse / resume) one run; returns its summary.json."""
    from .train import list_checkpoints, train

    run_dir = Path(rc.output_dir)
    _check_same_training(rc, run_dir)
    if (run_dir / "summary.json").exists():
        prog("train", name, "reused (finished: summary.json)")
        return _load_json(run_dir / "summary.json")
    if (run_dir / "eval").exists():
        # Its answers (and their generation cache) belong to the weights about to be replaced.
        shutil.rmtree(run_dir / "eval")
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        rc = copy.deepcopy(rc)
        rc.resume_from_checkpoint = "latest"
    prog("train", name, f"(alpha={rc.neftune_noise_alpha:g} {rc.neftune_distribution}, seed {rc.seed}"
         + (f", resuming from {ckpts[-1].name}" if ckpts else "") + ")")
    return train(rc)


def eval_is_current(rc: Config, run_dir: Path, against: Optional[Path]) -> bool:
    res_p, cfg_p = run_dir / "eval" / "results.json", run_dir / "eval" / "config.yaml"
    if not (res_p.exists() and cfg_p.exists()):
        return False
    # evaluate() writes config.yaml first and results.json last: an eval interrupted after a settings
    # change leaves a new config.yaml beside an old results.json, caught by the mtime order.
    newer_than = [cfg_p, run_dir / "summary.json"] + ([against / "summary.json"] if against else [])
    if any(p.exists() and res_p.stat().st_mtime < p.stat().st_mtime for p in newer_than):
        return False  # the run or its baseline was (re)trained after this eval
    saved = from_dict(yaml.safe_load(cfg_p.read_text(encoding="utf-8")))
    res = _load_json(res_p)
    return saved.eval == rc.eval and res.get("against") == (str(against) if against else None)


def eval_run(rc: Config, prog: _Progress, name: str, against: Optional[Path]) -> dict:
    from .evaluation.run import evaluate

    run_dir = Path(rc.output_dir)
    if eval_is_current(rc, run_dir, against):
        prog("eval", name, "reused (eval/results.json, same eval settings)")
        return _load_json(run_dir / "eval" / "results.json")
    prog("eval", name, f"against {against.name}" if against else "(reference: no judge)")
    return evaluate(rc, str(run_dir), against=str(against) if against else None)


def _row(variant: dict, rc: Config, fraction: float, runs: list[dict], keys: list[str]) -> dict:
    return {"name": variant["name"], "alpha": rc.neftune_noise_alpha, "distribution": rc.neftune_distribution,
            "fraction": fraction, "n_train": runs[0]["n_train"] if runs else None,
            "seeds": [r["seed"] for r in runs], "runs": [r["dir"] for r in runs],
            "metrics": {k: {"values": [r["values"][k] for r in runs], **seed_stats([r["values"][k] for r in runs])}
                        for k in keys}}


def select_variant(rows: list[dict], select_by: str, tie_break: str, main_set: str) -> dict:
    """The stated rule: best mean of `select_by` over seeds; variants within the larger of the two
    seed standard errors of the best count as tied and the lower/higher `tie_break` mean wins."""
    def key(m):
        return m if m in PER_RUN else f"{main_set}.{m}"

    def direction(m):
        return metric_spec(key(m))[3] or "higher"

    cands = [r for r in rows if r["name"] != "baseline" and r["metrics"][key(select_by)]["mean"] is not None]
    rule = select_by
    if not cands:  # e.g. eval.judge=none: no win rates, select on what was measured
        rule = "heldout_loss"
        cands = [r for r in rows if r["name"] != "baseline" and r["metrics"]["heldout_loss"]["mean"] is not None]
    if not cands:
        return {"chosen": None, "rule": rule, "statement": "no variant has a value to select on"}
    sign = 1.0 if direction(rule) == "higher" else -1.0
    m = lambda r, k=rule: r["metrics"][key(k)]  # noqa: E731
    ranked = sorted(cands, key=lambda r: -sign * m(r)["mean"])
    best = ranked[0]
    tied = [r for r in ranked if abs(m(r)["mean"] - m(best)["mean"]) <= max(m(r)["se"] or 0.0, m(best)["se"] or 0.0)]
    chosen, broke_tie = best, False
    if len(tied) > 1 and all(m(r, tie_break)["mean"] is not None for r in tied):
        tsign = 1.0 if direction(tie_break) == "higher" else -1.0
        chosen = max(tied, key=lambda r: tsign * m(r, tie_break)["mean"])
        broke_tie = True
    others = [r for r in ranked if r is not chosen]
    out = {"chosen": chosen["name"], "alpha": chosen["alpha"], "distribution": chosen["distribution"], "rule": rule,
           "tie_break": tie_break, "tied": [r["name"] for r in tied] if len(tied) > 1 else [],
           "broke_tie": broke_tie, "means": {r["name"]: m(r)["mean"] for r in ranked}}
    unit = " points" if "win_rate" in rule else ""
    text = (f"Chosen: {chosen['name']} (alpha={chosen['alpha']:g}, {chosen['distribution']}), mean {rule} over "
            f"{m(chosen)['n']} seed(s) = {m(chosen)['mean']:.3f}")
    if broke_tie:
        how = "within the seed standard error" if m(chosen)["n"] > 1 else "equal; one seed, no standard error"
        text += (f"; tied ({how}) with {', '.join(r['name'] for r in tied if r is not chosen)}, broken by the "
                 f"{direction(tie_break)} mean {tie_break}")
    text += "."
    if others:
        ru = others[0]
        margin = sign * (m(chosen)["mean"] - m(ru)["mean"])
        stds = [s for s in (m(chosen)["std"], m(ru)["std"]) if s is not None]
        out.update(runner_up=ru["name"], margin=margin, spread=max(stds) if stds else None)
        text += f" Margin to the runner-up {ru['name']}: {margin:+.3f}{unit}."
        if stds:
            out["margin_exceeds_spread"] = abs(margin) > max(stds)
            text += (f" The seed-to-seed spread (std over seeds) is {max(stds):.3f}{unit}: the margin "
                     + ("exceeds it." if out["margin_exceeds_spread"] else "does NOT exceed it, so the choice is not reliable."))
        else:
            out["margin_exceeds_spread"] = None
            text += " With one seed the seed-to-seed spread is unknown, so the margin cannot be judged against it."
    else:
        text += " Only one variant was trained: there is no runner-up."
    out["statement"] = text
    return out


def compare(cfg: Config) -> dict:
    sweep = Path(cfg.output_dir)
    variants, seeds = variants_of(cfg), [int(s) for s in cfg.compare.seeds]
    for opt in ("select_by", "tie_break"):
        if getattr(cfg.compare, opt) not in list(PER_SET) + list(PER_RUN):
            raise ConfigError(f"compare.{opt}: {getattr(cfg.compare, opt)!r} is not a table metric; use lc_win_rate, "
                              "win_rate or heldout_loss (or another of " + ", ".join(list(PER_SET) + list(PER_RUN)) + ")")
    fractions = sorted({float(f) for f in cfg.compare.data_fractions if float(f) != 1.0})
    if any(not 0 < f < 1 for f in fractions):
        raise ConfigError(f"compare.data_fractions: fractions must be in (0, 1], got {cfg.compare.data_fractions}")
    for v in variants:  # fail before anything is written if an existing run was trained differently
        for s in seeds:
            name = run_name(v["name"], s)
            _check_same_training(run_config(cfg, v, s, sweep / "runs" / name), sweep / "runs" / name)
    sweep.mkdir(parents=True, exist_ok=True)
    save_config(cfg, sweep / "config.yaml")
    from .evaluation.run import set_name

    sets = [set_name(s) for s in cfg.eval.sets]
    main_set = "heldout" if "heldout" in sets else (sets[0] if sets else "heldout")
    keys = metric_keys(sets)
    prog = _Progress(2 * len(seeds) * (len(variants) + 2 * len(fractions)))

    def do_runs(pairs, fraction=None, n_train=None):
        """Train everything, then evaluate baselines first (the variants' judge reads their answers)."""
        cfgs = {}
        for v in pairs:
            for s in seeds:
                name = run_name(v["name"], s, fraction)
                rc = run_config(cfg, v, s, sweep / "runs" / name, n_train=n_train, fraction=fraction)
                cfgs[(v["name"], s)] = (name, rc, train_run(rc, prog, name))
        records = {}
        for v in pairs:
            for s in seeds:
                name, rc, summ = cfgs[(v["name"], s)]
                base = None if v["name"] == "baseline" else Path(cfgs[("baseline", s)][1].output_dir)
                eval_run(rc, prog, name, base)
                records.setdefault(v["name"], []).append(
                    {"name": name, "seed": s, "dir": str(Path(rc.output_dir).relative_to(sweep)),
                     "n_train": summ.get("n_train"), "values": run_values(Path(rc.output_dir), sets)})
        return [_row(v, cfgs[(v["name"], seeds[0])][1], fraction or 1.0, records[v["name"]], keys) for v in pairs]

    rows = do_runs(variants)
    selection = select_variant(rows, cfg.compare.select_by, cfg.compare.tie_break, main_set)
    print(f"[compare] {selection['statement']}", flush=True)

    frac_rows = []
    if fractions and selection["chosen"]:
        chosen = next(v for v in variants if v["name"] == selection["chosen"])
        n_train = rows[0]["n_train"]  # the split is seed-independent: every full run has the same n_train
        for f in fractions:
            frac_rows += do_runs([variants[0], chosen], fraction=f, n_train=n_train)
    curve = []
    if frac_rows:
        for r in frac_rows + [r for r in rows if r["name"] == selection["chosen"]]:
            if r["name"] != "baseline":
                curve.append({"fraction": r["fraction"], "n_train": r["n_train"],
                              **{k: r["metrics"][f"{main_set}.{k}"] for k in ("win_rate", "lc_win_rate")}})
        curve.sort(key=lambda c: c["fraction"])

    table = {"sweep_dir": str(sweep), "sets": sets, "main_set": main_set, "seeds": seeds,
             "metrics": {k: {"label": metric_spec(k)[0], "source": metric_spec(k)[1], "better": metric_spec(k)[3]}
                         for k in keys},
             "rows": rows, "fraction_rows": frac_rows, "data_curve": curve, "selection": selection,
             "skipped_fractions": bool(fractions) and not selection["chosen"]}
    tmp = sweep / "compare.json.tmp"
    tmp.write_text(json.dumps(table, indent=2), encoding="utf-8")
    tmp.replace(sweep / "compare.json")

    from .report import write_report

    index = write_report(sweep, table, cfg)
    print(f"[compare] table: {sweep / 'compare.json'}\n[compare] report: {index} (and {index.parent / 'report.md'})", flush=True)
    return table
