"""Checks of the typed config (neftune/config.py): every numeric key's bounds and checks across values.
validate() runs at load time, so a bad value fails naming its key (and YAML line) before any model loads; variant_config() applies and checks one compare
variant. Type and closed-choice checks happen earlier, when a value is set (config_typing._coerce)."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import TYPE_CHECKING, Optional

from .config_typing import _apply, _one_of
from .errors import ConfigError

if TYPE_CHECKING:  # config.py imports this module; the classes are only needed for the hints
    from .config import CompareConfig, Config


# Lowest allowed value of each count / step / weight (None, where a key allows it, is always fine).
# 0 is allowed where it means off / all (documented on the key); a count that is divided by or
# sliced with must be >= 1 or >= 0: logging_steps=0 was a ZeroDivisionError after the first step,
# eval.num_samples=-1 a slice dropping the last prompt, save_total_limit=-1 deleted the oldest checkpoint.
AT_LEAST = {
    "neftune_noise_alpha": 0,
    "r3f_lambda": 0,
    "clean_loss_steps": 0,
    "weight_decay": 0,
    "max_grad_norm": 0,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_steps": 0,
    "save_total_limit": 0,
    "data.max_length": 8,
    "data.num_train_samples": 1,
    "data.sharegpt_size": 1,
    "lora.r": 0,
    "lora.alpha": 1,
    "eval.num_samples": 0,
    "eval.max_new_tokens": 1,
    "eval.batch_size": 1,
    "eval.judge_max_retries": 0,
    "eval.tie_margin": 0,
    "eval.overfit_samples": 0,
    "eval.train_loss_samples": 0,
    "eval.exact_samples": 0,
    "eval.capability_samples": 0,
    "eval.bootstrap": 1,
}
# Must be > 0 (HF raises on temperature/repetition_penalty <= 0 mid-generation).
POSITIVE = ("learning_rate", "num_train_epochs", "eval.temperature", "eval.repetition_penalty", "eval.judge_timeout")
# Rates: (key, lowest, highest, highest included)
RATES = (
    ("model_dropout", 0, 1, False),
    ("lora.dropout", 0, 1, False),
    ("warmup_ratio", 0, 1, True),
    ("eval.top_p", 0, 1, True),
)
SEED_MAX = 2**32 - 1  # numpy's np.random.seed range (train.py seeds random, numpy and torch)


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def need(cond, key: str, text: str, sep: str = " ") -> None:
    """Raise a ConfigError "<key><sep><text>"; the key rides along (e.key) so load_config can add the
    YAML line that set it."""
    if not cond:
        e = ConfigError(f"{key}{sep}{text}")
        e.key = key
        raise e


def _check_finite(obj, prefix: str = "") -> None:
    # YAML reads .inf/.nan (and "inf"/"nan" from an override) as floats; none of our floats means them
    for f in dataclasses.fields(obj):
        v, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            _check_finite(v, f"{key}.")
        elif isinstance(v, float):
            need(math.isfinite(v), key, f"must be a finite number, got {v}")


def validate(cfg: Config) -> None:
    """Bounds of every numeric key and checks across values (types and closed choices are checked
    when a value is set). Each variant of compare.variants is applied to a copy and validated too, so
    a typo fails before any training."""
    _check_finite(cfg)
    for key, lo in AT_LEAST.items():
        v = _get(cfg, key)
        need(v is None or v >= lo, key, f"must be >= {lo}, got {v!r}")
    for key in POSITIVE:
        v = _get(cfg, key)
        need(v is None or v > 0, key, f"must be > 0, got {v!r}")
    for key, lo, hi, closed in RATES:
        v = _get(cfg, key)
        need(
            lo <= v <= hi if closed else lo <= v < hi, key, f"must be in [{lo}, {hi}{']' if closed else ')'}, got {v!r}"
        )
    need(
        cfg.max_steps == -1 or cfg.max_steps >= 1,
        "max_steps",
        f"must be >= 1 or -1 (from num_train_epochs), got {cfg.max_steps}",
    )
    need(0 <= cfg.seed <= SEED_MAX, "seed", f"must be in [0, 2**32 - 1], got {cfg.seed}")
    bad = [s for s in cfg.compare.seeds if not 0 <= s <= SEED_MAX]
    need(not bad, "compare.seeds", f"must be in [0, 2**32 - 1], got {bad}")
    bad = [f for f in cfg.compare.data_fractions if not 0 < f <= 1]
    need(not bad, "compare.data_fractions", f"must be fractions in (0, 1], got {bad}")
    es = cfg.data.eval_size
    need(
        es is None or (isinstance(es, int) and es >= 1) or (isinstance(es, float) and 0 < es < 1),
        "data.eval_size",
        f"must be a count >= 1, a fraction in (0, 1) or null (auto), got {es!r}",
    )
    _check_scheduler(cfg.lr_scheduler_type)
    _check_launcher(cfg.compare)
    _check_eval_sets(cfg)
    for i, v in enumerate(cfg.compare.variants):
        need(isinstance(v, dict) and "name" in v, "compare.variants", f"each variant needs a name, got {v!r}")
        try:
            variant_config(cfg, v, where=f"compare.variants[{i}] ({v['name']})")
        except ConfigError as e:
            e.key = "compare.variants"  # a key inside a variant is not the top-level key of that name
            raise


def _check_eval_sets(cfg: Config) -> None:
    # each eval set needs its own slot (evaluation/sets.py); checked at load too, so that `neftune compare`
    # fails before training rather than at its first generation
    from .errors import NeftuneError
    from .evaluation.sets import check_sets

    try:
        check_sets(cfg)
    except NeftuneError as e:
        need(False, "eval.sets", str(e).removeprefix("eval.sets: "), sep=": ")


def _check_launcher(cc: CompareConfig) -> None:
    import importlib.util

    need(cc.workers >= 1, "compare.workers", f"must be >= 1, got {cc.workers}")
    # found, not imported: importing ray costs seconds and it is only needed once the sweep starts
    need(
        cc.launcher != "ray" or importlib.util.find_spec("ray") is not None,
        "compare.launcher",
        "ray is not installed; pip install 'neftune[ray]' (or use launcher=serial)",
        sep=": ",
    )
    need(
        cc.ray_address is None or cc.launcher == "ray",
        "compare.ray_address",
        f"is set ({cc.ray_address!r}) but compare.launcher is {cc.launcher!r}; "
        "set compare.launcher=ray to use the cluster",
    )


def _check_scheduler(name: str) -> None:
    from transformers import SchedulerType

    allowed = tuple(t.value for t in SchedulerType)
    try:
        _one_of(name, allowed, "lr_scheduler_type")
    except ConfigError as e:
        e.key = "lr_scheduler_type"
        raise


def variant_config(cfg: Config, variant: dict, where: Optional[str] = None) -> Config:
    """A copy of `cfg` with one compare variant's overrides (every key but `name`, nested keys as
    mappings: {name: x, data: {packing: true}}) applied and validated."""
    rc = copy.deepcopy(cfg)
    rc.compare.variants = []  # a variant config is one run, not a sweep
    where = where or f"compare.variants[{variant.get('name')}]"
    _apply(rc, {k: v for k, v in variant.items() if k != "name"}, where)
    try:
        validate(rc)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return rc
