"""What a training run reports about itself: its validation record at each evaluation, the word
table's separation at the end (Gaussian models), and the model folders it writes (final and in
every checkpoint) with their model cards (:func:`textdiff.models.hub.model_card`): the data in a
line, steps, tokens, the last evaluation.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..models.pipeline import TextDiffusionPipeline
from .config import ExperimentConfig
from .evaluation import validation_terms

logger = logging.getLogger(__name__)


@torch.no_grad()
def validation_record(trainer) -> dict:
    """Validation loss terms and accuracy by noise level of ``trainer``'s current weights (EMA
    if kept) on its fixed batches, and ``train.eval_samples`` sentences (data-to-text: for the
    first distinct MRs of the validation split)."""
    tc, C = trainer.tc, trainer.cfg.process.condition_len
    model = trainer.ema if trainer.ema is not None else trainer.module
    pipe = TextDiffusionPipeline(model, trainer.tokenizer, precision=trainer.precision)
    batches = trainer.eval_batches
    record = validation_terms(pipe, batches, seed=tc.seed) if batches else {}
    if tc.eval_samples:
        steps = min(trainer.cfg.sample.steps, 100, pipe.max_steps or 100)
        n, conditions = tc.eval_samples, None
        if C:
            split = trainer.val_split or trainer.train_split
            conditions = list(dict.fromkeys(split.cond))[:n]
            record["sample_conditions"] = conditions
            n = len(conditions)
        record["samples"] = pipe.generate(n, seed=tc.seed, num_steps=steps, condition=conditions)
    return record


def word_table_record(trainer) -> dict:
    """For models that round to a word table (Gaussian mode): the share of rows that round to
    themselves and the distance of each row to its nearest other row (logged; a round-trip below
    100% is warned about, naming the knob). Empty for other models."""
    model = trainer.ema if trainer.ema is not None else trainer.module
    pipe = TextDiffusionPipeline(model, trainer.tokenizer)
    if not pipe.process.guidable:  # no continuous latent to round (mask, AR)
        return {}
    rounder = pipe.rounder
    figures = {f"table_{k}": v for k, v in rounder.table_figures().items()}
    logger.info(
        "word table: %.2f%% of %d rows round to themselves; nearest other row at least %.3g "
        "away (median %.3g)",
        100 * figures["table_roundtrip"],
        len(rounder.weight),
        figures.get("table_margin_min", float("nan")),
        figures.get("table_margin_median", float("nan")),
    )
    if figures["table_roundtrip"] < 1:
        logger.warning(
            "%d word-table rows do not round to themselves: rounding cannot tell those words "
            "apart; raise model.embed_dim or train longer",
            round((1 - figures["table_roundtrip"]) * len(rounder.weight)),
        )
    return figures


def write_model_folder(trainer, folder: Path) -> None:
    """The model folder of ``trainer``'s current weights (EMA if kept): config, weights,
    tokenizer, the run's ``experiment.yaml`` and a model card of the training so far."""
    final = trainer.ema if trainer.ema is not None else trainer.module
    pipe = TextDiffusionPipeline(final, trainer.tokenizer)
    pipe.save_pretrained(folder, training=training_summary(trainer))
    shutil.copyfile(trainer.out / "experiment.yaml", folder / "experiment.yaml")


def training_summary(trainer) -> dict:
    """The ``training`` record of the model card: data, steps, batch, tokens, precision and
    the last evaluation (with its step)."""
    tc, acc = trainer.tc, trainer.accelerator
    evaluation = dict(trainer.last_eval)
    if evaluation:
        evaluation.setdefault("step", trainer.last_eval_step)
    return {
        "data": trainer.data_origin,
        "steps": trainer.step,
        "max_steps": tc.max_steps,
        "batch_size": tc.batch_size * acc.num_processes * trainer.grad_accum,
        "tokens": trainer.state["tokens"],
        "precision": {"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision),
        "evaluation": evaluation,
    }


def describe_data(cfg: ExperimentConfig, dataset=None) -> str:
    """The training data in a line: the config's files or hub dataset, or the caller's
    ``datasets`` object."""
    data = cfg.data
    if dataset is not None:
        train = dataset.get("train", dataset) if hasattr(dataset, "keys") else dataset
        fingerprint = getattr(train, "_fingerprint", None)
        what = f"a `datasets` {type(dataset).__name__} passed to `train(cfg, dataset=...)`"
        return what + (f" (fingerprint {fingerprint})" if fingerprint else "")
    if data.dataset in ("text", "json", "csv", "parquet"):
        files = data.data_files.get("train", "?")
        source = f"`{Path(files).name}` ({data.dataset} file, column `{data.column}`)"
    else:
        source = f"the hub dataset `{data.dataset}` (column `{data.column}`)"
    if data.max_train_samples:
        source += f", its first {data.max_train_samples:,} rows"
    return source + (", MR||sentence lines (the sentences)" if data.format == "e2e" else "")
