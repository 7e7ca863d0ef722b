"""R3F-style consistency term: symmetric KL between the noisy and the clean forward pass.

R3F (Aghajanyan et al. 2020, "Better Fine-Tuning by Reducing Representational Collapse",
fairseq `examples/rxf`) adds to the task loss

    lambda * [ KL(p_clean || p_noisy) + KL(p_noisy || p_clean) ]

where p_noisy is the model's output distribution on noised input embeddings. What we take and what
we change:
- taken: the symmetric KL, the weight lambda, gradients through *both* forward passes (fairseq
  backpropagates through the clean and the noisy pass alike);
- changed: the noise. fairseq draws its own, i.i.d. uniform(-eps, eps) or normal(0, eps) per
  embedding entry, independent of sequence length. Here the noise is NEFTune's (alpha/sqrt(L d)
  per sequence, the configured distribution and placement), so `r3f_lambda` adds a consistency
  term on top of exactly the NEFTune variant being compared;
- changed: the positions. A causal LM's "output" is one next-token distribution per position; we
  take the KL at supervised positions only (labels != -100), the same positions the loss uses,
  summed over positions like the summed cross-entropy, so the training step's division by the
  step's supervised token count makes it a per-token mean (lambda is relative to the per-token CE).

With alpha = 0 and no dropout the two passes are identical and the term is exactly 0. With model
or LoRA dropout on, the two passes differ even at alpha = 0 (the term then acts like R-Drop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modeling import logit_transform, supervised_hidden


def supervised_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N×V, targets N) at the supervised positions, as `modeling.supervised_loss` computes them
    (backbone once, output head only where the next token is supervised, the model's logit transform)."""
    h, targets, head = supervised_hidden(model, batch)
    return logit_transform(model)(head(h)), targets


def r3f_loss(logits_noisy: torch.Tensor, logits_clean: torch.Tensor, mask=None) -> torch.Tensor:
    """Symmetric KL, summed over positions: sum_t KL(p_clean,t || p_noisy,t) + KL(p_noisy,t || p_clean,t).

    logits: (..., V); mask (optional, the leading shape): which positions count. Computed in float32.
    """
    lp_noisy = F.log_softmax(logits_noisy.float(), dim=-1)
    lp_clean = F.log_softmax(logits_clean.float(), dim=-1)
    # KL(c||n) + KL(n||c) = sum_v (p_c - p_n)(log p_c - log p_n) per position
    per_pos = ((lp_clean.exp() - lp_noisy.exp()) * (lp_clean - lp_noisy)).sum(-1)
    if mask is not None:
        per_pos = per_pos[mask.bool()]
    return per_pos.sum()


def _neftune_handle(model):
    from .hooks import _find_embedding

    return getattr(_find_embedding(model), "_neftune_handle", None)


def set_noise_labels(model, labels) -> None:
    """Hand the batch's labels to an active NEFTune hook (its placement mask needs them when the
    backbone is run directly, as our loss does). No-op without an active hook."""
    noise = _neftune_handle(model)
    if noise is not None:
        noise.set_labels(labels)


def r3f_supervised_loss(model, batch: dict, r3f_lambda: float, stats: dict | None = None):
    """(CE_sum + lambda * symmetric_KL_sum, n_supervised): the training step's loss with the R3F term.

    The noisy pass runs as usual (NEFTune's hook adds noise in training mode); the clean pass runs
    with the noise paused (`NEFTune.paused()`), both with gradients. `stats`, if given, receives
    the detached `r3f_kl` sum and `ce` sum.
    """
    noise = _neftune_handle(model)
    set_noise_labels(model, batch["labels"])
    logits_noisy, targets = supervised_logits(model, batch)
    ce = F.cross_entropy(logits_noisy.float(), targets, reduction="sum")
    if noise is not None:
        with noise.paused():
            logits_clean, _ = supervised_logits(model, batch)
    else:
        logits_clean, _ = supervised_logits(model, batch)
    kl = r3f_loss(logits_noisy, logits_clean)
    if stats is not None:
        stats["ce"] = float(ce.detach())
        stats["r3f_kl"] = float(kl.detach())
    return ce + r3f_lambda * kl, int(targets.numel())
