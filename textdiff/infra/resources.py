"""What a request needs of the machine, checked before the work starts: memory, and a place to
write its output.

:func:`machine_memory` reads the memory this process can have (``/proc/meminfo`` or
``os.sysconf``, and a lower cgroup limit); :func:`check_training_memory` and
:func:`check_generation_memory` refuse a training run or a generation request whose memory
estimate (a lower bound) exceeds it, with the number and the setting or flag that shrinks it.
:class:`OutputFile` checks an output file before the work and writes it aside, then renames it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ResourceError, TextdiffError
from .config import ExperimentConfig


def machine_memory() -> int | None:
    """Bytes of memory this process can have: the physical memory (``/proc/meminfo``, else
    ``os.sysconf``), or a lower cgroup limit; ``None`` when unknown."""
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemTotal:"))
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_memory(parts: dict[str, float], what: str, knobs: dict[str, str]) -> None:
    """Refuse ``what`` if the bytes it needs (``parts``) exceed the machine's memory, naming the
    largest part and ``knobs[part]``, the settings that shrink it."""
    have, need = machine_memory(), sum(parts.values())
    if have is None or need <= have:
        return
    part = max(parts, key=parts.__getitem__)
    raise ResourceError(
        f"{what} needs at least {need / 2**30:,.1f} GiB of memory ({part} alone "
        f"{parts[part] / 2**30:,.1f} GiB) but this machine has {have / 2**30:,.1f} GiB; "
        f"lower {knobs[part]}"
    )


def check_training_memory(cfg: ExperimentConfig) -> None:
    """Refuse a run whose memory estimate (fp32, one process, a lower bound: weights with their
    gradients, AdamW moments and EMA, activations kept for backward) exceeds the machine's."""
    m, B = cfg.model, cfg.train.batch_size
    L, D, N, H = m.seq_len, m.hidden_size, m.num_layers, m.num_heads
    F = int(m.mlp_ratio * D)
    V = cfg.data.bpe_vocab_size if cfg.data.tokenizer_kind == "bpe" else 1000  # a low guess
    width = m.embed_dim * (2 if m.self_conditioning else 1) + m.pos_dim
    params = N * (4 * D * D + 2 * D * F) + width * D + D * V + V * m.embed_dim
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
    check_memory(parts, f"training (model.seq_len {L}, train.batch_size {B})", knobs)


def check_generation_memory(pipe, n: int, batch_size: int, flag: str) -> None:
    """Refuse generating ``n`` sentences with ``pipe`` whose memory (ids, x̂_0 and text of
    every sentence; one batch's attention and logits) exceeds the machine's; ``flag`` names the
    number of sentences in the message."""
    cfg, L = pipe.model.config, pipe.seq_len
    heads = getattr(cfg, "num_heads", None) or cfg.num_attention_heads
    per_sentence = L * (8 + 4 * getattr(cfg, "embed_dim", 0) + 64)
    B = min(n, batch_size)
    parts = {
        "the sentences": float(n * per_sentence),
        "one batch": 4.0 * B * L * (3 * heads * L + 16 * cfg.hidden_size + 2 * cfg.vocab_size),
    }
    knobs = {"the sentences": f"{flag} (generate in several runs)", "one batch": "--batch-size"}
    check_memory(parts, f"generating {n:,} sentences of {L} tokens", knobs)


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
