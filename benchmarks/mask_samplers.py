"""How a trained [MASK] model's samples depend on the sampler: each setting of a grid draws
128 sentences on the validation split, scored by an AR model (generative perplexity) and
described beside as many real validation sentences (unigram entropy, words, self-BLEU,
distinct-1). How ``configs/lm-mask.yaml``'s sampling was chosen on fortunes:

    .venv/bin/python benchmarks/mask_samplers.py MASK_MODEL AR_MODEL
    .venv/bin/python benchmarks/mask_samplers.py MASK_MODEL AR_MODEL --quick   # 16 samples

with MASK_MODEL e.g. ``benchmarks/work/<name>/mask/best-model`` and AR_MODEL the AR model of
``benchmarks/corpus.py``. Writes ``benchmarks/results/mask-samplers[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data2text import _machine  # noqa: E402

from textdiff.infra.config import load_config  # noqa: E402
from textdiff.infra.evaluation import EvaluationData  # noqa: E402
from textdiff.infra.quality import sample_quality  # noqa: E402
from textdiff.models.pipeline import TextDiffusionPipeline  # noqa: E402

LENGTH_FIRST = {"length_first": True}
# (label, arguments of generate)
GRID = [
    ("ancestral 48, T 1", dict(sampler="ancestral", num_steps=48, temperature=1.0)),
    ("ancestral 128, T 1", dict(sampler="ancestral", num_steps=128, temperature=1.0)),
    ("ancestral 48, T 0.7", dict(sampler="ancestral", num_steps=48, temperature=0.7)),
    ("confidence 15, T 0.7", dict(sampler="confidence", num_steps=15, temperature=0.7)),
    ("confidence 15, T 1", dict(sampler="confidence", num_steps=15, temperature=1.0)),
    ("confidence 48, T 1", dict(sampler="confidence", num_steps=48, temperature=1.0)),
    *[
        (
            f"confidence 15, T {t:g}, confidence_temperature {c:g}",
            dict(
                sampler="confidence",
                num_steps=15,
                temperature=t,
                sampler_options={**LENGTH_FIRST, "confidence_temperature": c},
            ),
        )
        for t, c in ((1.0, 2.0), (1.0, 3.0), (1.0, 5.0), (0.9, 4.0))
    ],
]
KEYS = ("generative_perplexity", "entropy", "words", "self_bleu", "distinct_1", "seconds_per_64")
REAL = ("reference_perplexity_on_real", "real_entropy", "real_words", "real_self_bleu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a [MASK] model folder")
    p.add_argument("reference", help="the AR model that scores the samples")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="16 samples per setting")
    p.add_argument("--out", help="results JSON (default: benchmarks/results/mask-samplers.json)")
    args = p.parse_args(argv)
    n = 16 if args.quick else args.samples
    name = "mask-samplers-quick" if args.quick else "mask-samplers"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.json"
    pipe = TextDiffusionPipeline.from_pretrained(args.model)
    if pipe.settings.noise != "mask":
        p.error(f"{args.model} is a {pipe.settings.noise} model; give a [MASK] model")
    cfg = load_config(Path(args.model) / "experiment.yaml")
    data = EvaluationData.load(pipe, cfg, "validation", None)
    rows, real = [], {}
    print(f"| setting | {' | '.join(KEYS)} |\n|{' --- |' * (len(KEYS) + 1)}")
    for label, generation in GRID:
        generation = {"sampler_options": LENGTH_FIRST, **generation}
        _, q = sample_quality(pipe, data, n, args.reference, seed=args.seed, **generation)
        rows.append({"setting": label, "generate": generation, **{k: q[k] for k in KEYS}})
        real = {k: q[k] for k in REAL}
        print(f"| {label} | " + " | ".join(f"{q[k]:.3g}" for k in KEYS) + " |", flush=True)
    print("real validation text: " + ", ".join(f"{k} {v:.3g}" for k, v in real.items()))
    record = {"model": args.model, "reference": args.reference, "samples": n, "real": real}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**record, "rows": rows, "machine": _machine()}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
