"""What every forward process offers, and the small records the math returns.

A forward process holds the noise (Gaussian on embeddings, [MASK]-absorbing on tokens, ...); the
denoiser holds the weights and knows nothing of the noise. The math takes the denoiser as an
argument (see :class:`Denoiser`) and returns named terms, so a training log shows every term.

A process is a set of small operations that the shared algorithms call:

- training: :meth:`ForwardProcess.loss`;
- the bound: :meth:`ForwardProcess.bound_terms` gives the per-time terms of one replicate, which
  :func:`textdiff.diffusion.bound.stratified_bound` averages over stratified times;
- accuracy: :meth:`ForwardProcess.predict_ids`;
- sampling: :meth:`~ForwardProcess.prior`, :meth:`~ForwardProcess.impose` (hold known tokens),
  :meth:`~ForwardProcess.predict` (one network call) and :meth:`~ForwardProcess.finish`, with
  the steps registered in :attr:`ForwardProcess.samplers`; :func:`textdiff.diffusion.loop.sample`
  is the one loop that drives them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .noise import Noise

Progress = Callable[[Iterable], Iterable]
"""Wraps the sampler's step iterator, e.g. ``functools.partial(tqdm, desc="sampling")``."""


class Denoiser(Protocol):
    """What the math needs of a network; :class:`textdiff.models.TextDiffusionModel` is one."""

    def embed(self, ids: Tensor) -> Tensor:
        """Word-table rows ``E[ids]``: (B, L) -> (B, L, d)."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The prediction from the word part ``x_t`` (B, L, d) at times ``t`` (B,).

        Training a [MASK]-mode model with a clean condition prefix of ``C`` positions also
        calls it as ``(x_t, t, start=C)``: the prediction at positions ``C`` on only."""

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
    ``variance`` the estimated Monte-Carlo variance of each ``total``. ``by_time`` (B, num_t)
    splits the per-time terms by stratum: column ``k`` estimates their part from times in
    ``[k / num_t, (k + 1) / num_t)`` (the process's low-noise terms, e.g. rounding, in column
    0), so each row sums to ``total`` less the exact terms.
    """

    total: Tensor  # (B,)
    terms: dict[str, Tensor]
    num_t: int
    variance: Tensor | None = None  # (B,) Monte-Carlo variance of ``total``
    by_time: Tensor | None = None  # (B, num_t): the per-time terms' share of each stratum


@dataclass
class SampleOutput:
    """What the sampling loop returns.

    ``ids`` (B, L) the generated tokens; ``x0`` (B, L, d) the last clean-embedding prediction
    (Gaussian mode; ``None`` otherwise); ``trajectory`` the clean estimate after every network
    call when asked for (x̂_0 in Gaussian mode, the partly revealed ids in mask mode); ``nfe``
    the number of network calls made; ``info["nfe_saved"]`` the calls a repeated input saved.
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


@dataclass
class Run:
    """One sampling call: its network, random numbers, held tokens, options and scratch space,
    handed to every sampling primitive. ``memory`` keeps what a process or a multistep solver
    carries from one step to the next."""

    model: Any
    noise: Noise
    known: Known | None = None
    rounder: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    guidance: Any = None
    """A :class:`textdiff.diffusion.control.Guidance` that refines every step's latent."""

    def step(self, step: Step, process: ForwardProcess, x: Tensor, out: Any, t, s) -> tuple:
        """``step`` from ``t`` to ``s``, then the guidance's refinement of the new latent (not
        after a corrector step, which stays at ``s``)."""
        x_s, x0 = step(process, x, out, t, s, self)
        if self.guidance is not None and float(t) != float(s):
            x_s = self.guidance.refine(process, x, x_s, x0, t, s)
        return x_s, x0


