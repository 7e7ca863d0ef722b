"""`neftune train`: one supervised finetuning run, top to bottom.

train(cfg) = _setup (output dir [+ resume check] -> seed -> tokenizer/model (+LoRA) -> data -> optimizer/schedule
-> [resume]) -> _fit (per step: micro-batches -> noisy loss -> backward -> clip -> step -> log -> checkpoint;
the step's pieces are in neftune/train_step.py) -> _finish (held-out loss -> final model/adapter + summary.json).

Built on accelerate (the same command runs under `accelerate launch` for DDP/FSDP/DeepSpeed).
The loss computes logits only at supervised positions (neftune.modeling.supervised_loss).
Resume is bit-exact on CPU: data order is a pure function of (seed, epoch), and the python /
numpy / torch / NEFTune-generator random states are part of every checkpoint (neftune/checkpoint.py).
An output_dir holds one run: a resume loads only a checkpoint of the same config, and training from
scratch over a previous run is refused unless overwrite_output_dir=true (checkpoint.claim_output_dir).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import packed, rundir
from .checkpoint import (  # noqa: F401  (old names importable from here)
    _failpoint,
    _rng_state,
    _set_rng_state,
    _state_dict,
    check_step_counting,
    claim_output_dir,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    save_model,
)
from .config import Config
from .data.coverage import covered_indices, trained_records
from .errors import NeftuneError, TrainingDiverged  # noqa: F401
from .modeling import check_loss_transform, heldout_loss, load_tokenizer
from .noise import activate
from .rundir import list_checkpoints  # noqa: F401
from .tracking import MetricsLogger
from .train_model import LossModule, build_model, check_master_weights, compute_dtype  # noqa: F401

# The step's pieces, called from _fit through this module's namespace (patchable as neftune.train.<name>).
from .train_step import (  # noqa: F401
    _check_finite,
    _clean_loss,
    _forward_backward,
    _global_sum,
    _grad_norm,
    _micro_batches,
    _token_counts,
    micro_batches_done,
    optimizer_steps,
)


@dataclass
class _Run:
    """Everything one training run holds between its steps (setup -> fit -> finish)."""

    cfg: Config
    acc: Any
    out: Path
    t0: float
    tokenizer: Any
    data: Any
    model: Any
    epoch_cache: dict = field(default_factory=dict)
    per_epoch: int = 0  # micro-batches per epoch per rank
    steps_per_epoch: int = 0  # optimizer steps per epoch (train_step.optimizer_steps)
    total_steps: int = 0
    params: list = field(default_factory=list)
    loss_module: LossModule | None = None
    wrapped: Any = None
    optimizer: Any = None
    scheduler: Any = None
    noise_gen: torch.Generator | None = None
    noise: Any = None
    logger: Any = None
    pbar: Any = None
    ckpt: Path | None = None
    start: int = 0
    done: dict = field(default_factory=dict)  # counters of the segments before a resume (trainer_state)
    sup_tokens: int = 0
    tok_total: int = 0
    last_loss: float = float("nan")
    t_window: float = 0.0
    tok_window: int = 0
    bs: int = field(init=False)  # per-device batch size; ga, world, rank, pad_id: set from cfg/acc/tokenizer
    ga: int = field(init=False)
    world: int = field(init=False)
    rank: int = field(init=False)
    pad_id: Any = field(init=False)

    def __post_init__(self):
        cfg, acc = self.cfg, self.acc
        self.bs, self.ga = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        self.world, self.rank, self.pad_id = acc.num_processes, acc.process_index, self.tokenizer.pad_token_id

    def epoch_batches(self, epoch: int) -> list:
        """Data order is a pure function of (seed, epoch): resume needs no sampler state."""
        from .data import make_batches

        if epoch not in self.epoch_cache:
            self.epoch_cache.clear()
            cfg, world = self.cfg, self.world
            b = make_batches(
                self.data.train_examples,
                self.bs,
                packing=cfg.data.packing,
                max_length=cfg.data.max_length,
                pad_token_id=self.pad_id,
                seed=cfg.seed,
                epoch=epoch,
            )
            self.epoch_cache[epoch] = b[: len(b) // world * world][self.rank :: world] if world > 1 else b
        return self.epoch_cache[epoch]

    def counters(self) -> dict:
        return {
            "train_tokens": self.tok_total,
            "supervised_tokens": self.sup_tokens,
            "world_size": self.world,
            "wall_time_s": self.done["wall_time_s"] + time.time() - self.t0,
            "steps_per_epoch": self.steps_per_epoch,  # resume refuses a checkpoint that counted steps otherwise
            "total_steps": self.total_steps,
        }


def train(cfg: Config) -> dict:
    t0 = time.time()
    run = _setup(cfg, t0)
    run.pbar = tqdm(
        total=run.total_steps, initial=run.start, desc="train", disable=not run.acc.is_main_process, dynamic_ncols=True
    )
    try:
        _fit(run)
    finally:
        run.pbar.close()
        run.noise.remove()
    return _finish(run)


def _setup(cfg: Config, t0: float) -> _Run:
    """Accelerator, run directory, seed, tokenizer, data, model, optimizer/schedule, [resume], noise hook."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    from .data import build_datasets

    # cpu=True: gloo multi-process on CPU boxes; mixed_precision: autocast over float32 weights.
    # AcceleratorState is a process singleton: forget a previous run's precision (`neftune compare`
    # trains several runs in one process); the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=compute_dtype(cfg))
    out, ckpt = claim_output_dir(cfg, acc)  # one run per dir: refuses a stale run or a foreign checkpoint
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg, tokenizer)
    if not data.train_examples:
        raise NeftuneError(f"{cfg.data.path}: no training examples left after filtering ({dict(data.skipped)})")
    if acc.is_main_process:
        rundir.write_records(out, "train", data.train_records)
        rundir.write_records(out, "heldout", data.heldout_records)
    model = build_model(cfg, acc.device)
    check_loss_transform(model)  # refuses a model family whose logit transform the loss does not know
    model.train()

    run = _Run(cfg, acc, out, t0, tokenizer, data, model, ckpt=ckpt)
    run.per_epoch = len(run.epoch_batches(0))
    if run.per_epoch == 0:
        raise NeftuneError("fewer training batches than processes; lower per_device_train_batch_size")
    run.steps_per_epoch, run.total_steps = optimizer_steps(run.per_epoch, run.ga, cfg.num_train_epochs, cfg.max_steps)

    run.params = [p for p in model.parameters() if p.requires_grad]
    check_master_weights(run.params)
    optimizer = torch.optim.AdamW(run.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    run.loss_module = LossModule(model, cfg.r3f_lambda)
    run.wrapped, run.optimizer = acc.prepare(run.loss_module, optimizer)
    if acc.distributed_type.name.startswith("FSDP"):  # prepare replaced the parameters by sharded ones
        run.params = [p for p in run.wrapped.parameters() if p.requires_grad]
    # Not passed through prepare: accelerate's AcceleratedScheduler steps it num_processes times per
    # optimizer step (split_batches=False). total_steps counts optimizer steps; we step it once each.
    run.scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        run.optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * run.total_steps),
        num_training_steps=run.total_steps,
    )
    # independent per rank
    run.noise_gen = torch.Generator(device=acc.device).manual_seed(cfg.seed * 100003 + run.rank + 1)
    _resume(run)
    run.logger = MetricsLogger(out, cfg.report_to, resume_step=run.start, enabled=acc.is_main_process)
    run.noise = activate(
        model,
        cfg.neftune_noise_alpha,
        distribution=cfg.neftune_distribution,
        generator=run.noise_gen,
        placement=cfg.neftune_placement,
    )
    if acc.is_main_process:
        print(
            f"[neftune] {cfg.model}: {sum(p.numel() for p in run.params):,} trainable params, "
            f"{len(data.train_examples)} train / {len(data.heldout_examples)} held-out examples, {run.total_steps} "
            f"steps x {run.bs * run.ga * run.world} examples, alpha={cfg.neftune_noise_alpha} ({cfg.neftune_distribution})"
        )
    return run


