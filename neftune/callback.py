"""Drop-in for people who keep their trainer: correct per-sequence NEFTune for HF `Trainer` and
TRL `SFTTrainer` (also with packing=True / padding_free=True), by adding one argument:

    trainer = SFTTrainer(..., args=SFTConfig(..., packing=True),   # no neftune_noise_alpha
                         callbacks=[NEFTuneCallback(alpha=5)])

transformers' own `neftune_noise_alpha` scales by the padded row length, noises padding and,
under packing, shares one row's alpha^2/3 among all packed sequences. This callback installs
`neftune.activate` at train start (per-sequence / per-document lengths from the batch's
attention_mask / position_ids) and removes it at train end, and adds the measured noise energy
relative to alpha^2/3 to the trainer's logs (`neftune/noise_energy_ratio_mean` etc.).
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import TrainerCallback

from .noise import NEFTune, activate


class NEFTuneCallback(TrainerCallback):
    def __init__(self, alpha: float = 5.0, distribution: str = "uniform", seed: Optional[int] = None,
                 placement: str = "all"):
        self.alpha, self.distribution, self.seed, self.placement = alpha, distribution, seed, placement
        self.handle: Optional[NEFTune] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, "neftune_noise_alpha", None):
            raise ValueError("NEFTuneCallback replaces transformers' NEFTune: set neftune_noise_alpha=None "
                             "in the training arguments (both would stack noise)")
        gen = None
        if self.seed is not None:
            device = next(model.parameters()).device
            gen = torch.Generator(device=device).manual_seed(self.seed + getattr(args, "process_index", 0))
        self.handle = activate(model, self.alpha, distribution=self.distribution, generator=gen,
                               placement=self.placement)  # prompt/response: from the labels the Trainer passes

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.handle is not None and logs is not None:
            stats = self.handle.pop_stats(prefix="neftune/")
            logs.update(stats)
            if state.log_history and stats:
                state.log_history[-1].update(stats)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
