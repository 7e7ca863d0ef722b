"""oneDNN-packed linears: same products as F.linear inside the block, the model untouched after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neftune import packed
from neftune.packed import packed_linears

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


def test_the_environment_switch_turns_packing_off(monkeypatch):
    net = _net()
    monkeypatch.setenv("NEFTUNE_PACK_WEIGHTS", "0")
    with packed_linears(net) as n:
        assert n == 0
    head = _frozen_head()
    packed.frozen_head_logits(head, torch.randn(2, 24))
    assert not hasattr(head, "_neftune_packed")


def test_a_forward_replaced_by_someone_else_survives_the_block():
    net = _net()
    hooked = net[0].forward  # what accelerate's add_hook_to_module does: an instance-level forward
    net[0].forward = hooked
    with packed_linears(net) as n:
        assert n == 1 and net[0].forward is hooked
    assert net[0].forward is hooked  # still there after the block


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


# ------------------------------------------------------------------------------------------ training
def _frozen_head(v=500, d=24):
    torch.manual_seed(1)
    head = nn.Linear(d, v, bias=False)
    head.weight.requires_grad_(False)
    return head


def test_frozen_head_loss_and_hidden_gradient_match_the_plain_head():
    from neftune.loss import chunked_cross_entropy

    head = _frozen_head()
    hidden = torch.randn(37, 24, requires_grad=True)
    labels = torch.randint(0, 500, (37,))
    ref = torch.nn.functional.cross_entropy(torch.tanh(head(hidden) / 3) * 3, labels, reduction="sum")
    (ref_g,) = torch.autograd.grad(ref * 0.5, [hidden])
    loss, _ = chunked_cross_entropy(hidden, head, labels, lambda z: torch.tanh(z / 3) * 3, chunk_size=16)
    (g,) = torch.autograd.grad(loss * 0.5, [hidden])
    assert getattr(head, "_neftune_packed", None) is not None  # the packed path ran
    assert "_neftune_packed" not in str(head.state_dict().keys())
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, ref_g, rtol=1e-5, atol=1e-5)
    assert packed.release(nn.Sequential(head)) == 1 and not hasattr(head, "_neftune_packed")


def test_frozen_head_is_repacked_when_its_weight_changes():
    head = _frozen_head()
    x = torch.randn(5, 24)
    first = packed.frozen_head_logits(head, x)
    torch.testing.assert_close(first, head(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        head.weight.mul_(-2.0)  # same storage, new values: the version counter moves
    torch.testing.assert_close(packed.frozen_head_logits(head, x), head(x), rtol=1e-5, atol=1e-5)
    head.weight = nn.Parameter(torch.randn(500, 24), requires_grad=False)  # new storage
    torch.testing.assert_close(packed.frozen_head_logits(head, x), head(x), rtol=1e-5, atol=1e-5)


def test_trainable_biased_or_viewed_heads_take_the_plain_path():
    trainable = nn.Linear(24, 50, bias=False)
    x = torch.randn(3, 24)
    packed.frozen_head_logits(trainable, x).sum().backward()
    assert trainable.weight.grad is not None and not hasattr(trainable, "_neftune_packed")
    biased = nn.Linear(24, 50).requires_grad_(False)
    packed.frozen_head_logits(biased, x)
    hooked = _frozen_head()
    hooked.forward = hooked.forward  # as accelerate's offload hooks wrap it
    packed.frozen_head_logits(hooked, x)
    assert not hasattr(hooked, "_neftune_packed")
    viewed = _frozen_head()
    flat = torch.zeros(500 * 24 + 7)  # a view into a bigger flat buffer, as FSDP keeps parameters
    viewed.weight = nn.Parameter(flat[7:].view(500, 24), requires_grad=False)
    packed.frozen_head_logits(viewed, x)
    assert not hasattr(biased, "_neftune_packed") and not hasattr(viewed, "_neftune_packed")
