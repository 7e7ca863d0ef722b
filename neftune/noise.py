"""NEFTune noise, per sequence, correct under padding, packing and padding-free batches.

NEFTune (Jain et al. 2023, arXiv 2310.05914) adds, in training only,

    noise = U(-1, 1) * alpha / sqrt(L * d)

to the input embeddings of each sequence, L = that sequence's *real* token count, d = embedding
width. Each noised token gets E[|noise|^2] = d * alpha^2/(3 L d), so the whole sequence receives
alpha^2/3 in expectation, whatever L, d or batching. transformers' hook (and every trainer built
on it) uses the padded row length instead: it noises padding, and a packed row of k documents
shares one alpha^2/3 among all of them (each gets alpha^2/(3k)). Here L comes from the
attention mask (padding gets exactly zero) or, for packed rows, from `position_ids` restarting at
0 at each document, so every document gets its own L.

Noise lives in the embedding *table's* space: for models whose embedding module scales its
output (Gemma multiplies by sqrt(d) inside the module in transformers 5), the noise is multiplied
by that same scale, i.e. it is exactly as if it had been added to the looked-up table rows before
the model's own scale. So alpha means the same thing for every model family.

Variants (issue 13), all behind the same API and the same guarantees (per sequence / packed
document, zero on padding, train mode only, energy alpha^2/3 in expectation):
- distribution="gaussian": NEFTune paper's ablation, N(0, alpha^2/(3 L d)).
- distribution="symmetric": Rademacher (+-1 with probability 1/2 each) times alpha/sqrt(3 L d).
  Motivated by SymNoise (Yadav & Singh 2023, arXiv 2312.01523), whose abstract says "symmetric
  noise" that "more stringently regulat[es] local curvature". We could NOT read the paper's
  algorithm section, so we do not call this SymNoise. What we could read: the one third-party
  implementation we found (mii-llm/palingenesis `SymNoiseHook`) draws Bernoulli {-1, +1} noise
  times alpha/sqrt(T d), T the padded row length. Two differences, both deliberate: L is the
  real (noised) token count as everywhere here, and the extra 1/sqrt(3) keeps the expected
  energy per sequence at alpha^2/3 like uniform/gaussian (their scaling gives alpha^2, i.e. their
  alpha equals our alpha * sqrt(3)).
- token_mask / placement: noise only on the masked tokens (prompt-only or response-only, from
  labels), L counted over the noised tokens of each sequence / packed document, so the energy of
  each document's noised part is still alpha^2/3 (NEFTune issue #15 asks this question).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

DISTRIBUTIONS = ("uniform", "gaussian", "symmetric")
PLACEMENTS = ("all", "prompt", "response")


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"neftune alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(a) or a < 0:
        raise ValueError(f"neftune alpha must be finite and >= 0, got {alpha!r}")
    return a


def document_ids(shape, attention_mask=None, position_ids=None, device=None):
    """(doc_id B×T long, valid B×T bool). doc_id numbers the sequences of each row from 0.

    Padded rows: one document per row, valid = attention_mask. Packed / padding-free rows: a new
    document starts wherever position_ids does not continue the previous position by +1 (so
    both "restart at 0" and arbitrary offsets work). Neither given: the whole row is one document.
    """
    B, T = shape
    valid = torch.ones(B, T, dtype=torch.bool, device=device)
    if attention_mask is not None:
        if attention_mask.dim() != 2:  # 4-D custom masks: cannot infer lengths, treat as unpadded
            attention_mask = None
        else:
            valid = attention_mask.to(device=device).bool()
    doc = torch.zeros(B, T, dtype=torch.long, device=device)
    if position_ids is not None and position_ids.dim() == 2 and T > 1:
        pos = position_ids.to(device).expand(B, T) if position_ids.shape[0] == 1 else position_ids.to(device)
        starts = torch.ones(B, T, dtype=torch.long, device=device)
        starts[:, 1:] = (pos[:, 1:] != pos[:, :-1] + 1).long()
        doc = starts.cumsum(1) - 1
    return doc, valid


def per_token_length(doc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L of the document each token belongs to (B×T float), counting only valid tokens."""
    B, T = doc.shape
    counts = torch.zeros(B, T, dtype=torch.float32, device=doc.device)
    counts.scatter_add_(1, doc, valid.float())
    return counts.gather(1, doc)


