"""The model as `neftune train` trains it: build_model (LoRA, gradient checkpointing, float32 master
weights), compute_dtype (accelerate's mixed precision), check_master_weights, and LossModule, the one
forward every prepared (DDP/FSDP) pass of the run goes through."""

from __future__ import annotations

import torch

from .config import Config
from .errors import NeftuneError
from .modeling import load_model, supervised_loss
from .r3f import r3f_supervised_loss, set_noise_labels
from .regularizers import model_dropout_overrides


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
