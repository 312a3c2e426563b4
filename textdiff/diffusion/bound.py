"""The one estimator of the NLL bound, shared by every process.

Each process writes its bound as exact terms (:meth:`~textdiff.diffusion.base.ForwardProcess.
bound_constant`, e.g. the prior KL) plus terms that are an expectation over time
(:meth:`~textdiff.diffusion.base.ForwardProcess.bound_terms`, one replicate at given uniforms
``u``). The estimator draws ``num_t`` stratified uniforms per sequence,
``u_k = (k + U_k) / num_t`` with ``U_k ~ U[0, 1)``, so each replicate is unbiased and together
they cover the time axis evenly; it reports their mean per term and the variance of the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BoundTerms, Denoiser, ForwardProcess


def stratified_bound(
    process: ForwardProcess,
    model: Denoiser,
    ids: Tensor,
    *,
    num_t: int = 8,
    generator: torch.Generator | None = None,
    clean: Tensor | None = None,
) -> BoundTerms:
    """``−log p(ids) ≤ Σ exact terms + E_u[Σ per-time terms]`` per sequence, in nats.

    ``variance`` is the sample variance of the ``num_t`` replicates divided by ``num_t`` (an
    overestimate for stratified samples; NaN for one replicate, 0 for an exact process).
    """
    if num_t < 1:
        raise ValueError(f"num_t must be a positive integer, got {num_t}")
    B = ids.shape[0]
    exact = process.exact_bound
    num_t = 1 if exact else num_t
    constant = {k: v.double() for k, v in process.bound_constant(model, ids, clean).items()}
    offsets = torch.rand(B, num_t, generator=generator, dtype=torch.float64)
    u = (torch.arange(num_t, dtype=torch.float64) + offsets) / num_t  # (B, K)
    reps: dict[str, list[Tensor]] = {}
    for k in range(num_t):
        terms = process.bound_terms(model, ids, u[:, k], generator=generator, clean=clean)
        for name, value in terms.items():
            reps.setdefault(name, []).append(value.double())
    stacked = {name: torch.stack(v, 1) for name, v in reps.items()}  # each (B, K)
    per_rep = sum(stacked.values())
    by_time = None
    if not exact:  # replicate k: stratum k's share of the sum; t ≈ 0 costs in stratum 0
        names = [n for n in process.low_noise_terms if n in stacked]
        low = sum((stacked[n] for n in names), torch.zeros_like(per_rep))  # (B, K)
        by_time = (per_rep - low) / num_t
        by_time[:, 0] += low.mean(1)
    for value in constant.values():
        per_rep = value[:, None].to(per_rep.device) + per_rep
    terms = {**constant, **{name: v.mean(1) for name, v in stacked.items()}}
    if exact:
        var = torch.zeros(B, dtype=torch.float64, device=ids.device)
    elif num_t > 1:
        var = per_rep.var(1) / num_t
    else:
        var = torch.full((B,), float("nan"), dtype=torch.float64, device=ids.device)
    return BoundTerms(per_rep.mean(1), terms, num_t, variance=var, by_time=by_time)
