"""Typed configuration: nested dataclasses are the source of truth, YAML files mirror them.

:func:`load_config` reads a YAML file, applies ``key.sub=value`` overrides and checks everything:
an unknown key or a wrong type is a :class:`ConfigError` naming the valid choices. The network
only ever sees :class:`ModelConfig`; the process only :class:`ProcessConfig`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


@dataclass
class ModelConfig:
    """The denoiser network (DESIGN.md §1)."""

    vocab_size: int = 0  # set from the tokenizer when 0
    seq_len: int = 64  # n: every sentence is padded / truncated to this many tokens
    embed_dim: int = 16  # d: word-table width (Diffusion-LM's E2E model uses 16)
    pos_dim: int = 32  # d_p: sinusoidal position features concatenated to the word part
    hidden_size: int = 256  # D: Transformer width
    num_layers: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * D
    dropout: float = 0.1
    # embedding: head D→d, a clean-embedding (or noise) prediction; logits: head D→V (mask
    # noise, or Gaussian noise with process.prediction=posterior); auto: chosen from the process
    output: Literal["auto", "embedding", "logits"] = "auto"
    readout_scale: float = 1.0  # tied read-out logits = readout_scale · x · Eᵀ
    # the denoiser also reads its own previous x̂_0 (Chen et al., 2022): H_t = [h_t ; x̂_0' ; e]
    self_conditioning: bool = False
    # rotary phases on each head's queries and keys (Su et al., 2021): attention scores see
    # relative offsets directly; the concatenated sinusoidal e is kept either way
    rotary: bool = False

    def check(self) -> None:
        _positive(
            self,
            "seq_len",
            "embed_dim",
            "pos_dim",
            "hidden_size",
            "num_layers",
            "num_heads",
            "mlp_ratio",
        )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads "
                f"({self.num_heads})"
            )
        if self.pos_dim % 2:
            raise ConfigError(f"model.pos_dim must be even (sin/cos pairs), got {self.pos_dim}")
        if self.rotary and (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                "model.rotary needs an even head width (hidden_size / num_heads), got "
                f"{self.hidden_size // self.num_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ProcessConfig:
    """The forward process (DESIGN.md §2–3)."""

    # gaussian | mask; autoregressive trains the GPT-2-architecture baseline with the same trainer
    noise: Literal["gaussian", "mask", "autoregressive"] = "gaussian"
    schedule: str = "sqrt"  # gaussian: linear | cosine | sqrt; mask: linear | cosine
    # Gaussian network target: x0, eps, or posterior (the network gives logits that are added to
    # each position's exact Gaussian evidence; x̂_0 is the mean word row under the result)
    prediction: Literal["x0", "eps", "posterior"] = "x0"
    num_steps: int | None = 2000  # T of the discrete bound (null: continuous time)
    eps_weighting: Literal["simple", "vlb"] = "simple"
    # data-to-text by partial noising (DiffuSeq): the first condition_len positions hold the
    # condition (E2E: the MR) + [EOS] + [PAD], kept clean (never noised, not in the loss); the
    # rest the sentence + [EOS] + [PAD]. 0: unconditional
    condition_len: int = 0
    # classifier-free guidance: probability that training replaces a row's condition by the
    # null condition (all [MASK]); > 0 is what makes guidance_scale ≠ 1 meaningful at sampling
    condition_dropout: float = 0.0

    def check(self) -> None:
        from .schedules import KEEP_SCHEDULES, SCHEDULES

        if self.condition_len < 0:
            raise ConfigError(f"process.condition_len must be ≥ 0, got {self.condition_len}")
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(
                f"process.condition_dropout must be in [0, 1), got {self.condition_dropout}"
            )
        if self.condition_dropout > 0 and self.condition_len == 0:
            raise ConfigError("process.condition_dropout needs process.condition_len > 0")
        if self.noise == "autoregressive":
            if self.condition_len:
                raise ConfigError(
                    "process.condition_len applies to diffusion (gaussian | mask) only"
                )
            return
        valid = SCHEDULES if self.noise == "gaussian" else KEEP_SCHEDULES
        if self.schedule not in valid:
            raise ConfigError(
                f"process.schedule {self.schedule!r} is not a {self.noise} schedule; "
                f"choose one of {sorted(valid)}"
            )
        if self.num_steps is not None and self.num_steps < 2:
            raise ConfigError(f"process.num_steps must be ≥ 2 or null, got {self.num_steps}")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes fixed-length id sequences."""

    dataset: str = "text"  # a builder (text | json | csv | parquet) or a hub dataset name
    data_files: dict[str, str] = field(default_factory=dict)  # split -> file (YAML-relative)
    config_name: str | None = None  # hub dataset configuration
    column: str = "text"  # column holding the text
    format: Literal["plain", "e2e"] = "plain"  # e2e: lines `MR||sentence`, sentence side used
    streaming: bool = False  # iterate without loading the corpus into memory
    packing: Literal["pad", "chunk"] = "pad"  # one sentence per sequence, or concatenate+chunk
    tokenizer: str | None = None  # a folder or hub name; null: train one from the data
    tokenizer_kind: Literal["word", "bpe"] = "word"
    min_frequency: int = 11  # word tokenizer: words seen at least this often (E2E: 821 words)
    bpe_vocab_size: int = 8000
    lowercase: bool = False
    max_train_samples: int | None = None

    def check(self) -> None:
        _positive(self, "min_frequency", "bpe_vocab_size")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 64  # sequences per process per step (before accumulation)
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    clip_grad: float = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 only where the CPU/GPU has it
    ema_decay: float = 0.999  # 0 disables EMA weights
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int = 8
    eval_samples: int = 4  # sentences generated at each evaluation
    save_every: int = 500
    keep_checkpoints: int = 2

    def check(self) -> None:
        _positive(
            self,
            "max_steps",
            "batch_size",
            "grad_accum",
            "lr",
            "log_every",
            "eval_every",
            "eval_batches",
            "save_every",
            "keep_checkpoints",
        )
        for name in ("weight_decay", "warmup_steps", "clip_grad", "eval_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class SampleConfig:
    """Generation defaults, saved with the model."""

    sampler: str = "auto"  # gaussian: ddpm | ddim | pc; mask: ancestral; auto: ddpm / ancestral
    steps: int = 200
    clamp: bool = False  # snap x̂_0 to the nearest word row at every step (Gaussian)
    temperature: float = 1.0  # mask; Gaussian with prediction=posterior (sharpens x̂_0)
    top_p: float = 1.0  # mask mode

    def check(self) -> None:
        _positive(self, "steps", "temperature", "top_p")


SAMPLERS_BY_NOISE = {
    "gaussian": ("auto", "ddpm", "ddim", "pc"),
    "mask": ("auto", "ancestral"),
    "autoregressive": ("auto",),
}


@dataclass
class ExperimentConfig:
    """Everything a training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def check(self) -> None:
        for part in (self.model, self.process, self.data, self.train, self.sample):
            part.check()
        if self.process.noise == "mask" and self.model.output == "embedding":
            raise ConfigError("process.noise=mask needs model.output=logits (or auto)")
        posterior = self.process.prediction == "posterior"
        if self.process.noise == "gaussian" and posterior and self.model.output == "embedding":
            raise ConfigError("process.prediction=posterior needs model.output=logits (or auto)")
        if self.process.noise == "gaussian" and not posterior and self.model.output == "logits":
            raise ConfigError(
                "model.output=logits with Gaussian noise needs process.prediction=posterior"
            )
        samplers = SAMPLERS_BY_NOISE[self.process.noise]
        if self.sample.sampler not in samplers:
            raise ConfigError(
                f"sample.sampler {self.sample.sampler!r} does not fit process.noise="
                f"{self.process.noise}; choose one of {list(samplers)}"
            )
        T = self.process.num_steps
        if self.process.noise == "gaussian" and T is not None and self.sample.steps > T:
            raise ConfigError(
                f"sample.steps ({self.sample.steps}) exceeds process.num_steps ({T}); "
                f"sample with at most {T} steps"
            )
        if self.sample.clamp and self.process.noise != "gaussian":
            raise ConfigError("sample.clamp applies to Gaussian noise only")
        if self.process.noise == "gaussian":
            if self.sample.top_p != 1.0:
                raise ConfigError("sample.top_p applies to mask noise; leave it at 1")
            if self.sample.temperature != 1.0 and self.process.prediction != "posterior":
                raise ConfigError(
                    "sample.temperature with Gaussian noise needs process.prediction=posterior"
                )
        C = self.process.condition_len
        if C and C > self.model.seq_len - 2:
            raise ConfigError(
                f"process.condition_len ({C}) leaves fewer than 2 of model.seq_len "
                f"({self.model.seq_len}) positions for the sentence (a word and [EOS])"
            )
        if C and (self.data.packing != "pad" or self.data.streaming):
            raise ConfigError(
                "process.condition_len > 0 needs data.packing: pad and data.streaming: false "
                "(one condition + sentence pair per row)"
            )

    def network_config(self, vocab_size: int) -> ModelConfig:
        """The network's own config: ``output`` resolved from the noise, ``vocab_size`` set."""
        output = self.model.output
        if output == "auto":
            embedding = self.process.noise == "gaussian" and self.process.prediction != "posterior"
            output = "embedding" if embedding else "logits"
        return dataclasses.replace(self.model, output=output, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(obj, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and int→float widened) against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not valid; choose one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, refusing unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; valid keys: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = _check_type(value, tp, path)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _resolve_paths(cfg: ExperimentConfig, base: Path) -> None:
    """Data files given relative to a YAML file are taken relative to that file."""
    for split, f in cfg.data.data_files.items():
        p = Path(f).expanduser()
        cfg.data.data_files[split] = str(p if p.is_absolute() else (base / p).resolve())


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``section.key=value`` overrides, validate.

    Paths under ``data.data_files`` in the file are relative to the file; paths given as
    overrides are relative to the current directory.
    """
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    cfg = from_dict(ExperimentConfig, raw)
    if path is not None:
        _resolve_paths(cfg, path.parent)
    if overrides:
        merged = cfg.to_dict()
        for text in overrides:
            keys, value = _parse_override(text)
            node = merged
            for k in keys[:-1]:
                if not isinstance(node.get(k), dict):
                    raise ConfigError(f"unknown config key {'.'.join(keys)!r}")
                node = node[k]
            node[keys[-1]] = value
        cfg = from_dict(ExperimentConfig, merged)
        _resolve_paths(cfg, Path.cwd())
    cfg.check()
    return cfg
