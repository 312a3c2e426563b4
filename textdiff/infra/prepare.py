"""A run's data: its tokenizer (trained from the data, or loaded) and its splits as id rows.

:func:`prepare_data` returns the tokenizer and the tokenized training and validation splits; the
tokenizer is saved in the run folder before the first step, so a resumed run reads the same one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from ..models.tokenization import load_tokenizer
from .batching import tokenize_split
from .checkpoint import write_folder
from .config import ExperimentConfig
from .data import build_tokenizer, iter_texts

logger = logging.getLogger(__name__)


class RunData(NamedTuple):
    tokenizer: object
    train_split: object
    val_split: object | None


def prepare_data(
    cfg: ExperimentConfig, splits: dict, out: Path, *, resume: bool, accelerator
) -> RunData:
    """The tokenizer and the training split, with the first validation-like split (or None)."""
    tokenizer = _tokenizer(cfg, splits["train"], out, resume, accelerator)
    kwargs = dict(packing=cfg.data.packing, condition_len=cfg.process.condition_len)
    L = cfg.model.seq_len
    train_split = tokenize_split(splits["train"], tokenizer, L, name="train", **kwargs)
    val = next((s for s in ("validation", "valid", "test") if s in splits), None)
    val_split = tokenize_split(splits[val], tokenizer, L, name=val, **kwargs) if val else None
    return RunData(tokenizer, train_split, val_split)


def _tokenizer(cfg: ExperimentConfig, train_split, out: Path, resume: bool, accelerator):
    """The run's tokenizer: the saved one on resume, else loaded or trained and saved."""
    tok_dir = out / "tokenizer"
    if resume and (tok_dir / "tokenizer.json").is_file():
        return load_tokenizer(str(tok_dir))
    columns = ("condition", "text") if cfg.process.condition_len else ("text",)
    limit = 1_000_000 if cfg.data.streaming else None
    tokenizer = build_tokenizer(cfg.data, iter_texts(train_split, limit, columns))
    if accelerator.is_main_process:
        write_folder(tok_dir, tokenizer.save_pretrained)
    accelerator.wait_for_everyone()
    return tokenizer
