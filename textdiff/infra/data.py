"""Corpora → fixed-length id rows: load text splits, build a tokenizer, tokenize, batch.

:func:`load_text_splits` reads local files (``text`` / ``json`` / ``csv`` / ``parquet``) or a hub
dataset with ``datasets`` and gives every split a ``"text"`` column (plus ``"condition"``, the
meaning representation, for E2E ``MR||sentence`` lines); :func:`build_tokenizer` loads or trains
the tokenizer. Turning splits into id batches is :mod:`textdiff.infra.batching`. Every problem
with the data is a one-line :class:`DataError`.
"""

from __future__ import annotations

import codecs
import glob
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import datasets
from transformers import PreTrainedTokenizerFast

from ..errors import TextdiffError
from ..models.tokenization import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from ..schema import short_repr
from .config import DataConfig
from .e2e import e2e_swap_venues

logger = logging.getLogger(__name__)

BUILDERS = ("text", "json", "csv", "parquet")  # builders that read local `data_files`
_TEXT_BUILDERS = ("text", "json", "csv")  # builders that decode UTF-8
_BATCH = 1024  # texts tokenized at once
MAX_TEXT_CHARS = (
    1_000_000  # one line (row) longer than this is not a text, e.g. a file with no line ends
)


class DataError(TextdiffError, ValueError):
    """The data cannot be loaded or is not in the expected shape."""


# ----------------------------------------------------------------------------------- loading


def load_text_splits(
    cfg: DataConfig,
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """Load every split named in ``cfg`` with a ``"text"`` (and, for E2E, ``"condition"``) column.

    Texts are stripped and blank rows dropped; ``cfg.lowercase`` lowercases the text;
    ``cfg.max_train_samples`` keeps the first rows of ``"train"``.

    Raises:
        DataError: A data file is missing, a folder, an unreachable URL, empty or not UTF-8; the
            column is absent or holds something other than text (e.g. numbers); a line is over
            ``MAX_TEXT_CHARS`` long; a split is empty; an E2E line has no ``||``; a hub dataset
            cannot be reached.
        ConfigError: A setting of ``cfg`` is invalid (e.g. ``max_train_samples`` < 1).
    """
    cfg.check()
    _check_files(cfg)
    try:
        raw = datasets.load_dataset(
            cfg.dataset, cfg.config_name, data_files=cfg.data_files or None, streaming=cfg.streaming
        )
    except Exception as e:
        raise _explain(cfg, e) from e
    return _prepare_splits(dict(raw), cfg)


DATASET_TYPES = (
    datasets.Dataset,
    datasets.IterableDataset,
    datasets.DatasetDict,
    datasets.IterableDatasetDict,
    dict,
)


def text_splits(
    cfg: DataConfig, dataset=None
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """The splits of a run: :func:`load_text_splits` of ``cfg``, or, when ``dataset`` is given,
    its splits prepared the same way (``cfg.column``, ``format``, ``lowercase``,
    ``max_train_samples`` apply; ``dataset`` / ``data_files`` / ``streaming`` are not read).

    ``dataset`` is a ``DatasetDict`` / ``IterableDatasetDict`` (or a dict of splits) with a
    ``"train"`` split, or a single ``Dataset`` / ``IterableDataset`` used as the training split;
    an ``IterableDataset`` is streamed.

    Raises:
        DataError: ``dataset`` is not one of these, or a split is not in the expected shape.
    """
    if dataset is None:
        return load_text_splits(cfg)
    cfg.check()
    if not isinstance(dataset, DATASET_TYPES):
        raise DataError(
            f"dataset= takes a datasets Dataset, IterableDataset, DatasetDict or "
            f"IterableDatasetDict, not {type(dataset).__name__}"
        )
    single = isinstance(dataset, (datasets.Dataset, datasets.IterableDataset))
    raw = {"train": dataset} if single else dict(dataset)
    for split, ds in raw.items():
        if not isinstance(ds, (datasets.Dataset, datasets.IterableDataset)):
            raise DataError(
                f"dataset= split {split!r} is a {type(ds).__name__}, not a datasets Dataset or "
                "IterableDataset"
            )
    return _prepare_splits(raw, cfg)


def streams(dataset) -> bool:
    """Whether the training split of a caller's ``dataset`` is an ``IterableDataset``."""
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict, dict)):
        dataset = dataset.get("train")
    return isinstance(dataset, datasets.IterableDataset)


def _prepare_splits(raw: dict, cfg: DataConfig) -> dict:
    """Each split prepared by :func:`_prepare`; the training split cut to max_train_samples,
    then augmented as ``cfg.augment`` says."""
    splits = {}
    for split, ds in raw.items():
        if split == "train" and cfg.max_train_samples is not None:
            n = cfg.max_train_samples
            streaming = isinstance(ds, datasets.IterableDataset)
            ds = ds.take(n) if streaming else ds.select(range(min(n, len(ds))))
        splits[split] = _prepare(ds, split, cfg)
    if cfg.augment == "e2e_venues" and "train" in splits:
        splits["train"] = _swap_venues(splits["train"])
    return splits


