"""Data pipeline: files -> normalized records -> fixed train/held-out split -> tokenized examples.

formats.py   load_records: json/jsonl/parquet/csv/datasets dirs/hub ids in 4 formats, bad records named
templates.py tokenize_example / prompt_text / prompt_ids: alpaca (paper) or chat template, exact labels
collate.py   make_batches / pack_examples: padded or padding-free packed batches
embedded.py  sharegpt_records / mtbench_records: offline datasets shipped in pip packages
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..config import eval_count
from ..errors import ConfigError, DataError
from .collate import make_batches, pack_examples
from .embedded import mtbench_records, sharegpt_records
from .formats import load_records
from .templates import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, prompt_ids, prompt_text, reference, tokenize_example

__all__ = [
    "DataBundle",
    "build_datasets",
    "load_records",
    "tokenize_example",
    "prompt_text",
    "prompt_ids",
    "reference",
    "make_batches",
    "pack_examples",
    "sharegpt_records",
    "mtbench_records",
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_NO_INPUT",
    "prompt_key",
    "record_id",
]


@dataclass
class DataBundle:
    train_records: list
    heldout_records: list
    train_examples: list
    heldout_examples: list
    skipped: Counter = field(default_factory=Counter)
    info: dict = field(default_factory=dict)


def record_id(record: dict, index: int) -> str:
    """A record's stable id (per-item results pair runs by it): its own `id`, else where it came from
    (`source`, path:line), else its position in its list."""
    return str(record.get("id") or record.get("source") or f"item-{index}")


def prompt_key(record: dict) -> str:
    """What makes two prompts "the same": every message before the answer, lowercased, whitespace collapsed."""
    msgs = record["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return "\n".join(f"{m['role']}: {' '.join(m['content'].lower().split())}" for m in msgs)


def build_datasets(cfg, tokenizer) -> DataBundle:
    """Records, split and tokenized examples for a run (`cfg` is neftune.config.Config).

    The held-out split depends only on data.split_seed (not on the training seed), and training
    examples whose prompt equals a held-out prompt are dropped (skipped["duplicate_of_heldout"]),
    so held-out loss and win rates never measure memorisation. num_train_samples takes the first
    N usable training examples after the split: smaller sizes are nested subsets of larger ones.
    """
    d = cfg.data
    skipped: Counter = Counter()
    if d.path == "sharegpt":
        records = sharegpt_records(d.sharegpt_size)
    else:
        records = load_records(d.path, d.format, d.columns, d.on_bad_record, skipped)
    n_held = eval_count(d.eval_size, len(records))
    if len(records) <= n_held:
        raise ConfigError(
            f"{d.path}: {len(records)} usable records, not enough for data.eval_size={d.eval_size} "
            f"({n_held} held-out examples) plus training data"
        )
    order = list(records)
    random.Random(d.split_seed).shuffle(order)
    held, rest = order[:n_held], order[n_held:]

    held_keys = {prompt_key(r) for r in held}
    train = [r for r in rest if prompt_key(r) not in held_keys]
    if len(train) < len(rest):
        skipped["duplicate_of_heldout"] += len(rest) - len(train)

    def tokenize(recs, limit=None):
        kept, examples = [], []
        for r in recs:
            if limit is not None and len(examples) >= limit:
                break
            try:
                ex = tokenize_example(r, tokenizer, d.template, d.max_length, d.train_on_inputs, d.truncation)
            except DataError as e:
                if d.on_bad_record != "skip":
                    raise
                skipped[e.reason] += 1
                continue
            kept.append(r)
            examples.append(ex)
        return kept, examples

    heldout_records, heldout_examples = tokenize(held)
    train_records, train_examples = tokenize(train, d.num_train_samples)
    if not train_examples:
        raise DataError(d.path, None, "empty_file", f"no usable training records (skipped: {dict(skipped)})")

    def count(examples, supervised=False):
        return sum(sum(t != -100 for t in e["labels"]) if supervised else len(e["input_ids"]) for e in examples)

    info = {
        "path": d.path,
        "template": d.template,
        "n_records": len(records),
        "n_train": len(train_examples),
        "n_heldout": len(heldout_examples),
        "train_tokens": count(train_examples),
        "train_supervised_tokens": count(train_examples, True),
        "heldout_tokens": count(heldout_examples),
        "skipped": dict(skipped),
    }
    return DataBundle(train_records, heldout_records, train_examples, heldout_examples, skipped, info)
