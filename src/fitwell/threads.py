"""CPU threads: torch's own pool and the BLAS pools NumPy and SciPy bring.

On a shared machine, more threads than free cores collapse: torch with 2 threads ran 30-50x
slower per step than with 1 while other processes were busy. BLAS pools matter too: after a
NumPy matrix product (the doctor's linear reference) OpenBLAS's worker threads spin, waiting for
more work, and burn CPU that a shared machine's other work (or the training thread, on a busy
machine) needs: a 64x64 digits run (other settings default) used 12% more CPU time with
NumPy's 2 BLAS threads than capped at 1 (``python benchmarks/blas_threads.py``; wall time there
within noise).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_controller = None


def configure_threads(threads: int | None) -> int:
    """Set torch's CPU threads. Default 1: on a busy shared machine more threads collapse."""
    n = threads or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def limit_blas_threads(threads: int) -> Iterator[None]:
    """Cap the BLAS libraries' threads (OpenBLAS, MKL, ...) at ``threads`` inside the block,
    restoring the caller's settings after.

    The scan for loaded libraries (~6 ms) runs once per process; libraries loaded later are not
    capped.
    """
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=threads, user_api="blas"):
        yield
