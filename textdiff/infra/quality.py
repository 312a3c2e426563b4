"""What generated samples look like, beside as many real sentences of the same split.

:func:`sample_quality` reports, for a sample set and the real sentences (keys prefixed
``real_``): generative perplexity under a reference (autoregressive) model, the mean per-sample
unigram entropy, distinct-1/2, self-BLEU, the mean length in words and the faults of the id rows
(no ``[EOS]``, ``[PAD]`` or ``[UNK]`` inside the sentence), with the sampler, its steps and
options, the network calls made and the seconds per 64 sentences. The keys are listed in the
README (Evaluation) and stay stable.
"""

from __future__ import annotations

import time

from ..models.pipeline import TextDiffusionPipeline
from ..models.tokenization import encode
from .evaluation import perplexity_of_texts
from .metrics import distinct_n, mean_words, row_faults, self_bleu, unigram_entropy


def text_figures(texts: list[str], ids, tokenizer, prefix: str = "") -> dict:
    """Entropy, distinct-n, self-BLEU, length and row faults of ``texts`` (and their ids)."""
    tok = tokenizer
    figures = {
        "entropy": unigram_entropy(texts),
        "words": mean_words(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        **row_faults(
            ids, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, unk_id=tok.unk_token_id
        ),
    }
    if len(texts) >= 2:
        figures["self_bleu"] = self_bleu(texts)
    return {prefix + k: v for k, v in figures.items()}


def random_real(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` real sentences drawn without replacement (seeded) from the whole split: files like
    E2E's list references grouped by meaning representation, so the first ``n`` would not be a
    sample of the split."""
    import random

    return random.Random(seed).sample(texts, min(n, len(texts)))


def sample_quality(
    pipe, data, num_samples: int, reference_model=None, progress=False, **generation
):
    """Generate ``num_samples`` sentences (one per condition for a data-to-text model) with the
    ``generation`` arguments of ``generate`` and describe them beside as many real sentences of
    the split (module docstring); returns the generation output and the figures."""
    conditions = None
    if data.conditions is not None:  # samples for the split's MRs, one each
        num_samples = min(num_samples, len(data.conditions))
        conditions = data.conditions[:num_samples]
    t0 = time.perf_counter()
    gen = pipe.generate(
        num_samples, return_ids=True, progress=progress, condition=conditions, **generation
    )
    seconds = time.perf_counter() - t0
    real = random_real(data.real, max(num_samples, 2), generation.get("seed") or 0)
    real_ids, _ = encode(pipe.tokenizer, real, pipe.seq_len - pipe.condition_len)
    defaults = pipe.sample_defaults
    quality = {
        "count": num_samples,
        "sampler": generation.get("sampler") or defaults.sampler,
        "steps": generation.get("num_steps") or defaults.steps,
        "options": generation.get("sampler_options") or defaults.options,
        "temperature": generation.get("temperature") or defaults.temperature,
        "network_calls": gen.nfe,
        "network_calls_per_batch": gen.nfe / -(-num_samples // 64),
        "seconds": seconds,
        "seconds_per_64": seconds * 64 / num_samples,
        **text_figures(gen.texts, gen.ids, pipe.tokenizer),
        **text_figures(real, real_ids, pipe.tokenizer, prefix="real_"),
        "examples": gen.texts[:10],
    }
    if reference_model is not None:
        quality.update(reference_perplexities(reference_model, gen.texts, real))
    return gen, quality


def reference_perplexities(reference_model, texts: list[str], real: list[str]) -> dict:
    """The reference model's perplexity of the samples and of as many real sentences."""
    reference = TextDiffusionPipeline.from_pretrained(reference_model)
    return {
        "generative_perplexity": perplexity_of_texts(reference, texts),
        "reference_perplexity_on_real": perplexity_of_texts(reference, real[: max(len(texts), 2)]),
    }
