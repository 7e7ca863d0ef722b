"""Wrapper peeling shared by the core (noise) and the pipeline (modeling), with no dependency
beyond torch so the light `pip install neftune` core never imports the pipeline."""

from __future__ import annotations

import torch


def unwrap(model):
    """Peel DDP/FSDP/DeepSpeed (`.module`) and peft (`get_base_model`) wrappers off a model."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
    return model
