"""Text splits → fixed-length id rows, and batches of them.

:func:`tokenize_split` turns an in-memory split into a :class:`TokenizedSplit` (all ids in one
``(N, L)`` tensor, batched in a seeded order that a resumed run can replay) and a streaming split
into a :class:`StreamingSplit` (batches made lazily).

In-memory splits are tokenized with ``datasets.map(batched=True)`` and kept in ``datasets``'
Arrow cache when they were read from files, so a rerun reads the ids instead of tokenizing again
(:mod:`textdiff.infra.tokencache`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from ..models.tokenization import encode, encode_rows
from .data import _BATCH, DataError
from .tokencache import cached_map, column, columns, row_features

logger = logging.getLogger(__name__)


@dataclass
class TokenizedSplit:
    """An in-memory split: ``ids`` ``(N, L)``, one row per text (pad) or per chunk (chunk);
    ``truncated`` (N,) marks the rows whose text (or condition) was cut to fit (pad only)."""

    ids: torch.Tensor  # (N, L) long
    cond: list[str] | None = None  # the E2E MR of each row (packing="pad" only)
    num_truncated: int = 0
    num_texts: int = 0
    truncated: torch.Tensor | None = None  # (N,) bool, packing="pad" only

    def __len__(self) -> int:
        return self.ids.shape[0]

    def num_batches(self, batch_size: int, *, world_size: int = 1, drop_last: bool = True) -> int:
        """Batches per epoch, the same on every rank (global batch = batch_size × world_size)."""
        size = batch_size * world_size
        return len(self) // size if drop_last else -(-len(self) // size)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        start: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield ``(batch_size, L)`` id batches in a seeded shuffled order.

        The order is a permutation drawn from ``torch.Generator().manual_seed(seed + epoch)``;
        batch ``b`` of the epoch is the global batch ``perm[b·G:(b+1)·G]`` with
        ``G = batch_size · world_size``, and rank ``r`` gets its ``r``-th contiguous slice, so
        the ranks' shards are disjoint and together form the single-process batch of size G.
        :meth:`batch_indices` takes the same arguments and yields the row indices instead.

        Args:
            batch_size: Rows per rank per batch.
            seed: Base seed of the shuffle.
            epoch: Epoch number; each epoch has its own order.
            start: First batch index to yield (a resumed run skips what it saw).
            drop_last: Drop the last incomplete global batch. If False, that batch is split
                as evenly as possible across ranks (a rank's share may be smaller, even empty),
                so every rank runs the same number of steps.
            rank: This process's rank.
            world_size: Number of processes.
        """
        args = dict(start=start, drop_last=drop_last, rank=rank, world_size=world_size)
        for idx in self.batch_indices(batch_size, seed=seed, epoch=epoch, **args):
            yield self.ids[idx]

    def batch_indices(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        start: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """The row indices of each batch of :meth:`batches` (e.g. to look up ``cond``)."""
        if batch_size < 1 or start < 0 or not 0 <= rank < world_size:
            raise DataError(
                f"batches need batch_size ≥ 1, start ≥ 0 and 0 ≤ rank < world_size; got "
                f"batch_size={batch_size}, start={start}, rank={rank}, world_size={world_size}"
            )
        n = self.num_batches(batch_size, world_size=world_size, drop_last=drop_last)
        if n == 0:
            raise DataError(
                f"the split has {len(self)} rows, fewer than one batch of "
                f"{batch_size * world_size}; lower train.batch_size or add data"
            )
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed + epoch))
        size = batch_size * world_size
        for b in range(start, n):
            yield torch.tensor_split(perm[b * size : (b + 1) * size], world_size)[rank]


