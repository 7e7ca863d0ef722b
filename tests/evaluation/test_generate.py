"""Batched left-padded generation equals a per-prompt loop; resume regenerates only missing items."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from neftune.errors import DataError, NeftuneError
from neftune.evaluation.generate import encode_prompt, generate_answers, prompt_sha, read_alpaca_eval, write_alpaca_eval
from neftune.evaluation.greedy import greedy_generate

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{q}\n\n### Response:\n"
)
QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "2 + 2 =",
    "Say [ ] { } ; :",
    "user assistant system 0123456789 + - * / = ( )",
    "Paris.",
    "What is the quick brown fox? The lazy dog jumps over it, and then the fox says hello world.",
]
PROMPTS = [ALPACA.format(q=q) for q in QUESTIONS] + ["short", "a"]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", params=["llama", "gemma"])
def model_tok(request):
    path = request.getfixturevalue(f"tiny_{request.param}_dir")
    return _load(path)


def _loop(model, tok, prompts, max_new_tokens, repetition_penalty=None):
    """Reference: one prompt at a time, no padding at all."""
    outs = []
    for p in prompts:
        ids = torch.tensor([encode_prompt(tok, p)])
        kw = {"repetition_penalty": repetition_penalty} if repetition_penalty else {}
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **kw,
            )
        outs.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return outs


def test_bos_added_once(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, "Hello world")
    assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1
    assert encode_prompt(tiny_tokenizer, "<s>Hello world") == ids  # chat templates already render BOS
    assert encode_prompt(tiny_tokenizer, "Hello world", add_bos=False) == ids[1:]
    assert tiny_tokenizer.eos_token_id not in ids


@pytest.mark.parametrize("preset", ["greedy", "original"])
def test_batched_equals_unbatched_loop(model_tok, preset):
    model, tok = model_tok
    rep = 1.2 if preset == "original" else None
    ref = _loop(model, tok, PROMPTS, 12, rep)
    got = generate_answers(model, tok, PROMPTS, max_new_tokens=12, batch_size=4, preset=preset, progress=False)
    assert got == ref
    assert any(ref)  # the comparison is about real text, not empty strings
    assert len({len(encode_prompt(tok, p)) for p in PROMPTS}) > 4  # genuinely different lengths per batch


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("pack", [True, False])
def test_greedy_paths_equal_loop_at_any_batch_size(model_tok, batch_size, fast, pack, monkeypatch):
    """Every path (lean loop or `generate`, on oneDNN-packed weights or not) gives per-prompt `generate`'s text."""
    from neftune import packed
    from neftune.evaluation import generate as gen_mod

    model, tok = model_tok
    ref = _loop(model, tok, PROMPTS, 12)
    packs = []

    @contextlib.contextmanager
    def spy(*a, **k):
        with packed.packed_linears(*a, **k) as n:
            packs.append(n)
            yield n

    monkeypatch.setattr(gen_mod, "packed_linears", spy)
    got = generate_answers(
        model,
        tok,
        PROMPTS,
        max_new_tokens=12,
        batch_size=batch_size,
        progress=False,
        fast_greedy=fast,
        pack_weights=pack,
    )
    assert got == ref
    assert len(packs) == 1 and (packs[0] > 0) == (pack and packed.available())


def _ref_ids(model, prompt_ids, max_new_tokens, eos, pad):
    """Per-prompt greedy `generate`: the new token ids (EOS included when one was emitted)."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("shrink", [True, False])
def test_greedy_ids_with_eos_mid_batch_and_the_cap(model_tok, shrink):
    """Rows stop at different steps (a frequently emitted token is declared an extra EOS), the rest run
    to the cap; token ids equal per-prompt `generate`'s, EOS included, nothing after it."""
    model, tok = model_tok
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    free = [_ref_ids(model, p, 10, tok.eos_token_id, tok.pad_token_id) for p in prompts]
    # the token whose first appearance varies most across prompts, present in some answers but not all
    firsts: dict[int, list[int]] = {}
    for row in free:
        for t in set(row):
            firsts.setdefault(t, []).append(row.index(t))
    stop = max((t for t, ks in firsts.items() if 1 < len(ks) < len(prompts)), key=lambda t: len(set(firsts[t])))
    eos = [tok.eos_token_id, stop]
    ref = [_ref_ids(model, p, 10, eos, tok.pad_token_id) for p in prompts]
    lengths = {len(r) for r in ref}
    assert 10 in lengths and len(lengths) > 2  # some rows hit the cap, others stop early at different steps
    got = greedy_generate(
        model,
        prompts,
        max_new_tokens=10,
        eos_ids=eos,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        shrink=shrink,
    )
    assert got == ref
    assert greedy_generate(
        model, prompts[:3], max_new_tokens=1, eos_ids=eos, pad_id=tok.pad_token_id, device=torch.device("cpu")
    ) == [r[:1] for r in ref[:3]]
    assert greedy_generate(
        model, prompts[:3], max_new_tokens=0, eos_ids=eos, pad_id=tok.pad_token_id, device=torch.device("cpu")
    ) == [[], [], []]


