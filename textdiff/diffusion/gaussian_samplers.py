"""Gaussian sampling (docs/math.md §2, "Sampling"): the process's sampling primitives
(:class:`GaussianSampling`) and its steps.

Each step goes from time ``t`` to ``s < t`` given the latent ``x_t`` and the network's ``x̂_0``
at ``t`` (:meth:`textdiff.diffusion.gaussian.GaussianProcess.predict`), and returns the new
latent and that ``x̂_0``:

- ``ddpm``: ancestral, ``h_s ~ q(h_s | h_t, x̂_0) = N(μ̃, β̃ I)``;
- ``ddim``: ``h_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z`` with ``σ² = η² β̃`` (Song et al.,
  2021, eq. 12; ``η = 0`` is deterministic, ``η = 1`` is DDPM);
- ``pc``: a ``ddpm`` predictor, then ``corrector_steps`` annealed-Langevin corrector steps at
  ``s`` (:func:`langevin_step`);
- ``dpm-solver``: DPM-Solver++(2M) (Lu et al., 2022), a second-order multistep solver of the
  probability-flow ODE in x̂_0 form, on a grid uniform in ``λ = ½ log SNR``
  (:func:`dpm_solver_step`); ``dpm-solver-sde`` is its stochastic variant (SDE-DPM-Solver++(2M),
  whose first-order step is exactly ``ddpm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Known, Run, Sampler, inside_sentence, place_length, time_grid


class GaussianSampling:
    """The sampling primitives of :class:`~textdiff.diffusion.gaussian.GaussianProcess` (it
    inherits them): the prior draw, known tokens, the network's x̂_0, rounding."""

    def prior(self, run: Run, shape: tuple[int, int]) -> Tensor:
        """``h_1 ~ N(0, I)`` (B, L, d); the embeddings of known tokens are looked up once."""
        if run.options.get("clamp") and run.rounder is None:
            raise ValueError("clamp=True needs a rounder")
        model = run.model
        if run.known is not None:
            run.memory["x0_known"] = model.embed(run.known.ids.to(model.device)).float()
            ban_specials(self, run, run.known, len(model.word_table()))
        return run.noise.normal(torch.empty(*shape, model.embed_dim)).to(model.device)

    def impose(self, run: Run, x: Tensor, t) -> Tensor:
        """Known tokens ``w``: the latent there becomes a fresh draw of ``q(h_t | E[w])``
        (docs/math.md §2, "Forward"), or ``E[w]`` itself where ``known.clean``."""
        if run.known is None:
            return x
        x0_known, device = run.memory["x0_known"], x.device
        x_known, _ = self.q_sample(x0_known, t, run.noise.normal(x))
        if run.known.clean is not None:
            x_known = torch.where(run.known.clean.to(device)[..., None], x0_known, x_known)
        return torch.where(run.known.mask.to(device)[..., None], x_known, x)

    def predict(self, run: Run, x: Tensor, t, prev: Tensor | None) -> Tensor:
        """``x̂_0`` at ``t`` (:meth:`denoise`, with ``temperature``; a self-conditioned model
        reads ``prev``, zeros at the first step), snapped to its nearest word row with
        ``clamp``, and ``E[w]`` at known positions — so the trajectory leads to them. After a
        length was placed, the posterior rules out [PAD] and [EOS] before it."""
        if not getattr(run.model, "self_conditioning", False):
            prev = None
        elif prev is None:
            prev = torch.zeros_like(x)
        t_b = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        options = dict(banned=run.memory.get("banned"), words=run.memory.get("length_pending"))
        x0_hat = self.denoise(run.model, x, t_b, prev, run.options["temperature"], **options)
        if options["words"]:
            x0_hat, run.memory["words"] = x0_hat
        if run.options["clamp"]:
            x0_hat = run.rounder.clamp(x0_hat)
        if run.known is not None:
            held = run.known.mask.to(x.device)[..., None]
            x0_hat = torch.where(held, run.memory["x0_known"], x0_hat)
        return x0_hat

    def finish(self, run: Run, x: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The last ``x̂_0`` rounded by ``run.rounder`` (if any); known tokens where known."""
        if run.rounder is None:
            return None, x0
        ids = run.rounder.round(x0)
        if run.known is not None:
            ids = torch.where(run.known.mask.to(ids.device), run.known.ids.to(ids.device), ids)
        return ids, x0


def length_step(process, x: Tensor, x0_hat: Tensor, t, s, run: Run) -> tuple[Tensor, Tensor]:
    """Place each row's [EOS] (:func:`~textdiff.diffusion.base.place_length`) from the word
    probabilities of the first call (``t = 1``, raw): the known tokens gain [EOS] and the
    [PAD] after it, and the positions before it lose [PAD] and [EOS] from their posterior. The
    latent does not move."""
    B, L, _ = x.shape
    known, device = run.known, x.device
    empty = torch.zeros(B, L, dtype=torch.bool, device=device)
    held = known.mask.clone().to(device) if known else empty
    ids = known.ids.clone().to(device) if known else torch.zeros_like(empty, dtype=torch.long)
    words = run.memory.pop("words")
    run.memory["length_pending"] = False
    clean = known.clean if known is not None else None
    eos = words[..., process.eos_id]
    place_length(process, eos, held, ids, run.noise, clean, run.options["length_temperature"])
    run.known = Known(ids, held, clean)
    run.memory["x0_known"] = run.model.embed(ids.to(run.model.device)).float()
    ban_specials(process, run, run.known, words.shape[-1])
    return x, torch.where(held[..., None], run.memory["x0_known"], x0_hat)


def ban_specials(process, run: Run, known: Known, vocab: int) -> None:
    """Rule [PAD] and [EOS] out of the posterior at the positions inside a held sentence
    (:func:`~textdiff.diffusion.base.inside_sentence`), in ``run.memory["banned"]``."""
    inside = inside_sentence(process, known.mask, known.ids, known.clean)
    if inside is None:
        run.memory.pop("banned", None)
        return
    ban = torch.zeros(vocab, dtype=torch.bool, device=inside.device)
    ban[[process.pad_id, process.eos_id]] = True
    run.memory["banned"] = (inside[..., None] & ban).to(run.model.device)


@dataclass(frozen=True)
class GaussianSampler(Sampler):
    """A Gaussian sampler whose plan may start with a length placed first (option
    ``length_first``: one network call at ``t = 1``, :func:`length_step`)."""

    def plan(self, process, steps: int, run: Run):
        if run.options["length_first"]:
            run.memory["length_pending"] = True
            yield 1.0, 1.0, length_step
        yield from super().plan(process, steps, run)


def ddpm_step(process, x_t: Tensor, x0_hat: Tensor, t, s, run: Run) -> tuple[Tensor, Tensor]:
    """Ancestral step ``h_s = μ̃(h_t, x̂_0) + √β̃ z`` (docs/math.md §2, "Posterior")."""
    mean, var = process.posterior(x_t, x0_hat, t, s)
    return mean + var.sqrt() * run.noise.normal(x_t), x0_hat


def ddim_step(process, x_t: Tensor, x0_hat: Tensor, t, s, run: Run) -> tuple[Tensor, Tensor]:
    """DDIM step (module docstring) with ``eta`` from the run's options; ``eta = 0`` draws no
    noise."""
    eta = run.options["eta"]
    eps = process.eps_from_x0(x_t, x0_hat, t)
    a_s = process.alpha_bar(s).item()
    x_s = a_s**0.5 * x0_hat
    if eta > 0:
        _, var = process.posterior(x_t, x0_hat, t, s)
        sigma2 = eta**2 * var
        noise = sigma2.sqrt() * run.noise.normal(x_t)
        return x_s + (1 - a_s - sigma2).clamp(min=0).sqrt() * eps + noise, x0_hat
    return x_s + (1 - a_s) ** 0.5 * eps, x0_hat


def langevin_step(
    process, x: Tensor, x0_hat: Tensor, t, s, run: Run, *, after
) -> tuple[Tensor, Tensor]:
    """One annealed-Langevin corrector step at time ``s`` (``t = s``; ``after`` is the time the
    predictor came from), driven by the score ``ŝ = −ε̂ / √(1 − ᾱ_s)`` of the network's ``x̂_0``
    at ``s``: ``x ← x + δ ŝ + √(2δ) z`` with ``δ = 2 α_{after|s} (r ‖z‖ / ‖ŝ‖)²``, ``r`` the
    option ``snr`` and the norms averaged over the batch (Song et al., 2021b, Alg. 5)."""
    a_ts = (process.alpha_bar(after) / process.alpha_bar(s)).item()
    score = process.score_from_eps(process.eps_from_x0(x, x0_hat, s), s)  # (B, L, d)
    z = run.noise.normal(x)
    ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp(min=1e-12)
    step = 2 * a_ts * (run.options["snr"] * ratio) ** 2
    return x + step * score + (2 * step).sqrt() * z, x0_hat


def half_log_snr_grid(process, steps: int, options: dict) -> Tensor:
    """``steps`` steps from ``t = 1`` to ``0`` uniform in ``λ = ½ log SNR`` (option
    ``grid: logsnr``), or uniform in time (``grid: time``)."""
    if options.get("grid", "logsnr") == "time":
        return time_grid(steps)
    schedule = process.schedule
    ends = schedule.half_log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64)
    t = schedule.time_of_half_log_snr(lam)
    t[0], t[-1] = 1.0, 0.0
    return t


def dpm_solver_step(process, x_t: Tensor, x0_hat: Tensor, t, s, run: Run):
    """One DPM-Solver++(2M) step ``t → s`` (Lu et al., 2022, Alg. 2), ``h = λ_s − λ_t``:

    ``x_s = (σ_s / σ_t) x_t + α_s (1 − e^{−h}) D`` (ODE), or with ``sde``
    ``x_s = (σ_s / σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) D + σ_s √(1 − e^{−2h}) z``,
    where ``α = √ᾱ``, ``σ = √(1 − ᾱ)`` and ``D = x̂_0`` at the first step (and with
    ``order: 1``), else ``D = (1 + 1/(2r)) x̂_0 − 1/(2r) x̂_0'`` with ``x̂_0'`` the previous
    step's estimate and ``r = h' / h`` the ratio of the steps."""
    sched = process.schedule
    lam_t, lam_s = sched.half_log_snr(t), sched.half_log_snr(s)
    a_s, a_t = process.alpha_bar(s), process.alpha_bar(t)
    alpha_s, sigma_s, sigma_t = a_s.sqrt().item(), (1 - a_s).sqrt().item(), (1 - a_t).sqrt().item()
    h = (lam_s - lam_t).item()
    D, previous = x0_hat, run.memory.get("dpm_previous")
    if previous is not None and run.options["order"] == 2:
        x0_prev, h_prev = previous
        r = h_prev / h
        D = (1 + 0.5 / r) * x0_hat - (0.5 / r) * x0_prev
    run.memory["dpm_previous"] = (x0_hat, h)
    if not run.options["sde"]:
        return sigma_s / sigma_t * x_t - alpha_s * math.expm1(-h) * D, x0_hat
    noise = sigma_s * math.sqrt(-math.expm1(-2 * h)) * run.noise.normal(x_t)
    x_s = sigma_s / sigma_t * math.exp(-h) * x_t - alpha_s * math.expm1(-2 * h) * D
    return x_s + noise, x0_hat


_LENGTH = {"length_first": False, "length_temperature": 1.0}
GAUSSIAN_SAMPLERS: dict[str, Sampler] = {
    "ddpm": GaussianSampler(ddpm_step, options=_LENGTH),
    "ddim": GaussianSampler(ddim_step, options={**_LENGTH, "eta": 0.0}),
    "pc": GaussianSampler(
        ddpm_step, corrector=langevin_step, options={**_LENGTH, "corrector_steps": 1, "snr": 0.1}
    ),
    "dpm-solver": GaussianSampler(
        dpm_solver_step,
        half_log_snr_grid,
        options={**_LENGTH, "order": 2, "sde": False, "grid": "logsnr"},
    ),
    "dpm-solver-sde": GaussianSampler(
        dpm_solver_step,
        half_log_snr_grid,
        options={**_LENGTH, "order": 2, "sde": True, "grid": "logsnr"},
    ),
}
