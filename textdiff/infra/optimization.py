"""The optimisation pieces of a training run: the accelerator, AdamW's parameter groups, the
learning-rate schedule, and the view of a prepared model that the math is given."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.devices import bf16_supported


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


def make_accelerator(tc):
    """accelerate's ``Accelerator`` for the run's precision and gradient accumulation."""
    from accelerate import Accelerator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_precision(tc.precision, device),
        gradient_accumulation_steps=tc.grad_accum,
    )


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
    """``auto`` → ``bf16`` where bf16 matmuls are native, else ``fp32``; accelerate's names."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    return "bf16" if precision == "bf16" else "no"
