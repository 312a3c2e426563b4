"""``evaluate_model``: the NLL bound / perplexity, rounding accuracy and sample quality of a
trained model folder, as one JSON-ready report (also ``textdiff evaluate``).

Perplexity is ``exp(Σ NLL bound / Σ tokens)`` where tokens are the real tokens plus ``[EOS]``;
padding is modelled (it encodes the length) but not counted (docs/math.md §2), so the figure
compares with the autoregressive baseline's perplexity on the same tokens. Sentences longer than
the model (with their ``[EOS]``) do not fit and are left out, and counted as
``left_out_too_long``. The reference model that scores samples must be an autoregressive one
(an exact likelihood).

For a data-to-text model (``process.condition_len > 0``) the bound is the conditional one,
``−log p(sentence | MR)``, over the sentence's tokens; accuracy is over the sentence part; samples
are generated for the split's MRs; and on the E2E test set it reports BLEU against all references
and the slot error rate beside the TGen baseline (:mod:`textdiff.e2e`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..diffusion.guidance import condition_positions
from ..errors import TextdiffError
from ..models.devices import autocast
from ..models.pipeline import TextDiffusionPipeline
from ..models.tokenization import encode
from .batching import tokenize_split
from .config import MAX_SEED, ExperimentConfig, load_config
from .data import iter_texts, load_text_splits

logger = logging.getLogger(__name__)


class EvaluationError(TextdiffError, ValueError):
    """An evaluation cannot be run as asked (bad argument, split, reference model)."""


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def condition_mask(batch: torch.Tensor, condition_len: int) -> dict:
    """``clean=`` for the math when the rows hold a condition part, else nothing."""
    if not condition_len:
        return {}
    return {"clean": condition_positions(*batch.shape, condition_len, batch.device)}


@torch.inference_mode()
def nll_bound(
    pipe: TextDiffusionPipeline,
    ids: torch.Tensor,
    *,
    num_t: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The per-token NLL bound over ``ids`` (N, L): value, Monte-Carlo standard error, each term,
    perplexity. Token count: everything that is not [PAD] (nor in the condition part)."""
    gen = torch.Generator().manual_seed(seed)
    pad, C = pipe.tokenizer.pad_token_id, pipe.condition_len
    totals: dict[str, float] = {}
    nll = var = 0.0
    by_time = None
    tokens = int((ids[:, C:] != pad).sum())
    device = pipe.model.device
    with _progress(progress, len(ids), "bound") as bar:
        for lo in range(0, len(ids), batch_size):
            batch = ids[lo : lo + batch_size].to(device)
            with autocast(device, pipe.precision):
                b = pipe.process.nll_bound(
                    pipe.model, batch, num_t=num_t, generator=gen, **condition_mask(batch, C)
                )
            nll += float(b.total.sum())
            var += float(b.variance.sum()) if b.variance is not None else 0.0
            if b.by_time is not None:
                by_time = b.by_time.sum(0).cpu() + (0 if by_time is None else by_time)
            for k, v in b.terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.sum())
            bar.update(len(batch))
    per_token = nll / tokens
    return {
        "nll_per_token": per_token,
        "perplexity_bound": math.exp(per_token),
        "stderr_nll_per_token": math.sqrt(var) / tokens,
        "terms_per_token": {k: v / tokens for k, v in totals.items()},
        # where in the noise range the nats go: the per-time terms by stratum of t (the exact
        # terms, e.g. the prior KL, are not in it); absent for an exact likelihood
        **({} if by_time is None else {"by_time": _by_time(by_time / tokens)}),
        "num_t": num_t,
        "sentences": len(ids),
        "tokens": tokens,
        "estimator": "stratified time samples per sentence; exact for the autoregressive model",
    }


def _by_time(per_token: torch.Tensor) -> list[dict]:
    K = len(per_token)
    return [
        {"t": [k / K, (k + 1) / K], "nats_per_token": float(v)} for k, v in enumerate(per_token)
    ]


