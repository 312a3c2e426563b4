"""[MASK]-absorbing diffusion on tokens (DESIGN.md §3; D3PM-absorbing, MDLM).

Notation: ``w`` the clean ids (B, L); ``z_t`` the partially masked ids; ``α(t)`` the
keep-probability, ``α(0) = 1``, ``α(1) = 0``. The denoiser sees ``H_t = [E[z_t] ; e]`` (a learned
[MASK] row in ``E``) and outputs token logits. It is not told ``t``: the number of masks carries
it (MDLM, §3.2), and it makes reusing a network output across steps where nothing changed exact.

Sampling (``ancestral``) starts from all-[MASK]; from ``t`` to ``s`` each masked position is
revealed with probability ``(α(s) − α(t)) / (1 − α(t))``, its token drawn from ``p_θ(· | z_t)``
after ``temperature`` and nucleus ``top_p`` filtering.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Denoiser, ForwardProcess, LossTerms, Run, Sampler, stratified_times
from .schedules import KeepSchedule, get_keep_schedule

T_MIN = 1e-5  # times are drawn from [T_MIN, 1]: at t → 0 nothing is masked and the weight → ∞


class MaskProcess(ForwardProcess):
    """Absorbing process: each position independently becomes ``mask_id`` with prob. ``1 − α(t)``.

    Args:
        schedule: the keep-probability ``α(t)`` (``linear``: ``1 − t``, or ``cosine``).
        mask_id: the id of the [MASK] token.
    """

    name = "mask"
    samplers: dict[str, Sampler] = {}  # filled in below the class
    default_sampler = "ancestral"
    sample_options = {"temperature": 1.0, "top_p": 1.0}
    time_conditioned = False

    def __init__(self, schedule: KeepSchedule | str = "linear", *, mask_id: int):
        self.schedule = get_keep_schedule(schedule) if isinstance(schedule, str) else schedule
        self.mask_id = mask_id

    def q_sample(
        self, ids: Tensor, t: Tensor | float, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """``z_t``: each ``w_i`` kept with probability ``α(t)``, else ``[MASK]`` (DESIGN.md §3)."""
        keep = self.schedule.alpha(t).float().to(ids.device)
        keep = keep.reshape(keep.shape + (1,) * (ids.dim() - keep.dim()))
        u = torch.rand(ids.shape, generator=generator).to(ids.device)
        return torch.where(u < keep, ids, torch.full_like(ids, self.mask_id))

    def log_probs(self, model: Denoiser, z: Tensor) -> Tensor:
        """``log p_θ(· | z_t)`` (B, L, V) in float32, with [MASK] never predicted."""
        t = torch.zeros(z.shape[0], device=z.device)  # not time-conditioned (module docstring)
        logits = model(model.embed(z), t).float()
        logits[..., self.mask_id] = float("-inf")
        return logits.log_softmax(-1)

    def _masked_nll(self, model: Denoiser, ids: Tensor, t: Tensor, generator, clean) -> tuple:
        """Per sequence: ``Σ_{i: z_t,i = MASK} −log p_θ(w_i | z_t)`` and the number of masks;
        positions where ``clean`` (B, L) is True are never masked."""
        z = self.q_sample(ids, t, generator=generator)
        masked = z == self.mask_id
        if clean is not None:  # a clean position may hold [MASK] itself: the null condition
            z, masked = torch.where(clean, ids, z), masked & ~clean
        nll = -self.log_probs(model, z).gather(-1, ids[..., None])[..., 0]  # (B, L)
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
        """The continuous-time bound as the loss (DESIGN.md §3), per token:
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
        (DESIGN.md §3) at ``t = u``: the weighted masked NLL per sequence; positions where
        ``clean`` (B, L) is True are never masked (the bound of the rest given them)."""
        t = u.clamp(min=T_MIN)
        nll, _ = self._masked_nll(model, ids, t, generator, clean)
        return {"diffusion": self.schedule.weight(t).to(ids.device) * nll.double()}

    # ------------------------------------------------------------------ sampling
    def prior(self, run: Run, shape: tuple[int, int]) -> Tensor:
        """All-[MASK] ids (B, L)."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=run.model.device)

    def impose(self, run: Run, z: Tensor, t) -> Tensor:
        """Known tokens are never masked and never revealed: they are simply in ``z``."""
        if run.known is None:
            return z
        known = run.known
        return torch.where(known.mask.to(z.device), known.ids.to(z.device), z)

    def predict(self, run: Run, z: Tensor, t, prev) -> Tensor:
        """``p_θ(· | z_t)`` (B, L, V) after ``temperature`` and ``top_p``."""
        return filter_probs(
            self.log_probs(run.model, z), run.options["temperature"], run.options["top_p"]
        )

    def finish(self, run: Run, z: Tensor, x0) -> tuple[Tensor, None]:
        return self.impose(run, z, 0.0), None


def ancestral_step(process: MaskProcess, z: Tensor, probs: Tensor, t, s, run: Run):
    """Reveal each masked position with probability ``(α(s) − α(t)) / (1 − α(t))`` and draw its
    token from ``probs`` (DESIGN.md §3); known positions stay as they are."""
    a_t, a_s = process.schedule.alpha(t).item(), process.schedule.alpha(s).item()
    reveal_p = (a_s - a_t) / (1 - a_t)
    u = run.noise.uniform(z.shape, z.device)
    reveal = (z == process.mask_id) & (u < reveal_p)
    if run.known is not None:
        reveal &= ~run.known.mask.to(z.device)
    if reveal.any():  # draw tokens of p_θ(· | z_t) only where something is revealed
        rows = reveal.nonzero()[:, 0]
        z = z.clone()
        z[reveal] = run.noise.categorical(probs[reveal], rows)
    return z, z


MaskProcess.samplers = {"ancestral": Sampler(ancestral_step)}


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
