"""Diagnosis benchmark: broken setups (one per fault kind, several datasets) and healthy twins.

For every setup and seed, fitwell trains with its doctor and the findings are compared with the
expected code. Every setup trains one model (``ensemble=1``; the local-minimum setups train
8 restarts and keep the best). Prints, per code: detection rate (the expected code at
warning/error level), the median epoch of first detection, and false alarms (any warning/error
on a healthy twin). Then measures the doctor's overhead: healthy runs with and without the
whole doctor (training probe, post-training diagnosis, duplicate-row hashing), interleaved,
median ratio of wall times. Writes ``benchmarks/results/diagnosis.json``.

    python benchmarks/diagnosis.py            # full: 5 seeds
    python benchmarks/diagnosis.py --quick    # 2 seeds, for development
    python benchmarks/diagnosis.py --only healthy --recipe realmlp --out R.json
                                              # the healthy runs under a recipe's preset
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fitwell.api import train
from fitwell.diagnosis import probes
from fitwell.diagnosis.context import build_context
from fitwell.diagnosis.findings import first_detection
from fitwell.errors import TrainingFailed

EARLY_CODES = {
    "vanishing_gradients",
    "saturated_activations",
    "divergence",
    "lr_too_high",
    "slow_convergence",
    "dead_relu",
    "exploding_gradients",
}
HEALTHY = {"hidden": (64, 64), "max_epochs": 30, "patience": 10}
# The small network's runs are short (~0.6 s) and its overhead ratio the noisiest: it gets this
# many times the default network's pairs.
SMALL_REPEATS = 3


@dataclass
class Setup:
    name: str
    expected: str | None  # None: a healthy twin
    settings: dict[str, Any]
    dataset: str = "digits"
    twin_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ data on disk
def _frame(name: str) -> pd.DataFrame:
    from fitwell.data.datasets import load_builtin

    frame, target = load_builtin(name)
    return frame.rename(columns={target: "target"})


def _write_tables(folder: Path) -> dict[str, Path]:
    """Synthetic tasks and altered copies of real ones, generated locally (no downloads)."""
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}
    n = 1000
    x = rng.uniform(-1, 1, size=(n, 2))
    xor = pd.DataFrame(x, columns=["a", "b"])
    xor["target"] = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
    paths["xor"] = folder / "xor.csv"
    xor.to_csv(paths["xor"], index=False)
    x3 = rng.uniform(-1, 1, size=(n, 3))
    parity = pd.DataFrame(x3, columns=["a", "b", "c"])
    parity["target"] = ((x3 > 0).sum(axis=1) % 2).astype(int)
    paths["parity3"] = folder / "parity3.csv"
    parity.to_csv(paths["parity3"], index=False)
    for name in ("digits", "breast_cancer", "wine"):
        frame = _frame(name)
        shuffled = frame.copy()
        shuffled["target"] = rng.permutation(shuffled["target"].to_numpy())
        paths[f"{name}_shuffled"] = folder / f"{name}_shuffled.csv"
        shuffled.to_csv(paths[f"{name}_shuffled"], index=False)
        # Leaky: a third of the rows appear twice, so random splits put copies on both sides.
        dup = frame.sample(frac=1 / 3, random_state=0)
        leaky = pd.concat([frame, dup], ignore_index=True)
        paths[f"{name}_leaky"] = folder / f"{name}_leaky.csv"
        leaky.to_csv(paths[f"{name}_leaky"], index=False)
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    # Drawn last, so the tables above stay what they were before it was added.
    # A 4x4 checkerboard: no linear model beats chance, a network with enough units draws it.
    xb = rng.uniform(0, 4, size=(2 * n, 2))
    board = pd.DataFrame(xb, columns=["a", "b"])
    board["target"] = (np.floor(xb).sum(axis=1) % 2).astype(int)
    paths["checkerboard"] = folder / "checkerboard.csv"
    board.to_csv(paths["checkerboard"], index=False)
    return paths


def setups() -> list[Setup]:
    deep_sig = {"hidden": (32,) * 7, "activation": "sigmoid", "max_epochs": 30}
    sat = {"activation": "tanh", "init_scale": 8.0, "scale": False, "max_epochs": 30}
    explode = {"hidden": (64,) * 7, "init_scale": 4.0, "max_epochs": 30}
    overfit = {"hidden": (256, 256, 256), "max_epochs": 60, "patience": 0}
    few_rows = {"wine": (0.5, 0.25, 0.25), "breast_cancer": (0.35, 0.3, 0.35)}
    out: list[Setup] = []
    for ds in ("digits", "breast_cancer"):
        out.append(Setup(f"vanishing/{ds}", "vanishing_gradients", deep_sig, ds))
        out.append(
            Setup(f"divergence/{ds}", "divergence", {**HEALTHY, "optimizer": "sgd", "lr": 10.0}, ds)
        )
        out.append(Setup(f"dead_relu/{ds}", "dead_relu", {**HEALTHY, "bias_init": -5.0}, ds))
        out.append(Setup(f"no_signal/{ds}", "no_signal", HEALTHY, f"{ds}_shuffled"))
    for ds in ("digits", "wine"):
        out.append(Setup(f"saturated/{ds}", "saturated_activations", sat, ds))
        out.append(Setup(f"lr_too_high/{ds}", "lr_too_high", {**HEALTHY, "lr": 0.5}, ds))
        out.append(Setup(f"exploding/{ds}", "exploding_gradients", explode, ds))
    for ds in ("breast_cancer", "wine"):
        out.append(
            Setup(f"overfitting/{ds}", "overfitting", {**overfit, "split": few_rows[ds]}, ds)
        )
        out.append(Setup(f"slow/{ds}", "slow_convergence", {**HEALTHY, "lr": 1e-6}, ds))
        out.append(Setup(f"leakage/{ds}", "leakage", HEALTHY, f"{ds}_leaky"))
    out.append(Setup("underfitting/digits-2units", "underfitting", {**HEALTHY, "hidden": (2,)}))
    out.append(Setup("underfitting/wine-l2", "underfitting", {**HEALTHY, "l2": 1.0}, "wine"))
    out.append(Setup("underfitting/digits-dropout", "underfitting", {**HEALTHY, "dropout": 0.9}))
    # Capacity-starved where a linear model is weak, so only a wider network can show it.
    out.append(
        Setup("underfitting/mnist1d-8x8", "underfitting", {**HEALTHY, "hidden": (8, 8)}, "mnist1d")
    )
    out.append(
        Setup(
            "underfitting/checkerboard-4units",
            "underfitting",
            {**HEALTHY, "hidden": (4,), "dropout": 0.0, "max_epochs": 60},
            "checkerboard",
        )
    )
    # Tiny networks whose restarts land in different minima. Dropout is pinned to 0: the
    # default 0.2 would drop a 2-unit layer's units at random, a different fault.
    lm = {
        "hidden": (2,),
        "max_epochs": 60,
        "restarts": 8,
        "lr": 0.03,
        "patience": 20,
        "dropout": 0.0,
    }
    out.append(Setup("local_minimum/xor", "local_minimum", lm, "xor"))
    out.append(Setup("local_minimum/parity3", "local_minimum", {**lm, "hidden": (2, 2)}, "parity3"))
    # Healthy twins: the same setup without the fault.
    twins = [
        ("vanishing/digits", {"hidden": (32,) * 7, "max_epochs": 30, "patience": 10}, "digits"),
        ("divergence/breast_cancer", {**HEALTHY, "optimizer": "sgd", "lr": 0.01}, "breast_cancer"),
        ("dead_relu/breast_cancer", HEALTHY, "breast_cancer"),
        (
            "overfitting/breast_cancer",
            {**overfit, "patience": 10, "split": few_rows["breast_cancer"]},
            "breast_cancer",
        ),
        ("no_signal/breast_cancer", HEALTHY, "breast_cancer"),
        ("saturated/wine", {**HEALTHY, "activation": "tanh"}, "wine"),
        ("lr_too_high/digits", HEALTHY, "digits"),
        ("exploding/wine", {**explode, "init_scale": 1.0, "patience": 10}, "wine"),
        ("slow/wine", {**HEALTHY, "max_epochs": 60}, "wine"),
        ("leakage/wine", HEALTHY, "wine"),
        ("underfitting/digits-2units", HEALTHY, "digits"),
        ("local_minimum/xor", {**lm, "hidden": (32, 32)}, "xor"),
        # fitwell's width for a table this size: 64 x 64 underfits MNIST-1D (validation accuracy
        # 0.47-0.49 after 10 epochs where a 256 x 256 network reaches 0.57-0.58).
        ("mnist1d", {**HEALTHY, "hidden": (256, 256), "max_epochs": 10}, "mnist1d"),
        ("underfitting/mnist1d-8x8", {**HEALTHY, "hidden": (256, 256)}, "mnist1d"),
        (  # fitwell's width for 1,400 training rows; 64 x 64 early-stops at 0.81-0.85 in 3 of 5
            "underfitting/checkerboard-4units",  # seeds, where a 256 x 256 network reaches 0.94+
            {**HEALTHY, "hidden": (256, 256), "dropout": 0.0, "max_epochs": 60},
            "checkerboard",
        ),
    ]
    for of, settings, ds in twins:
        out.append(Setup(f"healthy/{of}", None, settings, ds, twin_of=of))
    # fitwell's plain defaults (auto width, 3-member ensemble, early stopping): every default
    # run trains 3 seeds, so the restart-spread rule is judged on each of these too.
    for ds in ("digits", "breast_cancer", "wine", "iris", "diabetes", "penguins"):
        out.append(Setup(f"healthy/defaults/{ds}", None, {"ensemble": 3}, ds, twin_of="defaults"))
    return out


# ---------------------------------------------------------------------------------- running
def _source(setup: Setup, tables: dict[str, Path]) -> dict[str, Any]:
    if setup.dataset in tables and setup.dataset not in ("digits", "breast_cancer", "wine"):
        return {"data": str(tables[setup.dataset]), "target": "target"}
    return {"dataset": setup.dataset}


def run_one(
    setup: Setup, seed: int, tables: dict[str, Path], recipe: str = "classic"
) -> dict[str, Any]:
    # One model per run (ensemble 1) unless the setup says otherwise: the doctor judges how a
    # training run went; averaging members is the final model's business, not the fault's.
    # A recipe fills in the settings the setup leaves open (the setup's own settings win).
    settings = {"ensemble": 1, **setup.settings, "recipe": recipe}
    start = time.perf_counter()
    try:
        run = train(**_source(setup, tables), seed=seed, **settings)
    except TrainingFailed as exc:
        codes = {f["code"]: f for f in exc.findings if f["severity"] != "info"}
        first = {c: f["epoch"] for c, f in codes.items() if f["epoch"] is not None}
        return {
            "codes": sorted(codes),
            "first": first,
            "failed": True,
            "max_epochs": settings.get("max_epochs", 200),
            "seconds": time.perf_counter() - start,
        }
    seconds = time.perf_counter() - start
    signals = run.extra["signals"]
    ctx = build_context(signals["context"])
    first = first_detection(
        signals["records"],
        run.extra["fit"].history,
        ctx,
        layers=signals["layers"],
        activation=signals["activation"],
    )
    codes = sorted({f["code"] for f in run.metrics["findings"] if f["severity"] != "info"})
    capacity = signals["context"].get("capacity") or {}
    return {
        "codes": codes,
        "first": first,
        "failed": False,
        "max_epochs": settings.get("max_epochs", 200),
        "seconds": seconds,
        # The wider reference network's share of the run (0 when it was not needed).
        "capacity_seconds": float(capacity.get("seconds", 0.0)),
        "info": sorted({f["code"] for f in run.metrics["findings"] if f["severity"] == "info"}),
    }


def detection_table(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for code in sorted({r["expected"] for r in results if r["expected"]}):
        rows = [r for r in results if r["expected"] == code]
        hits = [r for r in rows if code in r["codes"]]
        epochs = [r["first"][code] for r in hits if code in r["first"]]
        early = [
            r
            for r in hits
            if code in r["first"] and r["first"][code] <= max(1, int(0.3 * r["max_epochs"]))
        ]
        table[code] = {
            "setups": len({r["setup"] for r in rows}),
            "runs": len(rows),
            "detected": len(hits),
            "detection_rate": len(hits) / len(rows),
            "within_30pct": len(early) / len(rows),
            "median_first_epoch": statistics.median(epochs) if epochs else None,
            "setups_detected_4_of_5": sum(
                1
                for s in {r["setup"] for r in rows}
                if sum(code in r["codes"] for r in rows if r["setup"] == s)
                >= 0.8 * sum(1 for r in rows if r["setup"] == s)
            ),
        }
    return table


def measure_overhead(repeats: int, hidden: tuple[int, ...] = (256, 256)) -> dict[str, Any]:
    """Healthy digits runs with and without the doctor, interleaved; median time ratio.

    "Without" removes all of it: the training probe (every hook a no-op), the post-training
    diagnosis (baseline, linear reference, rules) and the train/test duplicate-row hashing.
    ``hidden=(256, 256)`` is fitwell's default network; a smaller one shows the worst case,
    where the per-step work of the probe is largest relative to the step itself.
    """
    import fitwell.api as api
    import fitwell.data.preparation as preparation

    settings = {
        "dataset": "digits",
        **HEALTHY,
        "hidden": hidden,
        "max_epochs": 15,
        "patience": 0,
        "ensemble": 1,
    }
    real_probe, real_diagnose, real_hashes, real_capacity = (
        api.SignalProbe,
        api.diagnose_fit,
        preparation.count_rows_seen,
        api.needs_capacity_reference,
    )

    class Silent(probes.SignalProbe):
        """Records nothing: every hook is the base Callback's no-op."""

        def on_fit_begin(self, trainer: Any, **kwargs: Any) -> None: ...
        def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None: ...
        def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None: ...

        on_after_backward = probes.Callback.on_after_backward

    def no_diagnosis(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"findings": []}

    def no_hashes(rows: Any, seen: Any, **kwargs: Any) -> int:
        return 0

    def no_capacity(*args: Any, **kwargs: Any) -> bool:
        return False

    # The with-doctor runs also time the doctor's own calls (probe hooks, diagnosis, duplicate
    # counting), an accounting of its cost inside the run that machine noise does not blur. The
    # clock costs ~1 us per call (~0.5 ms a run here), counted against the doctor.
    doctor_seconds = [0.0]

    def clocked(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                doctor_seconds[0] += time.perf_counter() - start

        return wrapper

    class ClockedProbe(real_probe):  # type: ignore[misc, valid-type]
        on_fit_begin = clocked(real_probe.on_fit_begin)
        on_epoch_begin = clocked(real_probe.on_epoch_begin)
        on_after_backward = clocked(real_probe.on_after_backward)
        on_epoch_end = clocked(real_probe.on_epoch_end)
        _on_preactivation = clocked(real_probe._on_preactivation)

    def timed(with_doctor: bool) -> tuple[float, float, float]:
        doctor_seconds[0] = 0.0
        if with_doctor:
            api.SignalProbe = ClockedProbe  # type: ignore[misc]
            api.diagnose_fit = clocked(real_diagnose)  # type: ignore[assignment]
            preparation.count_rows_seen = clocked(real_hashes)  # type: ignore[assignment]
            api.needs_capacity_reference = clocked(real_capacity)  # type: ignore[assignment]
        else:
            api.SignalProbe = Silent  # type: ignore[misc]
            api.diagnose_fit = no_diagnosis  # type: ignore[assignment]
            preparation.count_rows_seen = no_hashes  # type: ignore[assignment]
            api.needs_capacity_reference = no_capacity  # type: ignore[assignment]
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            train(seed=0, **settings)
            seconds = time.perf_counter() - start
            return seconds, time.process_time() - cpu_start, doctor_seconds[0] / seconds
        finally:
            api.SignalProbe = real_probe  # type: ignore[misc]
            api.diagnose_fit = real_diagnose  # type: ignore[assignment]
            preparation.count_rows_seen = real_hashes  # type: ignore[assignment]
            api.needs_capacity_reference = real_capacity  # type: ignore[assignment]

    timed(True)
    timed(False)
    ratios, with_t, without_t, with_cpu, without_cpu, shares = [], [], [], [], [], []
    for i in range(repeats):
        order = (True, False) if i % 2 == 0 else (False, True)
        t = {mode: timed(mode) for mode in order}
        with_t.append(t[True][0])
        without_t.append(t[False][0])
        with_cpu.append(t[True][1])
        without_cpu.append(t[False][1])
        shares.append(t[True][2])
        ratios.append(t[True][0] / t[False][0])
    return {
        "setting": settings,
        "repeats": repeats,
        "median_seconds_with": statistics.median(with_t),
        "median_seconds_without": statistics.median(without_t),
        "median_ratio": statistics.median(ratios),
        # Steadier views on a shared machine: medians' ratio, fastest runs' ratio (interference
        # only adds time) and process CPU time (waiting for the core excluded).
        "ratio_of_medians": statistics.median(with_t) / statistics.median(without_t),
        "min_ratio": min(with_t) / min(without_t),
        "cpu_ratio": statistics.median(with_cpu) / statistics.median(without_cpu),
        # The doctor's own calls as a share of the with-doctor run (median over runs): the
        # overhead as 1 / (1 - share), free of run-to-run noise (cache effects not included).
        "doctor_share": statistics.median(shares),
        "accounted_ratio": 1.0 / (1.0 - statistics.median(shares)),
        "ratios": ratios,
        "note": "'without' removes the whole doctor: probe hooks, post-training diagnosis "
        "(baseline, linear reference, capacity check, rules) and duplicate-row counting",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3 overhead repeats")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--only", help="run setups whose name contains this text")
    parser.add_argument(
        "--recipe",
        default="classic",
        choices=("classic", "realmlp"),
        help="the preset that fills the settings each setup leaves open",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/diagnosis.json; with --only, written "
        "only when given)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="overhead pairs per network")
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="measure only the overhead and replace it in an existing --out file",
    )
    args = parser.parse_args(argv)
    write_json = args.out is not None or not args.only
    args.out = args.out or str(Path(__file__).parent / "results" / "diagnosis.json")
    torch.set_num_threads(1)
    if args.overhead_only:
        doc = json.loads(Path(args.out).read_text())
        doc["overhead"] = {
            "default_network": measure_overhead(args.repeats),
            "small_network": measure_overhead(SMALL_REPEATS * args.repeats, hidden=(64, 64)),
        }
        doc["overhead_command"] = (
            f"python benchmarks/diagnosis.py --overhead-only --repeats {args.repeats}"
        )
        for name, o in doc["overhead"].items():
            print(
                f"overhead, {name} {o['setting']['hidden']}: median ratio with/without the doctor "
                f"{o['median_ratio']:.3f} (medians {o['ratio_of_medians']:.3f}, fastest "
                f"{o['min_ratio']:.3f}, CPU {o['cpu_ratio']:.3f}, accounted "
                f"{o['accounted_ratio']:.3f}; {o['median_seconds_without']:.2f}s without, "
                f"{o['repeats']} pairs)"
            )
        Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return 0
    n_seeds = args.seeds or (2 if args.quick else 5)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tables = _write_tables(Path(tmp))
        for setup in setups():
            if args.only and args.only not in setup.name:
                continue
            for seed in range(n_seeds):
                r = run_one(
                    setup,
                    seed * 10 if "restarts" in setup.settings else seed,
                    tables,
                    recipe=args.recipe,
                )
                r.update(setup=setup.name, expected=setup.expected, seed=seed)
                results.append(r)
                mark = (
                    ("ok" if setup.expected in r["codes"] else "MISSED")
                    if setup.expected
                    else ("ok" if not r["codes"] else "FALSE ALARM")
                )
                print(
                    f"{setup.name:34s} seed {seed}: {mark:11s} {r['codes']} {r['seconds']:.1f}s",
                    flush=True,
                )
    table = detection_table(results)
    healthy = [r for r in results if r["expected"] is None]
    false_alarms = [r for r in healthy if r["codes"]]
    overhead = None
    if not args.only:
        repeats = 3 if args.quick else args.repeats
        overhead = {
            "default_network": measure_overhead(repeats),
            "small_network": measure_overhead(SMALL_REPEATS * repeats, hidden=(64, 64)),
        }
    print("\ncode                    setups  runs  detected  within30%  median 1st epoch")
    for code, row in table.items():
        med = row["median_first_epoch"]
        print(
            f"{code:24s}{row['setups']:6d}{row['runs']:6d}{row['detection_rate']:9.0%}"
            f"{row['within_30pct']:11.0%}  {med if med is not None else '-'}"
        )
    if healthy:
        print(
            f"false alarms on healthy twins: {len(false_alarms)}/{len(healthy)} "
            f"({len(false_alarms) / len(healthy):.0%})"
        )
    if overhead:
        for name, o in overhead.items():
            print(
                f"overhead, {name} {o['setting']['hidden']}: median ratio with/without the doctor "
                f"{o['median_ratio']:.3f} (medians {o['ratio_of_medians']:.3f}, fastest "
                f"{o['min_ratio']:.3f}, CPU {o['cpu_ratio']:.3f}, accounted "
                f"{o['accounted_ratio']:.3f}; {o['median_seconds_without']:.2f}s without, "
                f"{o['repeats']} pairs)"
            )
    doc = {
        "command": "python benchmarks/diagnosis.py"
        + (" --quick" if args.quick else "")
        + (f" --seeds {args.seeds}" if args.seeds else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --recipe {args.recipe}" if args.recipe != "classic" else ""),
        "recipe": args.recipe,
        "seeds": n_seeds,
        "detection": table,
        "healthy_runs": len(healthy),
        "false_alarms": len(false_alarms),
        "false_alarm_rate": len(false_alarms) / len(healthy) if healthy else None,
        "false_alarm_runs": [{k: r[k] for k in ("setup", "seed", "codes")} for r in false_alarms],
        "overhead": overhead,
        "runs": results,
        "seconds": time.perf_counter() - started,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": 1,
        },
    }
    if write_json:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
