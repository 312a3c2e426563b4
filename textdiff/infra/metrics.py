"""Text statistics of generated samples: distinct-n, self-BLEU, unigram entropy, length, and the
faults of generated id rows (no external dependency but torch for the ids).

``unigram_entropy`` is the entropy (nats) of the word frequencies inside one sample, averaged
over samples, as MDLM and DUO report it: a sample that repeats a few words has a low entropy,
whatever its perplexity (a low generative perplexity with a low entropy is degenerate text).

``self_bleu`` follows the Texygen protocol (Zhu et al., 2018): each sentence is scored by
sentence-level BLEU-4 against all the others as references, and the scores are averaged; higher
means less diverse. Zero n-gram matches are smoothed with ε = 0.1 (Chen & Cherry's method 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams ÷ all n-grams over the corpus (0 when there is no n-gram)."""
    total, unique = 0, set()
    for text in texts:
        grams = ngrams(text.split(), n)
        total += sum(grams.values())
        unique.update(grams)
    return len(unique) / total if total else 0.0


def self_bleu(texts: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean sentence BLEU-``max_n`` of each text against all the other texts."""
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two texts")
    scores = bleu_against_others(texts, max_n, epsilon)
    return sum(scores) / len(scores)


def mbr_pick(candidates: Sequence[str], max_n: int = 4) -> int:
    """Minimum-Bayes-risk choice with BLEU as the utility (DiffuSeq's MBR): the index of the
    candidate whose sentence BLEU against all the others is highest (the first on ties; 0 for
    a single candidate)."""
    if len(candidates) < 2:
        return 0
    scores = bleu_against_others(candidates, max_n)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def bleu_against_others(texts: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> list:
    """Sentence BLEU-``max_n`` of each text with all the other texts as its references."""
    tokenized = [t.split() for t in texts]
    counts = [[ngrams(w, n) for n in range(1, max_n + 1)] for w in tokenized]
    # per n-gram: the largest count in the corpus, how many texts have it, and the runner-up;
    # the reference count "excluding self" is the runner-up only when self alone holds the max
    stats: list[dict[tuple, list[int]]] = [{} for _ in range(max_n)]
    for per_text in counts:
        for n, grams in enumerate(per_text):
            for g, c in grams.items():
                top = stats[n].setdefault(g, [0, 0, 0])  # max, holders of max, runner-up
                if c > top[0]:
                    top[:] = [c, 1, top[0]]
                elif c == top[0]:
                    top[1] += 1
                else:
                    top[2] = max(top[2], c)
    lengths = Counter(len(w) for w in tokenized)
    scores = []
    for i, words in enumerate(tokenized):
        if not words:
            scores.append(0.0)
            continue
        log_p = 0.0
        for n, grams in enumerate(counts[i]):
            matched = 0
            for g, c in grams.items():
                top, holders, runner_up = stats[n][g]
                ref = runner_up if c == top and holders == 1 else top
                matched += min(c, ref)
            total = sum(grams.values())
            p = matched / total if matched else epsilon / max(total, 1)
            log_p += math.log(p) / max_n
        ref_len = _closest_other_length(lengths, len(words))
        bp = 1.0 if len(words) > ref_len else math.exp(1 - ref_len / len(words))
        scores.append(bp * math.exp(log_p))
    return scores


def _closest_other_length(lengths: Counter, length: int) -> int:
    """The length of another text closest to ``length`` (ties to the shorter), for BLEU's
    brevity penalty; ``lengths`` counts every text's length, this one's included."""
    others = lengths.copy()
    others[length] -= 1
    return min((r for r, k in others.items() if k > 0), key=lambda r: (abs(r - length), r))


def unigram_entropy(texts: Sequence[str]) -> float:
    """Mean over ``texts`` of the entropy (nats) of each text's own word frequencies."""
    values = []
    for text in texts:
        counts = Counter(text.split())
        n = sum(counts.values())
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0)
    return sum(values) / len(values) if values else 0.0


def mean_words(texts: Sequence[str]) -> float:
    """Mean number of whitespace-separated words per text."""
    return sum(len(t.split()) for t in texts) / len(texts) if texts else 0.0


def row_faults(ids, *, pad_id: int, eos_id: int, unk_id: int | None) -> dict[str, float]:
    """Shares of id rows (N, L) that have no ``[EOS]`` (``no_eos``), a ``[PAD]`` before their
    first ``[EOS]`` (``pad_inside``: a hole in the sentence), or an ``[UNK]`` before it
    (``unk_inside``)."""
    import torch

    eos = ids == eos_id
    has_eos = eos.any(1)
    end = torch.where(
        has_eos, eos.float().argmax(1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long)
    )
    inside = torch.arange(ids.shape[1])[None] < end[:, None]
    share = lambda rows: float(rows.float().mean()) if len(rows) else 0.0  # noqa: E731
    faults = {"no_eos": share(~has_eos), "pad_inside": share(((ids == pad_id) & inside).any(1))}
    faults["unk_inside"] = share(((ids == unk_id) & inside).any(1)) if unk_id is not None else 0.0
    return faults
