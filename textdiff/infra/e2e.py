"""E2E data-to-text evaluation: multi-reference BLEU and slot error rate on the E2E test set.

**Test set.** The unique meaning representations (MRs) of ``testset_w_refs.csv`` in the E2E
release zip (``e2e-dataset-v1.0.0.zip``; read in place with ``zipfile`` + ``csv``), in order of
first appearance — 630 MRs with 4,693 references. Each MR is given to the model in the format of
the ``src1_*.txt`` training files (``name : The Eagle | Type : pub | price : £ 20 - 25``;
:func:`to_source_mr`); one sentence is generated per MR.

**BLEU.** sacrebleu corpus BLEU of the generated sentences against *all* references of their MR
(a variable number per MR). The reported ``bleu`` is lowercased with sacrebleu's ``13a``
tokenization: the protocol of the E2E challenge's scoring script (e2e-metrics: case-insensitive
BLEU with mteval-v13a tokenization, closest reference length), whose TGen baseline scored 65.93
(Dušek et al., 2020). ``bleu_cased`` is sacrebleu's default (case-sensitive). The generated
text is word-split like the training files; before scoring, the splits that 13a does not undo
are reverted as the raw references write them (:func:`detokenize`): ``£ 20`` → ``£20``,
``family - friendly`` → ``family-friendly``, ``it 's`` → ``it's`` (13a splits neither a hyphen
between letters nor an apostrophe). The first human reference of each test MR, word-split as
the training files are, scores 58.85 against the others with the ``£`` rule alone and 60.96 with
all three.

**Slot error rate** (SER) here is the share of MR slots whose value does not appear in the
sentence (missing slots only; added or repeated slots are not counted). Matching is on lowercased
word sequences (``\\w+`` runs and single punctuation marks), so ``£20-25`` matches ``£ 20 - 25``:

- every slot: its value's words appear contiguously in the sentence's words, or those of one
  of the few common rewordings in :data:`ALIASES` (``city center``, ``moderately``, ...);
- ``customer rating`` ``N out of 5``: also ``N star`` / ``N stars``;
- ``familyFriendly`` (yes or no): any of *family, families, child, children, kid, kids*
  appears (the polarity is not checked).

By these rules the first human reference of each test MR misses 11% of the slots (the E2E
references do leave slots out, and reword others): a floor of sorts for a model that imitates
them; ``evaluate_data2text`` reports it as ``reference_slot_error_rate``.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import random
import re
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

TGEN_BLEU = 65.93  # the E2E challenge baseline (TGen) on this test set, Dušek et al. (2020)
RELEASE_ZIP = "e2e-dataset-v1.0.0.zip"
TEST_MEMBER = "e2e-dataset/testset_w_refs.csv"
MBR_UTILITIES = ("bleu", "slots", "bleu-slots")
SLOT_PENALTY = 0.1  # "bleu-slots": a missing slot costs as much as 0.1 of consensus BLEU
# attribute names of the src1 files → the release's names (used as the canonical ones)
CANONICAL = {"Type": "eatType", "price": "priceRange", "family friendly": "familyFriendly"}
SOURCE_NAMES = {v: k for k, v in CANONICAL.items()}
FAMILY_WORDS = frozenset({"family", "families", "child", "children", "kid", "kids"})
ALIASES: dict[tuple[str, str], tuple[str, ...]] = {  # (attribute, lowercased value) → rewordings
    ("area", "city centre"): ("city center",),
    ("area", "riverside"): ("river",),
    ("priceRange", "moderate"): ("moderately",),
    ("priceRange", "£20-25"): ("£20-£25", "20-25"),
    ("priceRange", "less than £20"): ("under £20",),
    ("priceRange", "more than £30"): ("over £30",),
    ("customer rating", "high"): ("highly",),
}


def read_references(path: str | Path, member: str = TEST_MEMBER) -> list[tuple[str, list[str]]]:
    """``(mr, [references])`` for each unique MR of the release zip's ``member`` CSV (columns
    ``mr``, ``ref``), in order of first appearance. ``path`` is the zip (or the CSV itself)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"E2E references {str(path)!r} not found; pass the release zip ({RELEASE_ZIP})"
        )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if member not in z.namelist():
                raise FileNotFoundError(f"{path} has no {member}")
            text = z.read(member).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    refs: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if "mr" not in row or "ref" not in row:
            raise ValueError(f"{path}: expected columns mr, ref; found {list(row)}")
        refs.setdefault(row["mr"].strip(), []).append(row["ref"].strip())
    return list(refs.items())


