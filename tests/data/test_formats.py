"""load_records: every source kind and format parses; every bad-record kind is named with file and line."""

from collections import Counter
from pathlib import Path

import pytest

from neftune.data import load_records
from neftune.errors import DataError

DATA = Path(__file__).resolve().parents[1] / "assets" / "data"
ALPACA = [
    {"instruction": "Give three tips.", "input": "", "output": "Eat, move, sleep."},
    {"instruction": "Translate to French.", "input": "Hello world!", "output": "Bonjour le monde !"},
]


def roles(rec):
    return [m["role"] for m in rec["messages"]]


def test_alpaca_json_lines_and_input():
    recs = load_records(DATA / "alpaca.json")
    assert len(recs) == 3
    assert [r["source"].rsplit(":", 1)[1] for r in recs] == ["2", "7", "12"]  # line where each record starts
    assert recs[0]["messages"] == [
        {"role": "user", "content": "Give three tips for staying healthy."},
        {"role": "assistant", "content": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
    ]
    user = recs[1]["messages"][0]
    assert user["content"] == "Translate the sentence to French.\n\nHello world!" and user["input"] == "Hello world!"
    assert recs[0]["id"] == "alpaca.json:2"


def test_alpaca_jsonl_with_system_and_blank_line():
    recs = load_records(DATA / "alpaca.jsonl", format="alpaca")
    assert [r["source"].rsplit(":", 1)[1] for r in recs] == ["1", "2", "4"]
    assert roles(recs[2]) == ["system", "user", "assistant"]
    assert recs[2]["messages"][0]["content"] == "You are a terse geography tutor."


def test_csv_with_column_mapping_and_multiline_field():
    cols = {"instruction": "question", "input": "context", "output": "answer"}
    recs = load_records(DATA / "alpaca_renamed.csv", columns=cols)
    assert len(recs) == 3
    # header is line 1; the quoted field of record 2 spans lines 3-4, so record 3 starts on line 5
    assert [r["source"].rsplit(":", 1)[1] for r in recs] == ["2", "3", "5"]
    assert recs[1]["messages"][0]["input"] == "The quick brown fox\njumps over the lazy dog."
    # the mapping is also accepted in the other direction ({yours: format})
    inverse = {v: k for k, v in cols.items()}
    assert load_records(DATA / "alpaca_renamed.csv", columns=inverse) == recs


def test_sharegpt_multiturn():
    recs = load_records(DATA / "sharegpt.json")
    assert roles(recs[0]) == ["system", "user", "assistant", "user", "assistant"]
    assert recs[0]["id"] == "conv_0" and recs[1]["messages"][1]["content"] == "Hello! How can I help?"


def test_messages_and_prompt_completion():
    recs = load_records(DATA / "messages.jsonl")
    assert roles(recs[1]) == ["system", "user", "assistant", "user", "assistant"]
    pc = load_records(DATA / "prompt_completion.jsonl")
    assert pc[0]["messages"] == [
        {"role": "user", "content": "The quick brown fox"},
        {"role": "assistant", "content": " jumps over the lazy dog."},
    ]
    assert roles(pc[1]) == ["system", "user", "assistant"]


def test_parquet_and_datasets_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "a.parquet")
    recs = load_records(tmp_path / "a.parquet")
    assert len(recs) == 2 and recs[1]["source"].endswith("a.parquet:2")

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    assert [r["messages"] for r in load_records(tmp_path / "saved")] == [r["messages"] for r in recs]


def test_json_lines_misnamed_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text((DATA / "alpaca.jsonl").read_text())
    assert len(load_records(p)) == 3


def test_prompt_only_records_for_eval_sets(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"instruction": "Name a fruit."}\n')
    with pytest.raises(DataError, match="missing_field"):
        load_records(p)
    (rec,) = load_records(p, require_answer=False)
    assert roles(rec) == ["user"]


