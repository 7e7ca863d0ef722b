"""Batching: FFD packing, determinism, and packed rows that never let attention or loss cross documents."""

import random

import pytest
import torch
import torch.nn.functional as F

from neftune.data import make_batches, pack_examples


def fake_examples(n, seed=0, lo=3, hi=40, vocab=300):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(lo, hi)
        ids = [1] + [rng.randrange(3, vocab) for _ in range(L - 1)]
        k = rng.randint(1, L - 1)  # prompt length
        out.append({"input_ids": ids, "labels": [-100] * k + ids[k:]})
    return out


def test_pack_examples_ffd():
    ex = fake_examples(60)
    bins = pack_examples(ex, 64)
    assert sorted(id(e) for b in bins for e in b) == sorted(id(e) for e in ex)  # each example exactly once
    assert all(sum(len(e["input_ids"]) for e in b) <= 64 for b in bins)
    total = sum(len(e["input_ids"]) for e in ex)
    assert len(bins) <= -(-total // 64) * 11 / 9 + 1  # FFD bound: <= 11/9 OPT + 1
    assert pack_examples(ex, 64) == bins
    with pytest.raises(ValueError):
        pack_examples(fake_examples(3, lo=70, hi=80), 64)


def test_padded_batches_shape_and_determinism():
    ex = fake_examples(37)
    a = make_batches(ex, 4, packing=False, max_length=64, pad_token_id=0, seed=1, epoch=0)
    b = make_batches(ex, 4, packing=False, max_length=64, pad_token_id=0, seed=1, epoch=0)
    c = make_batches(ex, 4, packing=False, max_length=64, pad_token_id=0, seed=1, epoch=1)
    assert len(a) == 10 and all(set(x) == {"input_ids", "attention_mask", "labels"} for x in a)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert any(
        x["input_ids"].shape != y["input_ids"].shape or not torch.equal(x["input_ids"], y["input_ids"])
        for x, y in zip(a, c)
    )
    # every example appears once; padding is masked and unlabelled
    seen = sorted(tuple(r[m.bool()].tolist()) for x in a for r, m in zip(x["input_ids"], x["attention_mask"]))
    assert seen == sorted(tuple(e["input_ids"]) for e in ex)
    for x in a:
        assert (x["labels"][x["attention_mask"] == 0] == -100).all()
        assert (x["input_ids"][x["attention_mask"] == 0] == 0).all()
    # the longest batch comes first; grouping by length cuts padding
    assert a[0]["input_ids"].shape[1] == max(len(e["input_ids"]) for e in ex)
    pad = lambda bs: sum((x["attention_mask"] == 0).sum().item() for x in bs)  # noqa: E731
    ungrouped = make_batches(
        ex, 4, packing=False, max_length=64, pad_token_id=0, seed=1, epoch=0, group_by_length=False
    )
    assert pad(a) < pad(ungrouped)


def test_packed_batches_layout():
    ex = fake_examples(30)
    a = make_batches(ex, 2, packing=True, max_length=64, pad_token_id=0, seed=3, epoch=0)
    assert all(set(x) == {"input_ids", "position_ids", "labels"} for x in a)
    b = make_batches(ex, 2, packing=True, max_length=64, pad_token_id=0, seed=3, epoch=0)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    n_docs = 0
    for x in a:
        assert x["input_ids"].shape[0] == 1 and x["input_ids"].shape[1] <= 2 * 64
        pos, lab = x["position_ids"][0], x["labels"][0]
        starts = (pos == 0).nonzero().flatten()
        n_docs += len(starts)
        assert (lab[starts] == -100).all()
        assert ((pos[1:] == pos[:-1] + 1) | (pos[1:] == 0)).all()
    assert n_docs == len(ex)
    assert sum(x["input_ids"].shape[1] for x in a) == sum(len(e["input_ids"]) for e in ex)


def _doc_loss(logits, labels):
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")


def test_packing_never_crosses_documents(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ex = fake_examples(8, seed=5, lo=5, hi=30, vocab=model.config.vocab_size)
    # Labels on every token here (first included) so the boundary masking is what the test exercises.
    ex = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in ex]
    (row, *rest) = make_batches(ex, 8, packing=True, max_length=64, pad_token_id=0, seed=0, epoch=0)
    assert not rest
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
        starts = (row["position_ids"][0] == 0).nonzero().flatten().tolist() + [row["input_ids"].shape[1]]
        packed_loss, alone_loss = 0.0, 0.0
        for s, e in zip(starts, starts[1:]):
            ids = row["input_ids"][:, s:e]
            alone = model(input_ids=ids, use_cache=False).logits[0]
            torch.testing.assert_close(packed[s:e], alone, atol=1e-5, rtol=0)
            alone_loss += _doc_loss(alone, torch.tensor([-100] + ids[0, 1:].tolist()))
        packed_loss = _doc_loss(packed, row["labels"][0])
        # control: the same row as one long sequence (no restarts) does mix documents
        mixed = model(input_ids=row["input_ids"], use_cache=False).logits[0]
        assert not torch.allclose(mixed[starts[1] :], packed[starts[1] :], atol=1e-3)
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-4, rtol=1e-6)
