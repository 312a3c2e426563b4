"""Tokenizing a split with ``datasets.map(batched=True)``, cached.

The map runs in this process (no worker processes: a process forked after torch or FAISS ran
multithreaded work can hang on their OpenMP runtimes), under a fingerprint of the split, the
tokenizer and the row layout. A split read from files (``load_dataset``) keeps the result in
``datasets``' Arrow cache beside it (``~/.cache/huggingface/datasets``), so the next run of the
same data and tokenizer reads the ids from there instead of tokenizing again; the log says which
happened. A split built in memory (``Dataset.from_dict``) is tokenized each time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from .data import _BATCH

logger = logging.getLogger("textdiff.infra.batching")  # reported with the split's other lines

TOKENIZED_FORMAT = 1  # part of the cache fingerprint: bump when the rows change for one input


def row_features(seq_len: int, *flags: str) -> datasets.Features:
    """Fixed-length int32 id rows and boolean ``flags`` per row."""
    features = {"ids": datasets.Sequence(datasets.Value("int32"), length=seq_len)}
    return datasets.Features({**features, **{f: datasets.Value("bool") for f in flags}})


def column(ds: datasets.Dataset, name: str) -> list:
    """One column of an in-memory split as a list (read at once, not row by row)."""
    return ds.select_columns([name])[:][name]


def columns(ds: datasets.Dataset, ids: str, *flags: str) -> list[torch.Tensor]:
    """The ``(N, L)`` long ids and the ``(N,)`` boolean flags of a tokenized split."""
    table = ds.with_format("numpy")[:]
    return [torch.from_numpy(np.asarray(table[ids], dtype=np.int64))] + [
        torch.from_numpy(np.asarray(table[f], dtype=bool)) for f in flags
    ]


def cached_map(
    ds: datasets.Dataset,
    tok: PreTrainedTokenizerFast,
    name: str,
    layout: tuple,
    fn: Callable[[dict], dict],
    features: datasets.Features | None = None,
) -> datasets.Dataset:
    """``ds.map(fn, batched=True)`` in this process under a fingerprint of ``ds``, the tokenizer
    and ``layout``: for a split backed by cache files, a rerun reads the result from the Arrow
    cache (logged either way)."""
    from datasets.fingerprint import Hasher

    key = [ds._fingerprint, tok.backend_tokenizer.to_str(), layout, TOKENIZED_FORMAT]
    fingerprint = Hasher.hash(key)
    cache = None
    if ds.cache_files and datasets.is_caching_enabled():
        folder = os.path.dirname(ds.cache_files[0]["filename"])
        cache = os.path.join(folder, f"cache-{fingerprint}.arrow")
    hit = cache is not None and os.path.isfile(cache)
    start = time.perf_counter()
    out = ds.map(
        fn,
        batched=True,
        batch_size=_BATCH,
        remove_columns=ds.column_names,
        features=features,
        new_fingerprint=fingerprint,
        cache_file_name=cache,
        desc=f"tokenizing {name}",
    )
    seconds = time.perf_counter() - start
    if hit:
        logger.info("%s: read %d tokenized rows from the cache %s", name, len(ds), cache)
    else:
        where = f"cached in {cache}" if cache else "in memory, not cached"
        logger.info("%s: tokenized %d texts in %.1f s (%s)", name, len(ds), seconds, where)
    return out
