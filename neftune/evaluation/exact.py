"""Exact-answer evaluation: where verbosity may hurt (issue 13).

NEFTune makes answers longer. This set asks short questions with ONE checkable answer, so a variant's
extra length can be set against its precision: accuracy and answer length are reported together.

Questions (all written for this project, Apache-2.0):
- arithmetic word problems and unit conversions, generated deterministically by `generate_questions`
  (same (n, seed) -> same questions; every item carries its parameters so the answer can be
  recomputed, and the tests do);
- `assets/code_output.jsonl`: short Python snippets, "What does this Python code print?"; the
  tests run every snippet and compare its output with the stored answer.

The prompt is the bare question (no "answer with a number only" instruction): we want to see what
the model's own answering style does to precision.

Answer extraction (documented rule, `is_correct`):
- numeric answers: the LAST number in the response (thousands separators removed, e.g. "1,500")
  must equal the answer (|x - y| <= 1e-6 * max(1, |y|)). A correct number followed by more numbers
  ("19 apples. Tomorrow he buys 3 more...") is scored wrong: that is the cost of verbosity we measure;
- string answers: the response's last non-empty line, lower-cased, with quotes/backticks and
  trailing punctuation stripped, must END with the lower-cased answer at a word boundary
  ("The output is `cba`." -> correct for "cba").
Length: whitespace words of the response (as `metrics.length_stats`), mean over items.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DataError

CODE_QUESTIONS = Path(__file__).parent / "assets" / "code_output.jsonl"
SOURCE = "neftune exact-answer v1 (generated + code_output.jsonl; original, Apache-2.0)"

# unit conversions: (from, to, factor), exact integer factors only
UNITS = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("days", "hours", 24),
    ("feet", "inches", 12),
    ("weeks", "days", 7),
    ("yards", "feet", 3),
]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jia"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "cards", "shells"]


def _arithmetic(rng: random.Random) -> dict:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    op = rng.choice(["add", "sub", "mul", "div"])
    if op == "add":
        a, b = rng.randint(5, 90), rng.randint(2, 60)
        q, ans = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
    elif op == "sub":
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        q, ans = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", a - b
    elif op == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 15)
        q, ans = f"There are {a} boxes with {b} {thing} in each box. How many {thing} are there in total?", a * b
    else:
        b, ans = rng.randint(2, 9), rng.randint(2, 15)
        a = b * ans
        q = f"{name} shares {a} {thing} equally among {b} friends. How many {thing} does each friend get?"
    return {
        "kind": "arithmetic",
        "question": q,
        "answer": str(ans),
        "numeric": True,
        "params": {"op": op, "a": a, "b": b},
    }


def _conversion(rng: random.Random) -> dict:
    src, dst, factor = rng.choice(UNITS)
    value = rng.randint(2, 30)
    q = f"How many {dst} are in {value} {src}?"
    return {
        "kind": "conversion",
        "question": q,
        "answer": str(value * factor),
        "numeric": True,
        "params": {"from": src, "to": dst, "value": value},
    }


def generate_questions(n: int, seed: int = 0) -> list[dict]:
    """n generated questions `{id, kind, question, answer, numeric, params}`, half arithmetic half
    conversions (interleaved); a pure function of (n, seed)."""
    rng = random.Random(f"neftune-exact:{seed}")
    out = []
    for i in range(n):
        item = _arithmetic(rng) if i % 2 == 0 else _conversion(rng)
        out.append({"id": f"gen-{seed}-{i}", **item})
    return out


def load_code_questions(path=None) -> list[dict]:
    """The code-output set as items `{id, kind: code, question, answer, numeric, code}`."""
    path = Path(path) if path is not None else CODE_QUESTIONS
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            code, answer = r["code"], str(r["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(str(path), i, "bad code-output item", str(e)) from None
        q = f"What does this Python code print?\n\n```python\n{code}\n```"
        items.append(
            {
                "id": r.get("id", f"code-{i}"),
                "kind": "code",
                "question": q,
                "answer": answer,
                "numeric": _NUM.fullmatch(answer) is not None,
                "code": code,
            }
        )
    return items


# ----------------------------------------------------------------------------- scoring
_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_STRIP = " \t\"'`*.,;:!?)("


def last_number(text: str) -> float | None:
    """The last number in text (thousands separators removed), or None."""
    found = _NUM.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).strip(_STRIP)


def is_correct(response: str, answer: str, numeric: bool) -> bool:
    """The documented extraction rule (module doc)."""
    if numeric:
        x, y = last_number(response), float(answer)
        return x is not None and abs(x - y) <= 1e-6 * max(1.0, abs(y))
    lines = [ln for ln in response.splitlines() if ln.strip(_STRIP + " ")]
    if not lines:
        return False
    last, ans = _norm(lines[-1]), _norm(answer)
    return bool(ans) and (last == ans or re.search(r"(?:^|\W)" + re.escape(ans) + r"$", last) is not None)


def score(items: Sequence[dict], responses: Sequence[str]) -> dict:
    """{accuracy, n, length (mean whitespace words), per-kind accuracy, items: [...]}."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    rows = []
    for it, resp in zip(items, responses):
        rows.append(
            {
                "id": it["id"],
                "kind": it["kind"],
                "answer": it["answer"],
                "response": resp,
                "correct": is_correct(resp, it["answer"], it["numeric"]),
                "length": len(resp.split()),
            }
        )
    n = len(rows)
    out = {
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "n": n,
        "length": sum(r["length"] for r in rows) / n if n else float("nan"),
        "source": SOURCE,
    }
    for kind in sorted({r["kind"] for r in rows}):
        sub = [r for r in rows if r["kind"] == kind]
        out[f"accuracy_{kind}"] = sum(r["correct"] for r in sub) / len(sub)
    out["items"] = rows
    return out


def exact_answer_eval(
    generate_fn: Callable[[list[str]], list[str]], n: int = 48, seed: int = 0, code: bool = True
) -> dict:
    """Generate answers with `generate_fn(questions) -> responses` (the caller applies the prompt
    template and decoding settings) to n generated questions plus the code-output set, and score.
    Returns `score(...)`: {"accuracy", "n", "length", "accuracy_<kind>", "source", "items"}."""
    items = generate_questions(n, seed) + (load_code_questions() if code else [])
    responses = list(generate_fn([it["question"] for it in items]))
    return score(items, responses)
