"""The random numbers of a sampling call.

Every draw a sampler makes goes through a :class:`Noise`. Numbers are drawn on the CPU (so a
seed means the same numbers on every device) and moved to the data's device.

- :class:`Noise` draws everything from one ``torch.Generator`` shared by the batch (the
  behaviour of textdiff ≤ 0.1: a sentence depends on the batch it was generated in).
- :class:`RowNoise` gives each sample its own generator, seeded from ``(seed, index)``, so a
  sentence is the same whether it is generated alone or as one of 64.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Noise:
    """Draws from one generator for the whole batch."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def normal(self, like: Tensor) -> Tensor:
        """Standard normal numbers shaped and typed like ``like``."""
        z = torch.randn(like.shape, generator=self.generator, dtype=like.dtype)
        return z.to(like.device)

    def uniform(self, shape: tuple[int, ...], device=None) -> Tensor:
        """``U[0, 1)`` numbers of ``shape`` (the first axis is the batch), float32."""
        return torch.rand(shape, generator=self.generator).to(device)

    def categorical(self, probs: Tensor, rows: Tensor) -> Tensor:
        """One draw from each row of ``probs`` (N, V); ``rows`` (N,) names the batch row each
        distribution belongs to. Returns (N,) ids on ``probs``' device."""
        draw = torch.multinomial(probs.cpu(), 1, generator=self.generator)[:, 0]
        return draw.to(probs.device)


class RowNoise(Noise):
    """One generator per sample: sample ``i`` of a call with seed ``s`` draws from a generator
    seeded with ``s · 1_000_003 + i``, whatever batch it is in.

    Args:
        seed: the call's seed.
        start: the index of the first sample of this batch in the call.
        size: the number of samples in this batch.
    """

    def __init__(self, seed: int, start: int, size: int):
        super().__init__(None)
        self.generators = [
            torch.Generator().manual_seed((seed * 1_000_003 + start + i) % 2**63)
            for i in range(size)
        ]

    def normal(self, like: Tensor) -> Tensor:
        rows = [torch.randn(like.shape[1:], generator=g, dtype=like.dtype) for g in self.generators]
        return torch.stack(rows).to(like.device)

    def uniform(self, shape: tuple[int, ...], device=None) -> Tensor:
        rows = [torch.rand(shape[1:], generator=g) for g in self.generators]
        return torch.stack(rows).to(device)

    def categorical(self, probs: Tensor, rows: Tensor) -> Tensor:
        """As :meth:`Noise.categorical`, from each row's own generator, in float64: a float32
        draw cannot reach tokens whose probability is below its resolution (Zheng et al.,
        2024, on masked-diffusion sampling)."""
        device, out = probs.device, torch.empty(len(probs), dtype=torch.long)
        probs, rows = probs.cpu().double(), rows.cpu()
        for b in rows.unique().tolist():
            where = rows == b
            out[where] = torch.multinomial(probs[where], 1, generator=self.generators[b])[:, 0]
        return out.to(device)
