"""Drop-in for people who keep their trainer: correct per-sequence NEFTune for HF `Trainer` and
TRL `SFTTrainer` (also with packing=True / padding_free=True), by adding one argument:

    trainer = SFTTrainer(..., args=SFTConfig(..., packing=True),   # no neftune_noise_alpha
                         callbacks=[NEFTuneCallback(alpha=5)])

transformers' own `neftune_noise_alpha` scales by the padded row length, noises padding and,
under packing, shares one row's alpha^2/3 among all packed sequences. This callback installs
`neftune.activate` at train start (per-sequence / per-document lengths from the batch's
attention_mask / position_ids) and removes it at train end, and adds the measured noise energy
relative to alpha^2/3 to the trainer's logs (`neftune/noise_energy_ratio_mean` etc.).

Callbacks get no handle on their Trainer, so the callback finds the Trainer calling it (a stack
walk) to (1) move itself in front of the reporting callbacks: a user callback runs after
TensorBoard/W&B, which would already have written the logs without its statistics; (2) remove
its hooks and the patched `generate` if training raises (the Trainer calls on_train_end only on
success).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Optional

import torch
from transformers import TrainerCallback

from .hooks import NEFTune, activate


class NEFTuneCallback(TrainerCallback):
    def __init__(
        self, alpha: float = 5.0, distribution: str = "uniform", seed: Optional[int] = None, placement: str = "all"
    ):
        self.alpha, self.distribution, self.seed, self.placement = alpha, distribution, seed, placement
        self.handle: Optional[NEFTune] = None

    def on_init_end(self, args, state, control, **kwargs):
        self._attach(_calling_trainer(), wrap=("train", "training_step"))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, "neftune_noise_alpha", None):
            raise ValueError(
                "NEFTuneCallback replaces transformers' NEFTune: set neftune_noise_alpha=None "
                "in the training arguments (both would stack noise)"
            )
        self._remove()  # a previous train() that raised before our cleanup could run
        trainer = _calling_trainer()
        if trainer is None:
            warnings.warn(
                "NEFTuneCallback: no Trainer found calling it; its statistics reach log_history but "
                "maybe not the reporters, and hooks stay if training raises",
                stacklevel=2,
            )
        self._attach(trainer, wrap=("training_step",))  # also when added by add_callback after __init__
        gen = None
        if self.seed is not None:
            device = next(model.parameters()).device
            gen = torch.Generator(device=device).manual_seed(self.seed + getattr(args, "process_index", 0))
        self.handle = activate(
            model, self.alpha, distribution=self.distribution, generator=gen, placement=self.placement
        )  # prompt/response: from the labels the Trainer passes

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.handle is not None and logs is not None:
            stats = self.handle.pop_stats(prefix="neftune/")
            logs.update(stats)
            if state.log_history and stats:
                state.log_history[-1].update(stats)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove()

    def _remove(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _attach(self, trainer, wrap):
        if trainer is None:
            return
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks and callbacks[0] is not self:
            # In front of the reporters: on_log then adds the statistics before they write the logs.
            # Safe while call_event iterates this list: the callbacks after us keep their positions.
            callbacks.remove(self)
            callbacks.insert(0, self)
        for name in wrap:
            fn = getattr(trainer, name)
            if not getattr(fn, "_neftune_cleanup", False):
                setattr(trainer, name, self._cleanup_on_error(fn))

    def _cleanup_on_error(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BaseException:
                self._remove()
                raise

        wrapper._neftune_cleanup = True
        return wrapper


def _calling_trainer():
    """The Trainer up the call stack (Trainer.__init__ or its training loop calls the callbacks).
    Imported here: `transformers.Trainer` pulls datasets/accelerate, which the light core must not."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer):
                return obj
            frame = frame.f_back
        return None
    finally:
        del frame
