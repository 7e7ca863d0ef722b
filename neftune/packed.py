"""Pre-packed oneDNN weights on CPU: the decode step's skinny matmuls and the training head at ~2x.

A decode step multiplies a few rows (one token per prompt) by every weight matrix. On the CPU wheel of
torch, `F.linear` goes to MKL's sgemm, which on the AMD EPYC box we measured (2026-11-29) runs these skinny shapes at
2-7 GB/s of weights (bench/README.md: a 16 x 640 by 640 x 262144 head takes 270-370 ms) while the same
product through oneDNN with the weight reordered once into its blocked layout takes ~95 ms. That reorder
is what `torch.compile`'s CPU freezing pass does; we do only that part, without compiling anything:

    with packed_linears(model):   # CPU, fp32, inference only
        ... forward calls ...

Inside the block every plain `nn.Linear` (LoRA's base layers and adapters included: peft calls them as
modules) runs `torch.ops.mkldnn._linear_pointwise` on its packed copy. The packed copies are taken on entry
and dropped on exit, so they cost one extra copy of the weights while the block runs and must not
outlive a weight update (they are snapshots). Results are the same products summed in another order
(float differences of ~1e-6 relative); greedy tokens are gated by the tests against per-prompt `generate`.

Training uses one piece of this: `frozen_head_logits` runs a frozen output head (LoRA training leaves
Gemma's 262k x 640 tied head frozen) on a packed copy kept across steps, with its own backward (the
gradient w.r.t. the hidden states; a frozen head needs no other). MKL ran that head's forward on a
128-row chunk at 44 GFLOP/s, oneDNN at 91 (bench/README.md, same box, same minute). The copy is
repacked whenever the weight's storage or version counter changes, so it never goes stale.

Anything else runs unchanged: CUDA or non-fp32 weights, subclasses of `nn.Linear` with their own
forward (quantised layers), inputs that need gradients, a torch built without oneDNN.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
_PROBED: dict[str, bool] = {}


def available() -> bool:
    """oneDNN's packed linear runs on this torch build (probed once on a tiny product) and is not
    switched off with NEFTUNE_PACK_WEIGHTS=0 (everywhere: generation and the training head)."""
    if os.environ.get("NEFTUNE_PACK_WEIGHTS", "1").strip() in ("0", "false", "no"):
        return False
    if "ok" not in _PROBED:
        try:
            w, x = torch.randn(8, 4), torch.randn(3, 4)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            _PROBED["ok"] = bool(torch.backends.mkldnn.is_available()) and torch.allclose(y, x @ w.T, atol=1e-5)
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            log.debug("oneDNN packed linear unavailable: %s", e)
            _PROBED["ok"] = False
    return _PROBED["ok"]


def _packable(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward  # quantised subclasses keep their own kernels
        and "forward" not in vars(module)  # accelerate's offload hooks replaced it: leave theirs alone
        and isinstance(w, torch.Tensor)
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and w.dim() == 2
        and w.layout == torch.strided
    )


def _packed_forward(module: nn.Linear, packed: torch.Tensor):
    weight, bias = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.linear(x, weight, bias)
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
        return y.reshape(*lead, y.shape[-1])

    return forward


@contextlib.contextmanager
def packed_linears(model: nn.Module, batch_size: int = 16, enabled: bool = True) -> Iterator[int]:
    """Run the model's plain fp32 CPU `nn.Linear`s on oneDNN-packed weights inside the block.

    batch_size: the row count oneDNN tunes the layout for (any row count works).
    Yields how many layers were packed (0 when disabled, unavailable or nothing qualifies).
    """
    mods = [m for m in model.modules() if _packable(m)] if enabled else []
    if not mods or not available():
        yield 0
        return
    patched = []
    try:
        with torch.no_grad():
            for m in mods:
                packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), max(1, int(batch_size)))
                m.forward = _packed_forward(m, packed)  # instance attribute shadows the class's forward
                patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward


# ------------------------------------------------------------------------------------------ training
def _frozen_plain(w: torch.Tensor) -> bool:
    """A frozen weight that owns its whole storage: not a view into a flat FSDP buffer, not a DTensor
    (on top of `_packable`'s checks)."""
    return (
        type(w.data) is torch.Tensor
        and not w.requires_grad
        and w.is_contiguous()
        and w.storage_offset() == 0
        and w.untyped_storage().nbytes() == w.numel() * w.element_size()
    )


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, packed):
        ctx.save_for_backward(weight)
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        return grad_out @ weight, None, None


def frozen_head_logits(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`head(x)` for a 2-d x; on a packed copy of the weight when the head is a plain, frozen, bias-free
    fp32 CPU `nn.Linear` (the copy lives on the module and is refreshed when the weight changes)."""
    if not (
        _packable(head)
        and head.bias is None
        and not head._forward_hooks
        and not head._forward_pre_hooks
        and x.dim() == 2
        and x.dtype == torch.float32
        and _frozen_plain(head.weight)
        and available()
    ):
        return head(x)
    w = head.weight
    key = (w.data_ptr(), w._version, tuple(w.shape))
    cached = getattr(head, "_neftune_packed", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(w, max(1, x.shape[0])))
        head._neftune_packed = cached  # plain attribute: not a buffer, never saved in a state dict
    return _FrozenLinear.apply(x, w, cached[1])


def release(model: nn.Module) -> int:
    """Drop the packed head copies `frozen_head_logits` kept on the model's modules; returns how many."""
    n = 0
    for m in model.modules():
        if "_neftune_packed" in vars(m):
            del m._neftune_packed
            n += 1
    return n
