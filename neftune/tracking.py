"""Metric sinks: metrics.jsonl (always; the source of truth for reports and resume checks) and
tensorboard (`report_to: [tensorboard]`). On resume, lines past the checkpoint's step are dropped
so a resumed run's log reads exactly like an uninterrupted one."""

from __future__ import annotations

import json
import math

from . import rundir
from .rundir import read_metrics  # noqa: F401  (re-exported: bench and older callers import it from here)


class MetricsLogger:
    def __init__(self, output_dir, report_to=("jsonl",), resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = rundir.metrics_path(output_dir)
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    log_dir=str(rundir.tensorboard_dir(output_dir)), purge_step=resume_step + 1 if resume_step else None
                )
            except ImportError:  # pragma: no cover
                print(f"[neftune] tensorboard not installed; metrics go to {rundir.METRICS} only")

    def _truncate_after(self, step: int):
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if step and rec.get("step", 0) <= step and "heldout_loss" not in rec:
                keep.append(line)
        rundir.atomic_write(self.path, "".join(l + "\n" for l in keep))

    def log(self, record: dict):
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