@torch.no_grad()
def accuracy_by_t(
    process,
    model,
    batches: list[torch.Tensor],
    *,
    pad_id: int,
    generator: torch.Generator,
    rounder=None,
    condition_len: int = 0,
    precision=contextlib.nullcontext,
) -> dict[str, float]:
    """Accuracy of the denoiser's tokens at each of the process's noise levels ``eval_times``,
    over the real tokens of ``batches`` (not padding; not the condition part of a data-to-text
    model); ``precision()`` is the context each batch runs in (e.g. autocast)."""
    out = {}
    for t in process.eval_times:
        hits = total = 0
        for batch in batches:
            with precision():
                pred, where = process.predict_ids(
                    model,
                    batch,
                    t,
                    rounder=rounder,
                    generator=generator,
                    **condition_mask(batch, condition_len),
                )
            where = where & (batch != pad_id)
            hits += int(((pred == batch) & where).sum())
            total += int(where.sum())
        out[f"{t:g}"] = hits / max(total, 1)
    return out


@torch.no_grad()
def validation_terms(
    pipe: TextDiffusionPipeline, batches: list[torch.Tensor], *, seed: int
) -> dict:
    """Mean loss terms and ``acc_t<t>`` (:func:`accuracy_by_t`) on fixed batches with fixed
    noise, so evaluations at different training steps compare."""
    gen, C = torch.Generator().manual_seed(seed), pipe.condition_len
    record: dict[str, float] = {}
    for batch in batches:
        terms = pipe.process.loss(pipe.model, batch, generator=gen, **condition_mask(batch, C))
        for k, v in terms.floats().items():
            record[k] = record.get(k, 0.0) + v / len(batches)
    pad = pipe.tokenizer.pad_token_id
    acc = accuracy_by_t(
        pipe.process,
        pipe.model,
        batches,
        pad_id=pad,
        generator=gen,
        rounder=pipe.rounder,
        condition_len=C,
    )
    record.update({f"acc_t{t}": v for t, v in acc.items()})
    return record


@torch.inference_mode()
def rounding_report(pipe: TextDiffusionPipeline, samples) -> dict:
    """Round-trip of every word row; for generated samples, the margin between nearest and
    second-nearest row and the agreement of FAISS rounding with the read-out argmax."""
    rounder = pipe.rounder
    if rounder is None or samples.x0 is None:
        return {}
    table = rounder.weight
    roundtrip = float((rounder.round(table) == torch.arange(len(table))).float().mean())
    x0 = samples.x0.float()
    real = samples.ids != pipe.tokenizer.pad_token_id
    margins = rounder.margin(x0)[real.cpu()]
    readout = pipe.model.logits(x0.to(pipe.model.device)).argmax(-1).cpu()
    agree = (readout == samples.ids.cpu())[real.cpu()].float().mean()
    return {
        "roundtrip_accuracy": roundtrip,
        "sample_margin_mean": float(margins.mean()),
        "sample_margin_p05": float(margins.quantile(0.05)),
        "sample_margin_min": float(margins.min()),
        "faiss_vs_readout_agreement": float(agree),
    }


@torch.inference_mode()
def perplexity_of_texts(
    reference: TextDiffusionPipeline, texts: list[str], *, batch_size: int = 64
) -> float:
    """The reference (autoregressive) model's perplexity on ``texts``, re-encoded with its own
    tokenizer; the protocol of Diffusion-LM's "lm-score"."""
    ids, _ = encode(reference.tokenizer, texts, reference.seq_len)
    out = nll_bound(reference, ids, num_t=1, batch_size=batch_size)
    return out["perplexity_bound"]


def _experiment(model_dir: Path, data_config: str | None) -> ExperimentConfig:
    if data_config is not None:
        return load_config(data_config)
    saved = model_dir / "experiment.yaml"
    if not saved.is_file():
        raise EvaluationError(
            f"{model_dir} has no experiment.yaml naming its data; pass --config with a YAML "
            f"whose data: section points at the evaluation files"
        )
    return load_config(saved)