def tokenize_split(
    ds: datasets.Dataset | datasets.IterableDataset,
    tok: PreTrainedTokenizerFast,
    seq_len: int,
    packing: Literal["pad", "chunk"] = "pad",
    name: str = "data",
    condition_len: int = 0,
) -> TokenizedSplit | StreamingSplit:
    """Tokenize a split prepared by :func:`load_text_splits`.

    ``packing="pad"``: one text per row, ``ids + [EOS] + [PAD]...``, cut to keep ``[EOS]``
    (the number of cut texts is logged). ``packing="chunk"``: all texts concatenated, each
    followed by ``[EOS]``, cut into rows of ``seq_len``; the last row is padded with ``[PAD]``.
    ``condition_len > 0`` (data-to-text, in-memory ``pad`` only): each row is the condition
    over its first ``condition_len`` positions and the text over the rest
    (:func:`textdiff.tokenization.encode_pairs`); cut conditions and texts are logged.

    Args:
        ds: A split with a ``"text"`` column (and optionally ``"condition"``).
        tok: The tokenizer.
        seq_len: L, the row length.
        packing: ``"pad"`` or ``"chunk"``.
        name: The split's name, for log messages.
        condition_len: Positions of the condition part; 0 for none.

    Returns:
        A :class:`TokenizedSplit` for an in-memory dataset, a :class:`StreamingSplit` for a
        streaming one.
    """
    if packing not in ("pad", "chunk"):
        raise DataError(f"packing {packing!r} is unknown; choose 'pad' or 'chunk'")
    if condition_len:
        return _tokenize_pairs(ds, tok, seq_len, packing, name, condition_len)
    if isinstance(ds, datasets.IterableDataset):
        return StreamingSplit(ds, tok, seq_len, packing, name)
    if len(ds) == 0:
        raise DataError(f"split {name!r} is empty; check its data file")
    if packing == "chunk":
        mapped = cached_map(ds, tok, name, ("chunk",), lambda b: {"ids": _stream_rows(tok, b)})
        stream = mapped.with_format("arrow")[:].column("ids").combine_chunks().flatten()
        stream = torch.from_numpy(np.array(stream, dtype=np.int64))
        return TokenizedSplit(_chunk_rows(stream, seq_len, tok.pad_token_id), num_texts=len(ds))

    def pad(batch: dict) -> dict:
        ids, cut = encode_rows(tok, batch["text"], seq_len)
        return {"ids": ids.numpy().astype(np.int32), "cut": cut.numpy()}

    features = row_features(seq_len, "cut")
    mapped = cached_map(ds, tok, name, ("pad", seq_len), pad, features)
    ids, cut = columns(mapped, "ids", "cut")
    _log_truncation(name, int(cut.sum()), len(ds), seq_len)
    cond = column(ds, "condition") if "condition" in ds.column_names else None
    return TokenizedSplit(ids, cond, int(cut.sum()), len(ds), cut)


def _tokenize_pairs(ds, tok, seq_len: int, packing: str, name: str, C: int) -> TokenizedSplit:
    """The data-to-text rows ``[condition ; text]`` of an in-memory split."""
    if isinstance(ds, datasets.IterableDataset) or packing != "pad":
        raise DataError("a data-to-text split must be in memory with packing: pad")
    if "condition" not in ds.column_names:
        raise DataError(
            f"split {name!r} has no condition column; a data-to-text model "
            "(process.condition_len > 0) needs data.format: e2e (lines MR||sentence)"
        )
    conditions = column(ds, "condition")

    def pairs(batch: dict) -> dict:  # as tokenization.encode_pairs lays them out
        cond, cut_c = encode_rows(tok, batch["condition"], C)
        text, cut_t = encode_rows(tok, batch["text"], seq_len - C)
        ids = torch.cat([cond, text], dim=1).numpy().astype(np.int32)
        return {"ids": ids, "cut_c": cut_c.numpy(), "cut_t": cut_t.numpy()}

    features = row_features(seq_len, "cut_c", "cut_t")
    mapped = cached_map(ds, tok, name, ("pairs", C, seq_len), pairs, features)
    ids, cut_c, cut_t = columns(mapped, "ids", "cut_c", "cut_t")
    if cut_c.any():
        logger.warning(
            "%s: %d of %d conditions were longer than %d tokens and were truncated; raise "
            "process.condition_len",
            *(name, int(cut_c.sum()), len(ds), C - 1),
        )
    _log_truncation(name, int(cut_t.sum()), len(ds), seq_len - C)
    num_cut = int(cut_c.sum() + cut_t.sum())
    return TokenizedSplit(ids, conditions, num_cut, len(ds), cut_c | cut_t)


