"""Where a pipeline runs: device names resolved and checked against this machine, and the
default device of :meth:`TextDiffusionPipeline.from_pretrained`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

from ..errors import TextdiffError


class DeviceError(TextdiffError, ValueError):
    """A device name is unknown, or the device is not available on this machine."""


_DEVICE: ContextVar[torch.device | None] = ContextVar("textdiff_device", default=None)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: the first of CUDA, MPS and XPU this machine has, else the CPU; any other name
    (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``, ...) is checked to exist here.

    Raises:
        DeviceError: The name is not a device, or this machine does not have it.
    """
    if str(device) == "auto":
        for kind in ("cuda", "mps", "xpu"):
            if _available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"unknown device {str(device)!r}; choose auto, cpu, cuda, cuda:N, mps or xpu"
        ) from None
    if device.type == "cpu":
        return device
    count = _available(device.type)
    if not count or (device.index is not None and device.index >= count):
        raise DeviceError(
            f"device {str(device)!r} is not available on this machine (torch sees "
            f"{count or 'no'} {device.type} device{'s' if count != 1 else ''}); choose auto or cpu"
        )
    return device


def _available(kind: str) -> int:
    """How many devices of ``kind`` torch can use here (0: none)."""
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return 0
    return int(backend.device_count()) if hasattr(backend, "device_count") else 1


@contextlib.contextmanager
def default_device(device: str | torch.device) -> Iterator[torch.device]:
    """Inside the block, :meth:`TextDiffusionPipeline.from_pretrained` without ``device=``
    loads onto ``device`` (``auto`` allowed), e.g. around an evaluation that loads models."""
    token = _DEVICE.set(resolve_device(device))
    try:
        yield current_default()
    finally:
        _DEVICE.reset(token)


def current_default() -> torch.device:
    """The device :func:`default_device` set for this context (the CPU outside one)."""
    return _DEVICE.get() or torch.device("cpu")
