"""The sampling sweep of ``benchmarks/run.py`` and the choice of each model's default sampler.

The sweep generates with every candidate setting of the preset (every sampler of both diffusion
modes at a few step counts, with and without the length placed first, a few temperatures, and
the AR model greedy and ancestral) and describes each sample set beside as many random real
**validation** sentences: network calls per batch of 64, seconds per 64 sentences (after a
warm-up, one batch of 64 at a time), generative perplexity under the AR model, mean per-sample
unigram entropy, mean words, distinct-2 and the faults of the id rows. Samples are
unconditional, so "on validation" means that they are compared with validation sentences (and
with as many training sentences, the text the models imitate, whose entropy and words set the
choice's bars: E2E's validation and test sentences are longer than its training sentences); the
choice (:func:`select`) reads only those figures, never the test split's. The evaluate stage
then generates with the chosen settings on the test split (:func:`evaluate_stage`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from presets import MODES, SweepLine

if TYPE_CHECKING:
    from stages import Context

ENTROPY_SHARE = 0.95  # a chosen setting's mean unigram entropy ≥ 0.95 × real text's
WORDS_TOLERANCE = 0.10  # its mean length in words within ±10 % of real text's
# the bars are set by real *training* text, the text the models imitate (E2E's validation and
# test sentences are longer: 22.4 / 24.9 / 27.2 words on average); validation text where a sweep
# result has no training figures
RULES = {
    "quality": "lowest generative perplexity within the call budget among settings whose "
    f"entropy is ≥ {ENTROPY_SHARE:g}× and whose words are within ±{WORDS_TOLERANCE:.0%} of real "
    "training text's",
    "length": "no setting within the call budget met the entropy bar: lowest generative "
    f"perplexity among those whose words are within ±{WORDS_TOLERANCE:.0%} of real training "
    "text's",
    "budget": f"no setting within the call budget had words within ±{WORDS_TOLERANCE:.0%} of real "
    "training text's: lowest generative perplexity within the budget",
    "saved": "no sweep setting within the call budget (or no sweep result): the model's saved "
    "default",
}


def sweep_stage(ctx: Context) -> dict:
    """Every candidate of the preset's sweep, described beside real validation sentences."""
    from textdiff.infra.evaluation import perplexity_of_texts
    from textdiff.models.pipeline import TextDiffusionPipeline

    ctx.need_models(*MODES)
    n = ctx.preset.sweep_samples
    pipes = {m: TextDiffusionPipeline.from_pretrained(ctx.model_dir(m)) for m in MODES}
    real = _real_figures(ctx, pipes, n)
    real |= _real_figures(ctx, pipes, n, split="train", prefix="train_real_")
    points, skipped = [], []
    for line in ctx.preset.sweep:
        for steps in line.steps:
            why = _unsupported(pipes[line.mode], line, steps)
            if why:
                skipped.append({"label": line.label, "steps": steps, "why": why})
                ctx.log("sweep", f"{line.label} {steps} steps: skipped ({why})")
                continue
            row = _point(pipes[line.mode], line, steps, n)
            row["generative_perplexity"] = perplexity_of_texts(pipes["ar"], row.pop("texts"))
            points.append(row)
            ctx.log(
                "sweep",
                f"{line.label:<34} {steps!s:>4} steps: {row['network_calls']:>5.0f} calls, "
                f"gen. ppl {row['generative_perplexity']:8.2f}, entropy {row['entropy']:.2f}, "
                f"{row['words']:5.1f} words, {row['seconds_per_64']:.2f} s/64",
            )
    return {"samples": n, "split": "validation", "points": points, "skipped": skipped, **real}


def _real_figures(
    ctx: Context, pipes: dict, n: int, split: str = "validation", prefix: str = "real_"
) -> dict:
    """The figures of ``n`` random real sentences of ``split`` (``prefix`` keys). The training
    split is the text the models imitate; E2E's splits differ (training sentences are shorter
    than validation and test ones), so it shows what a faithful sampler would reach."""
    from textdiff.infra.config import load_config
    from textdiff.infra.data import iter_texts, load_text_splits
    from textdiff.infra.evaluation import perplexity_of_texts
    from textdiff.infra.quality import random_real, text_figures
    from textdiff.models.tokenization import encode

    data = load_config(ctx.model_dir("ar") / "experiment.yaml").data
    real = random_real(list(iter_texts(load_text_splits(data)[split])), n, seed=0)
    pipe = pipes["gaussian"]  # the tokenizer the models share; its length for the id rows
    ids, _ = encode(pipe.tokenizer, real, pipe.seq_len)
    return {
        f"{prefix}count": len(real),
        f"{prefix}generative_perplexity": perplexity_of_texts(pipes["ar"], real),
        **text_figures(real, ids, pipe.tokenizer, prefix=prefix),
        f"{prefix}examples": real[:2],
    }


