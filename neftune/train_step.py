"""One optimizer step of `neftune train`, in pieces: which micro-batches, how many tokens, the noisy
forward/backward, the gradient norm, the finiteness check and the clean (noise-free) loss.

train.py's step loop (_fit) calls these through its own module namespace, so `neftune.train._forward_backward`
and the other old names stay importable and patchable (bench/profile_train_step.py wraps _forward_backward).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from .errors import TrainingDiverged
from .rundir import list_checkpoints

if TYPE_CHECKING:
    from .train import _Run


def optimizer_steps(per_epoch: int, ga: int, num_train_epochs: float, max_steps: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps), counted as transformers' Trainer counts them
    (Trainer.set_initial_training_values): an epoch of `per_epoch` micro-batches is ceil(per_epoch / ga)
    steps, its last step taking the remaining micro-batches, so a step never straddles two epochs and
    num_train_epochs epochs are trained (a fractional epoch is rounded up to a whole step); the total is
    max_steps when it is > 0, else ceil(num_train_epochs * steps per epoch), at least 1. (Counting
    floor(per_epoch / ga) full steps instead overshoots or cuts epochs whenever ga does not divide
    per_epoch: 3 micro-batches, ga 8, 3 epochs trained 8 epochs' worth.)"""
    per_step = max(math.ceil(per_epoch / ga), 1)
    total = max_steps if max_steps > 0 else max(1, math.ceil(num_train_epochs * per_step))
    return per_step, total


def micro_batches_done(steps: int, steps_per_epoch: int, per_epoch: int, ga: int) -> int:
    """Micro-batches one rank consumed in `steps` optimizer steps (see optimizer_steps: whole epochs, then
    ga per step of the unfinished one)."""
    epochs, k = divmod(steps, steps_per_epoch)
    return epochs * per_epoch + min(k * ga, per_epoch)


def _micro_batches(run: _Run, step: int) -> list[dict]:
    """The step's micro-batches, on the device: gradient_accumulation_steps of them, fewer for the last
    step of an epoch (see optimizer_steps); data order is a pure function of (seed, epoch)."""
    epoch, k = divmod(step - 1, run.steps_per_epoch)
    batches = run.epoch_batches(epoch)[k * run.ga : (k + 1) * run.ga]
    return [{key: v.to(run.acc.device) for key, v in b.items()} for b in batches]


def _token_counts(run: _Run, micro: list[dict]) -> tuple[int, int]:
    """(supervised tokens, real tokens) of all ranks' micro-batches of the step."""
    sup = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    real = sum(int(b["input_ids"].numel() if "attention_mask" not in b else b["attention_mask"].sum()) for b in micro)
    counts = torch.tensor([sup, real], device=run.acc.device)
    n_step, toks = (int(x) for x in (run.acc.reduce(counts, "sum") if run.world > 1 else counts))
    return n_step, toks


def _forward_backward(run: _Run, micro: list[dict], n_step: int) -> float:
    """Noisy loss + backward over the micro-batches; returns the step's mean loss per supervised token.

    Global token mean (like transformers' num_items_in_batch): divide by the supervised-token count
    of all ranks' micro-batches; times world, because DDP/FSDP average the ranks' gradients. Gradients
    are synchronised on the step's last micro-batch only (an epoch's last step may have fewer than ga)."""
    acc, world = run.acc, run.world
    loss_sum = torch.zeros((), device=acc.device)
    run.loss_module.r3f_kl_sum = 0.0
    for m, batch in enumerate(micro):
        ctx = acc.no_sync(run.wrapped) if m < len(micro) - 1 else nullcontext()
        with ctx:
            loss, _ = run.wrapped(batch)
            acc.backward(loss * world / max(n_step, 1))
        loss_sum += loss.detach().float()
    return _global_sum(acc, loss_sum) / max(n_step, 1)


def _grad_norm(run: _Run) -> float:
    params, max_norm = run.params, run.cfg.max_grad_norm
    if max_norm > 0:
        return float(run.acc.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))


def _check_finite(run: _Run, step: int, step_loss: float, grad_norm: float):
    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
        last = list_checkpoints(run.out)
        raise TrainingDiverged(
            f"step {step}: non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} "
            f"(loss={step_loss}, grad_norm={grad_norm}); stopped before the update. Last good "
            f"checkpoint: {last[-1] if last else 'none'}. Retrain with a lower learning_rate (a new output_dir, or "
            "overwrite_output_dir=true): a resume restores the checkpoint's optimizer and schedule, learning rate included"
        )


def _clean_loss(run: _Run, micro: list[dict], n_step: int, step: int) -> float:
    """The same micro-batches, same weights (before the update), no noise, no dropout (eval mode),
    no grad; for every run, α=0 too: it is the paired comparison's baseline."""
    wrapped = run.wrapped
    wrapped.eval()
    try:
        with torch.no_grad(), run.noise.paused():
            cl = _global_sum(run.acc, sum(wrapped(b)[0].detach().float() for b in micro)) / max(n_step, 1)
    finally:
        wrapped.train()
    if not math.isfinite(cl):
        print(f"[neftune] warning: clean_loss is non-finite at step {step}")
    return cl


def _global_sum(acc, x: torch.Tensor) -> float:
    return float(acc.reduce(x, "sum")) if acc.num_processes > 1 else float(x)
