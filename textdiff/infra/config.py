"""Typed configuration: nested dataclasses are the source of truth, YAML files mirror them.

:func:`load_config` reads a YAML file, applies ``key.sub=value`` overrides and checks everything:
an unknown key, a wrong type, a duplicate key or an invalid value is a :class:`ConfigError`
naming the valid choices, before anything is written. The network only ever sees
:class:`ModelConfig`; the process only :class:`ProcessConfig`. What a run needs of the machine
is checked by :mod:`textdiff.infra.resources`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..diffusion.registry import get_process_spec
from ..diffusion.schedules import get_schedule
from ..diffusion.settings import MAX_STEPS, ProcessConfig, SampleConfig
from ..models.config import ModelConfig
from ..schema import ConfigError, check_positive, from_dict, short_repr

logger = logging.getLogger(__name__)

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

MAX_SEED = 2**31 - 1  # numpy takes seeds below 2**32; a rank is added to the seed
MAX_SAMPLE_STEPS = MAX_STEPS  # sampling steps (a grid of this many times is built)
MAX_EVAL_SAMPLES = 10_000  # sentences generated at each evaluation
MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen settings
MAX_CONFIG_VALUES = 100_000  # values in a config with YAML aliases expanded


def check_seed(value: int, name: str) -> None:
    """Refuse a seed outside ``[0, MAX_SEED]`` (``name``: the setting or flag)."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be in [0, {MAX_SEED}], got {value}")


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
    # e2e_venues: the training rows plus a copy of each with its venues (name, near) swapped for
    # others, in MR and sentence alike; E2E pairs venues rigidly, and a data-to-text model learns
    # the pairing instead of reading the MR's name (textdiff.infra.e2e.e2e_swap_venues)
    augment: Literal["none", "e2e_venues"] = "none"

    def check(self) -> None:
        check_positive(self, "min_frequency", "bpe_vocab_size")
        if self.augment == "e2e_venues" and (self.format != "e2e" or self.streaming):
            raise ConfigError(
                "data.augment: e2e_venues needs data.format: e2e and data.streaming: false "
                "(it rewrites MR||sentence rows in memory)"
            )
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(
                f"data.max_train_samples must be positive or null, got {self.max_train_samples}"
            )


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
    # auto: bf16 only where the CPU/GPU has it; fp16 (loss scaling) on GPUs. A mixed precision
    # other than `no` from the accelerate config or `accelerate launch` takes precedence
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    ema_decay: float = 0.999  # 0 disables EMA weights
    # torch.compile the network for training (static shapes: one compilation for the batch, one
    # for self-conditioning's half batch; worth it for runs of more than a few minutes)
    compile: bool = False
    # serve this process's memory from glibc's heap and keep what is freed for reuse: tensors
    # above 32 MiB (batch x positions x a large vocabulary) are then not page-faulted in afresh
    # at every step (lm.yaml: 1.2-1.4x faster on a CPU). Linux with glibc only; memory once
    # used stays with the process until it exits
    reuse_memory: bool = True
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int = 8
    eval_samples: int = 4  # sentences generated at each evaluation
    save_every: int = 500
    keep_checkpoints: int = 2
    # also keep the weights of the evaluation with the lowest validation loss in best-model/ (a
    # small corpus can be overfitted before max_steps; needs a validation split)
    keep_best: bool = False
    # stop once this many evaluations in a row have not lowered the best validation loss (0:
    # never); the learning-rate schedule still spans max_steps. Needs a validation split
    patience: int = 0
    # experiment trackers beside metrics.jsonl (accelerate's): none, all, or a comma-separated
    # list of tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio
    report_to: str = "none"

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
        for name in ("weight_decay", "warmup_steps", "clip_grad", "eval_samples", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"train.min_lr_ratio must be in [0, 1] (the final fraction of train.lr), got "
                f"{self.min_lr_ratio}"
            )
        check_seed(self.seed, "train.seed")
        trackers(self.report_to)
        if self.eval_samples > MAX_EVAL_SAMPLES:
            raise ConfigError(
                f"train.eval_samples must be at most {MAX_EVAL_SAMPLES:,}, got {self.eval_samples}"
            )


TRACKERS = (
    "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"
)  # fmt: skip


