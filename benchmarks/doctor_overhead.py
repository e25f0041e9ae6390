"""The cost of ``fitwell.Doctor`` in a hand-written PyTorch loop.

The same loop (digits, MLP 64-256-256-10, Adam 1e-3, batch 64, shuffled, eval-mode train and
validation loss each epoch) runs with and without the doctor watching (``doc.step(loss, y)``
every step, ``doc.end_epoch(...)`` every epoch, ``doc.findings()`` at the end). One torch
thread, seed 0. Two ways of pairing the runs, both reported as the median of per-pair ratios
of process CPU time (CPU time leaves out waiting for a shared core):

- ``runs``: whole runs with and without the doctor, interleaved (A B, B A, ...), so that drift
  in the machine's speed hits both alike; per-pair wall-time ratios are reported too.
- ``lockstep``: two identical loops in one process, stepped alternately (the order flips every
  step), each step's and each epoch end's CPU time added to its own loop. Interference from
  other processes on a shared machine then lands on both within milliseconds of each other,
  which makes this pairing far less noisy than whole runs under load.

    python benchmarks/doctor_overhead.py [--repeats 9] [--epochs 5] [--batch 64] [--width 256]
                                         [--mode runs|lockstep|both]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

import fitwell

RESULTS = Path(__file__).parent / "results" / "doctor_overhead.json"


def _data() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _setup(width: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def run(doctor: bool, epochs: int, batch: int = 64, width: int = 256) -> tuple[float, float]:
    x_tr, y_tr, x_va, y_va = _data()
    model, opt = _setup(width)
    loss_fn = nn.CrossEntropyLoss()
    doc = fitwell.Doctor(model, opt, baseline_val_score=0.1, n_val=len(y_va))
    if doctor:
        doc.attach()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr))
        for i in range(0, len(x_tr), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            if doctor:
                doc.step(loss, y_tr[idx])
        model.eval()
        with torch.no_grad():
            train_loss = float(loss_fn(model(x_tr), y_tr))
            val_loss = float(loss_fn(model(x_va), y_va))
        if doctor:
            doc.end_epoch(train_loss=train_loss, val_loss=val_loss)
    if doctor:
        doc.findings()
        doc.detach()
    return time.perf_counter() - wall, time.process_time() - cpu


def lockstep(epochs: int, batch: int = 64, width: int = 256) -> float:
    """CPU time with the doctor over CPU time without, two loops stepped alternately."""
    x_tr, y_tr, x_va, y_va = _data()
    loss_fn = nn.CrossEntropyLoss()
    loops = [_setup(width), _setup(width)]  # [with the doctor, without]
    doc = fitwell.Doctor(*loops[0], baseline_val_score=0.1, n_val=len(y_va))
    doc.attach()
    spent = [0.0, 0.0]
    gen = torch.Generator().manual_seed(0)

    def train_step(which: int, idx: torch.Tensor) -> None:
        model, opt = loops[which]
        start = time.process_time()
        opt.zero_grad()
        loss = loss_fn(model(x_tr[idx]), y_tr[idx])
        loss.backward()
        opt.step()
        if which == 0:
            doc.step(loss, y_tr[idx])
        spent[which] += time.process_time() - start

    def end_epoch(which: int) -> None:
        model, _ = loops[which]
        start = time.process_time()
        model.eval()
        with torch.no_grad():
            train_loss = float(loss_fn(model(x_tr), y_tr))
            val_loss = float(loss_fn(model(x_va), y_va))
        if which == 0:
            doc.end_epoch(train_loss=train_loss, val_loss=val_loss)
        model.train()
        spent[which] += time.process_time() - start

    flip = 0
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), batch):
            flip ^= 1
            for which in (flip, 1 - flip):
                train_step(which, order[i : i + batch])
        flip ^= 1
        for which in (flip, 1 - flip):
            end_epoch(which)
    start = time.process_time()
    doc.findings()
    doc.detach()
    spent[0] += time.process_time() - start
    return spent[0] / spent[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=256, help="units per hidden layer")
    parser.add_argument("--mode", choices=("runs", "lockstep", "both"), default="both")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(True, 1)  # warm-up
    result: dict[str, Any] = {
        "command": "python " + " ".join(["benchmarks/doctor_overhead.py", *sys.argv[1:]]),
        "setting": {
            "dataset": "digits (1400 train / 397 validation rows)",
            "model": f"MLP 64-{args.width}-{args.width}-10, Adam 1e-3",
            "batch": args.batch,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "torch_threads": 1,
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    head = f"doctor overhead, batch {args.batch}, width {args.width}, "
    if args.mode in ("runs", "both"):
        wall, cpu = [], []
        for r in range(args.repeats):
            pair = {}
            for doctor in (False, True) if r % 2 == 0 else (True, False):
                pair[doctor] = run(doctor, args.epochs, args.batch, args.width)
            wall.append(pair[True][0] / pair[False][0])
            cpu.append(pair[True][1] / pair[False][1])
        result["runs"] = {
            "median_cpu_ratio": statistics.median(cpu),
            "median_wall_ratio": statistics.median(wall),
            "cpu_ratios": cpu,
        }
        print(
            f"{head}{args.repeats} pairs x {args.epochs} epochs (whole runs): "
            f"median wall ratio {statistics.median(wall):.3f}, "
            f"median CPU ratio {statistics.median(cpu):.3f}",
            flush=True,
        )
    if args.mode in ("lockstep", "both"):
        ratios = [lockstep(args.epochs, args.batch, args.width) for _ in range(args.repeats)]
        result["lockstep"] = {"median_cpu_ratio": statistics.median(ratios), "cpu_ratios": ratios}
        print(
            f"{head}{args.repeats} x {args.epochs} epochs (lockstep): "
            f"median CPU ratio {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
