"""Regularizer baselines NEFTune is compared against (issue 13): the model's own dropout.

Weight decay is `weight_decay` (AdamW) and LoRA dropout is `lora.dropout` (peft); both exist as
plain config keys. `model_dropout` sets the architecture's own dropout probabilities, read from the
model's Hugging Face config: every key below that the config has is set to p *before* the model
is built, so the modules are constructed with it (attention-probability dropout in Llama/Gemma,
residual/embedding dropout in GPT-2-style models, ...). Dropout is active in training mode only.
An architecture with none of these keys is refused: a "dropout" variant that changes nothing would
be a silent baseline.
"""

from __future__ import annotations

from .errors import ConfigError

DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "activation_dropout",  # Llama/Gemma/Qwen, Falcon/Bloom, OPT
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",  # GPT-2, GPT-J, Phi
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",  # BERT-style
    "summary_first_dropout",
)


def model_dropout_overrides(model: str, p: float) -> dict:
    """{config key: p} for every dropout key the model's config has; {} when p == 0."""
    if not p:
        return {}
    if not 0 < p < 1:
        raise ConfigError(f"model_dropout must be in [0, 1), got {p}")
    from transformers import AutoConfig

    from .assets import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(model))
    keys = [
        k
        for k in DROPOUT_KEYS
        if isinstance(getattr(cfg, k, None), (int, float)) and not isinstance(getattr(cfg, k), bool)
    ]
    if not keys:
        raise ConfigError(
            f"model_dropout={p}: {type(cfg).__name__} ({model}) has no dropout setting "
            f"(none of {', '.join(DROPOUT_KEYS)}); use lora.dropout instead"
        )
    return {k: float(p) for k in keys}
