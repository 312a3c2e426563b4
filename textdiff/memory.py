"""How much memory this process can have, and the refusal of work that needs more.

Standard library only (every floor may use it).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ResourceError


def machine_memory() -> int | None:
    """Bytes of memory this process can have: the physical memory (``/proc/meminfo``, else
    ``os.sysconf``), or a lower cgroup limit; ``None`` when unknown."""
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemTotal:"))
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_memory(parts: dict[str, float], what: str, knobs: dict[str, str]) -> None:
    """Refuse ``what`` if the bytes it needs (``parts``) exceed the machine's memory, naming the
    largest part and ``knobs[part]``, the settings that shrink it."""
    have, need = machine_memory(), sum(parts.values())
    if have is None or need <= have:
        return
    part = max(parts, key=parts.__getitem__)
    raise ResourceError(
        f"{what} needs at least {need / 2**30:,.1f} GiB of memory ({part} alone "
        f"{parts[part] / 2**30:,.1f} GiB) but this machine has {have / 2**30:,.1f} GiB; "
        f"lower {knobs[part]}"
    )
