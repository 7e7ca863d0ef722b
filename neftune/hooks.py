"""The drop-in: forward hooks that add neftune_noise() to a Hugging Face model's input embeddings.

`activate(model, alpha)` (or `NEFTune(...)`) finds the embedding module through peft/DDP/FSDP/DeepSpeed
wrappers, records each batch's attention_mask / position_ids / labels on the way down, and adds the
per-sequence noise of noise.py to the embedding's output in training mode only (never in eval or
inside generate()). The math and its guarantees are in noise.py; this file is only the plumbing.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .noise import (
    DISTRIBUTIONS,
    PLACEMENTS,
    _apply_token_mask,
    _check_alpha,
    _per_document,
    document_ids,
    neftune_noise,
    placement_mask,
)


def _find_embedding(model) -> torch.nn.Module:
    from ._wrappers import unwrap

    base = unwrap(model)
    if not hasattr(base, "get_input_embeddings"):
        raise TypeError(f"{type(base).__name__} has no get_input_embeddings(): not a Hugging Face model?")
    emb = base.get_input_embeddings()
    if emb is None:
        raise TypeError(f"{type(base).__name__}.get_input_embeddings() returned None")
    return emb


def _ancestors(model, child) -> list:
    """The modules from the outermost model down to `child`'s parent (all that may receive the
    batch: a multimodal `...ForConditionalGeneration` embeds outside its decoder backbone)."""
    from ._wrappers import unwrap

    root = unwrap(model)
    name = next((n for n, m in root.named_modules() if m is child), None)
    if not name:
        return [root]
    parts = name.split(".")
    return [root.get_submodule(".".join(parts[:i])) for i in range(len(parts))]


class NEFTune:
    """Hooks that make a Hugging Face causal LM NEFTune-noisy in training mode.

    Use as a context manager (`with neftune.activate(model, 5): ...`) or call `remove()`.
    - Forward pre-hooks (with kwargs) on every module from the outermost model down to the one
      that owns the embedding (through peft/DDP/FSDP/DeepSpeed wrappers) record the batch's
      `attention_mask` / `position_ids` (and `labels`, when given); the embedding's forward hook
      scales per sequence.
    - Noise is added to the embedding module's output only while that module is in training mode,
      and never inside `generate()`. A training forward with a cache (prefix-tuning) is noised.
    - Which tensor receives the noise: the embedding module's output, as `out + noise * s` where s
      is the module's own output scale (`embed_scale`, Gemma's sqrt(d); 1 otherwise), i.e. noise
      in embedding-table space. With gradient checkpointing the embedding is not recomputed, so the
      noise seen in backward is the one drawn in forward.
    - `pop_stats()` returns the measured noise energy per sequence relative to alpha^2/3
      (mean/min/max) and the noise-to-token-norm ratio, accumulated since the last call.
    """

    def __init__(
        self,
        model,
        alpha: float,
        *,
        distribution: str = "uniform",
        generator: Optional[torch.Generator] = None,
        track_stats: bool = True,
        placement: str = "all",
    ):
        self.alpha = _check_alpha(alpha)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.distribution, self.generator, self.track_stats = distribution, generator, track_stats
        self.placement = placement
        self._next_labels = None
        self.model = model
        self.embedding = _find_embedding(model)
        for h in self.embedding._forward_hooks.values():
            name = getattr(h, "__name__", "")
            if "neftune" in name and not isinstance(getattr(h, "__self__", None), NEFTune):
                raise RuntimeError(
                    "transformers' own NEFTune hook is active on this model (neftune_noise_alpha "
                    "is set on the Trainer): unset it, neftune.activate replaces it"
                )
        if getattr(self.embedding, "_neftune_handle", None) is not None:
            raise RuntimeError("NEFTune is already active on this model; remove() it first (noise never stacks)")
        self.enabled = True
        self._batch: dict = {}
        self._in_generate = 0
        self._warned = False
        self._reset_stats()
        self._handles = []
        # Every module on the path to the embedding records the batch it is called with: whichever
        # ran last before the embedding is the embedding's own input. The outermost model forgets
        # it when its forward ends, and the embedding after use, so no later forward sees it.
        chain = _ancestors(model, self.embedding)
        for owner in chain:
            self._handles.append(owner.register_forward_pre_hook(self._capture, with_kwargs=True))
        self._handles.append(chain[0].register_forward_hook(self._forget, always_call=True))
        self._handles.append(self.embedding.register_forward_hook(self._add_noise))
        self.embedding._neftune_handle = self
        self._patched_generate = False
        if hasattr(model, "generate") and callable(model.generate):
            orig = model.generate

            def generate(*args, **kwargs):
                self._in_generate += 1
                try:
                    return orig(*args, **kwargs)
                finally:
                    self._in_generate -= 1

            model.generate = generate
            self._patched_generate = True

    # ---------------------------------------------------------------- hooks
    def set_labels(self, labels: Optional[torch.Tensor]) -> None:
        """Labels of the next forward, for callers that run the backbone directly (our training
        loss does): placement="prompt"/"response" derives its token mask from them. Used once."""
        self._next_labels = labels

    def _capture(self, module, args, kwargs):
        labels = kwargs.get("labels")
        if labels is None:  # an inner module of the same forward: keep the outer call's labels
            labels = self._batch.get("labels")
        if labels is None:  # set_labels(): a caller that runs the backbone directly
            labels, self._next_labels = self._next_labels, None
        self._batch = {
            "attention_mask": kwargs.get("attention_mask"),
            "position_ids": kwargs.get("position_ids"),
            "labels": labels,
            "seen": True,
        }

    def _forget(self, module, args, output):
        self._batch = {}

    def _lengths(self, batch, B, T):
        """(attention_mask, position_ids) matching the embedding output's B×T, or None each.

        A mask longer than T covers cached positions first (peft prefix-tuning prepends its virtual
        tokens): its last T columns are this input's. Anything else that does not fit, or no batch
        seen at all, falls back to L = the row length, with a warning (never a stale mask)."""
        mask, pos = batch.get("attention_mask"), batch.get("position_ids")
        if mask is not None and mask.dim() == 2 and mask.shape[0] == B and mask.shape[1] > T:
            mask = mask[:, -T:]
        if pos is not None and pos.dim() == 2 and pos.shape[-1] > T:
            pos = pos[:, -T:]
        unusable = [
            k
            for k, v, ok in (
                ("attention_mask", mask, mask is None or tuple(mask.shape) == (B, T)),
                ("position_ids", pos, pos is None or (pos.dim() == 2 and pos.shape[-1] == T)),
            )
            if not ok
        ]
        if (unusable or not batch.get("seen")) and not self._warned:
            self._warned = True
            why = (
                f"{', '.join(unusable)} of another shape than the embeddings {B}x{T}"
                if unusable
                else "no forward with the batch's attention_mask/position_ids ran before the embedding"
            )
            warnings.warn(f"NEFTune: {why}; using L = row length {T} (padding/packing not seen)", stacklevel=3)
        return (None if "attention_mask" in unusable else mask), (None if "position_ids" in unusable else pos)

    def _token_mask(self, labels, B, T):
        if self.placement == "all":
            return None
        if labels is None or tuple(labels.shape) != (B, T):
            got = "no labels" if labels is None else f"labels of shape {tuple(labels.shape)}"
            raise ValueError(
                f"NEFTune placement={self.placement!r} needs the batch's labels (B×T = {(B, T)}) to tell "
                f"prompt from response tokens, got {got}: pass labels= to the model or call set_labels()"
            )
        return placement_mask(labels, self.placement)

    def _add_noise(self, module, inputs, output):
        batch, self._batch = self._batch, {}  # one batch's mask is never reused for the next forward
        # A cache in training outside generate() is part of the input (peft prefix-tuning's virtual
        # tokens), not decoding: noise the real tokens as usual.
        if not (module.training and self.enabled and self.alpha > 0) or self._in_generate:
            return None
        B, T = output.shape[:2]
        mask, pos = self._lengths(batch, B, T)
        tmask = self._token_mask(batch.get("labels"), B, T)
        noise = neftune_noise(
            output,
            self.alpha,
            attention_mask=mask,
            position_ids=pos,
            distribution=self.distribution,
            generator=self.generator,
            token_mask=tmask,
        )
        scale = getattr(module, "embed_scale", None)
        if self.track_stats:
            with torch.no_grad():
                self._record(output, noise, mask, pos, scale, tmask)
        if scale is not None:
            noise = noise * torch.as_tensor(scale, device=noise.device).to(noise.dtype)
        return output + noise

    # ---------------------------------------------------------------- stats
    def _reset_stats(self):
        self._ratios, self._noise_sq, self._token_sq = [], 0.0, 0.0

    def _record(self, output, noise, mask, pos, scale, tmask=None):
        # one pass over the noise: per-token squared norms feed both the energy and the norm ratio
        doc, valid = document_ids(output.shape[:2], mask, pos, device=output.device)
        valid = _apply_token_mask(valid, tmask)  # energy and norms over the noised tokens only
        tok_sq = noise.float().pow(2).sum(-1) * valid
        energy = _per_document(tok_sq, doc, valid)
        self._ratios.append((energy / (self.alpha**2 / 3)).cpu())
        table_sq = output.detach().float().pow(2).sum(-1) * valid
        if scale is not None:
            table_sq = table_sq / float(torch.as_tensor(scale).float()) ** 2
        self._noise_sq += float(tok_sq.sum())
        self._token_sq += float(table_sq.sum())

    def pop_stats(self, prefix: str = "") -> dict:
        """{noise_energy_ratio_mean/min/max, noise_sequences, noise_to_token_norm} since last call."""
        if not self._ratios:
            return {}
        r = torch.cat(self._ratios)
        out = {
            f"{prefix}noise_energy_ratio_mean": float(r.mean()),
            f"{prefix}noise_energy_ratio_min": float(r.min()),
            f"{prefix}noise_energy_ratio_max": float(r.max()),
            f"{prefix}noise_sequences": int(r.numel()),
            f"{prefix}noise_to_token_norm": math.sqrt(self._noise_sq / self._token_sq)
            if self._token_sq > 0
            else float("nan"),
        }
        self._reset_stats()
        return out

    # ---------------------------------------------------------------- control
    def paused(self):
        """Context manager: no noise inside (e.g. for `clean_loss`)."""
        handle = self

        class _Paused:
            def __enter__(self):
                self.prev, handle.enabled = handle.enabled, False

            def __exit__(self, *exc):
                handle.enabled = self.prev
                return False

        return _Paused()

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.embedding, "_neftune_handle", None) is self:
            self.embedding._neftune_handle = None
        if self._patched_generate:
            try:
                del self.model.generate
            except AttributeError:
                warnings.warn("could not restore model.generate", stacklevel=2)
            self._patched_generate = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def activate(model, alpha: float, **options) -> NEFTune:
    """Make `model` NEFTune-noisy in training mode. Context manager or `.remove()`; see NEFTune."""
    return NEFTune(model, alpha, **options)
