"""What a generation call holds fixed: a data-to-text condition and an infilling template.

:func:`prepare_request` checks the ``condition`` / ``template`` / ``guidance_scale`` arguments of
:meth:`textdiff.models.pipeline.TextDiffusionPipeline.generate` against the model, and the
:class:`Request` it returns gives, per batch, the :class:`textdiff.diffusion.base.Known` tokens
for the sampler, the (possibly guided) denoiser, and finally the texts of the generated part.

Layout of a row (docs/math.md §1 with partial noising, as DiffuSeq): positions ``[0, C)`` hold the
condition (``C = process.condition_len``; the MR, ``[EOS]``, ``[PAD]``), clean; positions
``[C, L)`` the sentence, ``[EOS]``, ``[PAD]``, generated — where a template's known tokens are
held fixed and only its spans are free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from ..diffusion.base import Known
from ..diffusion.guidance import GuidedDenoiser, condition_positions
from ..diffusion.registry import get_process_spec
from ..diffusion.settings import ProcessConfig
from .template import Template, decode_template, parse_template
from .tokenization import decode, encode

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """The fixed parts of one generation call (module docstring).

    ``conditions`` (N, C) are the condition ids of the N samples, or ``None`` for the null
    condition (every condition position ``null_id``); ``template`` the checked template of the
    sentence part; ``scale`` the guidance scale (1: none).
    """

    condition_len: int
    conditions: Tensor | None
    null_id: int
    template: Template | None
    scale: float = 1.0

    def known(self, lo: int, n: int, length: int) -> Known | None:
        """The tokens held fixed in samples ``lo .. lo + n`` (``None``: nothing is)."""
        C = self.condition_len
        if C == 0 and self.template is None:
            return None
        ids = torch.full((n, length), self.null_id, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask[:, :C] = True
        if self.conditions is not None:
            ids[:, :C] = self.conditions[lo : lo + n]
        if self.template is not None:
            ids[:, C:] = self.template.ids
            mask[:, C:] = self.template.known
        return Known(ids, mask, condition_positions(n, length, C) if C else None)

    def denoiser(self, model, lo: int, n: int, length: int):
        """``model``, or the classifier-free-guided model when a scale other than 0 or 1 is set
        (at 1 the conditional prediction alone is used, at 0 the null condition replaced the
        condition in :func:`prepare_request`: one network pass either way)."""
        if self.conditions is None or self.scale == 1.0:
            return model
        null = torch.full((n, length), self.null_id, dtype=torch.long)
        where = condition_positions(n, length, self.condition_len)
        return GuidedDenoiser(model, null, where, self.scale)

    def texts(self, tok: PreTrainedTokenizerFast, ids: Tensor) -> tuple[list[str], dict]:
        """The texts of the generated part of ``ids`` (N, L), and statistics for ``info``."""
        part = ids[:, self.condition_len :]
        if self.template is None:
            return decode(tok, part), {}
        texts, dropped = decode_template(tok, part, self.template)
        return texts, {"span_special_tokens_dropped": float(dropped)}


def prepare_request(
    tok: PreTrainedTokenizerFast,
    process: ProcessConfig,
    num_samples: int,
    length: int,
    *,
    template: Sequence[str | int] | None = None,
    condition: str | Sequence[str] | None = None,
    guidance_scale: float = 1.0,
) -> Request:
    """Check the conditioning arguments of ``generate`` against the model; see
    :meth:`textdiff.models.pipeline.TextDiffusionPipeline.generate`.

    Raises:
        TemplateError: The template is invalid (a ``ValueError``).
        ValueError: A condition or guidance scale for a model trained without conditions, a
            number of conditions other than ``num_samples``, an empty or non-string condition,
            a guidance scale without a condition or not a finite number ≥ 0, conditioning or a
            template for the autoregressive baseline.
    """
    C, spec = process.condition_len, get_process_spec(process.noise)
    if template is not None and not spec.templates:
        raise ValueError(f"templates need a diffusion model; this one is {process.noise}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number ≥ 0, got {guidance_scale}")
    if guidance_scale != 1.0 and spec.network != "denoiser":
        raise ValueError(f"classifier-free guidance needs a denoiser; this one is {process.noise}")
    if C == 0 and (condition is not None or guidance_scale != 1.0):
        raise ValueError(
            "this model was trained without conditions (process.condition_len = 0): "
            "condition= and guidance_scale= need a data-to-text model"
        )
    if condition is None and guidance_scale != 1.0:
        raise ValueError("guidance_scale needs a condition to guide toward; pass condition=")
    tmpl = parse_template(template, tok, length - C) if template is not None else None
    conditions = None
    if condition is not None:
        texts = _condition_texts(condition, num_samples)
        conditions, cut = encode(tok, texts, C)
        if cut:
            logger.warning("%d condition(s) longer than %d tokens were cut", cut, C - 1)
        unknown = int((conditions == tok.unk_token_id).sum())
        if unknown:
            logger.warning("the condition(s) hold %d word(s) outside the vocabulary", unknown)
    dropout = process.condition_dropout
    if C and dropout == 0 and (conditions is None or guidance_scale != 1.0):
        logger.warning(
            "this model was trained without condition dropout (process.condition_dropout = 0): "
            "the null condition (unconditional sampling, guidance) is outside its training"
        )
    if guidance_scale == 0:  # s = 0 is exactly the null condition: one network pass
        conditions = None
    return Request(C, conditions, tok.mask_token_id, tmpl, float(guidance_scale))


def _condition_texts(condition: str | Sequence[str], n: int) -> list[str]:
    texts = [condition] * n if isinstance(condition, str) else condition
    if not isinstance(texts, Sequence) or not all(isinstance(c, str) for c in texts):
        raise ValueError("condition must be a string or a list of strings (one per sample)")
    if len(texts) != n:
        raise ValueError(f"got {len(texts)} conditions for {n} samples; give one per sample")
    if not all(c.strip() for c in texts):
        raise ValueError("a condition is empty; give the meaning representation text")
    return list(texts)