def placement_mask(labels: torch.Tensor, placement: str) -> Optional[torch.Tensor]:
    """Which tokens get noise (B×T bool), from the batch's labels; None for placement="all".

    Our labels are unshifted (data/templates.py): labels[t] is token t itself where token t is
    supervised, -100 otherwise. So response = labels != -100, prompt = labels == -100 (padding is
    -100 too, but the attention mask zeroes it anyway). In packed rows the first token of every
    document is -100 (collate.py); it is a prompt token (BOS) unless train_on_inputs.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "all":
        return None
    return labels != -100 if placement == "response" else labels == -100


def neftune_noise(
    embeds: torch.Tensor,
    alpha: float,
    *,
    attention_mask=None,
    position_ids=None,
    distribution: str = "uniform",
    generator: Optional[torch.Generator] = None,
    token_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The noise to add to `embeds` (B×T×d): U(-1,1)·alpha/sqrt(L·d) per sequence (see module doc).

    distribution="gaussian" is the paper's ablation: N(0, sigma^2) with sigma = alpha/sqrt(3·L·d),
    chosen so the expected energy per sequence is the same alpha^2/3 as the uniform one.
    distribution="symmetric": +-1 (Rademacher) times alpha/sqrt(3·L·d), same expected energy.
    token_mask (B×T bool, optional): only these tokens get noise and L counts only them.
    Padding (attention_mask == 0) gets exactly 0; a row or document with L == 0 gets 0, never NaN.
    Drawn in float32 (bf16 has too few mantissa bits for small noise) and cast to embeds.dtype.
    """
    a = _check_alpha(alpha)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if embeds.dim() != 3:
        raise ValueError(f"embeds must be B×T×d, got shape {tuple(embeds.shape)}")
    if a == 0.0:
        return torch.zeros_like(embeds)
    B, T, d = embeds.shape
    doc, valid = document_ids((B, T), attention_mask, position_ids, device=embeds.device)
    valid = _apply_token_mask(valid, token_mask)
    L = per_token_length(doc, valid)
    scale = torch.where(valid & (L > 0), a / torch.sqrt(L.clamp(min=1.0) * d), torch.zeros_like(L))
    if distribution == "uniform":
        base = torch.rand((B, T, d), generator=generator, device=embeds.device, dtype=torch.float32) * 2 - 1
    elif distribution == "gaussian":
        base = torch.randn((B, T, d), generator=generator, device=embeds.device, dtype=torch.float32) / math.sqrt(3.0)
    else:  # E[x^2] = 1 for +-1, 1/3 for U(-1,1): divide by sqrt(3) to match
        bits = torch.randint(0, 2, (B, T, d), generator=generator, device=embeds.device, dtype=torch.int8)
        base = (bits.float() * 2 - 1) / math.sqrt(3.0)
    return (base * scale.unsqueeze(-1)).to(embeds.dtype)


def _apply_token_mask(valid: torch.Tensor, token_mask) -> torch.Tensor:
    if token_mask is None:
        return valid
    if tuple(token_mask.shape) != tuple(valid.shape):
        raise ValueError(f"token_mask must be B×T {tuple(valid.shape)}, got {tuple(token_mask.shape)}")
    return valid & token_mask.to(device=valid.device, dtype=torch.bool)


def sequence_energy(noise: torch.Tensor, attention_mask=None, position_ids=None, token_mask=None) -> torch.Tensor:
    """Sum of squared noise per sequence (per document for packed rows): 1-D, one entry per document
    (with a token_mask: per document that has at least one masked token)."""
    doc, valid = document_ids(noise.shape[:2], attention_mask, position_ids, device=noise.device)
    valid = _apply_token_mask(valid, token_mask)
    return _per_document(noise.float().pow(2).sum(-1) * valid, doc, valid)


def _per_document(tok_values: torch.Tensor, doc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum a B×T per-token quantity over each document: 1-D, one entry per non-empty document."""
    per_doc = torch.zeros_like(tok_values, dtype=torch.float32).scatter_add_(1, doc, tok_values.float())
    n_docs = torch.zeros_like(tok_values, dtype=torch.float32).scatter_add_(1, doc, valid.float())
    return per_doc[n_docs > 0]


# The hooks that put this noise into a model (NEFTune, activate) live in hooks.py; these names keep
# `from neftune.noise import activate` working. Lazy (PEP 562) because hooks.py imports this module.
_MOVED = ("NEFTune", "activate", "_find_embedding", "_ancestors")


def __getattr__(name):
    if name in _MOVED:
        from . import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
