"""Per-item helpers: ids from records, the trained-examples source (with the fallback for older runs),
the capped fraction over known flags."""

from neftune import rundir
from neftune.evaluation.items import TRAINED_SOURCE, capped_fraction, item_ids, trained_records


def test_ids_come_from_the_record_then_its_source_then_its_position():
    recs = [{"id": "a", "source": "f:1"}, {"id": None, "source": "f:2"}, {"messages": []}]
    assert item_ids(recs) == ["a", "f:2", "item-2"]


def test_overfit_source_names_the_file_it_used(tmp_path):
    rundir.write_records(tmp_path, "train", [{"id": "x"}, {"id": "y"}])
    recs, source = trained_records(tmp_path)
    assert recs == [{"id": "x"}, {"id": "y"}] and "train.jsonl" in source and source != TRAINED_SOURCE
    rundir.write_records(tmp_path, "trained", [{"id": "y"}])
    assert trained_records(tmp_path) == ([{"id": "y"}], TRAINED_SOURCE)


def test_capped_fraction_counts_known_flags_only():
    assert capped_fraction([True, False, None, True]) == 2 / 3
    assert capped_fraction([None]) is None and capped_fraction([]) is None
