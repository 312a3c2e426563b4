"""[MASK]-absorbing diffusion on tokens (docs/math.md §3; D3PM-absorbing, MDLM).

Notation: ``w`` the clean ids (B, L); ``z_t`` the partially masked ids; ``α(t)`` the
keep-probability, ``α(0) = 1``, ``α(1) = 0``. The denoiser sees ``H_t = [E[z_t] ; e]`` (a learned
[MASK] row in ``E``) and outputs token logits. It is not told ``t``: the number of masks carries
it (MDLM, §3.2), and it makes reusing a network output across steps where nothing changed exact.

Sampling starts from all-[MASK] and reveals positions step by step; the samplers (ancestral,
confidence ordering, threshold decoding, remasking) are in
:mod:`textdiff.diffusion.absorbing_samplers`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .absorbing_samplers import MASK_SAMPLERS
from .base import (
    Denoiser,
    ForwardProcess,
    LossTerms,
    Run,
    inside_sentence,
    stratified_times,
    token_nll,
)
from .schedules import KeepSchedule, get_keep_schedule

T_MIN = 1e-5  # times are drawn from [T_MIN, 1]: at t → 0 nothing is masked and the weight → ∞


class MaskProcess(ForwardProcess):
    """Absorbing process: each position independently becomes ``mask_id`` with prob. ``1 − α(t)``.

    Args:
        schedule: the keep-probability ``α(t)`` (``linear``: ``1 − t``, or ``cosine``).
        mask_id: the id of the [MASK] token.
        pad_id, eos_id: the ids of [PAD] and [EOS] (needed to place a length first).
    """

    name = "mask"
    samplers = MASK_SAMPLERS
    default_sampler = "ancestral"
    sample_options = {"temperature": 1.0, "top_p": 1.0}
    time_conditioned = False

    def __init__(
        self,
        schedule: KeepSchedule | str = "linear",
        *,
        mask_id: int,
        pad_id: int | None = None,
        eos_id: int | None = None,
    ):
        self.schedule = get_keep_schedule(schedule) if isinstance(schedule, str) else schedule
        self.mask_id, self.pad_id, self.eos_id = mask_id, pad_id, eos_id

    def q_sample(
        self, ids: Tensor, t: Tensor | float, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """``z_t``: each ``w_i`` kept with probability ``α(t)``, else ``[MASK]`` (docs/math.md
        §3)."""
        keep = self.schedule.alpha(t).float().to(ids.device)
        keep = keep.reshape(keep.shape + (1,) * (ids.dim() - keep.dim()))
        u = torch.rand(ids.shape, generator=generator).to(ids.device)
        return torch.where(u < keep, ids, torch.full_like(ids, self.mask_id))

    def log_probs(self, model: Denoiser, z: Tensor, start: int = 0) -> Tensor:
        """``log p_θ(· | z_t)`` (B, L − start, V) in float32, with [MASK] never predicted; the
        first ``start`` positions (a clean condition) are read but not predicted."""
        logits = self._logits(model, z, start).float()
        logits[..., self.mask_id] = float("-inf")  # the network's output: ours to overwrite
        return logits.log_softmax(-1)

    def _logits(self, model: Denoiser, z: Tensor, start: int = 0) -> Tensor:
        """The network's logits (B, L − start, V), in its dtype."""
        t = torch.zeros(z.shape[0], device=z.device)  # not time-conditioned (module docstring)
        x = model.embed(z)
        return model(x, t, start=start) if start else model(x, t)

    def _masked_nll(self, model: Denoiser, ids: Tensor, t: Tensor, generator, clean) -> tuple:
        """Per sequence: ``Σ_{i: z_t,i = MASK} −log p_θ(w_i | z_t)`` and the number of masks;
        positions where ``clean`` (B, L) is True are never masked. The network predicts only
        from the first column that is not clean in every row on (the condition of the
        data-to-text layout is a prefix): the read-out and softmax skip the condition."""
        z = self.q_sample(ids, t, generator=generator)
        masked = z == self.mask_id
        start = 0
        if clean is not None:  # a clean position may hold [MASK] itself: the null condition
            z, masked = torch.where(clean, ids, z), masked & ~clean
            start = int(clean.all(0).int().cumprod(0).sum())  # the clean prefix's length
        nll = token_nll(self._logits(model, z, start), ids[:, start:], self.mask_id)  # (B, L − s)
        masked = masked[:, start:]
        return torch.where(masked, nll, 0.0).sum(1), masked.sum(1)  # nll is inf at a null [MASK]

    def loss(
        self,
        model: Denoiser,
        ids: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        clean: Tensor | None = None,
    ) -> LossTerms:
        """The continuous-time bound as the loss (docs/math.md §3), per token:
        ``(−α'(t) / (1 − α(t))) Σ_{masked i} −log p_θ(w_i | z_t) / L`` with stratified
        (antithetic) ``t`` over the batch. Positions where ``clean`` (B, L) is True are never
        masked, and ``L`` counts the others only."""
        B, L = ids.shape
        if t is None:
            t = T_MIN + (1 - T_MIN) * stratified_times(B, generator=generator)
        nll, num_masked = self._masked_nll(model, ids, t, generator, clean)
        weight = self.schedule.weight(t).float().to(ids.device)
        if clean is None:
            loss = (weight * nll).mean() / L
            fraction = num_masked.float().mean() / L
        else:
            n = (~clean).sum(1).clamp(min=1)  # (B,) noised positions per sequence
            loss = (weight * nll / n).mean()
            fraction = (num_masked.float() / n).mean()
        terms = {
            "masked_ce": (nll.sum() / num_masked.sum().clamp(min=1)).detach(),
            "mask_fraction": fraction.detach(),
        }
        return LossTerms(loss, terms)

    def predict_ids(
        self, model: Denoiser, ids: Tensor, t: float, *, rounder=None, generator=None, clean=None
    ) -> tuple[Tensor, Tensor]:
        """Mask ``ids`` at time ``t`` (never where ``clean``) and take the most likely token at
        each masked position.

        Returns the predicted ids (B, L) and the positions that were masked (predicted).
        """
        z = self.q_sample(ids, t, generator=generator)
        masked = z == self.mask_id
        if clean is not None:
            z, masked = torch.where(clean, ids, z), masked & ~clean
        return torch.where(masked, self.log_probs(model, z).argmax(-1), z), masked

    def bound_terms(
        self, model: Denoiser, ids: Tensor, u: Tensor, *, generator=None, clean=None
    ) -> dict[str, Tensor]:
        """One replicate of ``∫_0^1 (−α'(t)/(1 − α(t))) E_q[Σ_{masked i} −log p_θ(w_i | z_t)] dt``
        (docs/math.md §3) at ``t = u``: the weighted masked NLL per sequence; positions where
        ``clean`` (B, L) is True are never masked (the bound of the rest given them)."""
        t = u.clamp(min=T_MIN)
        nll, _ = self._masked_nll(model, ids, t, generator, clean)
        return {"diffusion": self.schedule.weight(t).to(ids.device) * nll.double()}

    # ------------------------------------------------------------------ sampling
    def prior(self, run: Run, shape: tuple[int, int]) -> Tensor:
        """All-[MASK] ids (B, L); the positions held fixed (known tokens) start as held."""
        device = run.model.device
        held = torch.zeros(shape, dtype=torch.bool, device=device)
        held_ids = torch.full(shape, self.mask_id, dtype=torch.long, device=device)
        if run.known is not None:
            held, held_ids = run.known.mask.to(device).clone(), run.known.ids.to(device).clone()
            content = inside_sentence(self, held, held_ids, run.known.clean)
            if content is not None:  # a template's spans: [PAD] and [EOS] are not theirs
                run.memory["content"] = content
        run.memory.update(held=held, held_ids=held_ids)
        run.memory["confidence"] = torch.full(shape, float("inf"), dtype=torch.float64)
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def impose(self, run: Run, z: Tensor, t) -> Tensor:
        """Held tokens (known ones, and a length placed by ``length_first``) are never masked
        and never revealed: they are simply in ``z``."""
        return torch.where(run.memory["held"], run.memory["held_ids"], z)

    def predict(self, run: Run, z: Tensor, t, prev) -> Tensor:
        """``p_θ(· | z_t)`` (B, L, V) after ``temperature`` and ``top_p``; where a length was
        placed first, the positions before its [EOS] cannot be [PAD] or [EOS]."""
        log_probs = self.log_probs(run.model, z)
        run.memory["log_probs"] = log_probs
        content = run.memory.get("content")
        if content is not None:
            banned = torch.zeros(log_probs.shape[-1], dtype=torch.bool, device=z.device)
            banned[[self.pad_id, self.eos_id]] = True
            log_probs = log_probs.masked_fill(content[..., None] & banned, float("-inf"))
        return filter_probs(log_probs, run.options["temperature"], run.options["top_p"])

    def finish(self, run: Run, z: Tensor, x0) -> tuple[Tensor, None]:
        return self.impose(run, z, 0.0), None


def filter_probs(log_probs: Tensor, temperature: float, top_p: float) -> Tensor:
    """Probabilities after temperature and nucleus (top-p) filtering, renormalised."""
    probs = (log_probs / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs
