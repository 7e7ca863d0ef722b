"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random Llama/Gemma-3 models, all built
here from a config (no downloads). Session-scoped: built once, a fraction of a second each."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never read or write the user's asset cache (converted models, built datasets, judge verdicts).
os.environ.setdefault("NEFTUNE_CACHE", tempfile.mkdtemp(prefix="neftune-test-cache-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "The quick brown fox jumps over the lazy dog. Hello world! What is the capital of France? Paris.",
    "user assistant system 0123456789 + - * / = ( ) [ ] { } , ; : ' \" ? ! .",
] * 20


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _save_model(path, cfg_cls, model_cls, tok, **kw):
    torch.manual_seed(0)
    cfg = cfg_cls(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **kw,
    )
    model = model_cls(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


# The one size of every tiny random model in the tests (2 layers, hidden 32, 4 heads / 2 KV heads).
TINY_DIMS = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_model(
        tmp_path_factory.mktemp("tiny-llama"),
        LlamaConfig,
        LlamaForCausalLM,
        tiny_tokenizer,
        **TINY_DIMS,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return _save_model(
        tmp_path_factory.mktemp("tiny-gemma"),
        Gemma3TextConfig,
        Gemma3ForCausalLM,
        tiny_tokenizer,
        **TINY_DIMS,
        head_dim=8,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )
