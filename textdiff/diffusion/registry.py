"""The registry of forward processes: everything textdiff needs to know of each kind of noise.

A :class:`ProcessSpec` names a process and says how to build it from its settings, which
schedules and samplers it has, what the network must output, and which settings fit it. The
config checks, the model construction and the pipeline consult this table and nothing else, so
adding a process is one new file and one :func:`register_process` call (README, "Adding a noise
process"). This is the one module that compares noise names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..schema import ConfigError
from .absorbing import MaskProcess
from .autoregressive import AutoregressiveObjective
from .base import ForwardProcess
from .gaussian import GaussianProcess
from .loop import NEUTRAL
from .schedules import KEEP_SCHEDULES, SCHEDULES
from .settings import ProcessConfig, SampleConfig


@dataclass(frozen=True)
class ProcessSpec:
    """One kind of noise.

    Attributes:
        name: the ``process.noise`` value.
        process_class: its :class:`~textdiff.diffusion.base.ForwardProcess` (samplers, options).
        build: ``(settings, token_ids) -> process``; ``token_ids`` holds ``pad``, ``eos`` and
            ``mask`` ids.
        schedules: valid ``process.schedule`` values (empty: the setting is not used).
        network: the network family: ``"denoiser"`` (textdiff's Transformer, ``(x_t, t)`` in) or
            ``"causal-lm"`` (a GPT-2-architecture language model).
        output: ``settings -> "embedding" | "logits"``, what the denoiser's head must give.
        conditional: whether a condition part (``condition_len``: data-to-text) applies.
        templates: whether infilling templates apply.
        fixed_steps: the number of network calls is set by the length, not by ``steps``.
        self_conditioning: whether the denoiser is given its previous estimate
            (``model.self_conditioning`` applies).
        check: further rules on ``(process, sample, where)`` settings (``where`` as in
            :meth:`check_sample`); raises :class:`ConfigError`.
    """

    name: str
    process_class: type[ForwardProcess]
    build: Callable[[ProcessConfig, dict[str, int]], ForwardProcess]
    schedules: tuple[str, ...] = ()
    network: str = "denoiser"
    output: Callable[[ProcessConfig], str] = lambda settings: "logits"
    conditional: bool = True
    templates: bool = True
    fixed_steps: bool = False
    self_conditioning: bool = False
    check: Callable[[ProcessConfig, SampleConfig, str], None] | None = None

    @property
    def samplers(self) -> tuple[str, ...]:
        """Valid ``sample.sampler`` values, ``auto`` (the process's default) first."""
        return ("auto", *self.process_class.samplers)

    def check_process(self, p: ProcessConfig) -> None:
        """The rules of this noise on the ``process:`` settings alone."""
        if self.schedules and p.schedule not in self.schedules:
            raise ConfigError(
                f"process.schedule {p.schedule!r} is not a {self.name} schedule; "
                f"choose one of {sorted(self.schedules)}"
            )
        if p.condition_len and not self.conditional:
            raise ConfigError(f"process.condition_len does not apply to {self.name} models")

    def check_sample(self, p: ProcessConfig, s: SampleConfig, where: str = "sample.") -> None:
        """The rules of this noise on sampling settings; ``where`` prefixes their names
        (``"sample."`` in a config, ``""`` for the arguments of ``generate``)."""
        if s.sampler not in self.samplers:
            raise ConfigError(
                f"unknown {where}sampler {s.sampler!r} for process.noise={self.name}; "
                f"choose one of {list(self.samplers)}"
            )
        name = self.process_class.default_sampler if s.sampler == "auto" else s.sampler
        valid = self.process_class.samplers[name].options
        for key in s.options:
            if key not in valid:
                raise ConfigError(
                    f"{where}options: {key!r} is not an option of the {name!r} sampler; its "
                    f"options: {sorted(valid) or 'none'}"
                )
        options = self.process_class.sample_options
        for key, neutral in NEUTRAL.items():
            if getattr(s, key) != neutral and key not in options:
                raise ConfigError(
                    f"{where}{key} does not apply to {self.name} models (their options: "
                    f"{', '.join(sorted(options)) or 'none'}); leave it at {neutral}"
                )
        if self.check is not None:
            self.check(p, s, where)

    def check_output(self, p: ProcessConfig, output: str) -> None:
        """``model.output`` (``auto`` or what :attr:`output` gives) against this noise."""
        needed = self.output(p)
        if output not in ("auto", needed):
            raise ConfigError(
                f"model.output={output} does not fit process.noise={self.name}"
                f"{_prediction(self, p)}; it needs model.output={needed} (or auto)"
            )


def _prediction(spec: ProcessSpec, p: ProcessConfig) -> str:
    return f" with process.prediction={p.prediction}" if spec.name == "gaussian" else ""


def _check_gaussian(p: ProcessConfig, s: SampleConfig, where: str) -> None:
    T = p.chain_length
    if T is not None and T < 2:
        raise ConfigError(f"process.chain_length must be ≥ 2 or null, got {T}")
    if T is not None and s.steps > T:
        steps = "sample.steps" if where else "num_steps"
        raise ConfigError(
            f"{steps} {s.steps} is more than this model supports: its Gaussian chain has "
            f"T = {T} steps (process.chain_length); sample with at most {T} steps"
        )
    if s.temperature != 1.0 and p.prediction != "posterior":
        raise ConfigError(
            f"{where}temperature with Gaussian noise needs process.prediction=posterior"
        )


def _mask_id(token_ids: dict[str, int]) -> int:
    if token_ids.get("mask") is None:
        raise ConfigError("mask noise needs a [MASK] token id (config.json mask_token_id)")
    return token_ids["mask"]


PROCESSES: dict[str, ProcessSpec] = {}


def register_process(spec: ProcessSpec) -> ProcessSpec:
    """Add (or replace) a process; returns ``spec``."""
    PROCESSES[spec.name] = spec
    return spec


def get_process_spec(name: str) -> ProcessSpec:
    """The registered process ``name``; a :class:`ConfigError` lists the registered ones."""
    if name not in PROCESSES:
        raise ConfigError(f"process.noise {name!r} is unknown; choose one of {list(PROCESSES)}")
    return PROCESSES[name]


def build_process(settings: ProcessConfig, token_ids: dict[str, int]) -> ForwardProcess:
    """The process ``settings`` describe; ``token_ids``: ``pad``, ``eos`` and ``mask`` ids."""
    return get_process_spec(settings.noise).build(settings, token_ids)


register_process(
    ProcessSpec(
        "gaussian",
        GaussianProcess,
        lambda p, ids: GaussianProcess(
            p.schedule,
            p.prediction,
            p.chain_length,
            p.eps_weighting,
            pad_id=ids["pad"],
            eos_id=ids["eos"],
        ),
        schedules=tuple(SCHEDULES),
        output=lambda p: "logits" if p.prediction == "posterior" else "embedding",
        check=_check_gaussian,
        self_conditioning=True,
    )
)
register_process(
    ProcessSpec(
        "mask",
        MaskProcess,
        lambda p, ids: MaskProcess(
            p.schedule, mask_id=_mask_id(ids), pad_id=ids["pad"], eos_id=ids["eos"]
        ),
        schedules=tuple(KEEP_SCHEDULES),
    )
)
register_process(
    ProcessSpec(
        "autoregressive",
        AutoregressiveObjective,
        lambda p, ids: AutoregressiveObjective(eos_id=ids["eos"], pad_id=ids["pad"]),
        network="causal-lm",
        templates=False,
        fixed_steps=True,
    )
)
