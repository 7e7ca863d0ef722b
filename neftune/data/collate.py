"""Tokenized examples -> batches of tensors, deterministic given (seed, epoch).

padded  input_ids/attention_mask/labels (B,T), right padding, examples grouped by length inside
        mega-batches of 50*batch_size (like HF's LengthGroupedSampler) so little compute is padding.
packed  padding-free: first-fit-decreasing bins of <= max_length tokens, `batch_size` bins
        concatenated into ONE row (1,N) with position_ids restarting at 0 per document. Without an
        attention_mask, transformers derives a block-diagonal causal mask from the position_ids
        restarts, so attention never crosses documents; the first label of every document is -100
        so no loss term predicts a document from the previous one.
"""

from __future__ import annotations

import random
from typing import Optional

import torch

MEGABATCH_MULT = 50  # HF LengthGroupedSampler's default


def pack_examples(examples: list[dict], max_length: int) -> list[list[dict]]:
    """First-fit-decreasing bin packing into bins of <= max_length tokens (stable: ties keep input order)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[dict]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example of {n} tokens does not fit max_length {max_length}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(examples[i])
                room[b] -= n
                break
        else:
            bins.append([examples[i]])
            room.append(max_length - n)
    return bins


def _padded(batch: list[dict], pad_token_id: int) -> dict:
    T = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for r, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[r, :n] = 1
        labels[r, :n] = torch.tensor(e["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _packed_row(docs: list[dict]) -> dict:
    ids, pos, labels = [], [], []
    for e in docs:
        n = len(e["input_ids"])
        ids += e["input_ids"]
        pos += range(n)
        labels += [-100] + list(e["labels"][1:])  # nothing predicts a document's first token
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "position_ids": t(pos), "labels": t(labels)}


def make_batches(
    examples: list[dict],
    batch_size: int,
    *,
    packing: bool,
    max_length: int,
    pad_token_id: Optional[int],
    seed: int,
    epoch: int,
    group_by_length: bool = True,
    return_indices: bool = False,
):
    """One epoch of batches. Same (seed, epoch) -> same batches; a new epoch reshuffles.
    return_indices: also return, per batch, the indices into `examples` it holds (which examples a
    run that stops mid-epoch trained on)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(f"neftune-batches:{seed}:{epoch}")  # str seeds are hashed stably
    order = list(range(len(examples)))
    rng.shuffle(order)
    shuffled = [examples[i] for i in order]
    if packing:
        bins = pack_examples(shuffled, max_length)
        rng.shuffle(bins)  # FFD emits long bins first; do not feed them in size order
        groups = [[d for b in bins[i : i + batch_size] for d in b] for i in range(0, len(bins), batch_size)]
        rows = [_packed_row(g) for g in groups]
        return (rows, _indices(examples, groups)) if return_indices else rows
    if group_by_length:
        mega = MEGABATCH_MULT * batch_size
        grouped = []
        for i in range(0, len(shuffled), mega):
            grouped += sorted(shuffled[i : i + mega], key=lambda e: -len(e["input_ids"]))
        shuffled = grouped
    batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    if group_by_length and len(batches) > 1:
        # Sorted mega-batches would give a long-to-short sawtooth in the loss curve: shuffle the
        # batches, but put the longest first so an out-of-memory shows up at step 1 (as HF does).
        longest = max(range(len(batches)), key=lambda b: len(batches[b][0]["input_ids"]))
        first = batches.pop(longest)
        rng.shuffle(batches)
        batches.insert(0, first)
    pad = 0 if pad_token_id is None else pad_token_id  # pad positions are masked and -100 anyway
    rows = [_padded(b, pad) for b in batches]
    return (rows, _indices(examples, batches)) if return_indices else rows


def _indices(examples: list[dict], groups: list[list[dict]]) -> list[list[int]]:
    where = {id(e): i for i, e in enumerate(examples)}  # the batches hold the example objects themselves
    return [[where[id(e)] for e in g] for g in groups]
