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
from .errors import NeftuneError, TrainingDiverged
from .modeling import heldout_loss, load_model, load_tokenizer, supervised_loss, unwrap
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
    """Wraps the model so DDP/FSDP see one forward that returns (loss_sum, n_tokens)."""

    def __init__(self, model, r3f_lambda: float = 0.0):
        super().__init__()
        self.model = model
        self.r3f_lambda = r3f_lambda

    def forward(self, batch):
        # --- rivals (issue 13): R3F consistency term (neftune/r3f.py); labels to the noise hook for placement
        if self.r3f_lambda > 0:
            loss, n = r3f_supervised_loss(self.model, batch, self.r3f_lambda)
            return loss, torch.tensor(n, device=loss.device)
        set_noise_labels(self.model, batch["labels"])
        # --- end rivals
        loss, n = supervised_loss(self.model, batch, reduction="sum")
        return loss, torch.tensor(n, device=loss.device)


# ----------------------------------------------------------------------------- checkpoints
def _rng_state(noise_gen) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "noise": noise_gen.get_state()}
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


def save_model(model, tokenizer, path, accelerator):
    """Hugging Face format: adapter (adapter_model.safetensors + adapter_config.json) for LoRA,
    model.safetensors + config.json for full finetuning."""
    state = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(path)