def with_slot_mix(pairs: list[tuple], like: Sequence[str], size: int | None = None) -> list[tuple]:
    """As many of ``pairs`` (``(mr, references)``, e.g. :func:`read_references`) as can keep
    the mix of slot counts of the MRs ``like`` (at most about ``size``): each count's share of
    the result is its share of ``like``, the pairs of a count taken in their order, grouped by
    count. E2E's test MRs carry more slots than its
    devset's (41% of the 630 test MRs have all 8, 13% of the 547 devset MRs and none of the first
    200), and the slot count sets how hard an MR is; the devset MRs in the test's mix make a
    validation set as hard as the test."""
    want = Counter(len(parse_mr(mr)) for mr in like)
    if not want:
        raise ValueError("with_slot_mix needs at least one MR to take the mix of")
    have: dict[int, list[tuple]] = {}
    for pair in pairs:
        have.setdefault(len(parse_mr(pair[0])), []).append(pair)
    total = sum(want.values())
    most = min(len(have.get(n, ())) * total / c for n, c in want.items())
    size = most if size is None else min(most, size)
    out = [pair for n, c in want.items() for pair in have.get(n, [])[: round(c * size / total)]]
    if not out:
        raise ValueError("no MRs keep that mix of slot counts (a count of `like` is missing)")
    return out


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """The ``(attribute, value)`` slots of an MR in either format — the release's
    ``name[The Eagle], eatType[pub]`` or the src1 files' ``name : The Eagle | Type : pub`` —
    with the release's attribute names."""
    mr = mr.strip()
    if "[" in mr:
        slots = re.findall(r"\s*([^,\[\]]+?)\s*\[([^\]]*)\]", mr)
    else:
        slots = []
        for part in mr.split("|"):
            attr, sep, value = part.partition(":")
            if not sep:
                raise ValueError(f"not an E2E meaning representation: {mr!r}")
            slots.append((attr.strip(), value.strip()))
    if not slots:
        raise ValueError(f"not an E2E meaning representation: {mr!r}")
    return [(CANONICAL.get(a, a), v) for a, v in slots]


def to_source_mr(mr: str) -> str:
    """An MR in the src1 files' format, word-split as they are (``£20-25`` → ``£ 20 - 25``)."""

    def split(value: str) -> str:
        return " ".join(re.sub(r"([£\-])", r" \1 ", value).split())

    return " | ".join(f"{SOURCE_NAMES.get(a, a)} : {split(v)}" for a, v in parse_mr(mr))


VENUES = ("name", "near")  # the slots whose values are venue names


def e2e_swap_venues(
    conditions: list[str], texts: list[str], seed: int = 0
) -> tuple[list[str], list[str]]:
    """A copy of every E2E row with its venue (``name``) and the venue it is near (``near``)
    replaced, in the MR and the sentence alike, by others drawn at random from the values the
    rows give each attribute. E2E pairs venues rigidly (every MR near Burger King names The
    Eagle), so a classifier trained on the rows alone learns "The Eagle" for
    ``near[Burger King]`` and steering writes the wrong name, and a data-to-text model writes
    the venue its other slots usually go with instead of the MR's; the copies break such pairs
    (``data.augment: e2e_venues``; :func:`textdiff.infra.classify.train_classifier`)."""
    pools: dict[str, set[str]] = {a: set() for a in VENUES}
    for condition in conditions:
        for a, v in parse_mr(condition):
            if a in pools:
                pools[a].add(v)
    rng, pool = random.Random(seed), {a: sorted(v) for a, v in pools.items()}
    out_conditions, out_texts = [], []
    for condition, text in zip(conditions, texts, strict=True):
        slots = parse_mr(condition)
        new = {a: rng.choice(pool[a]) for a, v in slots if a in VENUES and len(pool[a]) > 1}
        near = new.get("near", dict(slots).get("near"))
        if new.get("name") == near:  # a venue is not near itself
            new["name"] = rng.choice([v for v in pool["name"] if v != near])
        swaps = [(v, new[a]) for a, v in slots if a in new]
        for i, (old, _) in enumerate(swaps):  # placeholders: a new value may be an old one
            text = re.sub(re.escape(old), f"\x00{i}\x00", text, flags=re.IGNORECASE)
        for i, (_, value) in enumerate(swaps):
            text = text.replace(f"\x00{i}\x00", value)
        slots = [(a, new.get(a, v)) for a, v in slots]
        out_conditions.append(to_source_mr(", ".join(f"{a}[{v}]" for a, v in slots)))
        out_texts.append(text)
    return out_conditions, out_texts


def detokenize(sentence: str) -> str:
    """Undo the word splits of the src1 files that BLEU's 13a tokenization keeps: ``£ 20`` →
    ``£20``, ``family - friendly`` → ``family-friendly``, ``it 's`` → ``it's``."""
    sentence = re.sub(r"£ (?=\d)", "£", sentence)
    sentence = re.sub(r"(?<=[^\W\d]) - (?=[^\W\d])", "-", sentence)  # between letters only
    return re.sub(r" '(?=\w)", "'", sentence)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


