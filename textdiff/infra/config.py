"""Typed configuration: nested dataclasses are the source of truth, YAML files mirror them.

:func:`load_config` reads a YAML file, applies ``key.sub=value`` overrides and checks everything:
an unknown key or a wrong type is a :class:`ConfigError` naming the valid choices. The network
only ever sees :class:`ModelConfig`; the process only :class:`ProcessConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..diffusion.registry import get_process_spec
from ..diffusion.settings import ProcessConfig, SampleConfig
from ..models.config import ModelConfig
from ..schema import ConfigError, check_positive, from_dict

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "ProcessConfig",
    "SampleConfig",
    "TrainConfig",
    "load_config",
]


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
        check_positive(self, "min_frequency", "bpe_vocab_size")


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
        check_positive(
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
        spec = get_process_spec(self.process.noise)
        spec.check_output(self.process, self.model.output)
        spec.check_sample(self.process, self.sample)
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
        """The network's own config: ``output`` resolved from the process, ``vocab_size`` set."""
        output = self.model.output
        if output == "auto":
            output = get_process_spec(self.process.noise).output(self.process)
        return dataclasses.replace(self.model, output=output, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
