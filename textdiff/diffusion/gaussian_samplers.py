"""The steps of Gaussian sampling (DESIGN.md §2, "Sampling").

Each step goes from time ``t`` to ``s < t`` given the latent ``x_t`` and the network's ``x̂_0``
at ``t`` (:meth:`textdiff.diffusion.gaussian.GaussianProcess.predict`), and returns the new
latent and that ``x̂_0``:

- ``ddpm``: ancestral, ``h_s ~ q(h_s | h_t, x̂_0) = N(μ̃, β̃ I)``;
- ``ddim``: ``h_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z`` with ``σ² = η² β̃`` (Song et al.,
  2021, eq. 12; ``η = 0`` is deterministic, ``η = 1`` is DDPM);
- ``pc``: a ``ddpm`` predictor, then ``corrector_steps`` annealed-Langevin corrector steps at
  ``s`` (:func:`langevin_step`).
"""

from __future__ import annotations

from torch import Tensor

from .base import Run, Sampler


def ddpm_step(process, x_t: Tensor, x0_hat: Tensor, t, s, run: Run) -> tuple[Tensor, Tensor]:
    """Ancestral step ``h_s = μ̃(h_t, x̂_0) + √β̃ z`` (DESIGN.md §2, "Posterior")."""
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


GAUSSIAN_SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm_step),
    "ddim": Sampler(ddim_step, options={"eta": 0.0}),
    "pc": Sampler(ddpm_step, corrector=langevin_step, options={"corrector_steps": 1, "snr": 0.1}),
}
