"""The steps of [MASK]-absorbing sampling (docs/math.md §3).

Every step goes from ``z_t`` to ``z_s`` given ``p_θ(· | z_t)`` (after temperature and top-p) and
reveals some masked positions, each with a token drawn from that distribution:

- ``ancestral``: each masked position is revealed with probability
  ``(α(s) − α(t)) / (1 − α(t))`` — the exact reverse process of the forward one;
- ``confidence`` (MaskGIT, Chang et al., 2022): the ``k`` most confident masked positions, ``k``
  set so that the share still masked follows the schedule, ``1 − α(s)``; the confidence of a
  position is the log-probability of its drawn token, plus Gumbel noise scaled by
  ``c = confidence_temperature · t`` (annealed to 0): by the Gumbel-max trick the first
  position revealed is ``i`` with probability ``p_i^(1/c) / Σ_j p_j^(1/c)``, plain confidence
  order as ``c → 0`` and a uniform order as ``c → ∞``;
- ``threshold`` (Fast-dLLM, Wu et al., 2025): every masked position whose drawn token has
  probability above ``threshold``, and at least the most confident one; it stops as soon as
  nothing is masked, so ``steps`` is the most network calls it makes.

Options every mask sampler takes:

- ``length_first``: the first network call (from all-[MASK]) places the sentence's [EOS] at a
  position drawn from the model's own distribution of where [EOS] falls,
  ``p(i) ∝ p_θ(w_i = [EOS] | all masked)`` (exactly the model's length distribution, as there
  is one [EOS] per sentence), with [PAD] after it; the positions before it can then be neither
  [PAD] nor [EOS]. Confidence ordering otherwise reveals [PAD] and [EOS] first — they are the
  most confident predictions — and cuts sentences short. ``length_temperature`` τ < 1 draws
  from ``p(i)^(1/τ)`` instead, nearer the mode: a length from the distribution's tail leaves
  positions the content does not fill, and the model fills them by repeating words.
- ``remask_steps`` (ReMDM, Wang et al., 2025): after the last step, that many extra network
  calls, each first masking again the ``remask_fraction`` of the revealed positions with the
  lowest confidence (the probability their token had when revealed) and then revealing them.

Tokens are drawn with the run's noise, per sample (in float64 for per-sample seeding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .base import Run, Sampler, inside_sentence, place_length


def _masked(process, z: Tensor, run: Run) -> Tensor:
    return (z == process.mask_id) & ~run.memory["held"]


def _draw(process, z: Tensor, probs: Tensor, where: Tensor, run: Run) -> tuple[Tensor, Tensor]:
    """Tokens drawn from ``probs`` at ``where`` (B, L) and their log-probabilities (float64);
    elsewhere ``z`` and −inf."""
    tokens, logp = z.clone(), torch.full(z.shape, -math.inf, dtype=torch.float64)
    if where.any():
        rows = where.nonzero()[:, 0]
        drawn = run.noise.categorical(probs[where], rows)
        tokens[where] = drawn
        picked = probs[where].gather(-1, drawn[:, None])[:, 0].double().cpu()
        logp[where.cpu()] = picked.clamp(min=1e-300).log()
    return tokens, logp


def _reveal(process, z: Tensor, tokens: Tensor, logp: Tensor, reveal: Tensor, run: Run) -> Tensor:
    z = torch.where(reveal, tokens, z)
    confidence = run.memory["confidence"]
    confidence[reveal.cpu()] = logp[reveal.cpu()]
    return z


def ancestral_step(process, z: Tensor, probs: Tensor, t, s, run: Run):
    """Reveal each masked position with probability ``(α(s) − α(t)) / (1 − α(t))`` and draw its
    token from ``probs`` (docs/math.md §3)."""
    a_t, a_s = process.schedule.alpha(t).item(), process.schedule.alpha(s).item()
    reveal_p = 1.0 if s <= 0 else (a_s - a_t) / (1 - a_t)
    u = run.noise.uniform(z.shape, z.device)
    reveal = _masked(process, z, run) & (u < reveal_p)
    if reveal.any():  # draw tokens of p_θ(· | z_t) only where something is revealed
        tokens, logp = _draw(process, z, probs, reveal, run)
        z = _reveal(process, z, tokens, logp, reveal, run)
    return z, z


def confidence_step(process, z: Tensor, probs: Tensor, t, s, run: Run):
    """Reveal the ``k`` most confident masked positions of each row (module docstring), ``k`` so
    that ``round(free · (1 − α(s)))`` stay masked (all are revealed at ``s = 0``)."""
    masked = _masked(process, z, run)
    free = (~run.memory["held"]).sum(1)  # (B,) positions the sampler fills
    still = (free.double() * (1 - process.schedule.alpha(s).item())).round().long()
    k = (masked.sum(1) - still).clamp(min=0)
    k = torch.where(masked.any(1), k.clamp(min=1), k)  # every call reveals at least one
    tokens, logp = _draw(process, z, probs, masked, run)
    score = logp.to(z.device)
    scale = run.options["confidence_temperature"] * float(t)
    if scale > 0:
        u = run.noise.uniform(z.shape, z.device).double().clamp(1e-12, 1 - 1e-12)
        score = score + scale * -torch.log(-torch.log(u))
    rank = score.argsort(1, descending=True).argsort(1)  # 0 for the most confident
    reveal = masked & (rank < k[:, None])
    z = _reveal(process, z, tokens, logp, reveal, run)
    return z, z


def threshold_step(process, z: Tensor, probs: Tensor, t, s, run: Run):
    """Reveal every masked position whose drawn token has probability above ``threshold``, at
    least the most confident one per row, and everything at the last step."""
    masked = _masked(process, z, run)
    tokens, logp = _draw(process, z, probs, masked, run)
    logp = logp.to(z.device)
    best = logp.argmax(1, keepdim=True)
    top = torch.zeros_like(masked).scatter(1, best, True)
    reveal = masked & ((logp > math.log(run.options["threshold"])) | top)
    if s <= 0:
        reveal = masked
    z = _reveal(process, z, tokens, logp.cpu(), reveal, run)
    return z, z


def length_step(process, z: Tensor, probs: Tensor, t, s, run: Run):
    """Place each row's [EOS] (:func:`~textdiff.diffusion.base.place_length`) from
    ``p_θ(w_i = [EOS] | z)`` (raw probabilities, before temperature)."""
    memory = run.memory
    p_eos = memory["log_probs"][..., process.eos_id].double().exp()
    condition = run.known.clean if run.known is not None else None
    place_length(
        process,
        p_eos,
        memory["held"],
        memory["held_ids"],
        run.noise,
        condition,
        run.options["length_temperature"],
    )
    memory["content"] = inside_sentence(process, memory["held"], memory["held_ids"], condition)
    z = torch.where(memory["held"], memory["held_ids"], z)
    return z, z


def remask(process, z: Tensor, run: Run) -> Tensor:
    """Mask again the ``remask_fraction`` of each row's free positions with the lowest
    confidence (ReMDM)."""
    free = ~run.memory["held"]
    k = (free.sum(1).double() * run.options["remask_fraction"]).ceil().long().clamp(min=1)
    conf = run.memory["confidence"].to(z.device).masked_fill(~free, math.inf)
    rank = conf.argsort(1).argsort(1)  # 0 for the least confident
    again = free & (rank < k[:, None])
    return torch.where(again, process.mask_id, z)


def _then(step, remask_after: bool, process, z, probs, t, s, run: Run):
    """``step``; then, once nothing is masked, mark the run finished and (``remask_after``)
    mask the least confident positions again for a remasking round."""
    z, _ = step(process, z, probs, t, s, run)
    if not _masked(process, z, run).any():
        run.memory["finished"] = True
        if remask_after:
            z = remask(process, z, run)
    return z, z


@dataclass(frozen=True)
class MaskSampler(Sampler):
    """A mask sampler: its steps on the grid (with ``early_stop``, ending once nothing is
    masked), framed by the options every mask sampler takes (``length_first``,
    ``remask_steps``; module docstring)."""

    early_stop: bool = True

    def plan(self, process, steps: int, run: Run):
        if run.options["length_first"]:
            yield 1.0, 1.0, length_step
        rounds = run.options["remask_steps"]
        grid = self.grid(process, steps, run.options)
        for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
            remask_after = rounds > 0 and (self.early_stop or i == len(grid) - 2)
            yield t, s, partial(_then, self.step, remask_after)
            if self.early_stop and run.memory.get("finished"):
                break
        for j in range(rounds):
            yield 0.0, 0.0, partial(_then, ancestral_step, j < rounds - 1)


_COMMON = {
    "length_first": False,
    "length_temperature": 1.0,
    "remask_steps": 0,
    "remask_fraction": 0.1,
}

MASK_SAMPLERS: dict[str, Sampler] = {
    "ancestral": MaskSampler(ancestral_step, options=dict(_COMMON), early_stop=False),
    "confidence": MaskSampler(confidence_step, options={**_COMMON, "confidence_temperature": 0.0}),
    "threshold": MaskSampler(threshold_step, options={**_COMMON, "threshold": 0.9}),
}
