"""Keep freed CPU memory in the process heap when a model's tensors are larger than glibc recycles.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and
gives them back on ``free``. A population whose weight gradients exceed that (64 members of a
512 x 512 layer: 67 MB) then pays ~14,000 page faults for every such tensor on every step:
measured, the weight-gradient product of that layer takes 109 ms instead of 65-75 ms, and a
whole digits run 12.0 s instead of 10.1 s. Turning ``mmap`` off for large blocks (and never
trimming the heap) makes freed blocks reusable, at the price of the process keeping its peak
memory until it exits. Only done on glibc, only when a tensor needs it, and never when
``FITWELL_KEEP_HEAP=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_kept = False


def keep_freed_memory_in_heap(largest_tensor_bytes: int) -> bool:
    """Stop glibc from unmapping freed large blocks, when a tensor is larger than it recycles.

    Returns whether the heap is now kept (by this call or an earlier one).
    """
    global _kept
    if _kept:
        return True
    if (
        largest_tensor_bytes <= GLIBC_MMAP_THRESHOLD_MAX
        or os.environ.get("FITWELL_KEEP_HEAP") == "0"
    ):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: mallopt's parameters are glibc's
    except (OSError, AttributeError):
        return False
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    mmap_ok = libc.mallopt(_M_MMAP_MAX, ctypes.c_int(0))
    _kept = bool(trim_ok) and bool(mmap_ok)
    return _kept
