"""A run's data: its tokenizer (trained from the data, or loaded) and its splits as id rows.

:func:`prepare_data` returns the tokenizer and the tokenized training and validation splits; the
tokenizer is saved in the run folder before the first step, so a resumed run reads the same one.
It also settles the sizes a config leaves to the data (``model.seq_len: auto``,
``model.embed_dim: auto``; :func:`textdiff.models.config.auto_seq_len`, ``auto_embed_dim``) and
reports what a user should see about their data: the share of ``[UNK]`` in the training tokens
(a warning above :data:`UNK_WARNING`, naming the knob) and the sizes chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from ..models.config import auto_embed_dim, auto_seq_len
from ..models.tokenization import load_tokenizer
from .batching import tokenize_split
from .checkpoint import write_folder
from .config import ExperimentConfig
from .data import build_tokenizer, iter_texts

logger = logging.getLogger(__name__)

VALIDATION_SPLITS = ("validation", "valid", "test")  # the first present validates
UNK_WARNING = 0.02  # warn when more than this share of the training tokens are [UNK]
SAMPLE_TEXTS = 100_000  # training texts read for lengths and [UNK] (all of a smaller split)


class RunData(NamedTuple):
    tokenizer: object
    train_split: object
    val_split: object | None
    diagnostics: dict


def prepare_data(
    cfg: ExperimentConfig, splits: dict, out: Path, *, resume: bool, accelerator
) -> RunData:
    """The tokenizer and the training split, with the first validation-like split (or None)."""
    tokenizer = _tokenizer(cfg, splits["train"], out, resume, accelerator)
    diagnostics = settle_sizes(cfg, tokenizer, splits["train"])
    kwargs = dict(packing=cfg.data.packing, condition_len=cfg.process.condition_len)
    L = cfg.model.seq_len
    train_split = tokenize_split(splits["train"], tokenizer, L, name="train", **kwargs)
    val = next((s for s in VALIDATION_SPLITS if s in splits), None)
    val_split = tokenize_split(splits[val], tokenizer, L, name=val, **kwargs) if val else None
    return RunData(tokenizer, train_split, val_split, diagnostics)


def settle_sizes(cfg: ExperimentConfig, tokenizer, train_split) -> dict:
    """Resolve ``auto`` sizes of ``cfg.model`` in place from the training texts and the
    vocabulary; measure the share of ``[UNK]``; log both. Returns the figures."""
    texts = list(iter_texts(train_split, SAMPLE_TEXTS))
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(map(len, rows))
    unk = sum(row.count(tokenizer.unk_token_id) for row in rows) / max(total, 1)
    figures = {"unk_share": unk, "texts_measured": len(texts)}
    if unk > UNK_WARNING:
        logger.warning(
            "%.1f%% of the training tokens are [UNK]: the tokenizer lacks words the data uses; "
            "lower data.min_frequency, or use data.tokenizer_kind: bpe",
            100 * unk,
        )
    m, C = cfg.model, cfg.process.condition_len
    if m.seq_len == "auto":
        m.seq_len = C + auto_seq_len([len(r) for r in rows])
        logger.info(
            "model.seq_len: auto → %d (99th percentile of %d training texts + [EOS])",
            m.seq_len,
            len(texts),
        )
    if m.embed_dim == "auto":
        m.embed_dim = auto_embed_dim(len(tokenizer))
        logger.info("model.embed_dim: auto → %d (vocabulary of %d)", m.embed_dim, len(tokenizer))
    figures.update(seq_len=m.seq_len, embed_dim=m.embed_dim, vocab_size=len(tokenizer))
    return figures


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
