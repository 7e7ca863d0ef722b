"""Checkpoints of a `neftune train` run: save the model (HF format), save/load a resumable
checkpoint (weights + optimizer + scheduler + every random state), resolve `resume_from_checkpoint`.

Naming, atomic commit and listing of checkpoint directories belong to rundir.py; this module only
writes and reads their contents. Resume is bit-exact on CPU because the python / numpy / torch /
NEFTune-generator random states of every rank are part of every checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from . import rundir
from .config import Config
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
