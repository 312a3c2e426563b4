"""Tokenizers: train a word-level or BPE vocabulary, load a saved one, encode to fixed length.

Every tokenizer textdiff trains puts its four special tokens first, at ids 0..3:
``[PAD] [EOS] [MASK] [UNK]``. A sentence becomes its token ids, one ``[EOS]`` and then ``[PAD]``
up to the sequence length; nothing else (no BOS / CLS) is ever added. Tokenizers are plain
``transformers`` fast tokenizers, so they save with ``tok.save_pretrained(folder)`` and load back
with :func:`load_tokenizer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from transformers import PreTrainedTokenizerFast

from ..errors import TextdiffError

logger = logging.getLogger(__name__)

PAD = "[PAD]"
EOS = "[EOS]"
MASK = "[MASK]"
UNK = "[UNK]"
SPECIAL_TOKENS = (PAD, EOS, MASK, UNK)  # ids 0..3 in every tokenizer trained here

_ROLES = {"pad_token": PAD, "eos_token": EOS, "mask_token": MASK, "unk_token": UNK}


class TokenizerError(TextdiffError, ValueError):
    """A tokenizer cannot be found, loaded or built."""


def train_tokenizer(
    texts: Iterable[str],
    kind: Literal["word", "bpe"] = "word",
    min_frequency: int = 11,
    vocab_size: int = 8000,
    lowercase: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` with the ``tokenizers`` library (no hub access).

    Args:
        texts: Training sentences (any iterable; read once).
        kind: ``"word"``: one token per whitespace-separated word seen at least ``min_frequency``
            times, every other word is ``[UNK]``. ``"bpe"``: byte-pair merges over words marked
            with a leading ``▁`` (Metaspace), so decoding restores single spaces between words.
        min_frequency: Word level: keep words seen at least this often. BPE: merge pairs seen
            at least this often (capped at 2 so small corpora still merge).
        vocab_size: BPE only: the vocabulary size including the special tokens.
        lowercase: Lowercase the text before tokenizing (also at encode time).

    Returns:
        A fast tokenizer with ``[PAD] [EOS] [MASK] [UNK]`` at ids 0..3 and the matching
        ``pad_token`` / ``eos_token`` / ``mask_token`` / ``unk_token`` set.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "word":
        tk = Tokenizer(models.WordLevel(unk_token=UNK))
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(
            vocab_size=2**31 - 1, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
        )
        # no decoder: the tokens of a word-level vocabulary are joined with single spaces
    elif kind == "bpe":
        tk = Tokenizer(models.BPE(unk_token=UNK))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        tk.decoder = decoders.Metaspace(prepend_scheme="always")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min(min_frequency, 2),
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
    else:
        raise TokenizerError(f"tokenizer kind {kind!r} is unknown; choose 'word' or 'bpe'")
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **_ROLES)
    logger.info("trained a %s tokenizer with %d tokens", kind, len(tok))
    return tok


def _add_missing_roles(tok: PreTrainedTokenizerFast, name: str) -> None:
    """Add ``[PAD]`` / ``[EOS]`` / ``[MASK]`` / ``[UNK]`` for the roles ``tok`` lacks."""
    missing = {role: token for role, token in _ROLES.items() if getattr(tok, role) is None}
    if missing:
        before = len(tok)
        tok.add_special_tokens(missing)
        logger.warning(
            "tokenizer %r lacked %s; added %s, vocabulary grew from %d to %d",
            *(name, ", ".join(missing), " ".join(missing.values()), before, len(tok)),
        )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a folder saved with ``save_pretrained`` or from the hub.

    Any of ``pad`` / ``eos`` / ``mask`` / ``unk`` the tokenizer lacks is added as ``[PAD]`` /
    ``[EOS]`` / ``[MASK]`` / ``[UNK]`` at the end of the vocabulary (e.g. GPT-2 gains ``[PAD]``
    and ``[MASK]``); use ``len(tok)`` for the vocabulary size, not ``tok.vocab_size``.

    Raises:
        TokenizerError: The folder does not exist, the hub cannot be reached, or the tokenizer
            is not a fast (``tokenizers``-backed) one.
    """
    from transformers import AutoTokenizer

    path = os.path.expanduser(name_or_path)
    if os.path.isfile(path):
        raise TokenizerError(
            f"tokenizer {name_or_path!r} is a file; pass the folder written by save_pretrained"
        )
    if not os.path.isdir(path) and _looks_like_path(name_or_path):
        raise TokenizerError(
            f"tokenizer folder {name_or_path!r} does not exist; pass a folder written by "
            "save_pretrained, or set data.tokenizer: null to train one from the data"
        )
    try:
        if os.path.isfile(os.path.join(path, "tokenizer.json")):  # ours: no config lookup
            tok = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # `tokenizers` raises a plain Exception on a malformed file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, KeyError):
            reason = f"no {reason} entry"
        if os.path.isdir(path):
            raise TokenizerError(
                f"could not load tokenizer folder {name_or_path!r} ({reason}); it must hold the "
                "files written by save_pretrained (tokenizer.json, tokenizer_config.json)"
            ) from None
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise TokenizerError(
            f"could not load tokenizer {name_or_path!r} from the hub ({reason}); without network "
            "(offline mode) pass a local folder written by save_pretrained, or set "
            "data.tokenizer: null to train one from the data"
        ) from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TokenizerError(
            f"tokenizer {name_or_path!r} is not a fast (tokenizers-backed) tokenizer; "
            "save one with a tokenizer.json"
        )
    _add_missing_roles(tok, name_or_path)
    return tok


