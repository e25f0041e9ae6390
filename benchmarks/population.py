"""Population training vs. K sequential runs: wall time, peak memory and achieved GFLOP/s.

For every dataset x hidden width x K it times (interleaved, medians over repeats):

* the population: one :class:`~fitwell.training.Trainer` with K members (seeds 0..K-1);
* K sequential fitwell runs of one member each (seeds 0..K-1, one after another), run for real
  when they take at most ``--slow-seconds``; beyond that, K times the median single run stands
  in, *extrapolated* and marked so (``*``);
* one fitwell run of a single member, and one scikit-learn ``MLPClassifier`` fit with the same
  architecture, batch size, optimizer and epoch count; K sequential scikit-learn fits are always
  K times the single fit (extrapolated, ``*``).

Achieved GFLOP/s counts the multiply-adds of training (forward + backward) and of fitwell's
per-epoch evaluation on the train and validation splits, against the float32 matmul peak measured
in this script on the same device and thread count.

    python benchmarks/population.py --quick            # a minute: digits, K in {1, 4}, width 32
    python benchmarks/population.py                    # the full grid (~30 min on 2 busy cores)
    python benchmarks/population.py --device cuda      # the same on a GPU (sklearn stays on CPU)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitwell.models import Architecture
from fitwell.training import LoopSettings, MemberSettings, Trainer

BATCH_SIZE = 128
LR = 1e-3
RESULTS = Path(__file__).resolve().parent / "results" / "population.json"


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    epochs: int

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max()) + 1)


def _standardize(x_train: np.ndarray, x_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    return ((x_train - mean) / std).astype(np.float32), ((x_val - mean) / std).astype(np.float32)


def load_datasets(names: list[str], epochs_small: int, epochs_large: int) -> list[Dataset]:
    out = []
    for name in names:
        if name == "digits":
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            order = np.random.default_rng(0).permutation(len(x))
            x, y = x[order], y[order]
            cut = int(0.8 * len(x))
            xt, xv = _standardize(x[:cut], x[cut:])
            out.append(Dataset(name, xt, y[:cut], xv, y[cut:], epochs_small))
        elif name == "mnist1d-4k":
            from mnist1d.data import get_dataset_args, make_dataset

            data = make_dataset(get_dataset_args())  # the published 4000 / 1000 split
            xt, xv = _standardize(data["x"], data["x_test"])
            out.append(Dataset(name, xt, data["y"], xv, data["y_test"], epochs_small))
        elif name == "mnist1d-100k":
            from fitwell.data.datasets import mnist1d_arrays

            x, y = mnist1d_arrays(100_000)  # generated locally; first 80k are mnist1d's train part
            x, y = np.array(x, dtype=np.float32), np.array(y, dtype=np.int64)  # writable copies
            xt, xv = _standardize(x[:80_000], x[80_000:])
            out.append(Dataset(name, xt, y[:80_000], xv, y[80_000:], epochs_large))
        else:
            raise SystemExit(f"unknown dataset {name!r}")
    return out


# ------------------------------------------------------------------------------------- memory
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra memory of a block: device allocations on CUDA, sampled RSS growth on CPU.

    On CPU freed memory is first handed back to the OS (``malloc_trim``) so the baseline is low;
    the RSS is sampled every 2 ms by a sleeping thread, which may miss very short peaks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self._base = _rss_bytes()
        self._top = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._top = max(self._top, _rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._top = max(self._top, _rss_bytes())
        self.peak = self._top - self._base


# -------------------------------------------------------------------------------------- flops
def mlp_flops(arch: Architecture, rows: int, *, train: bool) -> float:
    """Floating-point operations of one pass over ``rows`` rows for one member (2 per MAC).

    Training: forward, weight gradients and input gradients (none for the first layer, whose
    input is data). Evaluation: forward only. Elementwise work is ignored (it is small).
    """
    macs = [fi * fo for fi, fo in arch.layer_sizes]
    forward = 2.0 * sum(macs)
    if not train:
        return rows * forward
    return rows * (forward + 2.0 * sum(macs) + 2.0 * sum(macs[1:]))


def matmul_peak_gflops(device: torch.device, seconds: float = 2.0) -> float:
    """Best observed float32 matmul throughput (GFLOP/s) on this device and thread count."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 4 * 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ workers
