"""The interface every forward process implements, and the small records they return.

A forward process holds the noise (Gaussian on embeddings, or [MASK]-absorbing on tokens); the
denoiser holds the weights and knows nothing of the noise. Math functions take the denoiser as an
argument (see :class:`Denoiser`) and return named terms, so a training log shows every term.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

Progress = Callable[[Iterable], Iterable]
"""Wraps the sampler's step iterator, e.g. ``functools.partial(tqdm, desc="sampling")``."""


class Denoiser(Protocol):
    """What the math needs of a network; :class:`textdiff.modeling.TextDiffusionModel` is one."""

    def embed(self, ids: Tensor) -> Tensor:
        """Word-table rows ``E[ids]``: (B, L) -> (B, L, d)."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The prediction from the word part ``x_t`` (B, L, d) at times ``t`` (B,)."""

    def word_table(self) -> Tensor:
        """The word table ``E`` (V, d)."""

    def logits(self, x: Tensor) -> Tensor:
        """Token logits (B, L, V) from embedding-space vectors (B, L, d) or network outputs."""


@dataclass
class LossTerms:
    """A training loss: ``loss`` to backpropagate and every term (detached) for the log."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)

    def floats(self) -> dict[str, float]:
        """``{"loss": ..., term: ...}`` as Python floats."""
        return {"loss": float(self.loss.detach()), **{k: float(v) for k, v in self.terms.items()}}


@dataclass
class BoundTerms:
    """A Monte-Carlo estimate of ``−log p(w)`` for each sequence of a batch, in nats.

    ``terms`` maps each named term to its per-sequence estimate (B,); their sum is ``total``.
    ``num_t`` is the number of time samples each sequence's estimate averages over and
    ``variance`` the estimated Monte-Carlo variance of each ``total``.
    """

    total: Tensor  # (B,)
    terms: dict[str, Tensor]
    num_t: int
    variance: Tensor | None = None  # (B,) Monte-Carlo variance of ``total``


@dataclass
class SampleOutput:
    """What a sampler returns.

    ``ids`` (B, L) are the generated tokens; ``x0`` (B, L, d) the last clean-embedding prediction
    (Gaussian mode, ``None`` in mask mode); ``trajectory`` the per-step predictions when asked for
    (x̂_0 in Gaussian mode, the partially masked ids in mask mode); ``nfe`` the number of network
    calls made.
    """

    ids: Tensor
    x0: Tensor | None = None
    trajectory: list[Tensor] | None = None
    nfe: int = 0
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Known:
    """Tokens a sampler holds fixed: infilling templates and data-to-text conditions.

    ``ids`` (B, L) the tokens and ``mask`` (B, L, bool) where they are known; the other entries
    of ``ids`` are ignored. ``clean`` (B, L, bool, optional) marks known positions that are never
    noised — a condition trained with ``loss(..., clean=)``; the other known positions follow the
    forward process (Gaussian: re-noised to the current time; mask: simply kept unmasked). The
    sampler returns ``ids`` at every known position.
    """

    ids: Tensor
    mask: Tensor
    clean: Tensor | None = None


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """``steps + 1`` equally spaced times from ``t_max`` down to ``t_min`` (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def stratified_times(batch: int, *, generator: torch.Generator | None, device=None) -> Tensor:
    """``t_i = (u + i) / B mod 1`` with one shared ``u ~ U[0, 1)``: a stratified (low-discrepancy)
    batch of times, each marginally uniform, so the batch mean has lower variance than i.i.d."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    i = torch.arange(batch, dtype=torch.float64)
    return ((u + i) / batch % 1.0).to(device)


class ForwardProcess(ABC):
    """A noise process over sentences of token ids, with its loss, bound and sampler."""

    name: str = ""
    eval_times: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Noise levels at which evaluation reports the accuracy of the denoiser's tokens."""

    @abstractmethod
    def loss(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> LossTerms:
        """The training objective for a batch of ids (B, L).

        ``clean`` (B, L, bool), optional: positions that stay clean (partial noising, as in
        DiffuSeq): never noised and left out of every term, so the model learns
        ``p(noised part | clean part)``.
        """

    @abstractmethod
    def nll_bound(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        num_t: int,
        generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> BoundTerms:
        """An unbiased estimate of an upper bound on ``−log p(ids)`` per sequence, in nats; with
        ``clean`` (B, L, bool) the bound on ``−log p(noised part | clean part)``."""

    @abstractmethod
    def sample(
        self,
        model: Denoiser,
        shape: tuple[int, int],
        *,
        steps: int,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        return_trajectory: bool = False,
        known: Known | None = None,
        **options,
    ) -> SampleOutput:
        """Draw ``shape = (B, L)`` token ids from the model in ``steps`` steps, holding the
        ``known`` tokens fixed if given."""
