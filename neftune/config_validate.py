"""Cross-value checks of the typed config (neftune/config.py): validate() runs at load time, so a bad
value fails naming its key before any model loads; variant_config() applies and checks one compare
variant. Type and closed-choice checks happen earlier, when a value is set (config_typing._coerce)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional

from .config_typing import _apply, _one_of
from .errors import ConfigError

if TYPE_CHECKING:  # config.py imports this module; the classes are only needed for the hints
    from .config import CompareConfig, Config


def validate(cfg: Config) -> None:
    """Checks across values (closed choices are checked by their Literal types when set). Each variant
    of compare.variants is applied to a copy and validated too, so a typo fails before any training."""

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    need(
        cfg.neftune_noise_alpha >= 0 and cfg.neftune_noise_alpha == cfg.neftune_noise_alpha,
        f"neftune_noise_alpha must be a finite number >= 0, got {cfg.neftune_noise_alpha}",
    )
    need(cfg.r3f_lambda >= 0, f"r3f_lambda must be >= 0, got {cfg.r3f_lambda}")
    need(0 <= cfg.model_dropout < 1, f"model_dropout must be in [0, 1), got {cfg.model_dropout}")
    need(cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}")
    need(cfg.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1")
    need(cfg.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
    need(cfg.data.max_length >= 8, f"data.max_length must be >= 8, got {cfg.data.max_length}")
    es = cfg.data.eval_size
    need(
        es is None or (isinstance(es, int) and es >= 1) or (isinstance(es, float) and 0 < es < 1),
        f"data.eval_size must be a count >= 1, a fraction in (0, 1) or null (auto), got {es!r}",
    )
    need(cfg.lora.r >= 0, "lora.r must be >= 0")
    _check_scheduler(cfg.lr_scheduler_type)
    _check_launcher(cfg.compare)
    for i, v in enumerate(cfg.compare.variants):
        need(isinstance(v, dict) and "name" in v, f"compare.variants: each variant needs a name, got {v!r}")
        variant_config(cfg, v, where=f"compare.variants[{i}] ({v['name']})")


def _check_launcher(cc: CompareConfig) -> None:
    import importlib.util

    if cc.workers < 1:
        raise ConfigError(f"compare.workers must be >= 1, got {cc.workers}")
    # found, not imported: importing ray costs seconds and it is only needed once the sweep starts
    if cc.launcher == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("compare.launcher: ray is not installed; pip install 'neftune[ray]' (or use launcher=serial)")
    if cc.ray_address is not None and cc.launcher != "ray":
        raise ConfigError(
            f"compare.ray_address is set ({cc.ray_address!r}) but compare.launcher is {cc.launcher!r}; "
            "set compare.launcher=ray to use the cluster"
        )


def _check_scheduler(name: str) -> None:
    from transformers import SchedulerType

    allowed = tuple(t.value for t in SchedulerType)
    _one_of(name, allowed, "lr_scheduler_type")


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
