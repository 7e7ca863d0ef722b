"""Which training examples a run actually optimised on (-> RUN/data/trained.jsonl via rundir).

A run that stops inside its first epoch saw only the examples of its first batches; the overfitting
probe and the clean train loss of the evaluation must use those, not the first records of the file.
"""

from __future__ import annotations

from collections.abc import Callable

from . import make_batches, record_id


def covered_indices(examples: list[dict], bs: int, cfg, pad_id, world: int, epoch: int = 0) -> list[list[int]]:
    """Per batch of `epoch`, in the order all ranks together consume them (rank r's i-th micro-batch
    is batch i*world + r of the list truncated to a multiple of world), the indices of its examples.
    With world > 1 the truncated tail is never trained on in that epoch."""
    _, idx = make_batches(
        examples,
        bs,
        packing=cfg.data.packing,
        max_length=cfg.data.max_length,
        pad_token_id=pad_id,
        seed=cfg.seed,
        epoch=epoch,
        return_indices=True,
    )
    return idx[: len(idx) // world * world] if world > 1 else idx


def trained_records(
    records: list[dict], n_micro: int, per_epoch: int, indices: Callable[[int], list[list[int]]] | None
) -> list[dict]:
    """The records the run optimised on, in train.jsonl order, each with an `id`: the union over the
    epochs it ran of the batches it consumed (n_micro micro-batches over all ranks, per_epoch of them per
    epoch; `indices(epoch)`, see covered_indices). On one process a whole epoch covers every record; with
    more, each epoch drops its batches past a multiple of the world size (a different tail per epoch,
    as the order is reshuffled), so completing an epoch does not mean every record was seen.
    indices=None: one process, so a completed epoch is all of them."""
    if indices is None:
        assert n_micro >= per_epoch, "indices=None only for a run that completed an epoch on one process"
        keep = set(range(len(records)))
    else:
        keep, left, epoch = set(), n_micro, 0
        while left > 0 and len(keep) < len(records):
            keep |= {i for b in indices(epoch)[:left] for i in b}
            left, epoch = left - per_epoch, epoch + 1
    return [{**r, "id": record_id(r, i)} for i, r in enumerate(records) if i in keep]
