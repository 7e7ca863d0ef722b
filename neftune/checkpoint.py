"""Checkpoints of a `neftune train` run: save the model (HF format), save/load a resumable
checkpoint (weights + optimizer + scheduler + every random state + the config it was trained with),
resolve `resume_from_checkpoint` and check that it belongs to the run being resumed; find and delete a
previous run's artefacts (overwrite_output_dir).

Naming, atomic commit and listing of checkpoint directories belong to rundir.py; this module only
writes and reads their contents. Resume is bit-exact on CPU because the python / numpy / torch /
NEFTune-generator random states of every rank are part of every checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import rundir
from .config import Config, training_identity
from .config_typing import differing_keys
from .errors import NeftuneError
from .modeling import unwrap


def _failpoint(name: str, step: int):
    """Fault injection for the crash tests: NEFTUNE_FAILPOINT=after_step:5 or during_save:4 makes
    this process SIGKILL itself there (a real kill -9, at a reproducible point)."""
    spec = os.environ.get("NEFTUNE_FAILPOINT")
    if spec and spec == f"{name}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _state_dict(accelerator, wrapped) -> dict:
    """The full model's state dict, gathered through the prepared wrapper (FSDP shards), keyed as
    the inner model's own state dict (LossModule's `model.` prefix removed)."""
    state = accelerator.get_state_dict(wrapped)
    return {k.removeprefix("model."): v for k, v in state.items()}


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
    accelerator,
    model,
    tokenizer,
    optimizer,
    scheduler,
    noise_gen,
    step,
    output_dir,
    limit,
    wrapped=None,
    counters=None,
    cfg: Config | None = None,
):
    """checkpoint-`step`: weights, optimizer, scheduler, every rank's random states, and `cfg` as
    config.yaml (what check_resume compares a resume against; HF's Trainer keeps training_args.bin)."""
    tmp = rundir.checkpoint_tmp_path(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg is not None:
            rundir.write_config(tmp, cfg)
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


def claim_output_dir(cfg: Config, acc) -> tuple[Path, Path | None]:
    """The run dir, claimed for this run, and the checkpoint to resume from (None: from scratch).

    A dir holds one run, so that nothing of an older run passes for this one (compare reuses a dir with
    summary.json, resume_from_checkpoint=latest takes its newest checkpoint): a resume loads only a
    checkpoint trained with this config (check_resume); training from scratch over a previous run's
    summary, weights or checkpoints is refused unless overwrite_output_dir=true, which deletes them
    first (like HF's overwrite_output_dir). Checked on every rank, so an error stops them all, and
    before config.yaml is rewritten. `acc`: the run's Accelerator."""
    out = Path(cfg.output_dir)
    ckpt = resolve_resume(cfg)
    if ckpt is not None:
        check_resume(ckpt, cfg, acc.num_processes)
    resuming_here = ckpt is not None and ckpt.resolve().parent == out.resolve()
    found = [] if resuming_here else rundir.previous_run(out)
    if found and not cfg.overwrite_output_dir:
        resumable = rundir.latest_checkpoint(out) is not None
        raise NeftuneError(
            f"output_dir {out} holds a previous run ({', '.join(found)}); "
            + ("resume it with resume_from_checkpoint=latest, " if resumable else "")
            + "set overwrite_output_dir=true to delete it and train from scratch, or use a new output_dir"
        )
    if acc.is_main_process:
        if cfg.overwrite_output_dir and not resuming_here and out.is_dir():
            removed = rundir.remove_previous_run(out)
            if removed:
                print(f"[neftune] overwrite_output_dir: removed {', '.join(removed)} from {out}")
        elif resuming_here:  # unfinished again until _finish writes it: never reused as finished meanwhile
            rundir.summary_path(out).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        for stale in rundir.remove_incomplete_checkpoints(out):  # a kill during a save: never loaded
            print(f"[neftune] removing incomplete checkpoint {stale}")
        rundir.write_config(out, cfg)
    acc.wait_for_everyone()
    return out, ckpt


def check_resume(ckpt: Path, cfg: Config, world: int) -> None:
    """Refuse to resume `cfg` from a checkpoint trained with another training identity (config.training_identity:
    model, data, noise, optimisation, seed), naming the differing keys. The checkpoint's own config.yaml is
    the record; a checkpoint written before checkpoints carried one is checked against its run dir's.
    gradient_accumulation_steps may differ when the global batch does not (another world size, the same
    examples per step: train reports the world-size change)."""
    saved = rundir.config_path(ckpt)
    if not saved.exists():
        saved = rundir.config_path(ckpt.parent)
        if not saved.exists():
            print(f"[neftune] warning: {ckpt} carries no saved config; cannot check it was trained with this config")
            return
    old, new = training_identity(rundir.read_config(ckpt, path=saved)), training_identity(cfg)
    old_world = int(rundir.read_trainer_state(ckpt).get("world_size", world))
    ga = "gradient_accumulation_steps"
    if old[ga] * old_world == new[ga] * world:
        old[ga] = new[ga]
    diff = [f"{k} ({_short(a)} -> {_short(b)})" for k, a, b in differing_keys(old, new)]
    if diff:
        raise NeftuneError(
            f"{ckpt}: checkpoint of a run trained with another config ({'; '.join(diff)}, from {saved}); "
            "resume it with its own config, or train from scratch into a new output_dir"
        )


def check_step_counting(
    ckpt: Path, saved: dict, steps_per_epoch: int, total_steps: int, per_epoch: int, ga: int, world: int
) -> None:
    """Refuse a checkpoint whose optimizer steps map to other batches or another schedule length than this run's
    (`saved`: its trainer_state.json). Checkpoints record steps_per_epoch and total_steps; one written before
    steps were counted like HF Trainer's (ceil(per_epoch / ga) per epoch, the last one short) maps steps the
    same way only when ga divides the micro-batches per epoch. After a world-size change (allowed, with a
    warning) the counts may differ by rounding, so only a same-world mismatch is refused."""
    if "steps_per_epoch" in saved:
        old = (saved["steps_per_epoch"], saved.get("total_steps"))
        if old != (steps_per_epoch, total_steps) and saved.get("world_size", world) == world:
            raise NeftuneError(
                f"{ckpt}: its run had {old[0]} optimizer steps per epoch and {old[1]} in all, this one "
                f"{steps_per_epoch} and {total_steps}: the steps would take other batches and another schedule; "
                "resume with the checkpoint's settings, or retrain (overwrite_output_dir=true)"
            )
    elif per_epoch % ga:
        raise NeftuneError(
            f"{ckpt}: written before optimizer steps were counted like HF Trainer's, and gradient_accumulation_steps "
            f"{ga} does not divide the {per_epoch} micro-batches per epoch, so its steps took other batches; "
            "retrain (overwrite_output_dir=true)"
        )


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
