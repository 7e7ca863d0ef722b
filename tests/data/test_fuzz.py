"""Fuzz load_records: whatever the bytes, it returns records or raises a DataError naming the file."""

import json
import os
import tempfile
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neftune.data import load_records, tokenize_example
from neftune.errors import DataError

FIELDS = [
    "instruction",
    "input",
    "output",
    "system",
    "conversations",
    "messages",
    "prompt",
    "completion",
    "id",
    "role",
    "content",
    "from",
    "value",
    "extra",
]
text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "   ", "user", "gpt", "assistant", "human", "system"]),
    st.text(min_size=1, max_size=3).map(lambda s: s * 5000),
)  # huge fields
scalar = st.one_of(text, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none())
turn = st.dictionaries(st.sampled_from(["role", "content", "from", "value", "x"]), scalar, max_size=4)
value = st.one_of(scalar, st.lists(st.one_of(turn, scalar), max_size=4), turn)
words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
good_turn = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant"]), words)
GOOD = [  # mostly-valid records of each format, so the success path gets fuzzed too
    st.fixed_dictionaries({"instruction": words, "output": words}, optional={"input": words, "system": words}),
    st.lists(st.tuples(words, words), min_size=1, max_size=3).map(
        lambda ps: {"messages": [{"role": r, "content": c} for p in ps for r, c in zip(("user", "assistant"), p)]}
    ),
    st.fixed_dictionaries({"messages": st.lists(good_turn, max_size=4)}),
    st.fixed_dictionaries({"prompt": words, "completion": words}),
]
good = st.one_of(*GOOD)
one_format = st.sampled_from(GOOD).flatmap(lambda g: st.lists(g, min_size=1, max_size=5))
record = st.one_of(
    good,
    good,
    st.dictionaries(st.sampled_from(FIELDS), value, max_size=6),
    st.fixed_dictionaries({"instruction": text, "output": text}, optional={"input": value}),
    st.fixed_dictionaries({"messages": st.lists(turn, max_size=4)}),
    st.fixed_dictionaries({"conversations": st.lists(turn, max_size=4)}),
    scalar,
    st.lists(scalar, max_size=3),
)


def as_json(records, kind, cut):
    if kind == "list":
        s = json.dumps(records, indent=1)
    else:
        s = "\n".join(json.dumps(r) for r in records)
    data = s.encode("utf-8", "surrogatepass")  # lone surrogates -> invalid UTF-8 bytes
    return data[:cut] if cut is not None else data


def as_csv(records):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["instruction", "input", "output"])
    for r in records:
        w.writerow([str(v) for v in (r.values() if isinstance(r, dict) else [r])])
    return buf.getvalue().encode("utf-8", "surrogatepass")


def as_parquet(records, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.write_table(pa.Table.from_pylist([r for r in records if isinstance(r, dict)]), path)
        return True
    except Exception:  # mixed types pyarrow cannot store: not our loader's concern
        return False


@settings(
    max_examples=int(os.environ.get("NEFTUNE_FUZZ_EXAMPLES", 50)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    ext=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
    fmt=st.sampled_from(["auto"] * 4 + ["alpaca", "sharegpt", "messages", "prompt_completion"]),
    mode=st.sampled_from(["error", "skip"]),
    body=st.one_of(
        st.binary(max_size=300),
        st.just(b""),
        st.tuples(one_format, st.sampled_from(["list", "lines"]), st.none()),
        st.tuples(
            st.lists(record, max_size=5), st.sampled_from(["list", "lines"]), st.one_of(st.none(), st.integers(0, 400))
        ),
    ),
    columns=st.one_of(
        st.none(), st.none(), st.none(), st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(FIELDS), max_size=2)
    ),
)
def test_load_records_never_leaks_library_errors(tiny_tokenizer, ext, fmt, mode, body, columns):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"fuzzed{ext}")
        if isinstance(body, bytes):
            data = body
        elif ext == ".csv":
            data = as_csv(body[0])
        elif ext == ".parquet" and as_parquet(body[0], path):
            data = None
        else:
            data = as_json(*body)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        skipped = Counter()
        try:
            recs = load_records(path, format=fmt, columns=columns, on_bad_record=mode, skipped=skipped)
        except DataError as e:
            assert "fuzzed" + ext in str(e)
            return
        assert isinstance(recs, list)
        for r in recs:
            assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()
            assert "fuzzed" + ext in r["source"]
        if mode == "error":
            assert not skipped
        for r in recs[:3]:  # whatever loaded also tokenizes (or is too_long): no crash on odd text
            for template in ("alpaca", "chat"):
                try:
                    ex = tokenize_example(r, tiny_tokenizer, template, max_length=256)
                    assert any(t != -100 for t in ex["labels"])
                except DataError as e:
                    assert e.reason == "too_long" and "fuzzed" in str(e)
