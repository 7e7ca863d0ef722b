"""`neftune train`: one supervised finetuning run, top to bottom.

config -> seed -> tokenizer/model (+LoRA) -> data -> optimizer/schedule -> [resume] ->
loop(micro-batches -> noisy loss -> backward -> clip -> step -> log -> checkpoint) ->
held-out loss -> final model/adapter + config.yaml + summary.json.

Built on accelerate (the same command runs under `accelerate launch` for DDP/FSDP/DeepSpeed).
The loss computes logits only at supervised positions (neftune.modeling.supervised_loss).
Resume is bit-exact on CPU: data order is a pure function of (seed, epoch), and the python /
numpy / torch / NEFTune-generator random states are part of every checkpoint.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import rundir
from .config import Config
from .data.coverage import covered_indices, trained_records
from .errors import NeftuneError, TrainingDiverged
from .modeling import check_loss_transform, heldout_loss, load_model, load_tokenizer, supervised_loss, unwrap
from .noise import activate
from .r3f import r3f_supervised_loss, set_noise_labels
from .regularizers import model_dropout_overrides
from .rundir import list_checkpoints
from .tracking import MetricsLogger


def _failpoint(name: str, step: int):
    """Fault injection for the crash tests: NEFTUNE_FAILPOINT=after_step:5 or during_save:4 makes
    this process SIGKILL itself there (a real kill -9, at a reproducible point)."""
    spec = os.environ.get("NEFTUNE_FAILPOINT")
    if spec and spec == f"{name}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class LossModule(torch.nn.Module):
    """Wraps the model so DDP/FSDP see one forward that returns (loss_sum, n_tokens).

    Every forward of the run (training, clean_loss, held-out loss) goes through the prepared
    wrapper of this module: under FSDP only the root's forward gathers the embedding, final norm
    and head, and under mixed precision only it runs in autocast."""

    def __init__(self, model, r3f_lambda: float = 0.0):
        super().__init__()
        self.model = model
        self.r3f_lambda = r3f_lambda
        self.r3f_kl_sum = 0.0  # the R3F term's KL sum over the step's micro-batches (logged as r3f_kl)

    def forward(self, batch):
        # --- rivals (issue 13): R3F consistency term (neftune/r3f.py); labels to the noise hook for placement
        if self.r3f_lambda > 0 and torch.is_grad_enabled():  # the training step only (not clean/held-out loss)
            stats: dict = {}
            loss, n = r3f_supervised_loss(self.model, batch, self.r3f_lambda, stats)
            self.r3f_kl_sum += stats["r3f_kl"]
            return loss, torch.tensor(n, device=loss.device)
        set_noise_labels(self.model, batch["labels"])
        # --- end rivals
        loss, n = supervised_loss(self.model, batch, reduction="sum")
        return loss, torch.tensor(n, device=loss.device)


def _state_dict(accelerator, wrapped) -> dict:
    """The full model's state dict, gathered through the prepared wrapper (FSDP shards), keyed as
    the inner model's own state dict (LossModule's `model.` prefix removed)."""
    state = accelerator.get_state_dict(wrapped)
    return {k.removeprefix("model."): v for k, v in state.items()}


def check_master_weights(params):
    """Refuse half-precision trainable parameters: AdamW's update lr*m/sqrt(v) ~ lr is rounded
    away when it is below half a bf16 ulp (|w| >= ~0.016 at lr 5e-5), so the model silently
    under-trains. Trainable weights stay float32; `dtype` is the compute dtype (autocast)."""
    half = [p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)]
    if half:
        raise NeftuneError(
            f"{len(half)} trainable parameters are {half[0]}: AdamW updates below half a "
            f"{half[0]} ulp round to zero (at lr 5e-5, most weights with |w| >= 0.016 never "
            "move). Train float32 master weights with dtype as the autocast compute dtype."
        )


# ----------------------------------------------------------------------------- checkpoints
def _rng_state(noise_gen) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, noise_gen):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise_gen.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model(model, tokenizer, path, accelerator, wrapped=None):
    """Hugging Face format: adapter (adapter_model.safetensors + adapter_config.json) for LoRA,
    model.safetensors + config.json for full finetuning. `wrapped`: the prepared LossModule, whose
    state dict is gathered (FSDP) rather than the inner model's shards."""
    state = _state_dict(accelerator, wrapped) if wrapped is not None else accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(path)