_ALIASES = {(a, tuple(_words(v))): [_words(x) for x in xs] for (a, v), xs in ALIASES.items()}


def _contains(words: list[str], part: list[str]) -> bool:
    n = len(part)
    return any(words[i : i + n] == part for i in range(len(words) - n + 1))


def realised(attribute: str, value: str, sentence: str) -> bool:
    """Whether the slot ``attribute[value]`` appears in ``sentence`` (module docstring)."""
    words = _words(sentence)
    if attribute == "familyFriendly":
        return not FAMILY_WORDS.isdisjoint(words)
    aliases = _ALIASES.get((attribute, tuple(_words(value))), ())
    options = [_words(value), *aliases]
    stars = re.fullmatch(r"(\d) out of 5", value.strip())
    if attribute == "customer rating" and stars:
        options += [[stars[1], "star"], [stars[1], "stars"]]
    return any(_contains(words, o) for o in options)


def slot_errors(mr: str, sentence: str) -> list[str]:
    """The slots of ``mr`` missing from ``sentence``, as ``attribute[value]``."""
    return [f"{a}[{v}]" for a, v in parse_mr(mr) if not realised(a, v, sentence)]


def slot_error_rate(mrs: list[str], sentences: list[str]) -> dict:
    """SER over a corpus: missing slots / all slots, with the count per attribute."""
    if len(mrs) != len(sentences):
        raise ValueError(f"{len(mrs)} MRs for {len(sentences)} sentences")
    total, missing = Counter(), Counter()
    for mr, sentence in zip(mrs, sentences, strict=True):
        for a, v in parse_mr(mr):
            total[a] += 1
            missing[a] += not realised(a, v, sentence)
    slots = sum(total.values())
    return {
        "slot_error_rate": sum(missing.values()) / max(slots, 1),
        "slots": slots,
        "missing": sum(missing.values()),
        "missing_rate_by_attribute": {a: missing[a] / total[a] for a in sorted(total)},
    }


class MissingDependencyError(ImportError):
    """An optional package the evaluation needs is not installed."""


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise MissingDependencyError(
            "BLEU needs sacrebleu: pip install -e .[bench] (or pip install sacrebleu)"
        ) from None
    return sacrebleu


