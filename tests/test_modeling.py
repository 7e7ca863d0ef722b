"""The supervised-positions loss equals the model's own loss, also for families that transform the
head's logits (Gemma soft-capping, Granite logits_scaling, Cohere logit_scale); an unknown
transform is refused at load time."""

import pytest
import torch

from neftune.errors import NeftuneError
from neftune.modeling import check_loss_transform, supervised_loss

TINY = {
    "vocab_size": 120,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def _granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(GraniteConfig(**TINY, logits_scaling=8.0))


def _cohere():
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**TINY, logit_scale=0.0625))


def _gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(
        Gemma3TextConfig(
            **TINY,
            head_dim=8,
            sliding_window=16,
            final_logit_softcapping=0.5,
            layer_types=["sliding_attention", "full_attention"],
        )
    )


def _batch(vocab=120):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels[1, 9:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("build", [_granite, _cohere, _gemma], ids=["granite", "cohere", "gemma-softcap"])
def test_supervised_loss_equals_model_loss_for_logit_transforms(build):
    torch.manual_seed(0)
    m = build().eval()
    b = _batch()
    ours, n = supervised_loss(m, b)
    ref = m(**b, use_cache=False).loss
    assert n == int((b["labels"][:, 1:] != -100).sum())
    assert torch.allclose(ours, ref, atol=1e-5), (float(ours), float(ref))
    check_loss_transform(m)  # accepted


def test_supervised_loss_equals_model_loss(tiny_gemma_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    b = _batch(100)
    ours, n = supervised_loss(m, b)
    ref = m(**b, use_cache=False).loss
    assert n == int((b["labels"][:, 1:] != -100).sum())
    assert torch.allclose(ours, ref, atol=1e-5)


def test_unknown_logit_transform_is_refused(monkeypatch):
    from neftune import modeling

    torch.manual_seed(0)
    m = _granite()
    monkeypatch.setattr(modeling, "logit_transform", lambda model: lambda logits: logits)  # a family we don't know
    with pytest.raises(NeftuneError, match="logit transform"):
        check_loss_transform(m)


def test_per_example_loss_is_each_examples_own_mean_nll_and_pools_to_heldout_loss():
    from neftune.modeling import heldout_loss, per_example_loss

    torch.manual_seed(0)
    model = _gemma()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n, prompt in ((9, 3), (5, 2), (12, 11), (7, 7)):  # the last has no supervised token
        ids = torch.randint(3, 120, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    per = per_example_loss(model, examples, batch_size=3, pad_token_id=0)
    for ex, (nll, k) in zip(examples[:3], per):
        ids = torch.tensor([ex["input_ids"]])
        alone, n = supervised_loss(
            model.eval(),
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([ex["labels"]])},
        )
        assert k == n and abs(nll - float(alone)) < 1e-5
    assert per[3][1] == 0 and per[3][0] != per[3][0]  # nan: no loss without a supervised token
    pooled = sum(a * k for a, k in per[:3]) / sum(k for _, k in per[:3])
    assert abs(pooled - heldout_loss(model, examples[:3], 2, 0, 64)) < 1e-5


@pytest.mark.parametrize("build", [_granite, _cohere, _gemma], ids=["granite", "cohere", "gemma-softcap"])
def test_r3f_supervised_logits_use_the_models_logit_transform(build):
    """R3F's KL compares the distributions the loss trains: the same transformed logits."""
    import torch.nn.functional as F

    from neftune.r3f import supervised_logits

    torch.manual_seed(0)
    m = build().eval()
    b = _batch()
    logits, targets = supervised_logits(m, b)
    ref = m(**b, use_cache=False).loss
    assert torch.allclose(F.cross_entropy(logits.float(), targets), ref, atol=1e-5)
