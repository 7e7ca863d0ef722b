"""The supervised-positions loss equals the model's own loss, also for families that transform the
head's logits (Gemma soft-capping, Granite logits_scaling, Cohere logit_scale); an unknown
transform is refused at load time."""
import pytest
import torch

from neftune.errors import NeftuneError
from neftune.modeling import check_loss_transform, supervised_loss

TINY = {"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(GraniteConfig(**TINY, logits_scaling=8.0))


def _cohere():
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**TINY, logit_scale=0.0625))


def _gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**TINY, head_dim=8, sliding_window=16, final_logit_softcapping=0.5,
                                              layer_types=["sliding_attention", "full_attention"]))


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
    monkeypatch.setattr(modeling, "logit_transform", lambda model: (lambda logits: logits))  # a family we don't know
    with pytest.raises(NeftuneError, match="logit transform"):
        check_loss_transform(m)