def trackers(report_to: str) -> list[str]:
    """``train.report_to`` as a list of accelerate tracker names (``[]`` for ``none``)."""
    names = [n.strip().lower() for n in report_to.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if "none" in names:
        raise ConfigError(f"train.report_to: none goes alone, got {report_to!r}")
    unknown = [n for n in names if n not in TRACKERS + ("all",)]
    if unknown:
        raise ConfigError(
            f"train.report_to: {', '.join(unknown)} is not a tracker textdiff knows; write none, "
            f"all, or a comma-separated list of {', '.join(TRACKERS)}"
        )
    return list(dict.fromkeys(names))


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
        if (
            self.model.self_conditioning
            and spec.network == "denoiser"
            and not spec.self_conditioning
        ):
            logger.warning(
                "model.self_conditioning does nothing for %s models (they have no previous "
                "estimate: its input columns would read zeros); set it false",
                self.process.noise,
            )
        C = self.process.condition_len
        if C and self.model.seq_len != "auto" and C > self.model.seq_len - 2:
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
        """The network's own config: ``output`` resolved from the process, ``vocab_size`` set,
        ``readout_scale: auto`` resolved: with ``embed_norm`` and Gaussian noise the scale that
        makes the tied read-out Bayes' rule for rows of one norm given
        ``h_0 ~ N(√ᾱ_0 E_w, (1 − ᾱ_0) I)``, ``s = √ᾱ_0 / (1 − ᾱ_0)`` (``‖E_v‖²`` is then the same
        for every ``v`` and drops out of the softmax); else 1."""
        output = self.model.output
        if output == "auto":
            output = get_process_spec(self.process.noise).output(self.process)
        scale = self.model.readout_scale
        if scale == "auto":
            scale = 1.0
            if self.model.embed_norm is not None and self.process.noise == "gaussian":
                a0 = float(get_schedule(self.process.schedule).alpha_bar(0.0))
                scale = math.sqrt(a0) / (1 - a0)
        return dataclasses.replace(
            self.model, output=output, vocab_size=vocab_size, readout_scale=scale
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _yaml_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (two ``train:`` blocks
    would otherwise silently keep the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        f"key {short_repr(key)} appears twice (lines {seen[key]} and {line}); "
                        "keep one (merge the two blocks)"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, Loader.construct_mapping)
    return Loader


def _read_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML; refused if invalid, with a duplicate key, nested too deeply or
    expanding (through aliases) to more than ``MAX_CONFIG_VALUES`` values."""
    import yaml

    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
        size = _expanded_size(data, {})
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML: {problem or e}{at}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a config") from None
    if size > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{where} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases?); a config "
            "holds a few dozen settings"
        )
    return data


def _expanded_size(data: Any, memo: dict[int, int]) -> int:
    """How many values ``data`` holds with every alias expanded, computed once per shared
    part (so a billion-laughs document is measured, not expanded); capped past the limit."""
    if not isinstance(data, (list, dict)):
        return 1
    if id(data) in memo:
        if memo[id(data)] < 0:
            raise ConfigError("a YAML alias refers to the value that contains it")
        return memo[id(data)]
    memo[id(data)] = -1
    items = [*data.keys(), *data.values()] if isinstance(data, dict) else data
    size = 1
    for item in items:
        size = min(size + _expanded_size(item, memo), MAX_CONFIG_VALUES + 1)
    memo[id(data)] = size
    return size


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    value = _read_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
    return key.strip().split("."), value


def _apply_override(node: Any, cls: Any, keys: list[str], value: Any, text: str) -> None:
    """Set ``keys`` in the config dict ``node`` (of the dataclass ``cls``) to ``value``. A
    mapping given for a whole section (``model={seq_len: 8}``) sets those keys and keeps the
    others; a mapping-valued setting (``data.data_files={...}``) is replaced."""
    fields = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else None
    key = keys[0] if fields is None else getattr(cls, "ALIASES", {}).get(keys[0], keys[0])
    known = fields is None or key in fields
    if not isinstance(node, dict) or not known or (len(keys) > 1 and key not in node):
        valid = f"; valid keys: {sorted(fields)}" if fields and not known else ""
        raise ConfigError(f"unknown config key {short_repr(text.split('=', 1)[0])}{valid}")
    tp = None if fields is None else fields[key]
    if len(keys) > 1:
        _apply_override(node[key], tp, keys[1:], value, text)
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        for k, v in value.items():
            _apply_override(node[key], tp, [str(k)], v, text)
    else:
        node.pop(keys[0], None)
        node[key] = value


def _resolve_paths(cfg: ExperimentConfig, base: Path) -> None:
    """Data files given relative to a YAML file are taken relative to that file (not URLs)."""
    for split, f in cfg.data.data_files.items():
        if "://" in f:
            continue
        p = Path(f).expanduser()
        cfg.data.data_files[split] = str(p if p.is_absolute() else (base / p).resolve())


def _read_config_file(path: Path) -> dict[str, Any]:
    if path.exists() and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"config {str(path)!r} is {what}; pass a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is {path.stat().st_size:,} bytes; a config is a small YAML file "
            f"(at most {MAX_CONFIG_BYTES:,} bytes)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; pass a YAML config") from None
    raw = _read_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (model:, process:, data:, train:, "
            f"sample:), not a {type(raw).__name__}"
        )
    return raw


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``section.key=value`` overrides, validate.

    Paths under ``data.data_files`` in the file are relative to the file; paths given as
    overrides are relative to the current directory.
    """
    raw = _read_config_file(Path(path)) if path is not None else {}
    cfg = from_dict(ExperimentConfig, raw)
    if path is not None:
        _resolve_paths(cfg, Path(path).parent)
    if overrides:
        merged = cfg.to_dict()
        for text in overrides:
            keys, value = _parse_override(text)
            _apply_override(merged, ExperimentConfig, keys, value, text)
        cfg = from_dict(ExperimentConfig, merged)
        _resolve_paths(cfg, Path.cwd())
    cfg.check()
    return cfg
