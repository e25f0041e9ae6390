"""Whole ``fitwell.train`` runs with NumPy's BLAS capped at fitwell's thread count vs left alone.

fitwell trains with one torch thread by default; NumPy and SciPy bring their own BLAS pools
(OpenBLAS here, 2 threads). After a NumPy matrix product (the doctor's linear reference) those
worker threads spin waiting for more work and take CPU from the training thread. fitwell caps
them for the duration of a run (`fitwell.threads.limit_blas_threads`). This script times digits
runs both ways, interleaved, and reports medians of wall and process CPU time (all threads).

    python benchmarks/blas_threads.py               # 12 pairs per network
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fitwell.api as api
from fitwell.api import train

RESULTS = Path(__file__).resolve().parent / "results" / "blas_threads.json"


def compare(hidden: tuple[int, ...], repeats: int) -> dict[str, Any]:
    capped_limit = api.limit_blas_threads
    settings: dict[str, Any] = {
        "dataset": "digits",
        "hidden": hidden,
        "max_epochs": 15,
        "patience": 0,
        "seed": 0,
    }
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}

    def run(capped: bool) -> tuple[float, float]:
        api.limit_blas_threads = (  # type: ignore[assignment]
            capped_limit if capped else (lambda threads: contextlib.nullcontext())
        )
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            train(**settings)
            return time.perf_counter() - start, time.process_time() - cpu_start
        finally:
            api.limit_blas_threads = capped_limit  # type: ignore[assignment]

    run(True)
    run(False)
    for i in range(repeats):
        for capped in (True, False) if i % 2 == 0 else (False, True):
            seconds, cpu_seconds = run(capped)
            wall[capped].append(seconds)
            cpu[capped].append(cpu_seconds)
    return {
        "hidden": list(hidden),
        "repeats": repeats,
        "median_wall_capped": statistics.median(wall[True]),
        "median_wall_uncapped": statistics.median(wall[False]),
        "median_cpu_capped": statistics.median(cpu[True]),
        "median_cpu_uncapped": statistics.median(cpu[False]),
        "wall_ratio_uncapped_over_capped": statistics.median(wall[False])
        / statistics.median(wall[True]),
        "cpu_ratio_uncapped_over_capped": statistics.median(cpu[False])
        / statistics.median(cpu[True]),
        "fastest_ratio_uncapped_over_capped": min(wall[False]) / min(wall[True]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    rows = [compare((256, 256), args.repeats), compare((64, 64), args.repeats)]
    print(f"{os.cpu_count()} CPUs; digits, 15 epochs, {args.repeats} interleaved pairs")
    print(
        f"{'network':>10}{'capped s':>10}{'uncapped s':>12}{'wall x':>8}{'CPU x':>7}"
        f"{'fastest x':>11}"
    )
    for r in rows:
        print(
            f"{'x'.join(map(str, r['hidden'])):>10}{r['median_wall_capped']:>10.3f}"
            f"{r['median_wall_uncapped']:>12.3f}{r['wall_ratio_uncapped_over_capped']:>8.3f}"
            f"{r['cpu_ratio_uncapped_over_capped']:>7.3f}"
            f"{r['fastest_ratio_uncapped_over_capped']:>11.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python", "benchmarks/blas_threads.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