def fitwell_run(data: Dataset, width: int, seeds: list[int], device: torch.device) -> None:
    arch = Architecture(data.x_train.shape[1], (width, width), data.n_classes)
    loop = LoopSettings(batch_size=BATCH_SIZE, max_epochs=data.epochs, patience=0)
    trainer = Trainer(
        arch,
        [MemberSettings(seed=s, lr=LR) for s in seeds],
        loop,
        task="classification",
        x_train=data.x_train,
        y_train=data.y_train,
        x_val=data.x_val,
        y_val=data.y_val,
        device=device,
    )
    trainer.fit()
    _sync(device)


def sklearn_run(data: Dataset, width: int, seed: int, threads: int) -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    model = MLPClassifier(
        hidden_layer_sizes=(width, width),
        batch_size=BATCH_SIZE,
        learning_rate_init=LR,
        alpha=0.0,
        max_iter=data.epochs,
        tol=0.0,
        n_iter_no_change=data.epochs + 1,
        random_state=seed,
    )
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data.x_train, data.y_train)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float, int]:
    """Wall seconds, this process's CPU seconds, and peak extra memory of one call.

    On a shared CPU the wall time also measures the other processes; with one thread the CPU
    time is close to what the wall time would be on an idle machine, so both are reported.
    """
    with PeakMemory(device) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, mem.peak


# -------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    datasets = load_datasets(args.datasets, args.epochs, args.epochs_large)
    peak = matmul_peak_gflops(device)
    print(f"float32 matmul peak on {device} ({args.threads} thread(s)): {peak:.1f} GFLOP/s")
    print(_HEADER)
    rows: list[dict[str, Any]] = []
    for data in datasets:
        for width in args.widths:
            if f"{data.name}:{width}" in args.skip:
                print(f"{data.name:<13}{width:>6}   skipped (--skip): not measured", flush=True)
                continue
            rows.extend(_measure_cell(data, width, args, device, peak))
            _write(args.out, _result(args, datasets, device, peak, rows))  # partial results survive
    return _result(args, datasets, device, peak, rows)


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _result(
    args: argparse.Namespace,
    datasets: list[Dataset],
    device: torch.device,
    peak: float,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "command": " ".join(["python", "benchmarks/population.py", *sys.argv[1:]]),
        "machine": _machine(device, args.threads),
        "matmul_peak_gflops": peak,
        "settings": {
            "hidden": "two layers of the given width, relu",
            "optimizer": f"adam lr={LR}",
            "batch_size": BATCH_SIZE,
            "epochs": {d.name: d.epochs for d in datasets},
            "repeats": args.repeats,
            "slow_seconds": args.slow_seconds,
            "members": "seeds 0..K-1, same settings (random restarts)",
            "skipped_cells": args.skip,
        },
        "rows": rows,
    }