def _swap_venues(ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` followed by a venue-swapped copy of every row (:func:`e2e_swap_venues`, seed 0;
    one batch, so every row draws from the venues of the whole split)."""
    if isinstance(ds, datasets.IterableDataset):
        raise DataError("data.augment: e2e_venues needs a Dataset, not a streamed one")

    def swap(batch: dict[str, list]) -> dict[str, list]:
        conditions, texts = e2e_swap_venues(batch["condition"], batch["text"], seed=0)
        return {"condition": conditions, "text": texts}

    copies = ds.map(swap, batched=True, batch_size=None, desc="swapping venues")
    return datasets.concatenate_datasets([ds, copies])


def _check_files(cfg: DataConfig) -> None:
    if cfg.dataset not in BUILDERS:
        return  # a hub or folder dataset: data_files are relative to it
    if not cfg.data_files:
        raise DataError(
            f"dataset: {cfg.dataset} reads local files; set data.data_files, e.g. "
            "{train: train.txt, validation: valid.txt}"
        )
    for split, path in cfg.data_files.items():
        if "://" in path:
            _check_url(path, split)
            continue
        matches = glob.glob(path) if glob.has_magic(path) else [path] * os.path.exists(path)
        if not matches:
            raise DataError(
                f"data file {path!r} (split {split!r}) does not exist; fix data.data_files"
            )
        if all(os.path.isdir(m) for m in matches):
            raise DataError(
                f"data file {path!r} (split {split!r}) is a folder; name a file, or the files in "
                f"it with a glob such as {os.path.join(path, '*.txt')!r}"
            )
        if all(os.path.isfile(m) and os.path.getsize(m) == 0 for m in matches):
            raise DataError(f"split {split!r} is empty: {path!r} has no data; fill or remove it")


def _check_url(url: str, split: str) -> None:
    """A data file given as a URL is downloaded by ``datasets``; refuse one it cannot fetch."""
    if datasets.config.HF_DATASETS_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        reason = "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)"
    elif importlib.util.find_spec("aiohttp") is None:
        reason = "reading URLs needs the aiohttp package"
    else:
        return
    raise DataError(
        f"data file {url!r} (split {split!r}) is a URL and {reason}; download it and point "
        "data.data_files at the local copy"
    )


def _explain(cfg: DataConfig, e: BaseException) -> DataError:
    """The one-line DataError for an exception raised while reading ``cfg``'s data."""
    chain, err = [], e
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if isinstance(e, DataError):
        return e
    if cfg.dataset in _TEXT_BUILDERS or any(isinstance(c, UnicodeDecodeError) for c in chain):
        bad = _first_non_utf8(cfg.data_files.values())
        if bad is not None:
            return DataError(
                f"data file {bad!r} is not valid UTF-8; re-encode it, e.g. "
                f"`iconv -f latin1 -t utf-8 in.txt > out.txt`"
            )
    if cfg.dataset not in BUILDERS and not os.path.exists(cfg.dataset):
        offline = datasets.config.HF_HUB_OFFLINE or any(
            isinstance(c, ConnectionError) for c in chain
        )
        if offline:
            return DataError(
                f"dataset {cfg.dataset!r} is not a local builder and the Hugging Face hub cannot "
                "be reached (no network or offline mode); use `dataset: text` with `data_files`"
            )
        if any(isinstance(c, datasets.exceptions.DatasetNotFoundError) for c in chain):
            return DataError(
                f"dataset {cfg.dataset!r} is not on the Hugging Face hub; check the name, or use "
                "`dataset: text` with `data_files`"
            )
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    causes = [c for c in chain[1:] if str(c).strip()]
    if causes:  # what went wrong underneath, e.g. a CSV parser's line number
        first += f" ({str(causes[-1]).strip().splitlines()[0]})"
    return DataError(
        f"could not load dataset {cfg.dataset!r}: {first}; check data.dataset and data.data_files"
    )


def _first_non_utf8(paths: Iterable[str]) -> str | None:
    """The first local file among ``paths`` (globs allowed) that is not valid UTF-8."""
    for pattern in paths:
        for path in glob.glob(pattern) if glob.has_magic(pattern) else [pattern]:
            if not os.path.isfile(path):
                continue
            decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        decoder.decode(chunk)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return path
    return None


def _prepare(
    ds: datasets.Dataset | datasets.IterableDataset, split: str, cfg: DataConfig
) -> datasets.Dataset | datasets.IterableDataset:
    """Rename the column to ``"text"``, split E2E lines, lowercase, drop blank rows."""
    streaming = isinstance(ds, datasets.IterableDataset)
    columns = ds.column_names
    if columns is None:  # streaming with unknown features: look at the first row
        first = _peek(ds, split, cfg)
        if first is None:
            raise DataError(f"split {split!r} is empty; check data.data_files[{split!r}]")
        columns = list(first)
    if cfg.column not in columns:
        raise DataError(
            f"split {split!r} has no column {cfg.column!r}; columns present: {list(columns)}; "
            "set data.column to one of them"
        )

    def transform(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        texts = _texts(batch[cfg.column], indices, split, cfg)
        out: dict[str, list] = {}
        if cfg.format == "e2e":
            for i, line in zip(indices, texts, strict=True):
                if line.strip() and "||" not in line:
                    where = _where(i, cfg)
                    raise DataError(
                        f"split {split!r} {where} has no '||' between MR and sentence "
                        f"({line[:50]!r}); fix the line or set data.format: plain"
                    )
            pairs = [line.partition("||") for line in texts]
            out["condition"] = [mr.strip() for mr, _, _ in pairs]
            texts = [sentence for _, _, sentence in pairs]
        texts = [t.strip() for t in texts]
        out["text"] = [t.lower() for t in texts] if cfg.lowercase else texts
        return out

    kwargs: dict[str, Any] = dict(batched=True, with_indices=True, remove_columns=list(columns))
    if not streaming:
        kwargs["desc"] = f"preparing {split}"
    ds = ds.map(transform, **kwargs)
    ds = ds.filter(lambda batch: [bool(t) for t in batch["text"]], batched=True)
    empty = _peek(ds, split, cfg) is None if streaming else len(ds) == 0
    if empty:
        raise DataError(f"split {split!r} is empty (no non-blank text); check its data file")
    return ds


def _where(index: int, cfg: DataConfig) -> str:
    return f"line {index + 1}" if cfg.dataset == "text" else f"row {index}"


def _texts(values: list, indices: list[int], split: str, cfg: DataConfig) -> list[str]:
    """The column's values as texts (``None`` as empty); anything else than a string, or a
    string over ``MAX_TEXT_CHARS`` characters, is refused."""
    for i, value in zip(indices, values, strict=True):
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"split {split!r} {_where(i, cfg)}: column {cfg.column!r} holds "
                f"{type(value).__name__} {short_repr(value)}, not text; set data.column to a "
                "column of text (strings) or write the values as strings"
            )
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise DataError(
                f"split {split!r} {_where(i, cfg)} is {len(value):,} characters long, more than "
                f"one text may be ({MAX_TEXT_CHARS:,}); break the file into lines (one sentence "
                "or paragraph a line)"
            )
    return ["" if t is None else t for t in values]


def _peek(ds: datasets.IterableDataset, split: str, cfg: DataConfig) -> dict | None:
    try:
        return next(iter(ds.take(1)), None)
    except Exception as e:
        raise _explain(cfg, e) from e


def iter_texts(
    ds: datasets.Dataset | datasets.IterableDataset,
    max_texts: int | None = None,
    columns: tuple[str, ...] = ("text",),
) -> Iterator[str]:
    """The ``"text"`` column of a split, in order (at most ``max_texts`` rows); with several
    ``columns`` (e.g. ``("condition", "text")`` to train a data-to-text tokenizer) each row's
    values in turn."""
    if isinstance(ds, datasets.IterableDataset):
        rows = ds if max_texts is None else ds.take(max_texts)
        for batch in rows.iter(batch_size=_BATCH):
            yield from _interleave(batch, columns)
        return
    n = len(ds) if max_texts is None else min(max_texts, len(ds))
    for start in range(0, n, _BATCH):
        yield from _interleave(ds[start : min(start + _BATCH, n)], columns)


def _interleave(batch: dict[str, list], columns: tuple[str, ...]) -> Iterator[str]:
    if any(c not in batch for c in columns):
        raise DataError(f"the data has no {list(columns)} columns; data-to-text needs format: e2e")
    for row in zip(*(batch[c] for c in columns), strict=True):
        yield from row


def build_tokenizer(cfg: DataConfig, train_texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """``cfg.tokenizer`` loaded if set, else a tokenizer trained on ``train_texts``."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    tok = train_tokenizer(
        train_texts,
        kind=cfg.tokenizer_kind,
        min_frequency=cfg.min_frequency,
        vocab_size=cfg.bpe_vocab_size,
        lowercase=cfg.lowercase,
    )
    if len(tok) <= len(SPECIAL_TOKENS):
        raise DataError(
            f"no word of the training data is seen data.min_frequency ({cfg.min_frequency}) "
            "times, so the vocabulary would hold only the special tokens; lower "
            "data.min_frequency"
        )
    return tok