def save_checkpoint(accelerator, model, tokenizer, optimizer, scheduler, noise_gen, step, output_dir, limit):
    tmp = rundir.checkpoint_tmp_path(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model(model, tokenizer, tmp, accelerator)
    if accelerator.is_main_process:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rank = accelerator.process_index
    torch.save(_rng_state(noise_gen), tmp / f"rng_state_{rank}.pth")
    _failpoint("during_save", step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rundir.commit_checkpoint(tmp, output_dir, step, keep=limit)
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
            raise NeftuneError(f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
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
    model = load_model(cfg.model, cfg.dtype, **model_dropout_overrides(cfg.model, cfg.model_dropout))
    if cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    return model.to(device)


# ----------------------------------------------------------------------------- the run
def train(cfg: Config) -> dict:
    from accelerate import Accelerator
    from transformers import get_scheduler

    from .data import build_datasets, make_batches

    t0 = time.time()
    acc = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: gloo multi-process on CPU boxes
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
    model.train()

    # Data order is a pure function of (seed, epoch): resume needs no sampler state.
    bs, ga, world, rank = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, acc.num_processes, acc.process_index
    pad_id = tokenizer.pad_token_id
    epoch_cache: dict = {}

    def epoch_batches(epoch):
        if epoch not in epoch_cache:
            epoch_cache.clear()
            b = make_batches(data.train_examples, bs, packing=cfg.data.packing, max_length=cfg.data.max_length,
                             pad_token_id=pad_id, seed=cfg.seed, epoch=epoch)
            epoch_cache[epoch] = b[: len(b) // world * world][rank::world] if world > 1 else b
        return epoch_cache[epoch]

    per_epoch = len(epoch_batches(0))
    if per_epoch == 0:
        raise NeftuneError("fewer training batches than processes; lower per_device_train_batch_size")
    steps_per_epoch = max(per_epoch // ga, 1)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(steps_per_epoch * cfg.num_train_epochs))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    wrapped, optimizer, scheduler = acc.prepare(LossModule(model, cfg.r3f_lambda), optimizer, scheduler)
    noise_gen = torch.Generator(device=acc.device).manual_seed(cfg.seed * 100003 + rank + 1)  # independent per rank

    start = 0
    ckpt = resolve_resume(cfg)
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, optimizer, scheduler, noise_gen, rank)
        print(f"[neftune] resumed from {ckpt} at step {start}")
    logger = MetricsLogger(out, cfg.report_to, resume_step=start, enabled=acc.is_main_process)
    noise = activate(model, cfg.neftune_noise_alpha, distribution=cfg.neftune_distribution, generator=noise_gen,
                     placement=cfg.neftune_placement)
    if acc.is_main_process:
        print(f"[neftune] {cfg.model}: {sum(p.numel() for p in params):,} trainable params, {len(data.train_examples)} train / "
              f"{len(data.heldout_examples)} held-out examples, {total_steps} steps x {bs * ga * world} examples, "
              f"alpha={cfg.neftune_noise_alpha} ({cfg.neftune_distribution})")

    pbar = tqdm(total=total_steps, initial=start, desc="train", disable=not acc.is_main_process, dynamic_ncols=True)
    sup_tokens = tok_total = 0
    last_loss = float("nan")
    t_window, tok_window = time.time(), 0
    try:
        for step in range(start + 1, total_steps + 1):
            micro = []
            for m in range(ga):
                idx = (step - 1) * ga + m
                epoch, i = divmod(idx, per_epoch)
                micro.append({k: v.to(acc.device) for k, v in epoch_batches(epoch)[i].items()})
            n_step = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            loss_sum = 0.0
            for m, batch in enumerate(micro):
                ctx = acc.no_sync(wrapped) if m < ga - 1 else nullcontext()
                with ctx:
                    loss, _ = wrapped(batch)
                    acc.backward(loss / max(n_step, 1))
                loss_sum += float(loss.detach())
            step_loss = loss_sum / max(n_step, 1)
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else \
                torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            grad_norm = float(grad_norm)
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                last = list_checkpoints(out)
                raise TrainingDiverged(f"step {step}: non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} "
                                       f"(loss={step_loss}, grad_norm={grad_norm}); stopped before the update. Last good "
                                       f"checkpoint: {last[-1] if last else 'none'} (resume_from_checkpoint=latest)")
            rec = {"step": step, "epoch": round((step * ga) / per_epoch, 4), "loss": step_loss, "grad_norm": grad_norm,
                   "learning_rate": optimizer.param_groups[0]["lr"]}
            if cfg.clean_loss_steps and step % cfg.clean_loss_steps == 0 and cfg.neftune_noise_alpha > 0:
                # The same micro-batches, same weights (before the update), no noise, no grad.
                with torch.no_grad(), noise.paused():
                    cl = sum(float(supervised_loss(model, b, reduction="sum")[0]) for b in micro) / max(n_step, 1)
                rec["clean_loss"] = cl
                if not math.isfinite(cl):
                    print(f"[neftune] warning: clean_loss is non-finite at step {step}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            toks = sum(int(b["input_ids"].numel() if "attention_mask" not in b else b["attention_mask"].sum()) for b in micro)
            sup_tokens, tok_total, tok_window, last_loss = sup_tokens + n_step, tok_total + toks, tok_window + n_step, step_loss
            if step % cfg.logging_steps == 0 or step == total_steps:
                now = time.time()
                rec["supervised_tokens_per_s"] = tok_window / max(now - t_window, 1e-9)
                t_window, tok_window = now, 0
                stats = noise.pop_stats()
                if stats and not all(math.isfinite(v) for v in stats.values()):
                    print(f"[neftune] warning: non-finite NEFTune energy statistics at step {step}: {stats}")
                rec.update(stats)
                logger.log(rec)
                pbar.set_postfix(loss=f"{step_loss:.3f}", **({"clean": f"{rec['clean_loss']:.3f}"} if "clean_loss" in rec else {}))
            pbar.update(1)
            _failpoint("after_step", step)
            if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                save_checkpoint(acc, model, tokenizer, optimizer, scheduler, noise_gen, step, out, cfg.save_total_limit)
    finally:
        pbar.close()
        noise.remove()

    hl = heldout_loss(model, data.heldout_examples, max(bs, 8), pad_id, cfg.data.max_length)
    logger.log({"step": total_steps, "heldout_loss": hl})
    logger.close()
    save_model(model, tokenizer, out, acc)
    summary = {"steps": total_steps, "train_loss": last_loss, "heldout_loss": hl, "wall_time_s": round(time.time() - t0, 1),
               "train_tokens": tok_total, "supervised_tokens": sup_tokens, "n_train": len(data.train_examples),
               "n_heldout": len(data.heldout_examples), "skipped": dict(data.skipped), "resumed_from": str(ckpt) if ckpt else None,
               "world_size": world, "versions": versions()}
    if acc.is_main_process:
        rundir.write_summary(out, summary)
        print(f"[neftune] done: {out} (train loss {last_loss:.4f}, held-out loss {hl:.4f}, {summary['wall_time_s']} s)")
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
