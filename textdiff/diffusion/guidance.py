"""Conditioning on a clean part of the sequence, and classifier-free guidance.

Data-to-text by partial noising (DiffuSeq, Gong et al., 2023): a row is ``[condition ; target]``
with the condition in its first ``condition_len`` positions; the condition is never noised and
left out of the loss (``clean=`` of :meth:`textdiff.diffusion.base.ForwardProcess.loss`), so the
denoiser learns ``p(target | condition)`` and reads the condition through attention.

Classifier-free guidance (Ho & Salimans, 2022): training replaces a row's condition by the null
condition (every condition position ``[MASK]``, still clean) with probability ``p``; sampling
mixes the two predictions, ``out = out(∅) + s · (out(c) − out(∅))``. The network output is
affine in the quantity each process uses (x̂_0; ε̂, which is affine in x̂_0 for a given ``h_t``;
logits, whose log-softmax shifts by a per-position constant), so mixing outputs mixes those.
``s = 1`` is plain conditional sampling, ``s = 0`` unconditional, ``s > 1`` sharpens toward the
condition. Torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def condition_positions(batch: int, length: int, condition_len: int, device=None) -> Tensor:
    """The clean mask of the data-to-text layout: True at the first ``condition_len`` positions.
    -> (B, L) bool."""
    return (torch.arange(length, device=device) < condition_len).expand(batch, length)


def drop_conditions(
    ids: Tensor,
    condition_len: int,
    null_id: int,
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Condition dropout for classifier-free guidance: each row's condition (its first
    ``condition_len`` ids) becomes ``null_id`` everywhere with probability ``p``.
    (B, L) -> (B, L); ``ids`` is not modified. No random number is drawn when ``p = 0``."""
    if p <= 0 or condition_len == 0:
        return ids
    drop = (torch.rand(ids.shape[0], generator=generator) < p).to(ids.device)  # (B,)
    out = ids.clone()
    out[:, :condition_len] = torch.where(drop[:, None], null_id, ids[:, :condition_len])
    return out


class GuidedDenoiser:
    """A denoiser that returns the classifier-free-guided output
    ``out(∅) + scale · (out(c) − out(∅))`` (module docstring).

    The conditional and the null inputs go through the network in one batched call of ``2B``
    rows. The null input is the given one with the word part at ``where`` (B, L) replaced by
    ``E[null_ids]``. Everything else (``embed``, ``logits``, ``device``, ...) is the wrapped
    model's.

    Args:
        model: the denoiser (see :class:`textdiff.diffusion.base.Denoiser`).
        null_ids: (B, L) ids of the null condition (read at ``where`` only).
        where: (B, L) bool, the condition positions.
        scale: the guidance scale ``s``.
    """

    def __init__(self, model, null_ids: Tensor, where: Tensor, scale: float):
        self.model, self.scale = model, float(scale)
        self.null_ids, self.where = null_ids, where

    def __getattr__(self, name: str):
        if name == "model":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, x_t: Tensor, t: Tensor, x0_prev: Tensor | None = None, **kwargs) -> Tensor:
        B = x_t.shape[0]
        null = self.model.embed(self.null_ids.to(x_t.device)).to(x_t.dtype)  # (B, L, d)
        x_null = torch.where(self.where.to(x_t.device)[..., None], null, x_t)
        if x0_prev is not None:
            kwargs["x0_prev"] = torch.cat([x0_prev, x0_prev])
        out = self.model(torch.cat([x_t, x_null]), torch.cat([t, t]), **kwargs).float()
        cond, uncond = out[:B], out[B:]  # (B, L, ·) each
        return uncond + self.scale * (cond - uncond)