def _unsupported(pipe, line: SweepLine, steps: int | None) -> str:
    """Why ``line`` at ``steps`` cannot run on this model ('' when it can)."""
    limit = pipe.max_steps
    if steps is not None and limit is not None and steps > limit:
        return f"more steps than the model's chain of {limit}"
    posterior = getattr(pipe.process, "prediction", "posterior") == "posterior"
    if line.mode == "gaussian" and line.temperature not in (None, 1.0) and not posterior:
        return "temperature needs a prediction=posterior Gaussian model"
    return ""


def _point(pipe, line: SweepLine, steps: int | None, n: int) -> dict:
    """Generate ``n`` sentences (batches of 64) after a warm-up of the same setting; timing,
    calls and figures of the samples (their texts under ``texts``, for scoring)."""
    from textdiff.infra.quality import text_figures

    options = line.options
    pipe.generate(2, num_steps=steps and min(steps, 2), seed=1, **options)  # warm-up
    start = time.perf_counter()
    out = pipe.generate(n, num_steps=steps, seed=0, batch_size=64, return_ids=True, **options)
    seconds = time.perf_counter() - start
    figures = text_figures(out.texts, out.ids, pipe.tokenizer)
    return {
        "label": line.label,
        "mode": line.mode,
        "sampler": line.sampler,
        "steps": steps,
        "temperature": line.temperature,
        "clamp": line.clamp,
        "sampler_options": options.get("sampler_options"),
        "network_calls": out.nfe / -(-n // 64),
        "seconds": seconds,
        "seconds_per_64": seconds * 64 / n,
        **figures,
        "texts": out.texts,
        "examples": out.texts[:2],
    }


def within(value: float, real: float, tolerance: float = WORDS_TOLERANCE) -> bool:
    """``value`` within ``±tolerance`` (relative) of ``real``."""
    return abs(value - real) <= tolerance * real


def select(sweep: dict | None, budget: dict[str, int]) -> dict:
    """Per diffusion mode, the default chosen from the sweep's figures (the rules of
    :data:`RULES`, in order, with the bars of :func:`bars`): the point (its generate settings and
    figures) and the rule."""
    out = {}
    for mode, calls in budget.items():
        pts = [p for p in (sweep or {}).get("points", []) if p["mode"] == mode]
        pts = [p for p in pts if p["network_calls"] <= calls]
        real = bars(sweep) if pts else {}
        long_ok = [p for p in pts if within(p["words"], real["words"])] if pts else []
        bar = ENTROPY_SHARE * real["entropy"] if pts else 0.0
        tests = {
            "quality": [p for p in long_ok if p["entropy"] >= bar],
            "length": long_ok,
            "budget": pts,
        }
        rule = next((r for r, group in tests.items() if group), "saved")
        point = min(tests[rule], key=lambda p: p["generative_perplexity"]) if pts else None
        out[mode] = {
            "rule": rule,
            "why": RULES[rule],
            "budget": calls,
            "within_budget": len(pts),
            "point": point,
            "bars_from": real.get("text"),
        }
    return out


def bars(sweep: dict) -> dict:
    """The real text whose entropy and words set the choice's bars: the training sentences the
    sweep describes (the text the models imitate), else its validation sentences."""
    prefix, text = (
        ("train_real_", "training") if "train_real_words" in sweep else ("real_", "validation")
    )
    return {"text": text, "entropy": sweep[f"{prefix}entropy"], "words": sweep[f"{prefix}words"]}


def save_choice(ctx: Context, mode: str, point: dict) -> Path:
    """A copy of ``mode``'s model folder whose saved sampling defaults (``config.json``
    ``sample``) are the chosen setting, so ``evaluate_model`` generates with all of it
    (temperature and clamping included) and the folder can be used as the model itself."""
    src, dst = ctx.model_dir(mode), ctx.work / "chosen" / mode
    if dst.is_dir():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    sample = config["sample"]
    sample.update(sampler=point["sampler"], steps=point["steps"])
    sample["options"] = dict(point["sampler_options"] or {})
    for key in ("temperature", "clamp"):
        if point[key] is not None:
            sample[key] = point[key]
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dst


def reference_quality(ctx: Context, folder: Path, steps: int) -> dict:
    """The Gaussian target's yardstick on the test split: DDPM with ``steps`` steps (at most the
    chain) at the chosen folder's temperature, no clamping, no length placed first; the same
    count, seed and real sentences as the evaluation's samples."""
    from textdiff.infra.config import load_config
    from textdiff.infra.evaluation import EvaluationData
    from textdiff.infra.quality import sample_quality
    from textdiff.models.pipeline import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(folder)
    cfg = load_config(folder / "experiment.yaml")
    data = EvaluationData.load(pipe, cfg, "test", ctx.preset.eval_limit)
    steps = min(steps, pipe.max_steps or steps)
    _, quality = sample_quality(
        pipe,
        data,
        ctx.preset.eval_samples,
        ctx.model_dir("ar"),
        sampler="ddpm",
        num_steps=steps,
        clamp=False,
        sampler_options={"length_first": False},
        seed=0,
    )
    quality["temperature"] = pipe.sample_defaults.temperature
    return quality


def evaluate_stage(ctx: Context, choice: dict) -> dict:
    """``evaluate_model`` on the test split for every mode, samples scored by the AR model; each
    diffusion model generates with the setting ``choice`` holds for it (chosen on validation by
    ``sweep.select``), saved as the defaults of a copy of its folder; the Gaussian model also
    with DDPM at the preset's reference steps and the chosen temperature (its target's bar).
    Each sample set also carries the figures of as many random training sentences
    (``train_real_*``)."""
    from textdiff.infra.evaluation import evaluate_model
    from textdiff.models.pipeline import TextDiffusionPipeline

    ctx.need_models(*MODES)
    p, out = ctx.preset, {}
    pipes = {m: TextDiffusionPipeline.from_pretrained(ctx.model_dir(m)) for m in ("gaussian", "ar")}
    train_real = _real_figures(ctx, pipes, p.eval_samples, split="train", prefix="train_real_")
    for mode in MODES:
        start, point = time.perf_counter(), _get_point(choice, mode)
        folder, chosen = ctx.model_dir(mode), {}
        if point is not None:  # temperature and clamping reach it through the saved defaults
            folder = save_choice(ctx, mode, point)
            chosen = {k: point[k] for k in ("sampler", "steps", "sampler_options")}
        out[mode] = evaluate_model(
            folder,
            **chosen,
            split="test",
            max_sentences=p.eval_limit,
            num_t=p.num_t,
            num_samples=p.eval_samples,
            seed=0,
            reference_model=ctx.model_dir("ar"),
            acc_sentences=p.acc_sentences,
            progress=False,
        )
        out[mode]["choice"] = choice.get(mode)
        out[mode]["samples"]["temperature"] = _saved_temperature(folder)
        out[mode]["samples"].update(train_real)  # the text imitated, beside the test text
        if mode == "gaussian":
            out[mode]["reference"] = reference_quality(ctx, folder, p.reference_steps)
        out[mode]["seconds"] = time.perf_counter() - start
        s = out[mode]["summary"]
        ctx.log(
            "evaluate",
            f"{mode}: perplexity {s['perplexity_bound']}, samples ({s['samples']}): generative "
            f"perplexity {s.get('samples generative_perplexity')}, entropy "
            f"{s.get('samples entropy')}, words {s.get('samples words')} "
            f"({out[mode]['seconds']:.0f} s)",
        )
    return out


def _get_point(choice: dict, mode: str) -> dict | None:
    return (choice.get(mode) or {}).get("point")


def _saved_temperature(folder: Path) -> float:
    """The sampling temperature a model folder saves (``config.json`` ``sample``)."""
    sample = json.loads((folder / "config.json").read_text(encoding="utf-8"))["sample"]
    return sample.get("temperature", 1.0)
