"""How torch's CPU thread count behaves when other processes compete for the cores.

Times the same training job (digits, two hidden layers, K members, a few epochs) with 1 and with
N threads, with and without busy competitor processes (Python loops spinning on a core), all
interleaved, and reports medians. This is what the default of ``--threads`` rests on.

    python benchmarks/threads.py                 # 1 vs 2 threads, 0 or 1 busy process
    python benchmarks/threads.py --threads 1 2 4 --busy 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from fitwell.models import Architecture
from fitwell.training import LoopSettings, MemberSettings, Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"


def job(x: np.ndarray, y: np.ndarray, members: int, width: int, epochs: int) -> float:
    cut = int(0.8 * len(x))
    trainer = Trainer(
        Architecture(x.shape[1], (width, width), 10),
        [MemberSettings(seed=s, lr=1e-3) for s in range(members)],
        LoopSettings(batch_size=64, max_epochs=epochs, patience=0),
        task="classification",
        x_train=x[:cut],
        y_train=y[:cut],
        x_val=x[cut:],
        y_val=y[cut:],
        device=torch.device("cpu"),
    )
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def spin(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    p.add_argument("--members", type=int, nargs="+", default=[1, 16])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    times: dict[tuple[int, int, int], list[float]] = {}
    for rep in range(args.repeats):
        for busy in args.busy:
            procs = spin(busy)
            try:
                time.sleep(0.5)  # let the competitors start spinning
                cases = [(t, k) for t in args.threads for k in args.members]
                cases = cases[rep % len(cases) :] + cases[: rep % len(cases)]
                for threads, k in cases:
                    torch.set_num_threads(threads)
                    seconds = job(x, y, k, args.width, args.epochs)
                    times.setdefault((busy, threads, k), []).append(seconds)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
    rows = []
    print(f"{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}")
    print(f"{'busy procs':>10}{'threads':>8}{'K':>4}{'median s':>10}{'vs 1 thread':>12}")
    for (busy, threads, k), ts in sorted(times.items()):
        med = statistics.median(ts)
        base = statistics.median(times[(busy, min(args.threads), k)])
        rows.append(
            {
                "busy": busy,
                "threads": threads,
                "K": k,
                "median_s": med,
                "runs_s": ts,
                "vs_fewest_threads": med / base,
            }
        )
        print(f"{busy:>10}{threads:>8}{k:>4}{med:>10.3f}{med / base:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python", "benchmarks/threads.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "width": args.width,
        "epochs": args.epochs,
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
