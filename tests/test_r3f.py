"""R3F consistency term: zero at alpha=0, positive with noise, gradients through both passes, runs in training."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import neftune
from neftune.modeling import supervised_loss
from neftune.r3f import r3f_loss, r3f_supervised_loss, supervised_logits


def _batch(T=10):
    ids = torch.randint(3, 100, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, 7:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_r3f_loss_is_symmetric_kl_and_masks():
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    pa, pb = a.log_softmax(-1), b.log_softmax(-1)
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)
    assert torch.allclose(r3f_loss(a, b), (kl(pa, pb) + kl(pb, pa)).sum(), atol=1e-5)
    assert torch.allclose(r3f_loss(a, b), r3f_loss(b, a))
    m = torch.tensor([True, False, True, False])
    assert torch.allclose(r3f_loss(a, b, m), (kl(pa, pb) + kl(pb, pa))[m].sum(), atol=1e-5)
    assert r3f_loss(a, a) == 0


def test_supervised_logits_match_supervised_loss(tiny_gemma_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).eval()
    b = _batch()
    logits, targets = supervised_logits(model, b)
    loss, n = supervised_loss(model, b, reduction="sum")
    assert n == targets.numel()
    assert torch.allclose(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), loss, atol=1e-4)


@pytest.mark.parametrize("placement", ["all", "response"])
def test_term_zero_without_noise_positive_with_noise_and_gradient_flows(tiny_llama_dir, placement):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).train()
    b = _batch()
    ce = float(supervised_loss(model, b, reduction="sum")[0].detach())
    for alpha, positive in ((0.0, False), (5.0, True)):
        stats = {}
        with neftune.activate(model, alpha, placement=placement, generator=torch.Generator().manual_seed(0)):
            _, n = r3f_supervised_loss(model, b, 1.0, stats)
        assert n == int((b["labels"][:, 1:] != -100).sum())
        if positive:
            assert stats["r3f_kl"] > 0
        else:
            assert stats["r3f_kl"] == 0 and stats["ce"] == pytest.approx(ce, rel=1e-5)
    # gradient of the KL term alone reaches the trainable parameters, through both passes
    model.zero_grad()
    with neftune.activate(model, 5.0, placement=placement) as h:
        h.set_labels(b["labels"])
        noisy, _ = supervised_logits(model, b)
        with h.paused():
            clean, _ = supervised_logits(model, b)
        assert noisy.requires_grad and clean.requires_grad
        r3f_loss(noisy, clean).backward()
    grads = dict(model.named_parameters())
    for name in ("lm_head.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


def test_clean_pass_has_gradients_too(tiny_llama_dir):
    """R3F backpropagates through the clean pass: its logits carry a graph to the weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).train()
    with neftune.activate(model, 5.0) as h, h.paused():
        clean, _ = supervised_logits(model, _batch())
    assert clean.requires_grad


def test_training_step_with_r3f_runs(tmp_path, tiny_llama_dir):
    from neftune.train import train
    from tests.test_train import cfg_for

    summary = train(
        cfg_for(
            tiny_llama_dir,
            tmp_path / "run",
            "max_steps=2",
            "r3f_lambda=0.5",
            "save_steps=0",
            "neftune_placement=prompt",
        )
    )
    assert summary["steps"] == 2
    recs = [json.loads(line) for line in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    # prompt-only noise was drawn: the labels reached the hook through the R3F loss path
    assert any(r.get("noise_sequences", 0) > 0 for r in recs)
    assert [r["r3f_kl"] > 0 for r in recs if "loss" in r] == [True, True]  # the consistency term is logged
