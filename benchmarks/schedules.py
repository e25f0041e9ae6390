"""Learning-rate schedules against the constant rate, side by side in one run.

For each table and seed, fitwell's defaults (``fitwell.train``, early stopping on validation
loss, the average of 3 seeds) with each schedule: constant (today's default), cosine, onecycle,
plateau (a 10x cut after half the early-stopping patience without improvement), and a 5-epoch
linear warm-up before a constant rate; and Adam's beta2 at 0.95 (RealMLP's) with a
constant rate. Reports the test score, the epoch of the best validation loss and seconds; a
schedule becomes the default only if it wins. Prints a table and writes JSON.

    python benchmarks/schedules.py [--seeds 3] [--datasets digits,mnist1d] [--variants plateau]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS: dict[str, dict] = {
    "constant": {},
    "cosine": {"lr_schedule": "cosine"},
    "onecycle": {"lr_schedule": "onecycle"},
    "plateau": {"lr_schedule": "plateau"},
    "warmup 5": {"warmup_epochs": 5},
    "beta2 0.95": {"adam_beta2": 0.95},
}


def run(datasets: list[str], seeds: list[int], variants: list[str]) -> dict:
    import fitwell

    rows = []
    for name in datasets:
        for seed in seeds:
            for variant in variants:
                settings = VARIANTS[variant]
                t0 = time.perf_counter()
                result = fitwell.train(dataset=name, seed=seed, **settings)
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "variant": variant,
                        "test": result.metrics["test_score"],
                        "best_epoch": result.metrics["best_epoch"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(f"  {name} seed {seed} {variant}: {rows[-1]['test']:.4f}", file=sys.stderr)
    summary = []
    for name in datasets:
        base = [r["test"] for r in rows if r["dataset"] == name and r["variant"] == "constant"]
        for variant in variants:
            rs = [r for r in rows if r["dataset"] == name and r["variant"] == variant]
            mean = statistics.mean(r["test"] for r in rs)
            summary.append(
                {
                    "dataset": name,
                    "variant": variant,
                    "test_mean": mean,
                    "test_std": statistics.stdev(r["test"] for r in rs) if len(rs) > 1 else 0.0,
                    "minus_constant": mean - statistics.mean(base),
                    "wins_vs_constant": sum(r["test"] >= b for r, b in zip(rs, base, strict=True)),
                    "best_epoch_median": statistics.median(r["best_epoch"] for r in rs),
                    "seconds_mean": statistics.mean(r["seconds"] for r in rs),
                }
            )
    return {"seeds": seeds, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from: " + ", ".join(VARIANTS) + " (constant is always run)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/schedules.json"))
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    variants = ["constant", *(v for v in args.variants.split(",") if v != "constant")]
    doc = run(args.datasets.split(","), list(range(args.seeds)), variants)
    print(
        f"{'dataset':10s} {'variant':11s} {'test':>14s} {'vs const':>9s} {'wins':>5s} "
        f"{'best ep':>8s} {'s':>6s}"
    )
    for s in doc["summary"]:
        print(
            f"{s['dataset']:10s} {s['variant']:11s} {s['test_mean']:.4f} ± {s['test_std']:.4f} "
            f"{s['minus_constant']:+9.4f} {s['wins_vs_constant']:>3d}/{len(doc['seeds'])} "
            f"{s['best_epoch_median']:8.0f} {s['seconds_mean']:6.1f}"
        )
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