def evaluate_model(
    model_dir: str | Path,
    *,
    split: str = "test",
    data_config: str | None = None,
    max_sentences: int | None = None,
    num_t: int = 8,
    num_samples: int = 256,
    steps: int | None = None,
    sampler: str | None = None,
    sampler_options: dict | None = None,
    temperature: float | None = None,
    seed: int = 0,
    reference_model: str | Path | None = None,
    acc_sentences: int = 1024,
    progress: bool = True,
    bleu: bool | None = None,
    references: str | Path | None = None,
    bleu_mrs: int | None = None,
    guidance_scale: float = 1.0,
    mbr: int = 1,
    mbr_utility: str = "bleu-slots",
) -> dict:
    """Everything ``textdiff evaluate`` reports, as a dict (see the module docstring).

    ``bleu`` (default: for data-to-text models) adds the E2E test-set BLEU and slot error rate
    for the first ``bleu_mrs`` test MRs (all 630 by default), with the release zip
    ``references`` (default: ``e2e-dataset-v1.0.0.zip`` beside the data files).
    ``guidance_scale`` applies to every conditional generation; ``mbr`` = k > 1 draws k
    candidates per test MR and keeps one by minimum Bayes risk with ``mbr_utility``
    (:func:`textdiff.infra.e2e.mbr_choice`).
    """
    _check_arguments(max_sentences, num_t, num_samples, seed, bleu_mrs, mbr)
    from .e2e import MBR_UTILITIES

    if mbr_utility not in MBR_UTILITIES:
        raise EvaluationError(f"mbr_utility must be one of {MBR_UTILITIES}, got {mbr_utility!r}")
    model_dir = Path(model_dir)
    pipe, bleu = _open(model_dir, reference_model, num_samples, bleu)
    cfg = _experiment(model_dir, data_config)
    data = EvaluationData.load(pipe, cfg, split, max_sentences)
    report: dict = {
        "model": str(model_dir),
        "noise": pipe.settings.noise,
        "split": split,
        "left_out_too_long": data.left_out,
    }
    report["bound"] = nll_bound(pipe, data.ids, num_t=num_t, seed=seed, progress=progress)
    report["acc_by_t"] = _accuracy(pipe, data.batches(acc_sentences, pipe.model.device), seed)
    generation = dict(num_steps=steps, sampler=sampler, seed=seed, guidance_scale=guidance_scale)
    generation["temperature"] = temperature
    generation["sampler_options"] = sampler_options
    from .quality import sample_quality

    gen, report["samples"] = sample_quality(
        pipe, data, num_samples, reference_model, progress, **generation
    )
    report["rounding"] = rounding_report(pipe, gen)
    if bleu:
        from .e2e import evaluate_data2text

        zip_path = references or _default_references(cfg)
        report["e2e"] = evaluate_data2text(
            pipe,
            zip_path,
            limit=bleu_mrs,
            progress=progress,
            mbr=mbr,
            mbr_utility=mbr_utility,
            **generation,
        )
    report["summary"] = _summary(report)
    return report


def _open(model_dir: Path, reference, num_samples: int, bleu: bool | None):
    """The model's pipeline and whether to score BLEU, once the request is known to fit: the
    reference model gives an exact likelihood, the samples fit in memory, BLEU has MRs."""
    from ..models.pipeline import check_generation_memory

    pipe = TextDiffusionPipeline.from_pretrained(model_dir)
    if reference is not None:
        _check_reference(Path(reference))
    check_generation_memory(pipe, num_samples, 64, "--samples")
    bleu = pipe.condition_len > 0 if bleu is None else bleu
    if bleu and not pipe.condition_len:
        raise EvaluationError(
            "E2E BLEU needs a data-to-text model (process.condition_len > 0); this one is "
            "unconditional"
        )
    return pipe, bleu


def _check_arguments(limit, num_t: int, num_samples: int, seed: int, bleu_mrs, mbr=1) -> None:
    """The counts ``evaluate_model`` takes, as the command line checks its flags."""
    counts = dict(
        max_sentences=limit, num_t=num_t, num_samples=num_samples, bleu_mrs=bleu_mrs, mbr=mbr
    )
    for name, value in counts.items():
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise EvaluationError(f"{name} must be an integer ≥ 1 (or None), got {value!r}")
    if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise EvaluationError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")


def _check_reference(folder: Path) -> None:
    """Refuse a reference model without an exact likelihood (a diffusion model's is a bound)."""
    reference = TextDiffusionPipeline.from_pretrained(folder)
    if reference.spec.network != "causal-lm":
        raise EvaluationError(
            f"--reference {folder} is a {reference.settings.noise} diffusion model, whose "
            "perplexity is only a bound; pass an autoregressive model folder (e.g. trained with "
            "configs/e2e-ar.yaml)"
        )


