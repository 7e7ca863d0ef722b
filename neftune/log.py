"""One rank-aware logger for the whole project (stdlib logging, tqdm-friendly).

    from .log import get_logger
    log = get_logger(__name__)
    log.info("converting %s once", name)        # printed by rank 0 only
    log.info("rank-local note", extra=ALL_RANKS)  # printed by every rank, prefixed with its rank

Messages go to stderr as `[neftune] message` through `tqdm.write` when tqdm is installed, so they do
not break a progress bar. Ranks come from the launcher's env (RANK, then LOCAL_RANK; torchrun and
accelerate set both). `NEFTUNE_LOG_LEVEL` (DEBUG, INFO, WARNING...) sets the level; INFO by default.
Warnings and errors are printed on every rank: a failure on rank 3 must not be silent.
"""

from __future__ import annotations

import logging
import os
import sys

ALL_RANKS = {"all_ranks": True}
_ROOT = "neftune"


def rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


class _RankFilter(logging.Filter):
    """Keep rank 0's records, every rank's warnings/errors, and records marked `extra=ALL_RANKS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        r = rank()
        if getattr(record, "all_ranks", False) and r != 0:
            record.msg = f"[rank {r}] {record.msg}"
            return True
        return r == 0 or record.levelno >= logging.WARNING


class _TqdmHandler(logging.Handler):
    """Write through tqdm (when installed) so an active progress bar is redrawn below the message.
    The stream is looked up at each write, so redirected/captured stderr (pytest, notebooks) works."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:
                print(msg, file=sys.stderr, flush=True)
                return
            tqdm.write(msg, file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def _configure() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("[neftune] %(message)s"))
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("NEFTUNE_LOG_LEVEL", "INFO").upper())
        root.propagate = False  # one line per message, even when the application configures the root logger
    return root


def get_logger(name: str = _ROOT) -> logging.Logger:
    """A logger under the project's `neftune` logger (pass `__name__` from inside the package)."""
    _configure()
    return logging.getLogger(name if name == _ROOT or name.startswith(_ROOT + ".") else f"{_ROOT}.{name}")


def info(msg: str, *args, all_ranks: bool = False) -> None:
    """Shorthand for `get_logger().info(...)`; `all_ranks=True` prints on every rank."""
    get_logger().info(msg, *args, extra=ALL_RANKS if all_ranks else None)