def test_repetition_penalty_override_and_preset_difference(model_tok):
    model, tok = model_tok
    a = generate_answers(
        model, tok, PROMPTS[:3], max_new_tokens=16, preset="original", repetition_penalty=1.0, progress=False
    )
    b = generate_answers(model, tok, PROMPTS[:3], max_new_tokens=16, preset="greedy", progress=False)
    assert a == b  # explicit 1.0 switches the preset's penalty off
    with pytest.raises(NeftuneError, match="preset"):
        generate_answers(model, tok, PROMPTS, preset="nucleus", progress=False)


def test_restores_training_mode_and_sampling_is_seeded(model_tok):
    model, tok = model_tok
    model.train()
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.95, seed=3, progress=False)
    a = generate_answers(model, tok, PROMPTS[:4], **kw)
    assert model.training
    model.eval()
    assert generate_answers(model, tok, PROMPTS[:4], **kw) == a


class CountingModel:
    """Delegates to a real model and records how many prompts each generate call received."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def generate(self, **kw):
        self.calls.append(kw["input_ids"].shape[0])
        return self.model.generate(**kw)

    def __call__(self, **kw):  # the lean greedy loop: count its prefill calls (empty cache)
        if kw["cache"].get_seq_length() == 0:
            self.calls.append(kw["input_ids"].shape[0])
        return self.model(**kw)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_resume_after_interruption(tiny_llama_dir, tmp_path):
    model, tok = _load(tiny_llama_dir)
    cache = tmp_path / "gen" / "set.partial.jsonl"
    kw = dict(max_new_tokens=10, batch_size=3, progress=False, cache_path=cache)
    full = generate_answers(model, tok, PROMPTS, instructions=QUESTIONS + ["short", "a"], **kw)
    lines = cache.read_text().splitlines()
    assert len(lines) == len(PROMPTS)
    rec = json.loads(lines[0])
    assert {"idx", "prompt_sha", "output"} <= set(rec) and rec["prompt_sha"] == prompt_sha(PROMPTS[rec["idx"]])

    # Everything cached: no generate call at all.
    counting = CountingModel(model)
    assert generate_answers(counting, tok, PROMPTS, **kw) == full and counting.calls == []

    # Kill mid-write: keep 4 whole lines and half of the 5th.
    kept = lines[:4]
    cache.write_text("\n".join(kept) + "\n" + lines[4][: len(lines[4]) // 2])
    counting = CountingModel(model)
    assert generate_answers(counting, tok, PROMPTS, **kw) == full
    assert sum(counting.calls) == len(PROMPTS) - 4
    # The torn line was dropped, every line is valid JSON now and each index appears once.
    idxs = [json.loads(l)["idx"] for l in cache.read_text().splitlines()]
    assert sorted(idxs) == list(range(len(PROMPTS)))

    # A cached answer for a prompt that has since changed is not reused.
    changed = list(PROMPTS)
    changed[0] = changed[0] + " "
    counting = CountingModel(model)
    generate_answers(counting, tok, changed, **kw)
    assert counting.calls == [1]

    # Different decoding settings make the cache stale.
    counting = CountingModel(model)
    generate_answers(counting, tok, PROMPTS, **{**kw, "max_new_tokens": 5})
    assert sum(counting.calls) == len(PROMPTS)


def test_alpaca_eval_roundtrip_and_validation(tmp_path):
    path = tmp_path / "out.json"
    write_alpaca_eval(path, ["q1", "q2"], ["a1", "a2"], generator="alpha5", dataset="mt-bench")
    rows = read_alpaca_eval(path)
    assert rows == [
        {"instruction": "q1", "output": "a1", "generator": "alpha5", "dataset": "mt-bench"},
        {"instruction": "q2", "output": "a2", "generator": "alpha5", "dataset": "mt-bench"},
    ]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(NeftuneError):
        write_alpaca_eval(path, ["q1"], ["a1", "a2"], generator="g")
    path.write_text(json.dumps([{"instruction": "q", "generator": "g"}]))
    with pytest.raises(DataError, match="output"):
        read_alpaca_eval(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        read_alpaca_eval(path)
    with pytest.raises(DataError, match="not found"):
        read_alpaca_eval(tmp_path / "missing.json")


def test_capped_flag_says_which_answers_hit_max_new_tokens_without_eos(tiny_llama_dir, tmp_path):
    """capped = all max_new_tokens used and no EOS among them; the flag is cached with the answer."""
    model, tok = _load(tiny_llama_dir)
    prompts = PROMPTS[:3]
    # make the greedy first token of prompt 0 an EOS: that answer ends at once, the others run to the cap
    with torch.inference_mode():
        first = int(model(input_ids=torch.tensor([encode_prompt(tok, prompts[0])])).logits[0, -1].argmax())
    others = []
    for p in prompts[1:]:
        with torch.inference_mode():
            others.append(int(model(input_ids=torch.tensor([encode_prompt(tok, p)])).logits[0, -1].argmax()))
    model.generation_config.eos_token_id = first
    capped, kw = [], dict(max_new_tokens=4, batch_size=2, progress=False, cache_path=tmp_path / "c.jsonl")
    generate_answers(model, tok, prompts, capped=capped, **kw)
    expected = [False] + [o != first for o in others]
    assert capped[0] is False and capped == expected
    again = []
    generate_answers(model, tok, prompts, capped=again, **kw)  # all from the cache
    assert again == capped
