"""Read a data file (or a saved/hub `datasets` dataset) into normalized chat records.

A record is ``{"messages": [{"role", "content"}, ...], "source": "path:line", "id": str}``; the id is the
record's own ``id`` field (str or int) else ``file:line``, and must be unique in the file (``duplicate_id``).
Alpaca records keep their ``input`` on the user message (``content`` is instruction + "\\n\\n" +
input for everybody else, the ``input`` key lets the alpaca template render the exact paper
prompt). Every problem becomes a DataError naming the file and line: a bad record is raised or,
with ``on_bad_record="skip"``, counted in ``skipped[reason]``; file-level problems always raise.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, get_args

from ..config import OnBadRecord
from ..errors import DataError

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}
# Names a `columns` mapping may target (so we can tell which side of the mapping is ours).
FIELDS = {"instruction", "input", "output", "system", "conversations", "messages", "prompt", "completion", "id"}
# Problems with the file as a whole: skipping cannot help, so these always raise.
FILE_LEVEL = {"empty_file", "unknown_format", "not_found"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# --------------------------------------------------------------------------- raw readers
# Each yields (line, value): value is a parsed object or a record-level DataError to raise/skip.


def _read_jsonl(path, data: bytes) -> Iterator:
    # Decode line by line in binary so one bad byte costs one record, not the file.
    for i, raw in enumerate(data.split(b"\n"), 1):
        if i == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, DataError(path, i, "not_utf8", f"invalid byte at column {e.start + 1}")
            continue
        if not text.strip():
            continue
        try:
            yield i, json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            yield i, DataError(path, i, "invalid_json", _short(e))


_WS = re.compile(r"[ \t\r\n]*")
_SURROGATE = re.compile("[\udc80-\udcff]")  # where surrogateescape put bytes that are not UTF-8


def _read_json_array(path, text: str) -> Iterator:
    # Record by record with raw_decode so each record knows the line it starts on. A syntax error
    # inside a list leaves no reliable place to resume, so it raises even with on_bad_record=skip.
    dec, mark = json.JSONDecoder(), [0, 1]  # (pos, line) counted so far: O(file) line tracking

    def line_at(p):
        mark[1] += text.count("\n", mark[0], p)
        mark[0] = p
        return mark[1]

    pos, first = _WS.match(text, text.index("[") + 1).end(), True
    while True:
        if pos >= len(text):
            raise DataError(path, line_at(pos), "invalid_json", "unterminated list (missing ']')")
        if text[pos] == "]":
            if text[pos + 1 :].strip():
                raise DataError(path, line_at(pos), "invalid_json", "extra data after the closing ']'")
            return
        if not first:
            if text[pos] != ",":
                raise DataError(path, line_at(pos), "invalid_json", f"expected ',' or ']', got {text[pos]!r}")
            pos = _WS.match(text, pos + 1).end()
        first, line = False, line_at(pos)
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, "invalid_json", e.msg) from None
        except (ValueError, RecursionError) as e:
            raise DataError(path, line, "invalid_json", _short(e)) from None
        if _SURROGATE.search(text, pos, end):
            yield line, DataError(path, line, "not_utf8", "record contains bytes that are not UTF-8")
        else:
            yield line, obj
        pos = _WS.match(text, end).end()


def _read_csv(path, text: str) -> Iterator:
    csv.field_size_limit(2**31 - 1)  # default 128 KiB would turn long answers into errors
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for row in reader:
            if row:  # blank lines carry no record
                yield start, dict(zip(header, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(path, reader.line_num, "unknown_format", f"malformed CSV: {_short(e)}") from None


def _read_parquet(path) -> list:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, NotImplemented...: all "not parquet"
        raise DataError(path, None, "unknown_format", f"cannot read parquet: {_short(e)}") from None


def _read_datasets(path, from_disk: bool) -> list:
    if not from_disk and any(
        os.environ.get(v, "0") not in ("0", "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        raise DataError(path, None, "not_found", "no such file, and the hub is offline (HF_HUB_OFFLINE)")
    try:
        import datasets

        ds = datasets.load_from_disk(path) if from_disk else datasets.load_dataset(path)
        if isinstance(ds, (datasets.DatasetDict, dict)):  # a dict of splits: prefer train
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        return ds.to_list()
    except Exception as e:  # datasets/fsspec/arrow/network errors all mean "cannot load this"
        what = "cannot load saved dataset" if from_disk else "not a local file and the hub load failed"
        raise DataError(
            path, None, "not_found" if not from_disk else "unknown_format", f"{what}: {_short(e)}"
        ) from None


def _iter_raw(path: str) -> Iterator:
    p = Path(path)
    if p.is_dir():
        if any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return enumerate(_read_datasets(path, from_disk=True), 1)  # line = 1-based row
        raise DataError(path, None, "unknown_format", "a directory that is not a dataset saved with save_to_disk")
    ext = p.suffix.lower()
    if not p.exists():
        if (
            ext in (".json", ".jsonl", ".parquet", ".csv")
            or path.startswith(("/", ".", "~"))
            or not _HUB_ID.match(path)
        ):
            raise DataError(path, None, "not_found", "no such file")
        return enumerate(_read_datasets(path, from_disk=False), 1)
    if ext not in (".json", ".jsonl", ".parquet", ".csv"):
        raise DataError(path, None, "unknown_format", f"unknown extension {ext!r} (use .json .jsonl .parquet .csv)")
    if ext == ".parquet":
        return enumerate(_read_parquet(path), 1)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(path, None, "not_found", _short(e)) from None
    if not data.strip() or data.strip() == codecs.BOM_UTF8:
        raise DataError(path, None, "empty_file", "the file is empty")
    if ext == ".jsonl":
        return _read_jsonl(path, data)
    text = data.decode("utf-8", "surrogateescape").lstrip("\ufeff")
    if ext == ".csv":
        return _read_csv(path, text)
    head = text.lstrip()[:1]
    if head == "[":
        return _read_json_array(path, text)
    if head == "{":  # JSON lines saved as .json
        return _read_jsonl(path, data)
    raise DataError(path, 1, "invalid_json", "expected a JSON list of records or one JSON object per line")


# --------------------------------------------------------------------------- normalization
def _rename(obj: dict, columns: Optional[dict]) -> dict:
    """Apply the column mapping. Both directions are accepted ({format: yours} or {yours: format}):
    the side that names one of our fields is ours, so the mapping can't be misread silently."""
    if not columns:
        return obj
    obj = dict(obj)
    for a, b in columns.items():
        ours, theirs = (a, b) if a in FIELDS or b not in FIELDS else (b, a)
        if theirs in obj and theirs != ours:
            obj[ours] = obj.pop(theirs)
    return obj


