"""Chunked cross-entropy over the output head: the N x V logits are never materialised whole.

A 262k-vocabulary head turns 256 supervised tokens into 268 MB of fp32 logits, and autograd keeps
them (plus a same-sized gradient) alive until backward. Here the head runs on `chunk_size` rows at a
time, and each chunk's gradient is taken right away, inside the forward, while its logits are hot in
cache: what survives to backward is the gradient w.r.t. the hidden states (N x d) and, only for a
trainable head, w.r.t. its parameters. The matmul count equals the unchunked loss (logits forward,
one gradient matmul per input that needs it); nothing is recomputed, unlike torch.utils.checkpoint,
which would run the 262k-wide matmul a third time.

Backward multiplies the stored gradients by the incoming scalar grad_output, which is exact because
the loss is a sum over rows (the gradient of a sum is linear in grad_output).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .packed import frozen_head_logits

Transform = Callable[[torch.Tensor], torch.Tensor] | None


def _chunk_loss(head, transform: Transform, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = frozen_head_logits(head, h)  # = head(h); a frozen CPU head runs on packed weights (packed.py)
    if transform is not None:
        logits = transform(logits)
    return F.cross_entropy(logits.float(), y, reduction="sum")


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, labels, head, transform, chunk_size, *params):
        needs_h = ctx.needs_input_grad[0]
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[5:]) if need]
        grad_h = torch.zeros_like(hidden) if needs_h else None
        grad_p = [torch.zeros_like(p) for p in wanted]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[s : s + chunk_size], labels[s : s + chunk_size]
            if not (needs_h or wanted):
                total += _chunk_loss(head, transform, h, y)
                continue
            with torch.enable_grad():
                h = h.detach().requires_grad_(needs_h)
                loss = _chunk_loss(head, transform, h, y)
                grads = torch.autograd.grad(loss, ([h] if needs_h else []) + wanted)
            total += loss.detach()
            if needs_h:
                grad_h[s : s + chunk_size] = grads[0]
            for acc, g in zip(grad_p, grads[int(needs_h) :]):
                acc += g
        ctx.save_for_backward(*([grad_h] if needs_h else []), *grad_p)
        ctx.layout = (needs_h, list(ctx.needs_input_grad[5:]))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        needs_h, param_needs = ctx.layout
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * grad_out if needs_h else None
        grad_params = [saved.pop(0) * grad_out if need else None for need in param_needs]
        return (grad_h, None, None, None, None, *grad_params)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    transform: Transform = None,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropy of `transform(head(hidden))` against `labels`, `chunk_size` rows at a time.

    hidden: (N, d) hidden states at supervised positions; labels: (N,) next-token ids (no -100 here:
    the caller has already selected supervised rows). transform: the model's logit transform (soft-
    capping, scaling) or None. Returns (loss_sum as a 0-dim fp32 tensor, N). Gradients flow to hidden and
    to every head parameter that requires grad, equal to the unchunked loss up to float summation order.
    """
    n = int(hidden.shape[0])
    if n == 0:
        return hidden.sum() * 0.0, 0
    params = [p for p in head.parameters()]
    loss = _ChunkedCE.apply(hidden, labels, head, transform, max(1, int(chunk_size)), *params)
    return loss, n