BAD = [  # file, reason, line
    ("bad_invalid_json.jsonl", "invalid_json", 2),
    ("bad_missing_field.jsonl", "missing_field", 2),
    ("bad_wrong_type.jsonl", "wrong_type", 2),
    ("bad_empty_response.jsonl", "empty_response", 2),
    ("bad_unknown_role.jsonl", "unknown_role", 3),
    ("bad_not_utf8.jsonl", "not_utf8", 2),
    ("bad_no_assistant_turn.jsonl", "no_assistant_turn", 3),
]


@pytest.mark.parametrize("name,reason,line", BAD)
def test_bad_record_named_and_skippable(name, reason, line):
    with pytest.raises(DataError) as ei:
        load_records(DATA / name)
    e = ei.value
    assert (e.reason, e.line) == (reason, line)
    assert f"{name}:{line}: {reason}" in str(e)
    skipped = Counter()
    recs = load_records(DATA / name, on_bad_record="skip", skipped=skipped)
    assert len(recs) == 2 and skipped == Counter({reason: 1})


@pytest.mark.parametrize(
    "name,reason,line",
    [
        ("bad_empty_file.jsonl", "empty_file", None),
        ("bad_unknown_format.jsonl", "unknown_format", 1),
        ("bad_invalid_json_array.json", "invalid_json", 4),  # no safe resync point inside a JSON list
    ],
)
def test_file_level_problems_always_raise(name, reason, line):
    for mode in ("error", "skip"):
        with pytest.raises(DataError) as ei:
            load_records(DATA / name, on_bad_record=mode, skipped=Counter())
        assert (ei.value.reason, ei.value.line) == (reason, line) and name in str(ei.value)


def test_not_utf8_in_json_list_and_csv(tmp_path):
    p = tmp_path / "l.json"
    p.write_bytes(b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "caf\xe9", "output": "b"}\n]')
    with pytest.raises(DataError, match=r"l.json:3: not_utf8"):
        load_records(p)
    c = tmp_path / "c.csv"
    c.write_bytes(b"instruction,output\na,b\ncaf\xe9,b\n")
    skipped = Counter()
    assert len(load_records(c, on_bad_record="skip", skipped=skipped)) == 1 and skipped["not_utf8"] == 1


def test_missing_unknown_and_offline_hub(tmp_path):
    with pytest.raises(DataError, match="not_found"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown_format"):
        load_records(tmp_path / "x.txt")
    with pytest.raises(DataError, match="unknown_format"):
        load_records(DATA / "alpaca.jsonl", format="yaml")
    with pytest.raises(DataError, match="offline"):  # conftest sets HF_HUB_OFFLINE=1
        load_records("someorg/somedataset")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: unknown_format"):
        load_records(tmp_path / "bad.parquet")


def test_role_order_and_empty_turns(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}\n'
        '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}\n'
        '{"messages": []}\n[1, 2]\n'
    )
    skipped = Counter()
    assert load_records(p, on_bad_record="skip", skipped=skipped) == []
    assert skipped == Counter({"unknown_role": 1, "missing_field": 2, "wrong_type": 1})


def test_duplicate_id_names_both_lines_or_is_skipped(tmp_path):
    """Per-item results pair runs by id: a repeated `id` would make two prompts one item, so it is a bad
    record naming the file and both lines (skip mode keeps the first and counts the rest)."""
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"id": "q1", "instruction": "a", "output": "b"}\n'
        '{"id": "q2", "instruction": "c", "output": "d"}\n'
        '{"id": 7, "instruction": "e", "output": "f"}\n'
        '{"id": "q1", "instruction": "g", "output": "h"}\n'
        '{"id": "7", "instruction": "i", "output": "j"}\n'
    )
    with pytest.raises(DataError) as ei:
        load_records(p)
    assert (ei.value.reason, ei.value.line) == ("duplicate_id", 4)
    assert str(ei.value) == f"{p}:4: duplicate_id (id 'q1' is also the id of line 1)"
    skipped = Counter()
    recs = load_records(p, on_bad_record="skip", skipped=skipped)
    assert [r["id"] for r in recs] == ["q1", "q2", "7"] and skipped == Counter({"duplicate_id": 2})
    assert recs[0]["messages"][0]["content"] == "a"  # the first occurrence is the one kept
