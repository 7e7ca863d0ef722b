"""data/coverage.py: which records a run optimised on (data/trained.jsonl)."""

from neftune.data.coverage import trained_records
from neftune.train_step import micro_batches_done

RECORDS = [{"source": f"f.jsonl:{i + 1}"} for i in range(10)]
# two processes: each epoch's batch list is cut to a multiple of the world size, so its tail is never
# trained on in that epoch; the order is reshuffled per epoch, so a different tail each time
EPOCHS = {0: [[0, 1], [2, 3], [4, 5], [6, 7]], 1: [[9, 8], [1, 0], [3, 2], [5, 4]]}


def _trained(n_micro):
    recs = trained_records(RECORDS, n_micro=n_micro, per_epoch=4, indices=EPOCHS.__getitem__)
    return sorted(int(r["source"].split(":")[1]) - 1 for r in recs)


def test_a_completed_epoch_on_two_processes_is_not_every_record():
    assert _trained(2) == [0, 1, 2, 3]
    assert _trained(4) == list(range(8))  # one whole epoch: records 8 and 9 were in the dropped tail
    assert _trained(6) == list(range(10))  # half of epoch 1 reaches them
    assert _trained(8) == list(range(10))


def test_trained_records_keep_file_order_and_ids():
    recs = trained_records(RECORDS, n_micro=1, per_epoch=4, indices=lambda e: [[3, 1]])
    assert [r["id"] for r in recs] == ["f.jsonl:2", "f.jsonl:4"]


def test_micro_batches_done_counts_short_last_steps():
    # 10 micro-batches per epoch, 4 per step: steps of 4, 4, 2 per epoch (HF's count)
    assert [micro_batches_done(s, 3, 10, 4) for s in (1, 2, 3, 4, 6)] == [4, 8, 10, 14, 20]
    assert micro_batches_done(3, 1, 3, 8) == 9  # 3 micro-batches per epoch, accumulation 8: one step per epoch
