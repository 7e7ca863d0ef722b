"""oneDNN-packed linears: same products as F.linear inside the block, the model untouched after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neftune.evaluation import packed
from neftune.evaluation.packed import packed_linears

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch built without oneDNN")


class Quantised(nn.Linear):  # a subclass with its own kernel must keep it
    def forward(self, x):
        return super().forward(x) + 1.0


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 300, bias=False), Quantised(300, 8))


def test_inside_the_block_products_match_and_the_packed_kernel_runs(monkeypatch):
    net = _net().eval()
    x = torch.randn(3, 5, 24)  # 3-d input: flattened for oneDNN and shaped back
    with torch.inference_mode():
        ref = net(x)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    with packed_linears(net, batch_size=3) as n, torch.inference_mode():
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[0].shape) or real(*a))
        got = net(x)
    assert n == 2  # the two plain Linears, not the subclass
    assert len(calls) == 2 and calls[0] == (15, 24)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_the_block_leaves_no_trace_and_disabled_packs_nothing():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with packed_linears(net) as n:
        assert n == 2 and all("forward" in vars(m) for m in (net[0], net[2]))
    assert not any("forward" in vars(m) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with packed_linears(net, enabled=False) as n:
        assert n == 0 and not any("forward" in vars(m) for m in net.modules())
    with pytest.raises(ValueError), packed_linears(net):  # restored on an exception too
        raise ValueError
    assert not any("forward" in vars(m) for m in net.modules())


def test_gradients_and_other_dtypes_fall_back_to_f_linear():
    net = _net()
    x = torch.randn(4, 24, requires_grad=True)
    with packed_linears(net):
        net(x).sum().backward()  # would fail inside the oneDNN op, which has no backward
    assert x.grad is not None and net[0].weight.grad is not None
    half = nn.Linear(8, 8).to(torch.bfloat16)
    with packed_linears(half) as n:
        assert n == 0


def test_lora_base_layers_and_adapters_are_packed(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        with packed_linears(model) as n:
            got = model(input_ids=ids).logits
    plain = sum(1 for m in model.modules() if type(m) is nn.Linear)
    assert n == plain and n > 3 * 7  # base layers, lora_A, lora_B and the head
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