def _resume(run: _Run):
    """Load run.ckpt (resume_from_checkpoint, checked by claim_output_dir) into the run: weights, optimizer,
    schedule, random states, counters."""
    world, ckpt = run.world, run.ckpt
    run.done = {"train_tokens": 0, "supervised_tokens": 0, "wall_time_s": 0.0, "world_size": world}
    if ckpt is not None and run.acc.distributed_type.name.startswith("FSDP"):
        raise NeftuneError(f"{ckpt}: resuming an FSDP run is not supported (checkpoints hold rank 0's optimizer shard)")
    if ckpt is not None:
        saved = rundir.read_trainer_state(ckpt)  # checked before anything is loaded
        check_step_counting(ckpt, saved, run.steps_per_epoch, run.total_steps, run.per_epoch, run.ga, world)
        run.start = load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler, run.noise_gen, run.rank)
        print(f"[neftune] resumed from {ckpt} at step {run.start}")
        run.done.update(saved)
        if run.done["world_size"] != world:
            print(
                f"[neftune] warning: world size changed on resume: checkpoint trained with {run.done['world_size']} "
                f"processes, now {world}; data order per step and noise streams differ from an uninterrupted run"
            )
    run.sup_tokens, run.tok_total = run.done["supervised_tokens"], run.done["train_tokens"]