def detect_format(obj: dict) -> Optional[str]:
    keys = set(obj)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    return None


def _text(obj: dict, key: str, where, required=True, what=None) -> Optional[str]:
    what = what or key
    if obj.get(key) is None:
        if required:
            raise DataError(*where, "missing_field", f"no '{key}' field")
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(*where, "wrong_type", f"'{what}' must be a string, got {type(v).__name__}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes or a bad \\u escape
        raise DataError(*where, "not_utf8", f"'{what}' is not valid UTF-8 text") from None
    return v


def _turns(items, where, role_key, text_key, field) -> list[dict]:
    if items is None:
        raise DataError(*where, "missing_field", f"no '{field}' field")
    if not isinstance(items, list):
        raise DataError(*where, "wrong_type", f"'{field}' must be a list, got {type(items).__name__}")
    out = []
    for k, m in enumerate(items):
        if not isinstance(m, dict):
            raise DataError(*where, "wrong_type", f"{field}[{k}] must be an object, got {type(m).__name__}")
        role = _text(m, role_key, where, what=f"{field}[{k}].{role_key}")
        if role.strip().lower() not in ROLES:
            raise DataError(*where, "unknown_role", f"{field}[{k}] has role {role!r}")
        out.append(
            {"role": ROLES[role.strip().lower()], "content": _text(m, text_key, where, what=f"{field}[{k}].{text_key}")}
        )
    return out


def _check(messages: list, where, require_answer: bool) -> list:
    """Optional system first, then user/assistant alternating, ending on a non-empty answer: the
    shape every template (and most chat templates) can render."""
    messages = [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]
    if not messages:
        raise DataError(*where, "missing_field", "the conversation has no messages")
    for k, m in enumerate(messages):
        expected = "system" if k == 0 and m["role"] == "system" else None
        if expected is None:
            first = 1 if messages[0]["role"] == "system" else 0
            expected = "user" if (k - first) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise DataError(
                *where,
                "unknown_role",
                f"message {k} is {m['role']!r} where {expected!r} belongs "
                "(expected: optional system, then user/assistant alternating)",
            )
        if m["role"] == "user" and not m["content"].strip():
            raise DataError(*where, "missing_field", f"message {k} (user) is empty")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(*where, "empty_response", f"message {k} (assistant) is empty")
    if messages[-1]["role"] != "assistant" and (require_answer or messages[-1]["role"] != "user"):
        raise DataError(*where, "no_assistant_turn", "the last message must be the assistant's answer")
    return messages


def normalize(obj, fmt: str, path, line, require_answer: bool = True) -> dict:
    """One raw object -> a normalized record (or a DataError)."""
    where = (path, line)
    if not isinstance(obj, dict):
        raise DataError(*where, "wrong_type", f"a record must be an object, got {type(obj).__name__}")
    if fmt == "alpaca":
        instruction = _text(obj, "instruction", where)
        inp = _text(obj, "input", where, required=False) or ""
        system = _text(obj, "system", where, required=False)
        output = _text(obj, "output", where, required=require_answer)
        user = {"role": "user", "content": instruction + (f"\n\n{inp}" if inp.strip() else "")}
        if inp.strip():
            user["input"] = inp
        msgs = ([{"role": "system", "content": system}] if system else []) + [user]
        if output is not None:
            msgs.append({"role": "assistant", "content": output})
    elif fmt == "sharegpt":
        msgs = _turns(obj.get("conversations"), where, "from", "value", "conversations")
    elif fmt == "messages":
        msgs = _turns(obj.get("messages"), where, "role", "content", "messages")
    elif fmt == "prompt_completion":  # prompt: text or a message list; completion: text or [assistant msg]
        prompt = obj.get("prompt")
        msgs = (
            _turns(prompt, where, "role", "content", "prompt")
            if isinstance(prompt, list)
            else [{"role": "user", "content": _text(obj, "prompt", where)}]
        )
        completion = obj.get("completion")
        if isinstance(completion, list):
            msgs += _turns(completion, where, "role", "content", "completion")
        elif completion is not None or require_answer:
            msgs.append({"role": "assistant", "content": _text(obj, "completion", where)})
    else:
        raise DataError(path, None, "unknown_format", f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    extra = {k: obj[k] for k in ("category", "question_id", "reference") if k in obj}  # eval-set metadata
    rid = obj.get("id")
    rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{Path(str(path)).name}:{line}"
    return {"messages": _check(msgs, where, require_answer), "source": f"{path}:{line}", "id": rid, **extra}


def load_records(
    path,
    format: str = "auto",
    columns: Optional[dict] = None,
    on_bad_record: str = "error",
    skipped: Optional[Counter] = None,
    *,
    require_answer: bool = True,
) -> list[dict]:
    """Load and normalize every record of `path`.

    format: alpaca | sharegpt | messages | prompt_completion | auto (from the first good record).
    on_bad_record: "error" raises the first DataError; "skip" drops the record and counts
    ``skipped[reason] += 1``. require_answer=False accepts prompt-only records (eval sets).
    """
    if on_bad_record not in get_args(OnBadRecord):
        raise ValueError(f"on_bad_record must be {'|'.join(get_args(OnBadRecord))}, got {on_bad_record!r}")
    if format != "auto" and format not in FORMATS:
        raise DataError(path, None, "unknown_format", f"unknown format {format!r} (one of {', '.join(FORMATS)})")
    skipped = skipped if skipped is not None else Counter()
    path, fmt, records, seen = str(path), format, [], 0
    id_line: dict = {}  # id -> line of its first record: per-item results pair runs by id
    for line, obj in _iter_raw(path):
        seen += 1
        try:
            if isinstance(obj, DataError):
                raise obj
            obj = _rename(obj, columns) if isinstance(obj, dict) else obj
            if fmt == "auto" and isinstance(obj, dict):
                fmt = detect_format(obj) or "auto"
                if fmt == "auto":
                    raise DataError(
                        path,
                        line,
                        "unknown_format",
                        f"cannot tell the format from the fields {sorted(obj)[:8]}; set data.format or data.columns",
                    )
            rec = normalize(obj, fmt, path, line, require_answer)
            if rec["id"] in id_line:
                raise DataError(
                    path, line, "duplicate_id", f"id {rec['id']!r} is also the id of line {id_line[rec['id']]}"
                )
            id_line[rec["id"]] = line
            records.append(rec)
        except DataError as e:
            if on_bad_record == "skip" and e.reason not in FILE_LEVEL:
                skipped[e.reason] += 1
                continue
            raise
    if seen == 0:
        raise DataError(path, None, "empty_file", "no records in the file")
    return records
