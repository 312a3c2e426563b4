"""The sampling loop: one loop for every process and sampler.

From the process's prior, each entry ``(t, s, step)`` of the sampler's plan holds the known
tokens (:meth:`~textdiff.diffusion.base.ForwardProcess.impose`), calls the network once
(:meth:`~textdiff.diffusion.base.ForwardProcess.predict`) — or, for a process whose network is
not told ``t``, reuses the last output when the input has not changed — and takes the step
``t → s``. The step's clean estimate is fed back to the next call (self-conditioning) and
recorded in the trajectory. The process turns the final state into token ids.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ForwardProcess, Progress, Run, SampleOutput
from .noise import Noise

NEUTRAL = {"clamp": False, "temperature": 1.0, "top_p": 1.0}
"""Prediction options at values that change nothing; a process without them ignores these."""


@torch.no_grad()
def sample(
    process: ForwardProcess,
    model: Any,
    shape: tuple[int, int],
    *,
    steps: int,
    sampler: str = "auto",
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
    known=None,
    rounder=None,
    progress: Progress | None = None,
    return_trajectory: bool = False,
    cache: bool = True,
    guidance=None,
    **options,
) -> SampleOutput:
    """Draw ``shape = (B, L)`` token ids in ``steps`` steps of ``sampler`` (module docstring):
    random numbers from ``noise`` (default: one ``generator`` for the batch), ``known`` tokens
    held, ``rounder`` mapping embeddings to tokens, ``guidance`` refining every step
    (:mod:`textdiff.diffusion.control`), ``options`` checked by :func:`resolve`."""
    chosen, options = resolve(process, sampler, options, guidance)
    run = Run(model, noise or Noise(generator), known, rounder, options, guidance=guidance)
    x, x0, seen, out = process.prior(run, shape), None, None, None
    trajectory, nfe, saved = [], 0, 0
    plan = chosen.plan(process, steps, run)
    for t, s, step in progress(plan) if progress is not None else plan:
        x = process.impose(run, x, t)
        if cache and not process.time_conditioned and seen is not None and torch.equal(x, seen):
            saved += 1
        else:
            out, seen, nfe = process.predict(run, x, t, x0), x, nfe + 1
        x, x0 = run.step(step, process, x, out, t, s)
        if return_trajectory:
            trajectory.append(x0.cpu())
    ids, last_x0 = process.finish(run, x, x0)
    kept = trajectory if return_trajectory else None
    return SampleOutput(ids, last_x0, kept, nfe, {"nfe_saved": float(saved)})


def resolve(process: ForwardProcess, name: str, options: dict, guidance=None) -> tuple:
    """The registered sampler ``name`` (``auto``: the process's default) and its options with
    defaults filled in. Options of no sampler of this process are refused, unless they are at
    a value that changes nothing (:data:`NEUTRAL`); so is guidance of a process without it."""
    if guidance is not None and not process.guidable:
        raise ValueError(f"gradient guidance needs a continuous latent, not {process.name} noise")
    name = process.default_sampler if name in ("auto", None) else name
    if name not in process.samplers:
        raise ValueError(
            f"unknown sampler {name!r} for {process.name} noise; choose one of "
            f"{sorted(process.samplers)}"
        )
    chosen = process.samplers[name]
    allowed = {**chosen.options, **process.sample_options}
    for key, value in options.items():
        if key not in allowed and not (key in NEUTRAL and value == NEUTRAL[key]):
            raise ValueError(
                f"{key} does not apply to the {name!r} sampler of {process.name} noise; "
                f"its options: {sorted(allowed) or 'none'}"
            )
    return chosen, {**allowed, **{k: v for k, v in options.items() if k in allowed}}
