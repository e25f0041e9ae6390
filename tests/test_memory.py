"""Large CPU tensors are recycled from the heap once a model needs it (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fitwell.training import memory

FAULTS_SCRIPT = """
import resource, sys, torch
from fitwell.training.memory import keep_freed_memory_in_heap

def faults_per_allocation():
    torch.empty(20_000_000).fill_(1.0)  # 80 MB: above any glibc mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(20_000_000).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

fresh = faults_per_allocation()
kept = keep_freed_memory_in_heap(int(sys.argv[1]))
print(fresh, kept, faults_per_allocation())
"""


def _run(largest: int, **env: str) -> tuple[float, bool, float]:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, str(largest)],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), out[1] == "True", float(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_tensor_beyond_the_mmap_threshold_makes_freed_blocks_reusable() -> None:
    fresh, kept, after = _run(64 * 2**20)
    assert kept
    assert fresh > 10_000  # every 80 MB allocation maps fresh pages: ~19,500 faults
    assert after < fresh / 4  # freed blocks are reused (at most the first one is fresh)


def test_small_models_and_an_opt_out_leave_malloc_alone() -> None:
    assert not memory.keep_freed_memory_in_heap(memory.GLIBC_MMAP_THRESHOLD_MAX)
    fresh, kept, after = _run(64 * 2**20, FITWELL_KEEP_HEAP="0")
    assert not kept
    assert after > 10_000
