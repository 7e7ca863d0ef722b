"""Run a sweep's independent jobs (train one run dir, or generate its answers) one after another, or
concurrently as Ray tasks (`compare.launcher=ray`).

Ray places the tasks: with GPUs in the cluster each task asks for one GPU (Ray sets CUDA_VISIBLE_DEVICES,
so the run sees exactly one device), on CPU-only machines for cores/workers CPUs, and the task sets
torch's thread count to what it was given. At most `compare.workers` jobs are in flight. A job is the
same stage function the serial path calls, so everything a worker writes goes through neftune.rundir
exactly as in the serial sweep: reuse and resume work unchanged, also after a sweep was interrupted on
another launcher. Across nodes the sweep dir must be on a shared filesystem.

Ray is imported only when it is selected.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import CompareConfig, Config
from .errors import NeftuneError

# stage function: (run config, progress, run name) -> anything; must be a module-level function (pickled by name)
StageFn = Callable[[Config, Callable, str], object]


@dataclass
class Job:
    name: str
    """The run's name (its dir is runs/<name>)."""
    cfg: Config
    """Its resolved config; cfg.output_dir is the run dir."""


def run_jobs(what: str, fn: StageFn, jobs: list[Job], cc: CompareConfig, prog) -> list[dict]:
    """Run `fn(job.cfg, progress, job.name)` for every job, serially or as Ray tasks per `cc.launcher`.
    Returns one record per job, in job order: {stage, run, host, pid, start, end, seconds} (start/end in
    Unix seconds), i.e. where and when each job ran."""
    if cc.launcher == "ray":
        return _run_ray(what, fn, jobs, cc, prog)
    records = []
    for job in jobs:
        try:
            records.append(_timed(what, fn, job, prog))
        except Exception as e:
            if hasattr(e, "add_note"):  # Python >= 3.11; type and message unchanged
                e.add_note(f"[compare] while running stage {what!r} of run {job.name}")
            raise
    return records


def _timed(what: str, fn: StageFn, job: Job, prog) -> dict:
    start = time.time()
    fn(job.cfg, prog, job.name)
    end = time.time()
    return {
        "stage": what,
        "run": job.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": start,
        "end": end,
        "seconds": round(end - start, 3),
    }


def _in_task(what: str, fn: StageFn, job: Job, threads: int) -> dict:
    """The body of one Ray task: this task's CPU share as torch threads, then the serial code path."""
    import torch

    torch.set_num_threads(threads)
    return _timed(what, fn, job, _TaskProgress())


class _TaskProgress:
    """In a task the sweep's counter is not at hand: say that the job started (Ray forwards a task's stdout
    to the driver, prefixed with the worker); the driver counts the job when it finishes."""

    def __call__(self, what: str, name: str, note: str = ""):
        print(f"[compare] started {what} {name}{' ' + note if note else ''}", flush=True)


def _run_ray(what: str, fn: StageFn, jobs: list[Job], cc: CompareConfig, prog) -> list[dict]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # an existing cluster when given; otherwise a local one on this machine's CPUs/GPUs
        ray.init(address=cc.ray_address, include_dashboard=False, log_to_driver=True)
    try:
        return _submit_all(ray, what, fn, jobs, cc, prog)
    finally:
        if started_here:
            ray.shutdown()


def _task_resources(ray, workers: int) -> tuple[dict, int]:
    """Ray resources of one task, and its torch thread count: a GPU each where the cluster has GPUs, and
    an equal share of the cluster's CPUs among `workers` concurrent tasks."""
    total = ray.cluster_resources()
    cpus = max(1, int(total.get("CPU", 1)) // workers)
    res = {"num_cpus": cpus}
    if total.get("GPU", 0) >= 1:
        res["num_gpus"] = 1
    return res, cpus


def _submit_all(ray, what: str, fn: StageFn, jobs: list[Job], cc: CompareConfig, prog) -> list[dict]:
    res, threads = _task_resources(ray, cc.workers)
    # Ray retries a task only when its worker or node is lost (not when it raises): safe, a run resumes
    task = ray.remote(**res)(_in_task)
    pending, in_flight, records, errors = list(jobs), {}, {}, []
    while pending or in_flight:
        while pending and not errors and len(in_flight) < cc.workers:
            job = pending.pop(0)
            in_flight[task.remote(what, fn, job, threads)] = job
        if not in_flight:
            break
        done, _ = ray.wait(list(in_flight), num_returns=1)
        job = in_flight.pop(done[0])
        try:
            rec = ray.get(done[0])
        except ray.exceptions.RayTaskError as e:  # the job raised: keep its type and message for the report
            errors.append(f"{what} {job.name}: {_cause(e)}")
            continue
        except ray.exceptions.RayError as e:  # the worker or its node died
            errors.append(f"{what} {job.name}: {type(e).__name__}: {e}")
            continue
        records[job.name] = rec
        prog(what, job.name, f"done in {rec['seconds']:.1f}s on {rec['host']} pid {rec['pid']}")
    if errors:
        # the jobs already in flight were let finish (their run dirs are complete, a rerun reuses them)
        skipped = f"; {len(pending)} job(s) not started" if pending else ""
        raise NeftuneError(f"{len(errors)} run(s) failed under Ray: " + "; ".join(errors) + skipped)
    return [records[j.name] for j in jobs]


def _cause(e) -> str:
    """'Type: message' of the exception a task raised; the traceback's last line when it could not be unpickled."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and type(cause).__name__ != "UnserializableException":
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
