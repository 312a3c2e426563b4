"""Where and in which precision a model runs."""

from __future__ import annotations

import contextlib

import torch


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are native here (CUDA with bf16, or a CPU with AVX-512-BF16 / AMX).
    Elsewhere bf16 is emulated and far slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def use_bf16(device: torch.device | str, precision: str) -> bool:
    """Whether ``precision`` (``auto`` / ``fp32`` / ``bf16``) means bf16 on ``device``."""
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def autocast(device: torch.device | str, precision: str):
    """``torch.autocast`` for ``precision`` (``auto`` / ``fp32`` / ``bf16``) on ``device``."""
    device = torch.device(device)
    if not use_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