def save_checkpoint(
    accelerator, model, tokenizer, optimizer, scheduler, noise_gen, step, output_dir, limit, wrapped=None, counters=None
):
    tmp = rundir.checkpoint_tmp_path(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model(model, tokenizer, tmp, accelerator, wrapped)
    if accelerator.is_main_process:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rank = accelerator.process_index
    torch.save(_rng_state(noise_gen), tmp / f"rng_state_{rank}.pth")
    _failpoint("during_save", step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rundir.commit_checkpoint(tmp, output_dir, step, keep=limit, counters=counters)
    accelerator.wait_for_everyone()


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, noise_gen, rank: int) -> int:
    from safetensors.torch import load_file

    base = unwrap(model)
    if (ckpt / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        peft_model = model.module if hasattr(model, "module") else model
        set_peft_model_state_dict(peft_model, load_file(ckpt / "adapter_model.safetensors"))
    else:
        files = sorted(ckpt.glob("model*.safetensors"))
        if not files:
            raise NeftuneError(f"{ckpt}: checkpoint has no weights")
        state = {}
        for f in files:
            state.update(load_file(f))
        missing, unexpected = base.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise NeftuneError(
                f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = ckpt / f"rng_state_{rank}.pth"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False), noise_gen)
    return rundir.checkpoint_step(ckpt)


def resolve_resume(cfg: Config):
    r = cfg.resume_from_checkpoint
    if not r:
        return None
    if str(r).lower() in ("latest", "true"):
        return rundir.latest_checkpoint(cfg.output_dir)
    p = Path(r)
    if not rundir.is_complete_checkpoint(p):
        raise NeftuneError(f"resume_from_checkpoint: {r} is not a complete checkpoint (no {rundir.TRAINER_STATE})")
    return p


# ----------------------------------------------------------------------------- model
def build_model(cfg: Config, device):
    # `dtype` is the compute dtype (autocast, see compute_dtype). Trainable weights are float32
    # masters (check_master_weights); only a LoRA run's frozen base is loaded in `dtype`.
    model = load_model(
        cfg.model, cfg.dtype if cfg.lora.r > 0 else "float32", **model_dropout_overrides(cfg.model, cfg.model_dropout)
    )
    if cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        lcfg = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lcfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    return model.to(device)


def compute_dtype(cfg: Config) -> str:
    """accelerate's mixed_precision for `cfg.dtype` ("auto": the checkpoint's own dtype)."""
    name = cfg.dtype
    if name == "auto":
        from transformers import AutoConfig

        from .assets import resolve_model

        c = AutoConfig.from_pretrained(resolve_model(cfg.model))
        name = str(getattr(c, "dtype", None) or getattr(c, "torch_dtype", None) or "float32").replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, "no")