def _stream_rows(tok: PreTrainedTokenizerFast, batch: dict) -> list[list[int]]:
    """Each text's ids followed by [EOS] (verbose=False: long texts are expected here)."""
    rows = tok(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    return [[*row, tok.eos_token_id] for row in rows]


def _stream_ids(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[int]:
    """All texts' ids concatenated, each text followed by [EOS]."""
    out: list[int] = []
    for start in range(0, len(texts), _BATCH):
        for row in _stream_rows(tok, {"text": texts[start : start + _BATCH]}):
            out += row
    return out


def _chunk_rows(stream: list[int] | torch.Tensor, seq_len: int, pad_id: int) -> torch.Tensor:
    """A token stream cut into ``(N, L)`` rows, the last one padded."""
    stream = torch.as_tensor(stream, dtype=torch.long)
    pad = torch.full(((-len(stream)) % seq_len,), pad_id, dtype=torch.long)
    return torch.cat([stream, pad]).view(-1, seq_len)


def _log_truncation(name: str, num_truncated: int, num_texts: int, seq_len: int) -> None:
    if num_truncated:
        logger.warning(
            "%s: %d of %d lines were longer than %d tokens and were truncated (the row still "
            "ends with [EOS]); raise model.seq_len or use data.packing: chunk",
            name,
            num_truncated,
            num_texts,
            seq_len - 1,
        )


@dataclass
class StreamingSplit:
    """A streaming split: id batches are tokenized lazily while iterating."""

    dataset: datasets.IterableDataset = field(repr=False)
    tok: PreTrainedTokenizerFast = field(repr=False)
    seq_len: int
    packing: Literal["pad", "chunk"] = "pad"
    name: str = "data"
    num_truncated: int = field(default=0, init=False)  # counted so far, over all iterations
    num_texts: int = field(default=0, init=False)

    def iter_batches(
        self,
        batch_size: int,
        seed: int,
        skip_batches: int = 0,
        *,
        epoch: int = 0,
        buffer_size: int = 10_000,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield ``(batch_size, L)`` id batches from a shuffle buffer.

        Args:
            batch_size: Rows per batch.
            seed: Seed of the shuffle buffer (``IterableDataset.shuffle``).
            skip_batches: Batches to skip first (a resumed run); with packing="pad" their
                texts are not even tokenized.
            epoch: Epoch number; the buffer's seed becomes ``seed + epoch``.
            buffer_size: Rows in the shuffle buffer.
            drop_last: Drop the last incomplete batch.
            rank: This process's rank; each rank reads a disjoint part of the stream.
            world_size: Number of processes.
        """
        ds = self.dataset
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
        ds.set_epoch(epoch)
        cut_before, seen_before = self.num_truncated, self.num_texts
        try:
            make = self._padded if self.packing == "pad" else self._chunked
            yield from make(self._texts(ds, batch_size), batch_size, skip_batches, drop_last)
        finally:
            cut, seen = self.num_truncated - cut_before, self.num_texts - seen_before
            _log_truncation(self.name, cut, seen, self.seq_len)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        start: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """:meth:`TokenizedSplit.batches`' interface: :meth:`iter_batches` skipping ``start``."""
        kwargs = dict(epoch=epoch, drop_last=drop_last, rank=rank, world_size=world_size)
        return self.iter_batches(batch_size, seed, start, **kwargs)

    def _texts(self, ds: datasets.IterableDataset, batch_size: int) -> Iterator[list[str]]:
        try:
            for batch in ds.iter(batch_size=batch_size):
                yield batch["text"]
        except UnicodeDecodeError as e:
            raise DataError(
                f"split {self.name!r} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                "re-encode its data file to UTF-8"
            ) from e

    def _padded(
        self, groups: Iterator[list[str]], batch_size: int, skip: int, drop_last: bool
    ) -> Iterator[torch.Tensor]:
        for b, texts in enumerate(groups):
            if len(texts) < batch_size and drop_last:
                return
            if b < skip:
                continue
            ids, cut = encode(self.tok, texts, self.seq_len)
            self.num_truncated += cut
            self.num_texts += len(texts)
            yield ids

    def _chunked(
        self, groups: Iterator[list[str]], batch_size: int, skip: int, drop_last: bool
    ) -> Iterator[torch.Tensor]:
        size, b = batch_size * self.seq_len, 0
        buffer: list[int] = []
        for texts in groups:
            self.num_texts += len(texts)
            buffer += _stream_ids(self.tok, texts)
            while len(buffer) >= size:
                rows, buffer = buffer[:size], buffer[size:]
                if b >= skip:
                    yield torch.tensor(rows, dtype=torch.long).view(batch_size, self.seq_len)
                b += 1
        if buffer and not drop_last and b >= skip:
            yield _chunk_rows(buffer, self.seq_len, self.tok.pad_token_id)
