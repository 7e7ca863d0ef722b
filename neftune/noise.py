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
import warnings
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
