"""Infilling templates: which tokens of a sentence are given and which are generated.

A template is a list whose items are known text (``str``) or a span length (``int`` ≥ 1), e.g.
``["The Eagle is a", 4, "near Burger King ."]``: the known text is tokenized and held fixed, a
span of ``k`` is ``k`` tokens the model fills in (words, for a word-level tokenizer). There is no
marker syntax inside the text, so any text can be given. The sentence is the template's tokens,
one ``[EOS]`` and ``[PAD]`` up to the length; every position except the spans is known.

A template is checked before sampling and every problem is a one-line :class:`TemplateError`:
wrong item types, an empty text, no span, text with words outside the vocabulary (they would
become ``[UNK]``) or with special tokens, a template longer than the model's sequence.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from ..errors import TextdiffError

EXAMPLE = '["The Eagle is a", 4, "near Burger King ."]'


class TemplateError(TextdiffError, ValueError):
    """A template is malformed or does not fit the model."""


@dataclass
class Template:
    """A checked template over ``len(ids)`` positions.

    ``ids`` (n,) the template's tokens (span positions hold ``[PAD]``, ignored), then ``[EOS]``
    and ``[PAD]``; ``known`` (n,) bool, False at span positions only; ``length`` the number of
    tokens before ``[EOS]``.
    """

    ids: Tensor
    known: Tensor
    length: int


def _tokens(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def parse_template(template: Sequence[str | int], tok: PreTrainedTokenizerFast, n: int) -> Template:
    """Check ``template`` and lay it out over ``n`` positions (module docstring).

    Raises:
        TemplateError: The template is not a list of ``str`` and ``int`` ≥ 1 items, has no span,
            has empty text, text the tokenizer maps to ``[UNK]`` or to a special token, or needs
            more than ``n`` positions with its ``[EOS]``.
    """
    if isinstance(template, (str, bytes)) or not isinstance(template, Sequence):
        raise TemplateError(
            f"a template is a list of known text (str) and span lengths (int ≥ 1), e.g. "
            f"{EXAMPLE}; got a {type(template).__name__}"
        )
    if not template:
        raise TemplateError(f"the template is empty; give known text and spans, e.g. {EXAMPLE}")
    ids: list[int] = []
    known: list[bool] = []
    for i, item in enumerate(template):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TemplateError(
                f"template item {i} ({reprlib.repr(item)}) is a {type(item).__name__}; items are "
                f"known text (str) or span lengths (int ≥ 1), e.g. {EXAMPLE}"
            )
        if isinstance(item, int):
            if item < 1:
                raise TemplateError(f"template item {i}: a span length must be ≥ 1, got {item}")
            if len(ids) + item + 1 > n:  # refused before any memory is spent on it
                raise TemplateError(
                    f"template item {i}: a span of {item} tokens after {len(ids)} others needs "
                    f"{len(ids) + item + 1} positions with [EOS], more than the {n} the model "
                    "generates; shorten it"
                )
            ids += [tok.pad_token_id] * item
            known += [False] * item
            continue
        row = _known_text(i, item, tok)
        ids += row
        known += [True] * len(row)
    if all(known):
        raise TemplateError(
            f"the template has no span to generate; add span lengths (int), e.g. {EXAMPLE}"
        )
    if len(ids) + 1 > n:
        raise TemplateError(
            f"the template needs {len(ids)} tokens + [EOS] = {len(ids) + 1} positions, more than "
            f"the {n} the model generates; shorten it"
        )
    length = len(ids)
    ids += [tok.eos_token_id] + [tok.pad_token_id] * (n - length - 1)
    known += [True] * (n - length)
    return Template(torch.tensor(ids), torch.tensor(known), length)


def _known_text(i: int, item: str, tok: PreTrainedTokenizerFast) -> list[int]:
    """The tokens of template item ``i``, known text: not empty, no special token, no word
    outside the vocabulary."""
    if not item.strip():
        raise TemplateError(f"template item {i} is empty text; remove it or give words")
    row = _tokens(tok, item)
    specials = {tok.pad_token_id, tok.eos_token_id, tok.mask_token_id}
    bad = [tok.convert_ids_to_tokens(t) for t in row if t in specials]
    if bad:
        raise TemplateError(
            f"template item {i} ({reprlib.repr(item)}) contains the special token(s) "
            f"{' '.join(bad)}; known text is plain words (the end of the sentence is added "
            "after the template)"
        )
    if tok.unk_token_id in row:
        unknown = [w for w in item.split() if tok.unk_token_id in _tokens(tok, w)]
        raise TemplateError(
            f"template item {i}: {' '.join(map(repr, unknown[:5])) or reprlib.repr(item)} not "
            "in the model's vocabulary (would become [UNK]); use words the model knows"
        )
    return row


def decode_template(
    tok: PreTrainedTokenizerFast, ids: Tensor, template: Template
) -> tuple[list[str], int]:
    """Rows of ids (B, n) generated with ``template`` back to text: the tokens before the
    template's ``[EOS]``, without any ``[PAD]`` / ``[EOS]`` / ``[MASK]`` the model put in a span
    (a span then reads as shorter). Returns the texts and how many such tokens were dropped."""
    specials = {tok.pad_token_id, tok.eos_token_id, tok.mask_token_id}
    texts, dropped = [], 0
    for row in ids[:, : template.length].tolist():
        kept = [i for i in row if i not in specials]
        dropped += len(row) - len(kept)
        texts.append(tok.decode(kept, skip_special_tokens=False))
    return texts, dropped
