"""`neftune compare`: baseline (alpha=0) vs NEFTune variants, seeds x variants, as stages.

    train every run -> generate every run's answers (+ single-model metrics) -> judge each variant's
    saved answers against the same-seed baseline's saved answers -> aggregate (files only) -> report

The sweep directory's layout is neftune.rundir's (SWEEP/config.yaml, runs/<name>-seed<S>/,
runs/<name>-frac<F>-seed<S>/, compare.json, report/). Every stage is idempotent, so an interrupted
sweep resumes by rerunning the same command: a run with summary.json is reused, a run with
checkpoints resumes from the latest one, answers are reused while the weights and decoding settings
are unchanged, verdicts while both answer files and the judge are unchanged. Every variant is judged
against the baseline of the *same seed* (same data order, same init), so seed-to-seed noise cancels in
the pairwise comparison as much as it can. Judging reads the baseline's answer file; it never loads
the baseline's model or writes into the baseline's dir.

The wall time of this invocation is split by stage, printed at the end and saved in compare.json
(`wall_time`). Install time happens before the process starts and cannot be measured from inside; a
caller that timed it may pass it in the NEFTUNE_INSTALL_SECONDS environment variable.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import rundir
from .aggregate import (  # noqa: F401
    PER_RUN,
    PER_SET,
    aggregate,
    fractions_of,
    seed_stats,
    variants_of,
)
from .config import Config, training_identity, validate, variant_config
from .config_typing import differing_keys
from .errors import ConfigError, NeftuneError
from .launch import Job, run_jobs
from .rundir import run_name  # noqa: F401  (kept importable from here)

STAGES = ("conversion", "training", "generation", "judging", "report")


# ----------------------------------------------------------------------------- run configs
def run_config(
    cfg: Config, variant: dict, seed: int, out_dir: Path, n_train: int | None = None, fraction: float | None = None
) -> Config:
    """The sweep config + the variant's overrides, this seed, this dir (and the data fraction)."""
    rc = variant_config(cfg, variant)
    rc.seed = int(seed)
    rc.output_dir = str(out_dir)
    rc.resume_from_checkpoint = None
    if fraction is not None:
        rc.data.num_train_samples = max(1, round(fraction * n_train))
        if rc.max_steps > 0:  # same number of epochs at every data size
            rc.max_steps = max(1, round(rc.max_steps * fraction))
    validate(rc)
    return rc


def _check_same_training(rc: Config, run_dir: Path):
    """A reused/resumed run must have been trained with this config, or the sweep would mix settings."""
    if not rundir.config_path(run_dir).exists():
        return
    old, new = training_identity(rundir.read_config(run_dir)), training_identity(rc)
    diff = [k for k, _, _ in differing_keys(old, new)]
    if diff:
        raise NeftuneError(
            f"{run_dir} was trained with a different config ({', '.join(diff)} differ); "
            "use a new output_dir or delete that run dir to retrain it"
        )


# ----------------------------------------------------------------------------- progress and time
def grid_jobs(n_variants: int, n_seeds: int) -> int:
    """Progress lines of one run_grid (baseline included in n_variants): every run trains and generates,
    every variant but the baseline is judged."""
    return n_seeds * (2 * n_variants + (n_variants - 1))


class _Progress:
    def __init__(self, total: int):
        self.i, self.total = 0, total

    def __call__(self, what: str, name: str, note: str = ""):
        self.i += 1
        print(f"[compare] {self.i}/{self.total} {what} {name}{' ' + note if note else ''}", flush=True)


class StageClock:
    """Wall time per stage of one `neftune compare` invocation (a stage may run more than once)."""

    def __init__(self):
        self.t0, self.seconds = time.perf_counter(), dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t

    def split(self) -> dict:
        total = time.perf_counter() - self.t0
        install = os.environ.get("NEFTUNE_INSTALL_SECONDS")
        try:
            install_s = round(float(install), 1) if install else None
        except ValueError:
            install_s = None
        return {
            "stages_s": {k: round(v, 2) for k, v in self.seconds.items()},
            "total_s": round(total, 2),
            "other_s": round(total - sum(self.seconds.values()), 2),
            "install_s": install_s,
            "note": "this invocation only (reused stages cost ~0); conversion = embedded model GGUF->safetensors "
            "(building the embedded ShareGPT set falls in training); generation includes the single-model "
            "metrics; install happens before the process and is only known from NEFTUNE_INSTALL_SECONDS",
        }


def print_split(split: dict) -> None:
    total = split["total_s"] or 1e-9
    parts = [f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in split["stages_s"].items()]
    parts.append(f"other {split['other_s']:.1f}s")
    install = (
        f"; install {split['install_s']:.1f}s (before the run)"
        if split["install_s"] is not None
        else "; install: not measured (set NEFTUNE_INSTALL_SECONDS)"
    )
    print(f"[compare] wall time {split['total_s']:.1f}s: " + ", ".join(parts) + install, flush=True)


# ----------------------------------------------------------------------------- one run's stages
def train_run(rc: Config, prog: _Progress, name: str) -> dict:
    """Train (or reuse / resume) one run; returns its summary.json."""
    from .train import train

    run_dir = Path(rc.output_dir)
    _check_same_training(rc, run_dir)
    if rundir.is_finished(run_dir):
        prog("train", name, f"reused (finished: {rundir.SUMMARY})")
        return rundir.read_summary(run_dir)
    rundir.remove_eval(run_dir)  # its answers belong to the weights about to be replaced
    latest = rundir.latest_checkpoint(run_dir)
    rc = copy.deepcopy(rc)
    if latest is not None:
        rc.resume_from_checkpoint = "latest"
    else:  # this run's own leftovers (same training identity, unfinished, nothing to resume): retrain in place
        rc.overwrite_output_dir = True
    prog(
        "train",
        name,
        f"(alpha={rc.neftune_noise_alpha:g} {rc.neftune_distribution}, seed {rc.seed}"
        + (f", resuming from {latest.name}" if latest is not None else "")
        + ")",
    )
    return train(rc)


