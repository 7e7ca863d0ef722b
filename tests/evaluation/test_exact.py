"""Exact-answer set: deterministic generator with recomputed answers, code snippets really run, scoring rule."""

import contextlib
import io
import re

import pytest

from neftune.evaluation.exact import (
    exact_answer_eval,
    generate_questions,
    is_correct,
    last_number,
    load_code_questions,
    score,
)

# real-world factors, written independently of the module's table
FACTORS = {
    ("kilometers", "meters"): 1000,
    ("meters", "centimeters"): 100,
    ("hours", "minutes"): 60,
    ("minutes", "seconds"): 60,
    ("kilograms", "grams"): 1000,
    ("liters", "milliliters"): 1000,
    ("days", "hours"): 24,
    ("feet", "inches"): 12,
    ("weeks", "days"): 7,
    ("yards", "feet"): 3,
}


def test_same_seed_same_questions_other_seed_differs():
    assert generate_questions(40, seed=3) == generate_questions(40, seed=3)
    assert generate_questions(40, seed=3) != generate_questions(40, seed=4)
    assert generate_questions(10, seed=3) == generate_questions(40, seed=3)[:10]


def test_answers_recomputed_from_the_question_text():
    for it in generate_questions(200, seed=0):
        nums = [int(x) for x in re.findall(r"\d+", it["question"])]
        p = it["params"]
        if it["kind"] == "arithmetic":
            a, b = nums[0], nums[1]
            assert (a, b) == (p["a"], p["b"])
            want = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[p["op"]]
            assert want == int(want) and want > 0
        else:
            want = nums[0] * FACTORS[(p["from"], p["to"])]
        assert it["answer"] == str(int(want)), it


def test_code_snippets_print_their_stored_answers():
    items = load_code_questions()
    assert len(items) >= 20
    for it in items:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(it["code"], {})  # noqa: S102  project-written snippets
        assert buf.getvalue().strip() == it["answer"], it["id"]
        assert it["code"] in it["question"]


@pytest.mark.parametrize(
    "resp,answer,numeric,ok",
    [
        ("19", "19", True, True),
        ("Ana has 12 + 7 = 19 apples.", "19", True, True),
        ("There are 1,500 meters.", "1500", True, True),
        ("The answer is 19. Tomorrow she buys 3 more.", "19", True, False),  # last number rule
        ("I am not sure.", "19", True, False),
        ("It prints 2.5", "2.5", True, True),
        ("-4", "-4", True, True),
        ("The output is `cba`.", "cba", False, True),
        ("cba", "cba", False, True),
        ("It prints:\nnanana", "nanana", False, True),
        ("The output is abcba", "cba", False, False),  # word boundary
        ("cba is printed, not abc", "cba", False, False),
        ("", "cba", False, False),
        ("PYTHON", "PYTHON", False, True),
    ],
)
def test_is_correct_on_fixed_strings(resp, answer, numeric, ok):
    assert is_correct(resp, answer, numeric) is ok


def test_last_number_and_score_and_eval():
    assert last_number("a 1 b 2,000.5 c") == 2000.5 and last_number("none") is None
    items = generate_questions(4, seed=1)
    s = score(items, [it["answer"] for it in items[:2]] + ["no idea at all", "wrong 0"])
    assert s["accuracy"] == 0.5 and s["n"] == 4 and s["length"] == pytest.approx((1 + 1 + 4 + 2) / 4)
    assert [r["correct"] for r in s["items"]] == [True, True, False, False]
    answers = {it["question"]: it["answer"] for it in generate_questions(6, seed=2) + load_code_questions()}
    out = exact_answer_eval(lambda qs: [f"The answer is {answers[q]}" for q in qs], n=6, seed=2)
    assert out["accuracy"] == 1.0 and out["n"] == 6 + len(load_code_questions())
    assert out["accuracy_code"] == 1.0 and out["accuracy_arithmetic"] == 1.0
