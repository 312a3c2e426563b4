"""Distinct-n and self-BLEU against hand-computed values and a brute-force reference."""

import math
from collections import Counter

import pytest

from textdiff.infra.metrics import distinct_n, ngrams, self_bleu


def test_distinct_n():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique of 7; bigrams: ab ba ab ab bc -> 3 unique of 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["x"], 2) == 0.0


def brute_self_bleu(texts, max_n=4, epsilon=0.1):
    """Sentence BLEU of each text against the others, computed the slow, obvious way."""
    words = [t.split() for t in texts]
    scores = []
    for i, hyp in enumerate(words):
        refs = [w for j, w in enumerate(words) if j != i]
        log_p = 0.0
        for n in range(1, max_n + 1):
            h = ngrams(hyp, n)
            max_ref = Counter()
            for r in refs:
                for g, c in ngrams(r, n).items():
                    max_ref[g] = max(max_ref[g], c)
            matched = sum(min(c, max_ref[g]) for g, c in h.items())
            total = sum(h.values())
            log_p += math.log(matched / total if matched else epsilon / max(total, 1)) / max_n
        ref_len = min((len(r) for r in refs), key=lambda r: (abs(r - len(hyp)), r))
        bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
        scores.append(bp * math.exp(log_p))
    return sum(scores) / len(scores)


def test_self_bleu_matches_brute_force():
    texts = [
        "the eagle is a cheap coffee shop near burger king",
        "the eagle is a coffee shop near burger king",
        "the mill is an expensive pub in the city centre",
        "a cheap coffee shop near the river is the eagle",
        "the eagle the eagle the eagle",
        "near burger king",
    ]
    assert self_bleu(texts) == pytest.approx(brute_self_bleu(texts), rel=1e-12)


def test_self_bleu_extremes():
    same = ["the eagle is a cheap coffee shop"] * 5
    assert self_bleu(same) == pytest.approx(1.0)
    disjoint = ["a b c d e", "f g h i j", "k l m n o"]
    # no match: every precision is the smoothed ε / (number of n-grams), n-grams of 5 words
    expected = math.prod(0.1 / (5 - n + 1) for n in range(1, 5)) ** 0.25
    assert self_bleu(disjoint) == pytest.approx(expected)
    with pytest.raises(ValueError):
        self_bleu(["only one"])


def test_unigram_entropy_is_the_entropy_of_each_samples_own_words():
    from textdiff.infra.metrics import mean_words, unigram_entropy

    assert unigram_entropy(["a a b b"]) == pytest.approx(math.log(2))
    assert unigram_entropy(["a b c d"]) == pytest.approx(math.log(4))
    assert unigram_entropy(["x x x x"]) == 0.0  # a repeated word carries no entropy
    assert unigram_entropy(["a a b b", "a b c d"]) == pytest.approx(1.5 * math.log(2))
    assert mean_words(["a b", "a b c d"]) == 3.0


def test_row_faults_find_missing_ends_and_holes():
    import torch

    from textdiff.infra.metrics import row_faults

    PAD, EOS, UNK = 0, 1, 2
    ids = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # fine
            [5, 6, 7, 8, 9],  # no [EOS]
            [5, PAD, 6, EOS, PAD],  # a hole
            [UNK, 6, EOS, PAD, UNK],  # [UNK] inside; the one after [EOS] does not count
        ]
    )
    faults = row_faults(ids, pad_id=PAD, eos_id=EOS, unk_id=UNK)
    assert faults == {"no_eos": 0.25, "pad_inside": 0.25, "unk_inside": 0.25}
