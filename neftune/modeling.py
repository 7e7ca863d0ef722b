"""Model loading and the loss, shared by training and evaluation.

The loss computes output logits only at supervised positions. A 270M Gemma spends ~60% of its
parameters in the 262k-vocabulary output layer; prompt positions have no label, so their logits
are pure waste. We run the decoder backbone, gather the hidden states whose *next* token is
supervised, and apply the output head (and Gemma's logit soft-capping, if any) to those alone.
The result equals the model's own mean-token cross-entropy (tests compare).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ._wrappers import unwrap  # noqa: F401  (re-exported: modeling.unwrap is public)
from .assets import resolve_model
from .errors import NeftuneError
from .loss import chunked_cross_entropy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_model(name_or_path: str, dtype: str = "float32", device: Optional[str] = None, **config_overrides):
    """config_overrides: model config attributes set before the model is built (e.g. attention_dropout)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    torch_dtype = "auto" if dtype == "auto" else _DTYPES[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **config_overrides)
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
    from .rundir import read_config

    run = Path(run_dir)
    cfg = read_config(run)
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


def supervised_hidden(model, batch: dict):
    """(hidden N×d, next-token targets N, output head) at the supervised positions (labels != -100):
    the backbone runs once, the head is left to the caller (chunked loss, R3F logits).
    Padded batches pass attention_mask; packed/padding-free batches pass position_ids (and no
    mask). use_cache=False always: a KV cache makes packed documents attend to each other."""
    backbone, head = backbone_and_head(model)
    kwargs = {"input_ids": batch["input_ids"], "use_cache": False}
    for k in ("attention_mask", "position_ids"):
        if batch.get(k) is not None:
            kwargs[k] = batch[k]
    hidden = backbone(**kwargs).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    return hidden[:, :-1][keep], labels[keep], head


def supervised_loss(model, batch: dict, reduction: str = "mean"):
    """Next-token cross-entropy over supervised positions (labels != -100) only.

    Returns (loss, n_supervised_tokens). reduction="sum" lets gradient accumulation divide by the
    true token count of the whole optimizer step, like transformers' num_items_in_batch.
    """
    h, targets, head = supervised_hidden(model, batch)
    # chunked: the N x 262k logits never exist whole, forward or backward (neftune/loss.py)
    loss, n = chunked_cross_entropy(h, head, targets, logit_transform(model))
    if reduction == "mean":
        loss = loss / max(n, 1)
    return loss, n


def logit_transform(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model's own forward does to the output head's result before the loss: Granite
    divides by `logits_scaling`, Cohere multiplies by `logit_scale`, Gemma soft-caps with
    `final_logit_softcapping`. One function, so a chunked loss can apply it per chunk.
    `check_loss_transform` verifies it against the model's own loss (families not listed here)."""
    cfg = unwrap(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    div = getattr(cfg, "logits_scaling", None)
    mul = getattr(cfg, "logit_scale", None)
    cap = getattr(cfg, "final_logit_softcapping", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if div is not None and div != 1:
            logits = logits / div
        if mul is not None and mul != 1:
            logits = logits * mul
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


@torch.no_grad()
def check_loss_transform(model, seq_len: int = 8, tol: float = 1e-2):
    """Refuse a model whose own loss differs from `supervised_loss` (an unknown logit transform):
    one tiny forward of both on the same random tokens, in eval mode (no dropout), at load time."""
    base = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        device = next(base.parameters()).device
        vocab = base.get_output_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (1, seq_len), generator=gen).to(device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        ours = float(supervised_loss(model, batch)[0])
        theirs = float(model(**batch, use_cache=False).loss)
    finally:
        model.train(was_training)
    if not abs(ours - theirs) <= tol * max(1.0, abs(theirs)):
        raise NeftuneError(
            f"{type(base).__name__}: the supervised-positions loss ({ours:.6f}) differs from the "
            f"model's own loss ({theirs:.6f}): unsupported logit transform in this model family"
        )


@torch.no_grad()
def heldout_loss(model, examples, batch_size, pad_token_id, max_length, loss_fn=None) -> float:
    """Mean supervised-token loss over `examples`. loss_fn(batch) -> (loss_sum, n): the forward to
    use (training passes its prepared wrapper so FSDP/autocast apply); default: the bare model."""
    from .data import make_batches

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for batch in make_batches(
        examples, batch_size, packing=False, max_length=max_length, pad_token_id=pad_token_id, seed=0, epoch=0
    ):
        b = {k: v.to(device) for k, v in batch.items()}
        loss, k = loss_fn(b) if loss_fn is not None else supervised_loss(model, b, reduction="sum")
        total, n = total + float(loss), n + int(k)
    model.train(was_training)
    return total / max(n, 1)


@torch.no_grad()
def per_example_loss(model, examples, batch_size, pad_token_id) -> list[tuple[float, int]]:
    """(mean supervised-token NLL, supervised tokens) of EACH example, in input order, eval mode (no
    dropout), through the bare model (no noise hook is active outside training). An example with no
    supervised token gives (nan, 0). Paired statistics need these, not only the pooled mean."""
    from .data.collate import _padded  # one right-padded batch, rows in input order

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    backbone, head = backbone_and_head(model)
    transform = logit_transform(model)
    pad = 0 if pad_token_id is None else pad_token_id
    bs = max(1, int(batch_size))
    out: list[tuple[float, int]] = []
    try:
        for start in range(0, len(examples), bs):
            chunk = examples[start : start + bs]
            b = {k: v.to(device) for k, v in _padded(chunk, pad).items()}
            hidden = backbone(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False
            ).last_hidden_state
            labels = b["labels"][:, 1:]
            keep = labels != -100
            nll = F.cross_entropy(transform(head(hidden[:, :-1][keep])).float(), labels[keep], reduction="none")
            sums = torch.zeros(len(chunk), device=device).index_add_(0, torch.nonzero(keep)[:, 0], nll)
            counts = keep.sum(dim=1)
            out += [
                (float(sums[r] / counts[r]) if counts[r] else float("nan"), int(counts[r])) for r in range(len(chunk))
            ]
    finally:
        model.train(was_training)
    return out