def _accuracy(pipe: TextDiffusionPipeline, batches: list[torch.Tensor], seed: int) -> dict:
    """:func:`accuracy_by_t` of a model folder's pipeline, in its precision."""
    return accuracy_by_t(
        pipe.process,
        pipe.model,
        batches,
        pad_id=pipe.tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(seed),
        rounder=pipe.rounder,
        condition_len=pipe.condition_len,
        precision=partial(autocast, pipe.model.device, pipe.precision),
    )


@dataclass
class EvaluationData:
    """A split's rows that fit the model (``ids``, with their ``conditions`` for a data-to-text
    model), how many did not (``left_out``) and the split's real texts."""

    ids: torch.Tensor
    conditions: list[str] | None
    left_out: int
    real: list[str]

    @classmethod
    def load(cls, pipe, cfg: ExperimentConfig, split: str, limit: int | None) -> EvaluationData:
        splits = load_text_splits(cfg.data)
        if split not in splits:
            raise EvaluationError(f"the data has no split {split!r}; it has {sorted(splits)}")
        C = pipe.condition_len
        data = tokenize_split(
            splits[split], pipe.tokenizer, pipe.seq_len, "pad", name=split, condition_len=C
        )
        fits = ~data.truncated  # sentences (and conditions) that were not cut to fit
        if not fits.any():
            raise EvaluationError(
                f"none of the {len(fits)} sentences of split {split!r} fits the model's "
                f"{pipe.seq_len} positions with its [EOS]; evaluate on shorter sentences"
            )
        conditions = None
        if C:
            conditions = [c for c, f in zip(data.cond, fits.tolist(), strict=True) if f]
        ids = data.ids[fits][:limit] if limit is not None else data.ids[fits]
        real = list(iter_texts(splits[split]))
        return cls(ids, conditions, int((~fits).sum()), real)

    def batches(self, limit: int, device, batch_size: int = 64) -> list[torch.Tensor]:
        ids = self.ids[:limit]
        return [ids[lo : lo + batch_size].to(device) for lo in range(0, len(ids), batch_size)]


def _default_references(cfg: ExperimentConfig) -> Path:
    """The E2E release zip beside the experiment's data files."""
    from .e2e import RELEASE_ZIP

    for f in cfg.data.data_files.values():
        candidate = Path(f).parent / RELEASE_ZIP
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {RELEASE_ZIP} beside the data files; pass the E2E release zip with --references"
    )


SUMMARY_SAMPLE_KEYS = (
    "network_calls_per_batch seconds_per_64 generative_perplexity reference_perplexity_on_real "
    "entropy real_entropy words real_words distinct_2 real_distinct_2 no_eos pad_inside unk_inside"
).split()


def _summary(report: dict) -> dict:
    b, s = report["bound"], report["samples"]
    out = {
        "perplexity_bound": round(b["perplexity_bound"], 3),
        "nll_per_token": f"{b['nll_per_token']:.4f} ± {b['stderr_nll_per_token']:.4f}",
        "sentences / tokens": f"{b['sentences']} / {b['tokens']}",
    }
    out.update({f"term {k}": round(v, 4) for k, v in b["terms_per_token"].items()})
    if "by_time" in b:  # one figure per stratum of t, low noise first
        out["bound by t (nats/token)"] = " ".join(
            f"{x['nats_per_token']:.2f}" for x in b["by_time"]
        )
    out.update({f"acc t={k}": round(v, 4) for k, v in report["acc_by_t"].items()})
    for key in ("roundtrip_accuracy", "sample_margin_mean", "faiss_vs_readout_agreement"):
        if key in report["rounding"]:
            out[key] = round(report["rounding"][key], 4)
    out["samples"] = f"{s['count']} by {s['sampler']}, {s['steps']} steps, {s['options'] or ''}"
    for key in SUMMARY_SAMPLE_KEYS:
        if key in s:
            out[f"samples {key}"] = round(s[key], 4)
    if "e2e" in report:
        e = report["e2e"]
        out["E2E test BLEU (TGen 65.93)"] = f"{e['bleu']:.2f} over {e['test_mrs']} MRs"
        out["E2E slot error rate"] = (
            f"{e['slot_error_rate']:.4f} (first references: {e['reference_slot_error_rate']:.4f})"
        )
    return out
