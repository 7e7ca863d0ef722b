"""Chunked cross-entropy equals the unchunked loss in value and gradients, with fewer live logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neftune.loss import chunked_cross_entropy

ATOL = 1e-5  # fp32; only the summation order differs


def _case(seed=0, n=37, d=16, v=1000, bias=True):
    torch.manual_seed(seed)
    head = torch.nn.Linear(d, v, bias=bias)
    hidden = torch.randn(n, d, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    return head, hidden, labels


def _softcap(z):
    return torch.tanh(z / 3.0) * 3.0


@pytest.mark.parametrize("transform", [None, _softcap, lambda z: z / 0.37])
@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_loss_and_gradients_equal_unchunked(transform, chunk):
    head, hidden, labels = _case()
    logits = head(hidden)
    ref = F.cross_entropy((transform(logits) if transform else logits).float(), labels, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [hidden, head.weight, head.bias])

    loss, n = chunked_cross_entropy(hidden, head, labels, transform, chunk_size=chunk)
    grads = torch.autograd.grad(loss * 0.5, [hidden, head.weight, head.bias])  # a non-unit upstream gradient
    assert n == 37
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=1e-5)


def test_frozen_head_gets_no_gradient_and_hidden_does():
    head, hidden, labels = _case(bias=False)
    head.weight.requires_grad_(False)
    loss, _ = chunked_cross_entropy(hidden, head, labels, chunk_size=5)
    loss.backward()
    assert head.weight.grad is None
    ref = F.cross_entropy(head(hidden.detach().requires_grad_()), labels, reduction="sum")
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=1e-6)
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_no_grad_and_empty():
    head, hidden, labels = _case()
    with torch.no_grad():
        loss, n = chunked_cross_entropy(hidden, head, labels, chunk_size=4)
        ref = F.cross_entropy(head(hidden), labels, reduction="sum")
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=1e-6)
    loss, n = chunked_cross_entropy(hidden[:0], head, labels[:0])
    assert n == 0 and float(loss) == 0.0


def test_peak_logits_memory_is_one_chunk():
    """The unchunked loss keeps N x V logits alive for backward; the chunked one only N x d gradients."""
    head, hidden, labels = _case(n=256, v=20000, bias=False)
    head.weight.requires_grad_(False)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_cross_entropy(hidden, head, labels, chunk_size=16)
    assert max(saved) <= 16 * 20000  # at most one chunk's logits at a time (the inner per-chunk graph)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(head(hidden), labels, reduction="sum")
    assert max(saved) >= 256 * 20000


def test_supervised_loss_keeps_no_full_width_logits_for_backward(tiny_gemma_dir):
    """Through the real training loss (tiny Gemma 3, soft-capped): with more supervised tokens than one
    chunk, no vocabulary-wide tensor larger than a chunk is saved for backward. Fails on the unchunked loss."""
    from transformers import AutoModelForCausalLM

    from neftune.modeling import supervised_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32)
    vocab = model.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (2, 150))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    wide = []

    def pack(t):
        if t.dim() and t.shape[-1] == vocab:
            wide.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, n = supervised_loss(model, batch)
    assert n == 2 * 149 > 128
    assert max(wide, default=0) <= 128 * vocab
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
