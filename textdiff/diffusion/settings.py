"""The settings of a forward process and of sampling, saved with every model.

Both are typed dataclasses (:mod:`textdiff.schema`): the YAML sections ``process:`` and
``sample:`` of an experiment, and the ``process`` / ``sample`` entries of a model's
``config.json``. What depends on the kind of noise is checked by its entry in the registry
(:mod:`textdiff.diffusion.registry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..schema import ConfigError


@dataclass
class ProcessConfig:
    """The forward process (docs/math.md §2–3)."""

    ALIASES: ClassVar[dict[str, str]] = {"num_steps": "chain_length"}  # textdiff ≤ 0.1 names
    # removed after one development stop; model folders saved meanwhile carry the default
    RETIRED: ClassVar[dict[str, object]] = {"self_condition_start": "zeros"}

    # a registered process: gaussian | mask | autoregressive (the GPT-2-architecture baseline,
    # trained by the same trainer)
    noise: str = "gaussian"
    schedule: str = "sqrt"  # gaussian: linear | cosine | sqrt; mask: linear | cosine
    # Gaussian network target: x0, eps, or posterior (the network gives logits that are added to
    # each position's exact Gaussian evidence; x̂_0 is the mean word row under the result)
    prediction: Literal["x0", "eps", "posterior"] = "x0"
    # T, the length of the discrete Gaussian chain the bound sums over (null: continuous time);
    # sampling chooses its own number of steps (sample.steps)
    chain_length: int | None = 2000
    eps_weighting: Literal["simple", "vlb"] = "simple"
    # data-to-text by partial noising (DiffuSeq): the first condition_len positions hold the
    # condition (E2E: the MR) + [EOS] + [PAD], kept clean (never noised, not in the loss); the
    # rest the sentence + [EOS] + [PAD]. 0: unconditional
    condition_len: int = 0
    # classifier-free guidance: probability that training replaces a row's condition by the
    # null condition (all [MASK]); > 0 is what makes guidance_scale ≠ 1 meaningful at sampling
    condition_dropout: float = 0.0

    def check(self) -> None:
        from .registry import get_process_spec

        if self.condition_len < 0:
            raise ConfigError(f"process.condition_len must be ≥ 0, got {self.condition_len}")
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(
                f"process.condition_dropout must be in [0, 1), got {self.condition_dropout}"
            )
        if self.condition_dropout > 0 and self.condition_len == 0:
            raise ConfigError("process.condition_dropout needs process.condition_len > 0")
        get_process_spec(self.noise).check_process(self)


MAX_STEPS = 1_000_000  # sampling steps: a grid of this many times is built


@dataclass
class SampleConfig:
    """Generation defaults, saved with the model; ``generate`` arguments override them."""

    sampler: str = "auto"  # a sampler of the process (gaussian: ddpm | ddim | pc; mask:
    # ancestral); auto: the process's default
    steps: int = 200  # sampling steps (network calls, for most samplers)
    clamp: bool = False  # snap x̂_0 to the nearest word row at every step (Gaussian)
    temperature: float = 1.0  # mask, AR; Gaussian with prediction=posterior (sharpens x̂_0)
    top_p: float = 1.0  # mask, AR: nucleus sampling
    # per-sample: sample i of a call with seed s draws from its own generator, so it is the same
    # sentence alone or in any batch; shared: one generator for the batch (textdiff 0.1, and
    # what model folders saved by it keep)
    seeding: Literal["per-sample", "shared"] = "per-sample"
    # the sampler's own options, e.g. {threshold: 0.8, length_first: true} (README: samplers)
    options: dict[str, bool | int | float | str] = field(default_factory=dict)

    def check(self, where: str = "sample.") -> None:
        """Ranges; ``where`` prefixes the names (``""`` for the arguments of ``generate``)."""
        for name in ("steps", "temperature", "top_p"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{where}{name} must be positive, got {value}")
            if not math.isfinite(value):
                raise ConfigError(f"{where}{name} must be finite, got {value}")
        if self.top_p > 1:
            raise ConfigError(f"{where}top_p must be in (0, 1], got {self.top_p}")
        if self.steps > MAX_STEPS:
            raise ConfigError(f"{where}steps must be at most {MAX_STEPS:,}, got {self.steps}")


def saved_sample_settings(saved: dict[str, Any] | None) -> dict[str, Any]:
    """A model's saved ``sample`` entry with what textdiff 0.1 did not write filled in as it
    behaved: one generator shared by the batch."""
    saved = dict(saved or {})
    if saved:
        saved.setdefault("seeding", "shared")
    return saved
