"""Noise schedules as functions of continuous time ``t ∈ [0, 1]`` (docs/math.md §2–3).

A schedule is ``ᾱ(t)`` for the Gaussian process (the share of signal kept at time ``t``) or the
keep-probability ``α(t)`` for the absorbing process. It knows nothing of a step count: a sampler or
a bound picks the grid, and between two times ``s < t`` the Gaussian formulas use
``α_{t|s} = ᾱ(t) / ᾱ(s)``. Everything is computed in float64 and cast by the caller.

Notation: ``ᾱ`` = ``alpha_bar``; ``SNR(t) = ᾱ(t) / (1 − ᾱ(t))``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

# ᾱ is kept inside [ALPHA_BAR_MIN, ALPHA_BAR_MAX]. The upper clamp gives the latent at t = 0 a
# little noise (σ_0² = 1 − ᾱ(0) ≥ 1e-4), which is what makes q(h_0 | w) a proper Gaussian and the
# last step of the bound finite; the lower clamp keeps x0 ↔ ε conversions finite at t = 1.
ALPHA_BAR_MIN = 1e-8
ALPHA_BAR_MAX = 1.0 - 1e-4


def _as_float64(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule(ABC):
    """``ᾱ(t)`` on ``t ∈ [0, 1]``, decreasing from ≈1 (clean) to ≈0 (pure noise)."""

    name: str = ""

    @abstractmethod
    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """The unclamped formula, float64 in and out."""

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """``ᾱ(t)`` in float64, clamped to ``[ALPHA_BAR_MIN, ALPHA_BAR_MAX]``."""
        return self._alpha_bar(_as_float64(t)).clamp(ALPHA_BAR_MIN, ALPHA_BAR_MAX)

    def snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``SNR(t) = ᾱ(t) / (1 − ᾱ(t))``, float64."""
        a = self.alpha_bar(t)
        return a / (1.0 - a)

    def half_log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``λ(t) = log(√ᾱ / √(1 − ᾱ)) = ½ log SNR(t)``, float64 (DPM-Solver's time variable)."""
        a = self.alpha_bar(t)
        return 0.5 * (torch.log(a) - torch.log1p(-a))

    def time_of_half_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`half_log_snr` on ``[0, 1]`` by bisection (float64): the
        smallest ``t`` with ``λ(t) ≤ lam`` (λ is non-increasing; flat where ᾱ is clamped)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return hi

    def snr_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """``d SNR / dt`` (float64, by autograd through the formula), for the continuous bound."""
        with torch.enable_grad():
            tt = t.detach().to(torch.float64).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.snr(tt).sum(), tt)
        return grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(Schedule):
    """DDPM's linear β from ``beta_min`` to ``beta_max`` over ``T`` steps, in continuous time.

    ``ᾱ(t) = exp(−T (β_min t + (β_max − β_min) t² / 2))``: the limit of ``Π (1 − β_i)`` with
    ``β_i`` rising linearly. With the defaults ``ᾱ(1) ≈ 4.3e-5``, as DDPM's ``ᾱ_1000``.
    """

    name = "linear"

    def __init__(self, beta_min: float = 1e-4, beta_max: float = 0.02, num_steps: int = 1000):
        self.beta_min, self.beta_max, self.num_steps = beta_min, beta_max, num_steps

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        b0, b1, n = self.beta_min, self.beta_max, self.num_steps
        return torch.exp(-n * (b0 * t + 0.5 * (b1 - b0) * t**2))


class CosineSchedule(Schedule):
    """Nichol & Dhariwal (2021): ``ᾱ(t) = f(t) / f(0)``, ``f(t) = cos²((t + s)/(1 + s) · π/2)``."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        self.s = s

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self._f(t) / self._f(torch.zeros((), dtype=torch.float64))


class SqrtSchedule(Schedule):
    """Diffusion-LM (Li et al., 2022): ``ᾱ(t) = 1 − sqrt(t + s)``, ``s = 1e-4``.

    Noise rises fast at small ``t`` (``ᾱ(0) = 0.99``), which keeps rounding from being trivially
    easy for most of the chain. The formula crosses zero just before ``t = 1``; the lower clamp
    plays the role of Diffusion-LM's ``β ≤ 0.999`` clip.
    """

    name = "sqrt"

    def __init__(self, s: float = 1e-4):
        self.s = s

    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.sqrt(t + self.s)


class KeepSchedule(ABC):
    """Keep-probability ``α(t)`` of the absorbing process: ``α(0) = 1``, ``α(1) = 0``."""

    name: str = ""

    @abstractmethod
    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """``α(t)``, float64."""

    @abstractmethod
    def dalpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """``α'(t)``, float64."""

    def weight(self, t: torch.Tensor | float) -> torch.Tensor:
        """The bound's weight ``−α'(t) / (1 − α(t))`` (docs/math.md §3), float64."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearKeep(KeepSchedule):
    """``α(t) = 1 − t``; the bound's weight is ``1/t``."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - _as_float64(t)

    def dalpha(self, t):
        return -torch.ones_like(_as_float64(t))


class CosineKeep(KeepSchedule):
    """``α(t) = cos(π t / 2)``: fewer masks early, more late, than the linear schedule."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * _as_float64(t))

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * _as_float64(t))


SCHEDULES: dict[str, type[Schedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "sqrt": SqrtSchedule,
}
KEEP_SCHEDULES: dict[str, type[KeepSchedule]] = {"linear": LinearKeep, "cosine": CosineKeep}


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    return registry[name]()


def get_schedule(name: str) -> Schedule:
    """The Gaussian schedule registered under ``name`` (``linear``, ``cosine``, ``sqrt``)."""
    return _lookup(SCHEDULES, name, "schedule")


def get_keep_schedule(name: str) -> KeepSchedule:
    """The absorbing keep-schedule registered under ``name`` (``linear``, ``cosine``)."""
    return _lookup(KEEP_SCHEDULES, name, "mask schedule")
