"""Samplers of the Gaussian process (DESIGN.md §2, "Sampling").

Each step goes from time ``t`` to ``s < t`` given the current ``x_t`` and the network's ``x̂_0``:

- ``ddpm``: ancestral, ``h_s ~ q(h_s | h_t, x̂_0) = N(μ̃, β̃ I)``;
- ``ddim``: ``h_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z`` with ``σ² = η² β̃`` (Song et al.,
  2021, eq. 12; ``η = 0`` is deterministic, ``η = 1`` is DDPM);
- ``pc``: a DDPM predictor followed by ``corrector_steps`` annealed-Langevin corrector steps at
  ``s`` driven by the score ``ŝ = −ε̂ / √(1 − ᾱ_s)``, step ``2 α_{t|s} (r ‖z‖ / ‖ŝ‖)²`` with
  ``r = snr`` (Song et al., 2021b, Alg. 5).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from .process import Denoiser, Known, Progress, SampleOutput, time_grid


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``; drawn on the CPU so a seed means the same
    numbers on every device."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def ddpm_step(process, x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, *, generator=None):
    """Ancestral step ``h_s = μ̃(h_t, x̂_0) + √β̃ z`` (DESIGN.md §2, "Posterior")."""
    mean, var = process.posterior(x_t, x0_hat, t, s)
    return mean + var.sqrt() * _noise(x_t, generator)


def ddim_step(process, x_t, x0_hat, t, s, *, generator=None, eta: float = 0.0):
    """DDIM step (module docstring); ``eta=0`` needs no noise."""
    eps = process.eps_from_x0(x_t, x0_hat, t)
    a_s = process.alpha_bar(s).item()
    x_s = a_s**0.5 * x0_hat
    if eta > 0:
        _, var = process.posterior(x_t, x0_hat, t, s)
        sigma2 = eta**2 * var
        return (
            x_s
            + (1 - a_s - sigma2).clamp(min=0).sqrt() * eps
            + sigma2.sqrt() * _noise(x_t, generator)
        )
    return x_s + (1 - a_s) ** 0.5 * eps


GAUSSIAN_SAMPLERS: dict[str, Callable] = {"ddpm": ddpm_step, "ddim": ddim_step, "pc": ddpm_step}


def langevin_correct(
    process,
    denoise: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t,
    s,
    *,
    steps: int,
    snr: float,
    generator=None,
) -> Tensor:
    """Annealed-Langevin corrector at time ``s`` (module docstring); one network call a step."""
    a_ts = (process.alpha_bar(t) / process.alpha_bar(s)).item()
    for _ in range(steps):
        eps = process.eps_from_x0(x, denoise(x, s), s)
        score = process.score_from_eps(eps, s)  # (B, L, d)
        z = _noise(x, generator)
        ratio = z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp(min=1e-12)
        step = (2 * a_ts * (snr * ratio) ** 2)[:, None, None]
        x = x + step * score + (2 * step).sqrt() * z
    return x


@torch.no_grad()
def gaussian_sample(
    process,
    model: Denoiser,
    shape: tuple[int, int],
    *,
    steps: int,
    sampler: str = "ddpm",
    rounder=None,
    clamp: bool = False,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    return_trajectory: bool = False,
    eta: float = 0.0,
    corrector_steps: int = 1,
    snr: float = 0.1,
    constrain: Callable[[Tensor, Tensor], Tensor] | None = None,
    known: Known | None = None,
    temperature: float = 1.0,
) -> SampleOutput:
    """Draw ``shape = (B, L)`` sentences: ``h_1 ~ N(0, I)``, then ``steps`` steps of ``sampler``
    on an even grid from 1 to 0, snapping each ``x̂_0`` to the word table when ``clamp``, and
    rounding the last ``x̂_0`` with ``rounder``. ``temperature`` sharpens (< 1) the posterior
    over words of a ``prediction="posterior"`` model at every step
    (:meth:`textdiff.gaussian.GaussianProcess.predict_x0`). ``constrain(x_t, t)``, if given, is
    applied to the latent before every network call.

    ``known`` tokens ``w`` are held fixed (infilling; conditions): before every network call the
    latent at their positions becomes a fresh draw of ``q(h_t | E[w])`` (DESIGN.md §2, "Forward"),
    or ``E[w]`` itself where ``known.clean``; ``x̂_0`` there is set to ``E[w]``, so the trajectory
    is the one that leads to them; and the returned ids there are ``w``.
    """
    sampler = "ddpm" if sampler == "auto" else sampler
    if sampler not in GAUSSIAN_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(GAUSSIAN_SAMPLERS)}")
    if clamp and rounder is None:
        raise ValueError("clamp=True needs a rounder")
    B, L = shape
    device = model.device
    nfe = 0

    self_conditioned = getattr(model, "self_conditioning", False)
    prev: Tensor | None = (
        torch.zeros(B, L, model.embed_dim, device=device) if (self_conditioned) else None
    )

    if known is not None:
        held = known.mask.to(device)[..., None]  # (B, L, 1)
        x0_known = model.embed(known.ids.to(device)).float()  # (B, L, d): E[w]

    def impose(x: Tensor, t: Tensor) -> Tensor:
        x_known, _ = process.q_sample(x0_known, t, _noise(x, generator))
        if known.clean is not None:
            x_known = torch.where(known.clean.to(device)[..., None], x0_known, x_known)
        return torch.where(held, x_known, x)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe, prev
        nfe += 1
        if constrain is not None:
            x = constrain(x, t)
        if known is not None:
            x = impose(x, t)
        x0_hat = process.denoise(model, x, t.expand(B), x0_prev=prev, temperature=temperature)
        x0_hat = rounder.clamp(x0_hat) if clamp else x0_hat
        if known is not None:
            x0_hat = torch.where(held, x0_known, x0_hat)
        prev = x0_hat if self_conditioned else None  # the next step reads this estimate
        return x0_hat

    step = partial(ddim_step, eta=eta) if sampler == "ddim" else GAUSSIAN_SAMPLERS[sampler]
    x = torch.randn(B, L, model.embed_dim, generator=generator).to(device)
    grid = time_grid(steps)
    trajectory: list[Tensor] | None = [] if return_trajectory else None
    pairs = list(zip(grid[:-1], grid[1:], strict=True))
    for t, s in progress(pairs) if progress is not None else pairs:
        x0_hat = denoise(x, t)
        if trajectory is not None:
            trajectory.append(x0_hat.cpu())
        x = step(process, x, x0_hat, t, s, generator=generator)
        if sampler == "pc" and s > 0:
            x = langevin_correct(
                process, denoise, x, t, s, steps=corrector_steps, snr=snr, generator=generator
            )
    ids = rounder.round(x0_hat) if rounder is not None else None
    if ids is not None and known is not None:
        ids = torch.where(known.mask.to(ids.device), known.ids.to(ids.device), ids)
    return SampleOutput(ids=ids, x0=x0_hat, trajectory=trajectory, nfe=nfe)
