"""What a request needs of the machine, checked before the work starts: memory, and a place to
write its output.

:func:`check_training_memory` refuses a training run whose memory estimate (a lower bound)
exceeds what the machine has (:mod:`textdiff.memory`), with the number and the setting that
shrinks it; generation requests are checked by the pipeline
(:func:`textdiff.models.pipeline.check_generation_memory`).
:class:`OutputFile` checks an output file before the work and writes it aside, then renames it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import memory
from ..errors import TextdiffError
from .config import ExperimentConfig


def check_training_memory(cfg: ExperimentConfig) -> None:
    """Refuse a run whose memory estimate (fp32, one process, a lower bound: weights with their
    gradients, AdamW moments and EMA, activations kept for backward) exceeds the machine's."""
    m, B = cfg.model, cfg.train.batch_size
    L, D, N, H = m.seq_len, m.hidden_size, m.num_layers, m.num_heads
    L = 8 if L == "auto" else L  # settled from the data later: a lower bound here
    d = 16 if m.embed_dim == "auto" else m.embed_dim
    F = int(m.mlp_ratio * D)
    V = cfg.data.bpe_vocab_size if cfg.data.tokenizer_kind == "bpe" else 1000  # a low guess
    width = d * (2 if m.self_conditioning else 1) + m.pos_dim
    params = N * (4 * D * D + 2 * D * F) + width * D + D * V + V * d
    parts = {
        "the weights": 4.0 * 5 * params,
        "attention": 4.0 * 3 * B * N * H * L * L,
        "activations": 4.0 * B * N * L * (12 * D + 2 * F),
        "the logits": 4.0 * 3 * B * L * V,
    }
    knobs = {
        "the weights": "model.hidden_size, model.num_layers or model.mlp_ratio",
        "attention": "model.seq_len (memory grows with its square) or train.batch_size",
        "activations": "train.batch_size or model.seq_len",
        "the logits": "train.batch_size or the vocabulary (data.bpe_vocab_size)",
    }
    memory.check_memory(parts, f"training (model.seq_len {L}, train.batch_size {B})", knobs)


class OutputError(TextdiffError, ValueError):
    """An ``--out`` file cannot be written where it was asked for."""


class OutputFile:
    """An ``--out`` file, checked before any work: refused if it exists (without
    ``--overwrite``) or its folder cannot be written; a temporary file beside it is created at
    once and renamed onto it by :meth:`write`, so a failure never leaves a half-written file."""

    def __init__(self, path: str, overwrite: bool):
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError(f"--out {path} is a folder; name a file")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        folder = self.path.parent
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise OutputError(f"cannot write --out {path}: the folder {folder} {what}")
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise OutputError(
                f"cannot write --out {path} ({e.strerror}); choose a folder you can write to"
            ) from None
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the permissions of a file opened for writing
        os.close(fd)
        self.tmp = Path(tmp)

    def write(self, text: str) -> None:
        self.tmp.write_text(text, encoding="utf-8")
        self.tmp.replace(self.path)

    def __del__(self) -> None:  # the work failed before write(): no file is left behind
        tmp = getattr(self, "tmp", None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