# ----------------------------------------------------------------------------- the run
def train(cfg: Config) -> dict:
    from accelerate import Accelerator
    from transformers import get_scheduler

    from .data import build_datasets, make_batches

    t0 = time.time()
    from accelerate.state import AcceleratorState

    # cpu=True: gloo multi-process on CPU boxes; mixed_precision: autocast over float32 weights.
    # AcceleratorState is a process singleton: forget a previous run's precision (`neftune compare`
    # trains several runs in one process); the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=compute_dtype(cfg))
    out = Path(cfg.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in rundir.remove_incomplete_checkpoints(out):  # a kill during a save: never loaded
            print(f"[neftune] removing incomplete checkpoint {stale}")
        rundir.write_config(out, cfg)
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

    # Data order is a pure function of (seed, epoch): resume needs no sampler state.
    bs, ga, world, rank = (
        cfg.per_device_train_batch_size,
        cfg.gradient_accumulation_steps,
        acc.num_processes,
        acc.process_index,
    )
    pad_id = tokenizer.pad_token_id
    epoch_cache: dict = {}

    def epoch_batches(epoch):
        if epoch not in epoch_cache:
            epoch_cache.clear()
            b = make_batches(
                data.train_examples,
                bs,
                packing=cfg.data.packing,
                max_length=cfg.data.max_length,
                pad_token_id=pad_id,
                seed=cfg.seed,
                epoch=epoch,
            )
            epoch_cache[epoch] = b[: len(b) // world * world][rank::world] if world > 1 else b
        return epoch_cache[epoch]

    per_epoch = len(epoch_batches(0))
    if per_epoch == 0:
        raise NeftuneError("fewer training batches than processes; lower per_device_train_batch_size")
    steps_per_epoch = max(per_epoch // ga, 1)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(steps_per_epoch * cfg.num_train_epochs))

    params = [p for p in model.parameters() if p.requires_grad]
    check_master_weights(params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_module = LossModule(model, cfg.r3f_lambda)
    wrapped, optimizer = acc.prepare(loss_module, optimizer)
    if acc.distributed_type.name.startswith("FSDP"):  # prepare replaced the parameters by sharded ones
        params = [p for p in wrapped.parameters() if p.requires_grad]
    # Not passed through prepare: accelerate's AcceleratedScheduler steps it num_processes times per
    # optimizer step (split_batches=False). total_steps counts optimizer steps; we step it once each.
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    noise_gen = torch.Generator(device=acc.device).manual_seed(cfg.seed * 100003 + rank + 1)  # independent per rank

    start = 0
    ckpt = resolve_resume(cfg)
    done = {"train_tokens": 0, "supervised_tokens": 0, "wall_time_s": 0.0, "world_size": world}
    if ckpt is not None and acc.distributed_type.name.startswith("FSDP"):
        raise NeftuneError(f"{ckpt}: resuming an FSDP run is not supported (checkpoints hold rank 0's optimizer shard)")
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, optimizer, scheduler, noise_gen, rank)
        print(f"[neftune] resumed from {ckpt} at step {start}")
        done.update(rundir.read_trainer_state(ckpt))
        if done["world_size"] != world:
            print(
                f"[neftune] warning: world size changed on resume: checkpoint trained with {done['world_size']} "
                f"processes, now {world}; data order per step and noise streams differ from an uninterrupted run"
            )
    logger = MetricsLogger(out, cfg.report_to, resume_step=start, enabled=acc.is_main_process)
    noise = activate(
        model,
        cfg.neftune_noise_alpha,
        distribution=cfg.neftune_distribution,
        generator=noise_gen,
        placement=cfg.neftune_placement,
    )
    if acc.is_main_process:
        print(
            f"[neftune] {cfg.model}: {sum(p.numel() for p in params):,} trainable params, {len(data.train_examples)} train / "
            f"{len(data.heldout_examples)} held-out examples, {total_steps} steps x {bs * ga * world} examples, "
            f"alpha={cfg.neftune_noise_alpha} ({cfg.neftune_distribution})"
        )

    pbar = tqdm(total=total_steps, initial=start, desc="train", disable=not acc.is_main_process, dynamic_ncols=True)
    sup_tokens, tok_total = done["supervised_tokens"], done["train_tokens"]
    last_loss = float("nan")
    t_window, tok_window = time.time(), 0
    try:
        for step in range(start + 1, total_steps + 1):
            micro = []
            for m in range(ga):
                idx = (step - 1) * ga + m
                epoch, i = divmod(idx, per_epoch)
                micro.append({k: v.to(acc.device) for k, v in epoch_batches(epoch)[i].items()})
            # Global token mean (like transformers' num_items_in_batch): divide by the supervised-token
            # count of all ranks' micro-batches; times world, because DDP/FSDP average the ranks' gradients.
            counts = torch.tensor(
                [
                    sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro),
                    sum(
                        int(b["input_ids"].numel() if "attention_mask" not in b else b["attention_mask"].sum())
                        for b in micro
                    ),
                ],
                device=acc.device,
            )
            n_step, toks = (int(x) for x in (acc.reduce(counts, "sum") if world > 1 else counts))
            loss_sum = torch.zeros((), device=acc.device)
            loss_module.r3f_kl_sum = 0.0
            for m, batch in enumerate(micro):
                ctx = acc.no_sync(wrapped) if m < ga - 1 else nullcontext()
                with ctx:
                    loss, _ = wrapped(batch)
                    acc.backward(loss * world / max(n_step, 1))
                loss_sum += loss.detach().float()
            step_loss = _global_sum(acc, loss_sum) / max(n_step, 1)
            grad_norm = (
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
                if cfg.max_grad_norm > 0
                else torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            )
            grad_norm = float(grad_norm)
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                last = list_checkpoints(out)
                raise TrainingDiverged(
                    f"step {step}: non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} "
                    f"(loss={step_loss}, grad_norm={grad_norm}); stopped before the update. Last good "
                    f"checkpoint: {last[-1] if last else 'none'} (resume_from_checkpoint=latest)"
                )
            rec = {
                "step": step,
                "epoch": round((step * ga) / per_epoch, 4),
                "loss": step_loss,
                "grad_norm": grad_norm,
                "learning_rate": optimizer.param_groups[0]["lr"],
            }
            if cfg.r3f_lambda > 0:  # per supervised token, like loss (which includes lambda * this)
                rec["r3f_kl"] = _global_sum(acc, torch.tensor(loss_module.r3f_kl_sum, device=acc.device)) / max(
                    n_step, 1
                )
            if cfg.clean_loss_steps and step % cfg.clean_loss_steps == 0:
                # The same micro-batches, same weights (before the update), no noise, no dropout (eval
                # mode), no grad; for every run, α=0 too: it is the paired comparison's baseline.
                wrapped.eval()
                try:
                    with torch.no_grad(), noise.paused():
                        cl = _global_sum(acc, sum(wrapped(b)[0].detach().float() for b in micro)) / max(n_step, 1)
                finally:
                    wrapped.train()
                rec["clean_loss"] = cl
                if not math.isfinite(cl):
                    print(f"[neftune] warning: clean_loss is non-finite at step {step}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sup_tokens, tok_total, tok_window, last_loss = (
                sup_tokens + n_step,
                tok_total + toks,
                tok_window + n_step,
                step_loss,
            )
            if step % cfg.logging_steps == 0 or step == total_steps or "clean_loss" in rec:
                now = time.time()
                rec["supervised_tokens_per_s"] = tok_window / max(now - t_window, 1e-9)
                t_window, tok_window = now, 0
                stats = noise.pop_stats()
                if stats and not all(math.isfinite(v) for v in stats.values()):
                    print(f"[neftune] warning: non-finite NEFTune energy statistics at step {step}: {stats}")
                rec.update(stats)
                logger.log(rec)
                pbar.set_postfix(
                    loss=f"{step_loss:.3f}", **({"clean": f"{rec['clean_loss']:.3f}"} if "clean_loss" in rec else {})
                )
            pbar.update(1)
            _failpoint("after_step", step)
            if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                counters = {
                    "train_tokens": tok_total,
                    "supervised_tokens": sup_tokens,
                    "world_size": world,
                    "wall_time_s": done["wall_time_s"] + time.time() - t0,
                }
                save_checkpoint(
                    acc,
                    model,
                    tokenizer,
                    optimizer,
                    scheduler,
                    noise_gen,
                    step,
                    out,
                    cfg.save_total_limit,
                    wrapped=wrapped,
                    counters=counters,
                )
    finally:
        pbar.close()
        noise.remove()

    if acc.is_main_process:
        rundir.write_records(
            out,
            "trained",
            trained_records(
                data.train_records,
                total_steps * ga * world,
                per_epoch * world,
                lambda: covered_indices(data.train_examples, bs, cfg, pad_id, world),
            ),
        )
    hl = heldout_loss(model, data.heldout_examples, max(bs, 8), pad_id, cfg.data.max_length, loss_fn=wrapped)
    logger.log({"step": total_steps, "heldout_loss": hl})
    logger.close()
    save_model(model, tokenizer, out, acc, wrapped)
    wall = done["wall_time_s"] + time.time() - t0  # the sum of all segments of a resumed run
    summary = {
        "steps": total_steps,
        "train_loss": last_loss,
        "heldout_loss": hl,
        "wall_time_s": round(wall, 1),
        "train_tokens": tok_total,
        "supervised_tokens": sup_tokens,
        "n_train": len(data.train_examples),
        "n_heldout": len(data.heldout_examples),
        "skipped": dict(data.skipped),
        "resumed_from": str(ckpt) if ckpt else None,
        "world_size": world,
        "distributed_type": acc.distributed_type.name,
        "mixed_precision": acc.mixed_precision,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "versions": versions(),
    }
    if ckpt is not None and done["world_size"] != world:
        summary["resumed_world_size"] = done["world_size"]
    if acc.is_main_process:
        rundir.write_summary(out, summary)
        print(f"[neftune] done: {out} (train loss {last_loss:.4f}, held-out loss {hl:.4f}, {summary['wall_time_s']} s)")
    acc.wait_for_everyone()
    return summary


def _global_sum(acc, x: torch.Tensor) -> float:
    return float(acc.reduce(x, "sum")) if acc.num_processes > 1 else float(x)


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("neftune", "torch", "transformers", "peft", "accelerate", "datasets", "trl"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