def generate_run(rc: Config, prog: _Progress, name: str) -> dict:
    from .evaluation.run import generate_stage

    scores, reused = generate_stage(rc, rc.output_dir)
    prog("generate", name, f"reused ({rundir.scores_path('')}: same weights and eval settings)" if reused else "")
    return scores


def judge_run(rc: Config, prog: _Progress, name: str, against: Path | None) -> dict:
    """Judge a variant's saved answers against its baseline's (nothing to judge for a baseline), then
    merge this run's results.json."""
    from .evaluation.run import judge_stage, write_results

    judgments = {}
    if against is not None:
        judgments, reused = judge_stage(rc, rc.output_dir, against)
        prog("judge", name, f"against {against.name}" + (" reused (same answers, same judge)" if reused else ""))
    return write_results(rc, rc.output_dir, against, rundir.read_json(rundir.scores_path(rc.output_dir)), judgments)


def run_grid(
    cfg: Config,
    variants: list[dict],
    seeds: list[int],
    prog: _Progress,
    clock: StageClock,
    fraction: float | None = None,
    n_train: int | None = None,
) -> list[dict]:
    """train all -> generate all -> judge all, for these variants x seeds (baseline first). Returns where and
    when each train/generate job ran (neftune.launch.run_jobs)."""
    sweep = Path(cfg.output_dir)
    runs = [(v, s, rundir.run_name(v["name"], s, fraction)) for v in variants for s in seeds]
    cfgs = {
        name: run_config(cfg, v, s, rundir.sweep_run_dir(sweep, name), n_train=n_train, fraction=fraction)
        for v, s, name in runs
    }
    jobs = [Job(name, cfgs[name]) for _, _, name in runs]
    with clock("training"):  # independent runs: serially or concurrently (compare.launcher)
        launched = run_jobs("train", train_run, jobs, cfg.compare, prog)
    with clock("generation"):
        launched += run_jobs("generate", generate_run, jobs, cfg.compare, prog)
    with clock("judging"):
        for v, s, name in runs:
            base = (
                None
                if v["name"] == "baseline"
                else rundir.sweep_run_dir(sweep, rundir.run_name("baseline", s, fraction))
            )
            judge_run(cfgs[name], prog, name, base)
    return launched


# ----------------------------------------------------------------------------- the sweep
def _check_sweep(cfg: Config, variants: list[dict], seeds: list[int]) -> None:
    """Fail before anything is trained or written: bad selection keys, or an existing run trained differently."""
    for opt in ("select_by", "tie_break"):
        if getattr(cfg.compare, opt) not in list(PER_SET) + list(PER_RUN):
            raise ConfigError(
                f"compare.{opt}: {getattr(cfg.compare, opt)!r} is not a table metric; use lc_win_rate, "
                "win_rate or heldout_loss (or another of " + ", ".join(list(PER_SET) + list(PER_RUN)) + ")"
            )
    sweep = Path(cfg.output_dir)
    for v in variants:
        for s in seeds:
            run = rundir.sweep_run_dir(sweep, rundir.run_name(v["name"], s))
            _check_same_training(run_config(cfg, v, s, run), run)


def _convert_assets(cfg: Config, variants: list[dict]) -> None:
    """Convert embedded models once, up front, so the conversion shows as its own stage."""
    from .assets import resolve_model

    for model in dict.fromkeys([cfg.model] + [str(v["model"]) for v in variants if "model" in v]):
        resolve_model(model)


def compare(cfg: Config) -> dict:
    clock = StageClock()
    sweep = Path(cfg.output_dir)
    variants, seeds, fractions = variants_of(cfg), [int(s) for s in cfg.compare.seeds], fractions_of(cfg)
    _check_sweep(cfg, variants, seeds)
    rundir.write_config(sweep, cfg)
    # the data-size study's variants are known only after the first report, so its jobs join the total then
    prog = _Progress(grid_jobs(len(variants), len(seeds)))
    with clock("conversion"):
        _convert_assets(cfg, variants)

    launched = run_grid(cfg, variants, seeds, prog, clock)
    with clock("report"):
        main = aggregate(sweep, cfg, with_fractions=False)
    selection = main["selection"]
    print(f"[compare] {selection['statement']}", flush=True)
    if fractions and main["data_study"]:
        # the chosen variant (or the best noise variant when none is distinguishable) and the best regularizer
        study = [v for v in variants if v["name"] in main["data_study"]]
        prog.total += len(fractions) * grid_jobs(1 + len(study), len(seeds))
        n_train = main["rows"][0]["n_train"]  # the split is seed-independent: every full run has the same n_train
        for f in fractions:
            launched += run_grid(cfg, [variants[0], *study], seeds, prog, clock, fraction=f, n_train=n_train)

    with clock("report"):
        table = aggregate(sweep, cfg)
        from .report import write_report

        table["wall_time"] = clock.split()  # before the report, which shows it
        index = write_report(sweep, table, cfg)
    table["wall_time"] = clock.split()  # compare.json: the whole report stage included
    table["launch"] = {"launcher": cfg.compare.launcher, "workers": cfg.compare.workers, "jobs": launched}
    rundir.write_json(rundir.compare_path(sweep), table)
    print(
        f"[compare] table: {rundir.compare_path(sweep)}\n[compare] report: {index} (and {index.parent / 'report.md'})",
        flush=True,
    )
    print_split(table["wall_time"])
    return table
