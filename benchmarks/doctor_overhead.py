"""The cost of ``fitwell.Doctor`` in a hand-written PyTorch loop.

The same loop (digits, MLP 64-256-256-10, Adam 1e-3, batch 64, shuffled, eval-mode train and
validation loss each epoch) runs with and without the doctor watching (``doc.step(loss, y)``
every step, ``doc.end_epoch(...)`` every epoch), interleaved so that drift in the machine's
speed hits both alike. Reported: the median of per-pair ratios of wall time and of process CPU
time (CPU time leaves out waiting for a shared core). One torch thread, seed 0.

    python benchmarks/doctor_overhead.py [--repeats 9] [--epochs 5] [--batch 64] [--width 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import fitwell


def run(doctor: bool, epochs: int, batch: int = 64, width: int = 256) -> tuple[float, float]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    x_tr, y_tr, x_va, y_va = x[:1400], y[:1400], x[1400:], y[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=256, help="units per hidden layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(True, 1)  # warm-up
    wall, cpu = [], []
    for r in range(args.repeats):
        pair = {}
        for doctor in (False, True) if r % 2 == 0 else (True, False):
            pair[doctor] = run(doctor, args.epochs, args.batch, args.width)
        wall.append(pair[True][0] / pair[False][0])
        cpu.append(pair[True][1] / pair[False][1])
    print(
        f"doctor overhead, batch {args.batch}, width {args.width}, "
        f"{args.repeats} pairs x {args.epochs} epochs: "
        f"median wall ratio {statistics.median(wall):.3f}, "
        f"median CPU ratio {statistics.median(cpu):.3f}"
    )


if __name__ == "__main__":
    main()