def _fit(run: _Run):
    """The optimizer steps: micro-batches -> noisy loss -> backward -> clip -> [clean loss] -> step -> log -> checkpoint."""
    cfg = run.cfg
    run.t_window, run.tok_window = time.time(), 0
    for step in range(run.start + 1, run.total_steps + 1):
        micro = _micro_batches(run, step)
        n_step, toks = _token_counts(run, micro)
        step_loss = _forward_backward(run, micro, n_step)
        grad_norm = _grad_norm(run)
        _check_finite(run, step, step_loss, grad_norm)
        rec = {
            "step": step,
            "epoch": round(step / run.steps_per_epoch, 4),
            "loss": step_loss,
            "grad_norm": grad_norm,
            "learning_rate": run.optimizer.param_groups[0]["lr"],
        }
        if cfg.r3f_lambda > 0:  # per supervised token, like loss (which includes lambda * this)
            kl = torch.tensor(run.loss_module.r3f_kl_sum, device=run.acc.device)
            rec["r3f_kl"] = _global_sum(run.acc, kl) / max(n_step, 1)
        if cfg.clean_loss_steps and step % cfg.clean_loss_steps == 0:
            rec["clean_loss"] = _clean_loss(run, micro, n_step, step)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.sup_tokens += n_step
        run.tok_total += toks
        run.tok_window += n_step
        run.last_loss = step_loss
        if step % cfg.logging_steps == 0 or step == run.total_steps or "clean_loss" in rec:
            _log(run, step, rec)
        run.pbar.update(1)
        _failpoint("after_step", step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < run.total_steps:
            _checkpoint(run, step)


def _log(run: _Run, step: int, rec: dict):
    now = time.time()
    rec["supervised_tokens_per_s"] = run.tok_window / max(now - run.t_window, 1e-9)
    run.t_window, run.tok_window = now, 0
    stats = run.noise.pop_stats()
    if stats and not all(math.isfinite(v) for v in stats.values()):
        print(f"[neftune] warning: non-finite NEFTune energy statistics at step {step}: {stats}")
    rec.update(stats)
    run.logger.log(rec)
    clean = {"clean": f"{rec['clean_loss']:.3f}"} if "clean_loss" in rec else {}
    run.pbar.set_postfix(loss=f"{rec['loss']:.3f}", **clean)


def _checkpoint(run: _Run, step: int):
    save_checkpoint(
        run.acc,
        run.model,
        run.tokenizer,
        run.optimizer,
        run.scheduler,
        run.noise_gen,
        step,
        run.out,
        run.cfg.save_total_limit,
        wrapped=run.wrapped,
        counters=run.counters(),
        cfg=run.cfg,
    )


def _finish(run: _Run) -> dict:
    """trained.jsonl, held-out loss, the final model/adapter and summary.json."""
    cfg, acc, out, data, world = run.cfg, run.acc, run.out, run.data, run.world
    if acc.is_main_process:
        rundir.write_records(
            out,
            "trained",
            trained_records(
                data.train_records,
                micro_batches_done(run.total_steps, run.steps_per_epoch, run.per_epoch, run.ga) * world,
                run.per_epoch * world,
                lambda epoch: covered_indices(data.train_examples, run.bs, cfg, run.pad_id, world, epoch),
            ),
        )
    hl = heldout_loss(
        run.model, data.heldout_examples, max(run.bs, 8), run.pad_id, cfg.data.max_length, loss_fn=run.wrapped
    )
    run.logger.log({"step": run.total_steps, "heldout_loss": hl})
    run.logger.close()
    packed.release(run.model)  # the training head's packed copy (one more head in memory) is done
    save_model(run.model, run.tokenizer, out, acc, run.wrapped)
    wall = run.done["wall_time_s"] + time.time() - run.t0  # the sum of all segments of a resumed run
    summary = {
        "steps": run.total_steps,
        "train_loss": run.last_loss,
        "heldout_loss": hl,
        "wall_time_s": round(wall, 1),
        "train_tokens": run.tok_total,
        "supervised_tokens": run.sup_tokens,
        "n_train": len(data.train_examples),
        "n_heldout": len(data.heldout_examples),
        "skipped": dict(data.skipped),
        "resumed_from": str(run.ckpt) if run.ckpt else None,
        "world_size": world,
        "distributed_type": acc.distributed_type.name,
        "mixed_precision": acc.mixed_precision,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "versions": versions(),
    }
    if run.ckpt is not None and run.done["world_size"] != world:
        summary["resumed_world_size"] = run.done["world_size"]
    if acc.is_main_process:
        rundir.write_summary(out, summary)
        print(
            f"[neftune] done: {out} (train loss {run.last_loss:.4f}, held-out loss {hl:.4f}, {summary['wall_time_s']} s)"
        )
    acc.wait_for_everyone()
    return summary


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("neftune", "torch", "transformers", "peft", "accelerate", "datasets", "trl"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
