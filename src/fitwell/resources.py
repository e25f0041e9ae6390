"""How much memory a model needs, from its shape alone, and how much the machine can give.

Checked before anything is allocated: a typo such as ``--hidden 1000000000`` (tens of GB) or a
tampered ``model.json`` must be refused with a sentence, not end in the kernel's OOM killer or an
allocator error halfway through a run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fitwell.errors import InputError


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return None


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """Bytes this process can still allocate on ``device`` (None when unknown), and a label."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    candidates: list[int] = []
    avail = _meminfo_available()
    if avail is not None:
        candidates.append(avail)
    # A container's own limit (cgroup v2) can be far below the machine's free memory.
    limit = _read_int(Path("/sys/fs/cgroup/memory.max"))
    used = _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is not None and used is not None:
        candidates.append(max(limit - used, 0))
    if not candidates:
        try:
            import os

            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None, "available memory"
    return min(candidates), "available memory"


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**27 else f"{n / 2**20:,.1f} MiB"


def check_memory(estimate: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse (exit 2) when ``estimate`` bytes exceed what ``device`` has available."""
    available, label = available_memory(device)
    if available is not None and estimate > available:
        raise InputError(
            f"{what} needs about {_gb(estimate)} but only {_gb(available)} of {label} is left "
            f"on {device.type}; {advice}"
        )