def _measure_cell(
    data: Dataset, width: int, args: argparse.Namespace, device: torch.device, peak: float
) -> list[dict[str, Any]]:
    """Interleave population runs for every K with single fitwell and sklearn runs."""
    pop: dict[int, list[float]] = {k: [] for k in args.members}
    pop_cpu: dict[int, list[float]] = {k: [] for k in args.members}
    pop_mem: dict[int, int] = {k: 0 for k in args.members}
    single: list[float] = []
    single_cpu: list[float] = []
    single_mem = 0
    sk: list[float] = []
    sk_cpu: list[float] = []
    # K sequential runs are run for real (seeds 0..K-1, one after another) when they fit in
    # `slow_seconds`; beyond that, K x the median single run stands in, marked extrapolated.
    seq: dict[int, list[float]] = {k: [] for k in args.members if k > 1}
    seq_cpu: dict[int, list[float]] = {k: [] for k in args.members if k > 1}
    fitwell_run(data, width, [0], device)  # warm-up: first-call allocations and kernel loads
    estimate, _, _ = timed(lambda: fitwell_run(data, width, [0], device), device)
    measured_seq = [k for k in seq if k * estimate <= args.slow_seconds]
    for rep in range(args.repeats):
        jobs: list[tuple[str, int]] = [("pop", k) for k in args.members]
        jobs += [("seq", k) for k in measured_seq]
        jobs += [("single", 0), ("sklearn", 0)]
        jobs = jobs[rep % len(jobs) :] + jobs[: rep % len(jobs)]  # rotate the order each repeat
        for kind, k in jobs:
            # A measurement slower than `slow_seconds` is taken once: the grid must fit in time.
            if rep > 0 and kind == "pop" and pop[k][0] > args.slow_seconds:
                continue
            if rep > 0 and kind == "seq" and seq[k][0] > args.slow_seconds:
                continue
            if rep > 0 and kind == "sklearn" and sk[0] > args.slow_seconds:
                continue
            if kind == "seq":
                seconds, cpu, _ = timed(
                    lambda k=k: [fitwell_run(data, width, [s], device) for s in range(k)], device
                )
                seq[k].append(seconds)
                seq_cpu[k].append(cpu)
            elif kind == "pop":
                seconds, cpu, mem = timed(
                    lambda k=k: fitwell_run(data, width, list(range(k)), device), device
                )
                pop[k].append(seconds)
                pop_cpu[k].append(cpu)
                pop_mem[k] = max(pop_mem[k], mem)
            elif kind == "single":
                seconds, cpu, mem = timed(
                    lambda rep=rep: fitwell_run(data, width, [rep], device), device
                )
                single.append(seconds)
                single_cpu.append(cpu)
                single_mem = max(single_mem, mem)
            else:
                seconds, cpu, _ = timed(
                    lambda rep=rep: sklearn_run(data, width, rep, args.threads), device
                )
                sk.append(seconds)
                sk_cpu.append(cpu)
    arch = Architecture(data.x_train.shape[1], (width, width), data.n_classes)
    n_train, n_val = len(data.x_train), len(data.x_val)
    flops_one = data.epochs * (
        mlp_flops(arch, n_train, train=True) + mlp_flops(arch, n_train + n_val, train=False)
    )
    t_single, t_sk = statistics.median(single), statistics.median(sk)
    c_single, c_sk = statistics.median(single_cpu), statistics.median(sk_cpu)
    t_one = statistics.median(pop[min(args.members)]) if 1 in args.members else t_single
    out = []
    for k in args.members:
        t_pop, c_pop = statistics.median(pop[k]), statistics.median(pop_cpu[k])
        gflops = k * flops_one / t_pop / 1e9
        measured = bool(seq.get(k))
        t_seq = statistics.median(seq[k]) if measured else k * t_single
        c_seq = statistics.median(seq_cpu[k]) if measured else k * c_single
        row = {
            "dataset": data.name,
            "rows_train": n_train,
            "width": width,
            "K": k,
            "epochs": data.epochs,
            "population_s": t_pop,
            "population_repeats": len(pop[k]),
            "sequential_fitwell_s": t_seq,
            "sequential_fitwell_repeats": len(seq[k]) if measured else 0,
            "sequential_sklearn_s": k * t_sk,
            "sequential_extrapolated": k > 1 and not measured,
            "sequential_sklearn_extrapolated": k > 1,
            "single_fitwell_s": t_single,
            "single_sklearn_s": t_sk,
            "speedup_vs_fitwell": t_seq / t_pop,
            "speedup_vs_sklearn": k * t_sk / t_pop,
            "vs_one_member": t_pop / t_one,
            "population_cpu_s": c_pop,
            "single_fitwell_cpu_s": c_single,
            "single_sklearn_cpu_s": c_sk,
            "cpu_speedup_vs_fitwell": c_seq / c_pop,
            "cpu_speedup_vs_sklearn": k * c_sk / c_pop,
            "population_peak_mb": pop_mem[k] / 2**20,
            "single_peak_mb": single_mem / 2**20,
            "gflops": gflops,
            "fraction_of_matmul_peak": gflops / peak,
        }
        out.append(row)
        _print_row(row)
    return out