Step = Callable[["ForwardProcess", Tensor, Any, Any, Any, Run], tuple[Tensor, Tensor]]
"""``step(process, x_t, out, t, s, run) -> (x_s, x0)``: from time ``t`` to ``s`` given the
network's output ``out`` at ``t``; ``x0`` is the clean estimate (kept for self-conditioning and
the trajectory)."""


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """``steps + 1`` equally spaced times from ``t_max`` down to ``t_min`` (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def uniform_grid(process: ForwardProcess, steps: int, options: dict) -> Tensor:
    """The default grid of a sampler: ``steps`` equal steps of time from 1 to 0."""
    return time_grid(steps)


@dataclass(frozen=True)
class Sampler:
    """A registered way to sample: a ``step`` on a ``grid`` of times, optionally followed at
    each new time by ``corrector`` steps (a predictor–corrector sampler), and the options the
    steps read from :attr:`Run.options` with their defaults."""

    step: Step
    grid: Callable[[ForwardProcess, int, dict], Tensor] = uniform_grid
    corrector: Step | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def plan(self, process: ForwardProcess, steps: int, run: Run) -> Iterator[tuple]:
        """``(t, s, step)`` for every network call: each grid step, then (with a corrector)
        ``corrector_steps`` corrector steps at ``s`` unless ``s`` is the end of time; a
        corrector step is told the time ``after`` its predictor started from."""
        grid = self.grid(process, steps, run.options)
        for t, s in zip(grid[:-1], grid[1:], strict=True):
            yield t, s, self.step
            if self.corrector is not None and s > 0:
                for _ in range(run.options["corrector_steps"]):
                    yield s, s, partial(self.corrector, after=t)


def place_length(
    process,
    p_eos: Tensor,
    held: Tensor,
    held_ids: Tensor,
    noise,
    condition: Tensor | None = None,
    temperature: float = 1.0,
) -> None:
    """Draw each row's [EOS] position from ``p_eos`` (B, L) over its free (not ``held``)
    positions and hold [EOS] there and [PAD] after it (``held`` and ``held_ids`` are updated in
    place). The model's probabilities of [EOS] at each position of an all-noise input are its
    distribution of the sentence length (one [EOS] per sentence); ``temperature`` < 1 sharpens
    it towards its mode (``p^(1/τ)``, renormalised). Rows whose sentence already holds an [EOS]
    (a template) keep theirs; the [EOS] that ends a data-to-text condition (``condition``,
    (B, L) bool: the condition's positions) is not the sentence's."""
    if process.eos_id is None or process.pad_id is None:
        raise ValueError("length_first needs the process's [EOS] and [PAD] ids (pad_id, eos_id)")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"length_temperature must be > 0, got {temperature}")
    p_eos = p_eos.double().masked_fill(held, 0.0)
    if temperature != 1.0:  # in log space: p^(1/τ) of small p underflows
        log_p = p_eos.log() / temperature
        p_eos = (log_p - log_p.amax(1, keepdim=True).clamp(min=-1e300)).exp()
    has_eos = held & (held_ids == process.eos_id)
    if condition is not None:
        has_eos &= ~condition.to(has_eos.device)
    todo = ~has_eos.any(1) & (p_eos.sum(1) > 0)
    if not todo.any():
        return
    rows = torch.arange(len(held), device=held.device)[todo]
    at = noise.categorical(p_eos[todo] / p_eos[todo].sum(1, keepdim=True), rows).to(held.device)
    pos = torch.arange(held.shape[1], device=held.device)[None]
    after = torch.where(pos > at[:, None], process.pad_id, held_ids[todo])
    held_ids[todo] = torch.where(pos == at[:, None], process.eos_id, after)
    held[todo] = held[todo] | (pos >= at[:, None])


def inside_sentence(
    process, held: Tensor, held_ids: Tensor, condition: Tensor | None = None
) -> Tensor | None:
    """(B, L) bool: the free (not ``held``) positions of the rows whose sentence holds its
    [EOS] — a template's, or a length placed first — which lie inside the sentence, so [PAD]
    and [EOS] are not theirs to take (a template's span of k is k tokens). ``None`` when no
    row holds one (the [EOS] ending a data-to-text ``condition`` is not the sentence's)."""
    if process.eos_id is None or process.pad_id is None:
        return None
    eos = held & (held_ids == process.eos_id)
    if condition is not None:
        eos &= ~condition.to(eos.device)
    rows = eos.any(1, keepdim=True)
    return (~held & rows) if rows.any() else None


class _TokenNLL(torch.autograd.Function):
    """The forward and backward of :func:`token_nll`."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, exclude: int | None) -> Tensor:
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if exclude is not None:
            x = x.clone() if x is logits else x  # never write into the caller's tensor
            x[..., exclude] = float("-inf")
        log_probs = x.log_softmax(-1)
        ctx.save_for_backward(log_probs, target)
        ctx.dtype = logits.dtype
        return -log_probs.gather(-1, target[..., None])[..., 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        log_probs, target = ctx.saved_tensors
        diff = log_probs.exp().scatter_add_(-1, target[..., None], _minus_one(log_probs))
        # softmax − one-hot, times g, written once in the logits' dtype
        out = torch.empty(diff.shape, dtype=ctx.dtype, device=diff.device)
        return torch.mul(diff, grad.to(diff.dtype)[..., None], out=out), None, None


def _minus_one(like: Tensor) -> Tensor:
    """−1 for every row of ``like`` (..., V), shaped (..., 1): the one-hot's scatter source."""
    return torch.full((1,), -1.0, dtype=like.dtype, device=like.device).expand(*like.shape[:-1], 1)


def token_nll(logits: Tensor, target: Tensor, exclude: int | None = None) -> Tensor:
    """``−log softmax(logits)[target]`` along the last axis, in float32 (or wider): logits
    (..., V), target (...) -> (...). ``exclude``: a column never predicted (its probability is 0).

    The same floats as ``F.cross_entropy(logits.float(), ..., reduction="none")``; the gradient,
    ``(softmax − one-hot) · g``, equals autograd's to float32 rounding but takes two passes over
    the logits' size where autograd's chain (a zero-filled gradient, the scatter, log-softmax's
    backward, the cast back) takes four: a ``[MASK]`` model's training step on 4,000 BPE pieces
    is 5% shorter in bf16, 3% in fp32 (``configs/lm.yaml``, Sapphire Rapids, 2 threads).
    """
    return _TokenNLL.apply(logits, target, exclude)


def stratified_times(batch: int, *, generator: torch.Generator | None, device=None) -> Tensor:
    """``t_i = (u + i) / B mod 1`` with one shared ``u ~ U[0, 1)``: a stratified (low-discrepancy)
    batch of times, each marginally uniform, so the batch mean has lower variance than i.i.d."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    i = torch.arange(batch, dtype=torch.float64)
    return ((u + i) / batch % 1.0).to(device)


class ForwardProcess(ABC):
    """A noise process over sentences of token ids (module docstring)."""

    name: str = ""
    samplers: dict[str, Sampler] = {}
    """The registered samplers; ``"auto"`` in a request means :attr:`default_sampler`."""
    default_sampler: str = ""
    sample_options: dict[str, Any] = {}
    """Options of :meth:`predict` (e.g. ``temperature``) with their defaults, besides the
    samplers' own."""
    guidable: bool = False
    """True when gradient guidance (:mod:`textdiff.diffusion.control`) applies: a continuous
    latent with a Gaussian transition."""
    time_conditioned: bool = True
    """False when the network is not told ``t``: then a step whose input repeats the previous
    one's may reuse its output (the loop's cache)."""
    exact_bound: bool = False
    """True when :meth:`bound_terms` is exact (no Monte Carlo, zero variance)."""
    low_noise_terms: tuple[str, ...] = ()
    """Terms of :meth:`bound_terms` that are costs at ``t ≈ 0`` whatever the uniforms ``u``
    (e.g. rounding): :class:`BoundTerms` ``by_time`` counts them in the first stratum."""
    eval_times: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Noise levels at which evaluation reports the accuracy of the denoiser's tokens."""

    # ------------------------------------------------------------------ training and bound
    @abstractmethod
    def loss(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        clean: Tensor | None = None,
    ) -> LossTerms:
        """The training objective for a batch of ids (B, L).

        ``clean`` (B, L, bool), optional: positions that stay clean (partial noising, as in
        DiffuSeq): never noised and left out of every term, so the model learns
        ``p(noised part | clean part)``.
        """

    @abstractmethod
    def bound_terms(
        self,
        model: Denoiser,
        ids: Tensor,
        u: Tensor,
        *,
        generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One replicate of the per-time terms of the bound on ``−log p(ids)``, per sequence
        (B,) in nats, at the stratified uniforms ``u`` (B,); with ``clean`` the bound of the
        other positions given those."""

    def bound_constant(self, model: Denoiser, ids: Tensor, clean: Tensor | None) -> dict:
        """Terms of the bound computed exactly once (e.g. the prior KL), per sequence (B,)."""
        return {}

    def nll_bound(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        num_t: int = 8,
        generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> BoundTerms:
        """An unbiased estimate of an upper bound on ``−log p(ids)`` per sequence, in nats
        (:func:`textdiff.diffusion.bound.stratified_bound`)."""
        from .bound import stratified_bound

        return stratified_bound(self, model, ids, num_t=num_t, generator=generator, clean=clean)

    @abstractmethod
    def predict_ids(
        self, model: Denoiser, ids: Tensor, t: float, *, rounder=None, generator=None, clean=None
    ) -> tuple[Tensor, Tensor]:
        """Noise ``ids`` to time ``t`` (never at ``clean``) and read off the denoiser's tokens.
        Returns the predicted ids (B, L) and the positions that were predicted."""

    # ------------------------------------------------------------------ sampling primitives
    @abstractmethod
    def prior(self, run: Run, shape: tuple[int, int]) -> Tensor:
        """The state at ``t = 1`` for a batch of ``shape = (B, L)``."""

    def impose(self, run: Run, x: Tensor, t) -> Tensor:
        """``x`` with the known tokens of ``run`` held (before each network call)."""
        return x

    @abstractmethod
    def predict(self, run: Run, x: Tensor, t, prev: Tensor | None) -> Any:
        """One network call at time ``t``, read as what this process's steps take; ``prev`` is
        the previous clean estimate (self-conditioning)."""

    @abstractmethod
    def finish(self, run: Run, x: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The token ids (B, L) of the final state, and the last x̂_0 where there is one."""

    def sample(self, model: Denoiser, shape: tuple[int, int], **kwargs) -> SampleOutput:
        """Shorthand for :func:`textdiff.diffusion.loop.sample` with this process."""
        from .loop import sample

        return sample(self, model, shape, **kwargs)
