"""Where and in which precision a model runs."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys

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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_TOP = 2**31 - 1  # bytes of free heap top kept from the OS (mallopt takes a C int)


@functools.cache
def reuse_freed_memory() -> bool:
    """Serve every allocation of this process from glibc's heap and keep freed memory for
    reuse, instead of mapping each large block afresh from the OS and returning it on free.

    A training step on a CPU allocates and frees (batch × positions × vocabulary)-sized
    tensors many times; glibc maps each one above 32 MiB afresh, and gives the top of its heap
    back to the OS once more than twice its current mmap threshold is free there, so pages
    fault in again at every step, which can cost more than the arithmetic on them
    (configs/lm.yaml's 4,000-piece vocabulary: 1.2–1.4× training throughput on a 2-core Xeon;
    a sampling step at Diffusion-LM's size, with 8–16 MiB activations: 1.3× fp32, 1.9× bf16).
    Freed blocks stay mapped once the heap has grown to fit each size with its alignment slack
    (a few steps). The price: memory once used stays with the process until it exits.
    Called by the trainer (``train.reuse_memory``) and the ``textdiff`` command; it affects the
    whole process and cannot be undone. Returns whether it took effect: False off Linux or
    without glibc (musl's mallopt does nothing), or when another allocator serves this
    process's ``malloc`` (jemalloc or tcmalloc through ``LD_PRELOAD``: glibc's settings would
    not reach it), where nothing changes. Setting
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` before Python starts does the
    same."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        if _address(ctypes.CDLL(None).posix_memalign) != _address(libc.posix_memalign):
            return False  # torch's CPU allocator calls posix_memalign: someone else's
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_TOP))


def _address(function) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value
