"""model_dropout: the architecture's own dropout, set at load time; active in training mode only."""

import pytest
import torch

from neftune.errors import ConfigError
from neftune.modeling import load_model
from neftune.regularizers import model_dropout_overrides


def test_dropout_changes_training_outputs_not_eval(tiny_llama_dir):
    over = model_dropout_overrides(tiny_llama_dir, 0.3)
    assert over == {"attention_dropout": 0.3}
    plain, drop = load_model(tiny_llama_dir), load_model(tiny_llama_dir, **over)
    ids = torch.randint(3, 100, (2, 12))
    drop.train()
    a, b = drop(input_ids=ids, use_cache=False).logits, drop(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(a, b)  # two training-mode passes differ
    plain.train()
    assert torch.equal(plain(input_ids=ids, use_cache=False).logits, plain(input_ids=ids, use_cache=False).logits)
    drop.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(drop(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)


def test_zero_is_no_override_and_no_dropout_key_is_refused(tmp_path, tiny_llama_dir):
    assert model_dropout_overrides(tiny_llama_dir, 0.0) == {}
    from transformers import MambaConfig

    MambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has no dropout setting"):
        model_dropout_overrides(str(tmp_path), 0.1)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        model_dropout_overrides(tiny_llama_dir, 1.5)


def test_config_keys_validated():
    from neftune.config import load_config

    cfg = load_config(
        None, ["model_dropout=0.1", "r3f_lambda=0.5", "neftune_placement=prompt", "neftune_distribution=symmetric"]
    )
    assert (cfg.model_dropout, cfg.r3f_lambda, cfg.neftune_placement) == (0.1, 0.5, "prompt")
    for bad in ("model_dropout=1.0", "r3f_lambda=-1", "neftune_placement=middle", "neftune_distribution=laplace"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])
