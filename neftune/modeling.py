"""Model loading and the loss, shared by training and evaluation.

The loss computes output logits only at supervised positions. A 270M Gemma spends ~60% of its
parameters in the 262k-vocabulary output layer; prompt positions have no label, so their logits
are pure waste. We run the decoder backbone, gather the hidden states whose *next* token is
supervised, and apply the output head (and Gemma's logit soft-capping, if any) to those alone.
The result equals the model's own mean-token cross-entropy (tests compare).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .assets import resolve_model
from .errors import NeftuneError
from .loss import chunked_cross_entropy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def unwrap(model):
    """Peel DDP/FSDP/DeepSpeed (`.module`) and peft (`get_base_model`) wrappers off a model."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
    return model


def backbone_and_head(model):
    """(decoder backbone returning last_hidden_state, output head) of an HF causal LM."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    backbone = getattr(base, base.base_model_prefix, None)
    if head is None or backbone is None:
        raise NeftuneError(f"{type(base).__name__}: cannot find decoder backbone/output head")
    return backbone, head


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None:
        # Padding is always masked out (attention and loss), so reusing EOS is harmless.
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", device: Optional[str] = None):
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    torch_dtype = "auto" if dtype == "auto" else _DTYPES[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as e:
        raise NeftuneError(f"cannot load model '{name_or_path}': {e}") from None
    if getattr(model, "hf_quantizer", None) is not None and all(p.is_floating_point() for p in model.parameters()):
        # a cache converted by an older version still says "GGUF-quantized" over fp32 weights
        model.hf_quantizer, model.is_quantized = None, False
        model.config.__dict__.pop("quantization_config", None)
    if device:
        model.to(device)
    return model


def load_trained(run_dir: str, device: Optional[str] = None):
    """Model + tokenizer of a finished `neftune train` run (full model or LoRA adapter)."""
    from .config import from_dict
    import yaml

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        raise NeftuneError(f"{run_dir}: not a neftune run dir (no config.yaml)")
    cfg = from_dict(yaml.safe_load(cfg_path.read_text()))
    tok = load_tokenizer(str(run)) if (run / "tokenizer_config.json").exists() else load_tokenizer(cfg.model)
    if (run / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = json.loads((run / "adapter_config.json").read_text()).get("base_model_name_or_path") or cfg.model
        base = load_model(base_name if Path(base_name).exists() else cfg.model, cfg.dtype, device)
        model = PeftModel.from_pretrained(base, str(run))
    elif (run / "config.json").exists():
        model = load_model(str(run), cfg.dtype, device)
    else:
        raise NeftuneError(f"{run_dir}: no model or adapter saved (training not finished?)")
    model.eval()
    return model, tok, cfg


def supervised_loss(model, batch: dict, reduction: str = "mean"):
    """Next-token cross-entropy over supervised positions (labels != -100) only.

    Returns (loss, n_supervised_tokens). reduction="sum" lets gradient accumulation divide by the
    true token count of the whole optimizer step, like transformers' num_items_in_batch.
    Padded batches pass attention_mask; packed/padding-free batches pass position_ids (and no
    mask). use_cache=False always: a KV cache makes packed documents attend to each other.
    """
    backbone, head = backbone_and_head(model)
    kwargs = {"input_ids": batch["input_ids"], "use_cache": False}
    for k in ("attention_mask", "position_ids"):
        if batch.get(k) is not None:
            kwargs[k] = batch[k]
    hidden = backbone(**kwargs).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    h = hidden[:, :-1][keep]
    cap = getattr(unwrap(model).config, "final_logit_softcapping", None)
    transform = (lambda z: torch.tanh(z / cap) * cap) if cap else None
    # chunked: the N x 262k logits never exist whole, forward or backward (neftune/loss.py)
    loss, n = chunked_cross_entropy(h, head, labels[keep], transform)
    if reduction == "mean":
        loss = loss / max(n, 1)
    return loss, n
