"""Which training examples a run actually optimised on (-> RUN/data/trained.jsonl via rundir).

A run that stops inside its first epoch saw only the examples of its first batches; the overfitting
probe and the clean train loss of the evaluation must use those, not the first records of the file.
"""

from __future__ import annotations

from collections.abc import Callable

from . import make_batches, record_id


def covered_indices(examples: list[dict], bs: int, cfg, pad_id, world: int) -> list[list[int]]:
    """Per batch of epoch 0, in the order all ranks together consume them (rank r's i-th micro-batch
    is batch i*world + r of the list truncated to a multiple of world), the indices of its examples."""
    _, idx = make_batches(
        examples,
        bs,
        packing=cfg.data.packing,
        max_length=cfg.data.max_length,
        pad_token_id=pad_id,
        seed=cfg.seed,
        epoch=0,
        return_indices=True,
    )
    return idx[: len(idx) // world * world] if world > 1 else idx


def trained_records(
    records: list[dict], n_micro: int, per_epoch: int, indices: Callable[[], list[list[int]]] | None
) -> list[dict]:
    """The records the run optimised on, in train.jsonl order, each with an `id`: all of them once
    the run completed an epoch (n_micro micro-batches over all ranks >= per_epoch), else those in the
    first n_micro batches of epoch 0 (`indices()`, see covered_indices)."""
    keep = set(range(len(records))) if n_micro >= per_epoch else {i for b in indices()[:n_micro] for i in b}
    return [{**r, "id": record_id(r, i)} for i, r in enumerate(records) if i in keep]
