"""The optimisation pieces of a training run: the accelerator, AdamW's parameter groups, the
learning-rate schedule, and the view of a prepared model that the math is given."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from ..models.devices import bf16_supported
from ..schema import ConfigError
from .config import trackers

logger = logging.getLogger(__name__)

PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
ACCUMULATION_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


class Denoiser:
    """The view of a prepared (possibly DDP-wrapped) model that the math is given: calls go
    through the wrapper (so gradients are synchronised), the word table and read-out are
    reached on the module itself."""

    def __init__(self, prepared, module):
        self.prepared, self.module = prepared, module
        self.embed_dim = getattr(module, "embed_dim", None)
        self.self_conditioning = getattr(module, "self_conditioning", False)
        self.device = module.device

    def embed(self, ids: Tensor) -> Tensor:
        return self.module.embed(ids)

    def logits(self, x: Tensor) -> Tensor:
        return self.module.logits(x)

    def word_table(self) -> Tensor:
        return self.module.word_table()

    def __call__(self, *args, **kwargs):
        return self.prepared(*args, **kwargs)


def make_accelerator(tc, logging_dir: Path | None = None):
    """accelerate's ``Accelerator`` for a run: on the device accelerate picks (CUDA, MPS, XPU,
    ... or the CPU; ``accelerate launch --cpu`` forces the CPU), in the mixed precision and with
    the gradient accumulation the accelerate config or launch flags set (:func:`run_precision`,
    :func:`accumulation_steps`), else ``train.precision`` / ``train.grad_accum``, logging to the
    trackers of ``train.report_to`` (files under ``logging_dir``).

    Raises:
        ConfigError: A tracker is not installed, fp16 is asked for on a CPU, or the accelerate
            settings are invalid.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration, parse_flag_from_env

    names = available_trackers(tc.report_to)
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not _accelerator_present()
    device = PartialState(cpu=cpu).device  # on a CPU-only machine, several ranks use gloo
    project = None
    if logging_dir is not None:
        project = ProjectConfiguration(
            project_dir=str(logging_dir.parent), logging_dir=str(logging_dir)
        )
    return Accelerator(
        cpu=cpu,
        mixed_precision=run_precision(tc.precision, device),
        gradient_accumulation_steps=accumulation_steps(tc.grad_accum),
        log_with=names or None,
        project_config=project,
    )


def _accelerator_present() -> bool:
    """A GPU-like device torch can use (CUDA, MPS or XPU); without one, accelerate must be told
    ``cpu=True`` or a multi-process launch runs every rank alone."""
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or bool(xpu is not None and xpu.is_available())
    )


def available_trackers(report_to: str) -> list[str]:
    """The trackers ``train.report_to`` names (``all``: every one installed), each checked to
    be installed."""
    from accelerate import tracking

    names = trackers(report_to)
    installed = [str(t) for t in tracking.get_available_trackers()]
    if "all" in names:
        return installed
    missing = [n for n in names if n not in installed]
    if missing:
        raise ConfigError(
            f"train.report_to names {', '.join(missing)}, which is not installed; pip install "
            f"{' '.join(missing)} (tensorboard: pip install 'textdiff[tensorboard]') or leave "
            "it out"
        )
    return names


def accumulation_steps(grad_accum: int) -> int:
    """Micro-batches per optimizer step: ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` (the
    accelerate config or ``accelerate launch --gradient_accumulation_steps``) when set, else
    ``train.grad_accum``."""
    raw = os.environ.get(ACCUMULATION_ENV, "").strip()
    if not raw:
        return grad_accum
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"{ACCUMULATION_ENV}={raw!r} (from the accelerate config or launch flags) must be a "
            "positive integer; fix it there, or unset it to use train.grad_accum"
        )
    if int(raw) != grad_accum:
        logger.info(
            "gradient accumulation: %s micro-batches a step, from the accelerate config or "
            "launch flags (train.grad_accum %d is not used)",
            raw,
            grad_accum,
        )
    return int(raw)


def run_precision(precision: str, device: torch.device) -> str:
    """accelerate's mixed precision for a run on ``device``: the accelerate config's or launch
    flag's (``ACCELERATE_MIXED_PRECISION``) when it is not ``no`` (accelerate writes ``no`` by
    default, so that one defers to the config), else ``train.precision`` resolved
    (:func:`resolve_precision`).

    Raises:
        ConfigError: fp16 on a CPU (it has no fp16 loss scaling), or an unknown value.
    """
    chosen = os.environ.get(PRECISION_ENV, "").strip().lower()
    where = f"{PRECISION_ENV}={chosen} (the accelerate config or launch flags)"
    if chosen in ("", "no"):
        chosen, where = resolve_precision(precision, device), f"train.precision {precision}"
    elif chosen not in ("fp16", "bf16", "fp8"):
        raise ConfigError(f"{where} is not a mixed precision; choose no, fp16, bf16 or fp8")
    else:
        logger.info("mixed precision %s, from %s", chosen, where)
    if chosen == "fp16" and device.type == "cpu":
        raise ConfigError(
            f"{where} asks for fp16, which needs a GPU (CUDA, MPS, XPU, ...), and this run is on "
            "the CPU; use bf16 or fp32"
        )
    return chosen


def lr_lambda(cfg) -> callable:
    """Linear warm-up to 1, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_decay == "cosine" else 1 - frac
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return factor


def make_optimizer(model: torch.nn.Module, tc) -> torch.optim.AdamW:
    """AdamW (β = 0.9, 0.98) over :func:`param_groups`, its fused kernel where torch has one
    for the parameters' device (one pass over each tensor instead of several)."""
    groups = param_groups(model, tc.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.98), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matmul weights only (not on the word table, norms or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and "embedding" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where bf16 matmuls are native, else ``fp32``; accelerate's names
    (``no``, ``bf16``, ``fp16``)."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