def fit_to_model(tok: PreTrainedTokenizerFast, seq_len: int) -> None:
    """Give ``tok`` the length of its model (``model_max_length``, saved with it, is what
    ``AutoTokenizer`` users see). textdiff cuts and checks lengths itself, so transformers'
    warning about texts longer than that is turned off for ``tok``."""
    tok.model_max_length = seq_len
    tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True


def _looks_like_path(name: str) -> bool:
    """A hub name is ``name`` or ``namespace/name``; anything else is meant as a folder."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def encode(
    tok: PreTrainedTokenizerFast, texts: Sequence[str], seq_len: int
) -> tuple[torch.LongTensor, int]:
    """Encode texts to fixed-length rows ``ids + [EOS] + [PAD]...``.

    A text longer than ``seq_len - 1`` tokens is cut to ``seq_len - 1`` tokens so that
    ``[EOS]`` still ends it (:func:`encode_rows` says which).

    Args:
        tok: A tokenizer with ``eos_token_id`` and ``pad_token_id``.
        texts: The texts, one per row.
        seq_len: L, the row length (≥ 2).

    Returns:
        ``(ids, num_truncated)``: ids ``(B, L)`` and how many texts were cut.
    """
    ids, cut = encode_rows(tok, texts, seq_len)
    return ids, int(cut.sum())


def encode_rows(
    tok: PreTrainedTokenizerFast, texts: Sequence[str], seq_len: int
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """:func:`encode`, returning which rows were cut: ``(ids (B, L), cut (B,) bool)``."""
    if seq_len < 2:
        raise TokenizerError(f"seq_len must be ≥ 2 (a token and [EOS]), got {seq_len}")
    eos, pad = tok.eos_token_id, tok.pad_token_id
    if not texts:
        return torch.full((0, seq_len), pad, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    rows, cut = [], []
    # verbose=False: no warning for texts longer than model_max_length, they are cut here
    for row in tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        cut.append(len(row) > seq_len - 1)
        row = row[: seq_len - 1]
        rows.append([*row, eos] + [pad] * (seq_len - 1 - len(row)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cut, dtype=torch.bool)


def encode_pairs(
    tok: PreTrainedTokenizerFast,
    conditions: Sequence[str],
    texts: Sequence[str],
    condition_len: int,
    seq_len: int,
) -> tuple[torch.LongTensor, int, int]:
    """Encode (condition, text) pairs to the data-to-text layout: the condition as
    :func:`encode` makes it over the first ``condition_len`` positions, the text over the other
    ``seq_len - condition_len``, each ended by ``[EOS]`` and padded.

    Returns:
        ``(ids, conditions_cut, texts_cut)``: ids ``(B, seq_len)`` and how many conditions and
        texts were cut to fit.
    """
    if len(conditions) != len(texts):
        raise TokenizerError(f"{len(conditions)} conditions for {len(texts)} texts")
    cond, cut_c = encode(tok, conditions, condition_len)
    text, cut_t = encode(tok, texts, seq_len - condition_len)
    return torch.cat([cond, text], dim=1), cut_c, cut_t


def decode(tok: PreTrainedTokenizerFast, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
    """Rows of ids back to text: stop at the first ``[EOS]``, drop ``[PAD]`` and ``[MASK]``.

    Args:
        tok: The tokenizer the ids came from.
        ids: ``(B, L)`` ids (tensor or nested lists).

    Returns:
        One string per row, words separated by single spaces.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    eos = tok.eos_token_id
    drop = {tok.pad_token_id, tok.mask_token_id}
    out = []
    for row in ids:
        row = list(row)
        if eos in row:
            row = row[: row.index(eos)]
        out.append(tok.decode([i for i in row if i not in drop], skip_special_tokens=False))
    return out