def corpus_bleu(hypotheses: list[str], references: list[list[str]]) -> dict:
    """Corpus BLEU of ``hypotheses`` against each one's own list of ``references`` (any number
    per hypothesis): lowercased 13a (``bleu``, the E2E challenge protocol) and cased
    (``bleu_cased``), with sacrebleu's signatures."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    if not all(references):
        raise ValueError("every hypothesis needs at least one reference")
    bleu = _sacrebleu().metrics.BLEU
    streams = [list(s) for s in itertools.zip_longest(*references)]  # missing ones are None
    # force: the outputs end in " ." (the training files' split), which 13a splits alike in the
    # references; without it sacrebleu warns about tokenized input on every call
    lower, cased = bleu(lowercase=True, force=True), bleu(force=True)
    score, score_cased = (
        lower.corpus_score(hypotheses, streams),
        cased.corpus_score(hypotheses, streams),
    )
    return {
        "bleu": score.score,
        "bleu_cased": score_cased.score,
        "precisions": score.precisions,
        "brevity_penalty": score.bp,
        "signature": str(lower.get_signature()),
        "signature_cased": str(cased.get_signature()),
    }


def evaluate_data2text(
    pipe,
    references: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    mbr: int = 1,
    mbr_utility: str = "bleu-slots",
    slot_penalty: float = SLOT_PENALTY,
    member: str = TEST_MEMBER,
    slot_mix_of: Sequence[str] | None = None,
    **generation,
) -> dict:
    """Generate one sentence for each E2E test MR (the first ``limit`` of them) with the
    data-to-text pipeline ``pipe`` and score them: BLEU, SER, TGen's BLEU beside (module
    docstring). ``generation``: further arguments of ``generate`` (``num_steps``, ``sampler``,
    ``sampler_options``, ``seed``, ``guidance_scale``, ...). With ``mbr`` = k > 1, k
    candidates are generated per MR and one is kept (:func:`decode_mrs`). ``member``: the CSV
    of the release zip to read (``e2e-dataset/devset.csv`` for the validation MRs);
    ``slot_mix_of``: MRs whose mix of slot counts the scored MRs keep
    (:func:`with_slot_mix`, about ``limit`` of them in that mix)."""
    if pipe.condition_len == 0:
        raise ValueError(
            "E2E BLEU needs a data-to-text model (process.condition_len > 0); this one is "
            "unconditional"
        )
    pairs = read_references(references, member)
    if slot_mix_of is not None:  # ``limit`` scales every count's share, not a prefix
        pairs = with_slot_mix(pairs, slot_mix_of, limit)
    pairs = pairs[:limit]
    mrs = [mr for mr, _ in pairs]
    t0 = time.perf_counter()
    texts = decode_mrs(
        pipe,
        mrs,
        mbr,
        mbr_utility,
        slot_penalty=slot_penalty,
        batch_size=batch_size,
        progress=progress,
        **generation,
    )
    seconds = time.perf_counter() - t0
    hypotheses = [detokenize(t) for t in texts]
    human = slot_error_rate(mrs, [r[0] for _, r in pairs])["slot_error_rate"]
    report = {
        "references_file": str(references),
        "test_mrs": len(mrs),
        "references": sum(len(r) for _, r in pairs),
        **corpus_bleu(hypotheses, [r for _, r in pairs]),
        "tgen_bleu": TGEN_BLEU,
        **slot_error_rate(mrs, texts),
        "reference_slot_error_rate": human,
        "steps": generation.get("num_steps") or pipe.sample_defaults.steps,
        "sampler": generation.get("sampler") or pipe.sample_defaults.sampler,
        "guidance_scale": generation.get("guidance_scale", 1.0),
        "mbr": mbr,
        "mbr_utility": mbr_utility if mbr > 1 else None,
        "slot_penalty": slot_penalty if mbr > 1 and mbr_utility == "bleu-slots" else None,
        "seconds": seconds,
        "outputs": hypotheses,  # every sentence as scored: rescoring needs no decoding
        "examples": [
            {"mr": mr, "output": h, "missing": slot_errors(mr, t)}
            for mr, h, t in list(zip(mrs, hypotheses, texts, strict=True))[:10]
        ],
    }
    logger.info(
        "E2E test: BLEU %.2f (TGen %.2f), SER %.3f over %d MRs",
        report["bleu"],
        TGEN_BLEU,
        report["slot_error_rate"],
        len(mrs),
    )
    return report


def decode_mrs(
    pipe,
    mrs: list[str],
    k: int = 1,
    utility: str = "bleu-slots",
    *,
    slot_penalty: float = SLOT_PENALTY,
    **generation,
) -> list:
    """One sentence per MR. With ``k`` > 1, minimum-Bayes-risk selection among ``k``
    candidates per MR (:func:`mbr_choice`). The candidates of copy ``c`` are samples
    ``c·N .. c·N + N − 1``, so with per-sample seeding candidate 0 of each MR is exactly what
    plain decoding gives (``k = 1``)."""
    if k < 1 or utility not in MBR_UTILITIES:
        raise ValueError(f"mbr needs k ≥ 1 and a utility in {MBR_UTILITIES}; got {k}, {utility!r}")
    conditions = [to_source_mr(mr) for mr in mrs] * k
    texts = pipe.generate(len(conditions), condition=conditions, **generation)
    return [
        candidates[mbr_choice(mr, candidates, utility, slot_penalty)]
        for mr, candidates in ((mr, texts[i :: len(mrs)]) for i, mr in enumerate(mrs))
    ]


def mbr_choice(
    mr: str, candidates: list[str], utility: str = "bleu-slots", slot_penalty: float = SLOT_PENALTY
) -> int:
    """The index of the candidate kept by minimum Bayes risk (DiffuSeq): each candidate's
    *consensus* is its sentence BLEU against all the other candidates — the model's own samples
    standing in for its distribution (:func:`textdiff.infra.metrics.bleu_against_others`).
    ``"bleu"`` keeps the highest consensus; ``"slots"`` the candidate that misses the fewest of
    the MR's slots, ties broken by consensus (still against all ``k``); ``"bleu-slots"`` the
    highest consensus − ``slot_penalty`` × missing slots. The first wins ties."""
    from .metrics import bleu_against_others

    if utility not in MBR_UTILITIES:
        raise ValueError(f"unknown MBR utility {utility!r}; expected one of {MBR_UTILITIES}")
    if len(candidates) < 2:
        return 0
    consensus = bleu_against_others(candidates)
    missing = [len(slot_errors(mr, c)) for c in candidates]
    if utility == "bleu":
        score = consensus
    elif utility == "slots":
        score = list(zip((-m for m in missing), consensus, strict=True))
    else:
        score = [c - slot_penalty * m for c, m in zip(consensus, missing, strict=True)]
    return max(range(len(candidates)), key=lambda i: (score[i], -i))