_HEADER = (
    f"{'dataset':<13}{'width':>6}{'K':>4}{'pop s':>9}{'K×fitwell s':>13}{'K×sklearn s':>13}"
    f"{'×fitwell':>9}{'×sklearn':>9}{'cpu×fw':>8}{'cpu×sk':>8}{'/1 memb':>8}{'peak MB':>9}"
    f"{'GFLOP/s':>9}{'%peak':>7}"
)


def _print_row(r: dict[str, Any]) -> None:
    mark = "*" if r["sequential_extrapolated"] else " "
    sk_mark = "*" if r["sequential_sklearn_extrapolated"] else " "
    print(
        f"{r['dataset']:<13}{r['width']:>6}{r['K']:>4}{r['population_s']:>9.2f}"
        f"{r['sequential_fitwell_s']:>12.2f}{mark}{r['sequential_sklearn_s']:>12.2f}{sk_mark}"
        f"{r['speedup_vs_fitwell']:>9.2f}{r['speedup_vs_sklearn']:>9.2f}"
        f"{r['cpu_speedup_vs_fitwell']:>8.2f}{r['cpu_speedup_vs_sklearn']:>8.2f}"
        f"{r['vs_one_member']:>8.2f}"
        f"{r['population_peak_mb']:>9.1f}{r['gflops']:>9.2f}"
        f"{100 * r['fraction_of_matmul_peak']:>6.1f}%",
        flush=True,
    )


def _machine(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": threads,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table (for docs / README)."""
    lines = [
        "| dataset | width | K | population s | K × fitwell s | K × sklearn s | speed-up vs "
        "fitwell | vs sklearn | CPU-time speed-up vs fitwell | vs sklearn | time / 1 member | "
        "peak MB | GFLOP/s | % of matmul peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mark = "*" if r["sequential_extrapolated"] else ""
        sk_mark = "*" if r["sequential_sklearn_extrapolated"] else ""
        lines.append(
            f"| {r['dataset']} | {r['width']} | {r['K']} | {r['population_s']:.2f} | "
            f"{r['sequential_fitwell_s']:.2f}{mark} | {r['sequential_sklearn_s']:.2f}{sk_mark} | "
            f"{r['speedup_vs_fitwell']:.2f}× | {r['speedup_vs_sklearn']:.2f}× | "
            f"{r['cpu_speedup_vs_fitwell']:.2f}× | {r['cpu_speedup_vs_sklearn']:.2f}× | "
            f"{r['vs_one_member']:.2f} | {r['population_peak_mb']:.1f} | {r['gflops']:.2f} | "
            f"{100 * r['fraction_of_matmul_peak']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits, K in {1,4}, width 32, 1 epoch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["digits", "mnist1d-4k", "mnist1d-100k"],
        help="digits, mnist1d-4k, mnist1d-100k",
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs on the small datasets")
    p.add_argument("--epochs-large", type=int, default=1, help="epochs on mnist1d-100k")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="DATASET:WIDTH",
        help="cells not to measure, e.g. mnist1d-100k:512 (recorded in the JSON)",
    )
    p.add_argument(
        "--slow-seconds",
        type=float,
        default=20.0,
        help="a measurement slower than this is not repeated",
    )
    p.add_argument("--out", type=Path, help=f"JSON output (default {RESULTS})")
    args = p.parse_args(argv)
    if args.quick:
        args.members, args.widths, args.datasets = [1, 4], [32], ["digits"]
        args.epochs, args.repeats = 1, 2
    if args.out is None:
        args.out = RESULTS.with_name("population-quick.json") if args.quick else RESULTS
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here.")
    result = run(args)
    print(
        "\n* K × the median measured single run (extrapolated); unmarked fitwell sequential "
        "figures are K single runs measured one after another"
    )
    print(markdown_table(result))
    _write(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
