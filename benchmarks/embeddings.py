"""RealMLP's front against the plain MLP: periodic numeric embeddings (PBLD) and the front scale.

For each table and seed, fitwell's defaults (``fitwell.train``: two 256-wide ReLU layers, Adam at
3e-3, early stopping on validation loss, the average of 3 seeds) as they are, with
``numeric_embedding="pbld"`` (16 frequencies, 3 outputs and the raw value per column), with the
front scale alone, and with both. Reports the test accuracy, the epoch of the best validation
loss and the seconds ``fitwell.train`` took (data loading and the test read included). An option
becomes the default only if it wins. Prints a table and writes JSON.

    python benchmarks/embeddings.py [--seeds 3] [--datasets mnist1d]
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
    "defaults": {},
    "pbld": {"numeric_embedding": "pbld"},
    "front scale": {"front_scale": True},
    "pbld + scale": {"numeric_embedding": "pbld", "front_scale": True},
    "robust": {"scaling": "robust"},
    "smoothing 0.1": {"label_smoothing": 0.1},
    "beta2 0.95": {"adam_beta2": 0.95},
    "pbld + scale + robust": {
        "numeric_embedding": "pbld",
        "front_scale": True,
        "scaling": "robust",
    },
}


def run(datasets: list[str], seeds: list[int], variants: list[str]) -> dict:
    import fitwell

    rows = []
    for name in datasets:
        for seed in seeds:
            for variant in variants:
                t0 = time.perf_counter()
                result = fitwell.train(dataset=name, seed=seed, **VARIANTS[variant])
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "variant": variant,
                        "test": result.metrics["test_score"],
                        "best_epoch": result.metrics["best_epoch"],
                        "epochs_run": result.metrics["epochs_run"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"  {name} seed {seed} {variant}: {rows[-1]['test']:.4f} "
                    f"({rows[-1]['seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = []
    for name in datasets:
        base = [r["test"] for r in rows if r["dataset"] == name and r["variant"] == variants[0]]
        for variant in variants:
            rs = [r for r in rows if r["dataset"] == name and r["variant"] == variant]
            mean = statistics.mean(r["test"] for r in rs)
            summary.append(
                {
                    "dataset": name,
                    "variant": variant,
                    "test_mean": mean,
                    "test_std": statistics.stdev(r["test"] for r in rs) if len(rs) > 1 else 0.0,
                    "minus_defaults": mean - statistics.mean(base),
                    "wins_vs_defaults": sum(r["test"] >= b for r, b in zip(rs, base, strict=True)),
                    "best_epoch_median": statistics.median(r["best_epoch"] for r in rs),
                    "seconds_mean": statistics.mean(r["seconds"] for r in rs),
                }
            )
    return {
        "seeds": seeds,
        "variants": {v: VARIANTS[v] for v in variants},
        "rows": rows,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="mnist1d")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="first one is the baseline")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/embeddings.json"))
    args = parser.parse_args()
    doc = run(args.datasets.split(","), list(range(args.seeds)), args.variants.split(","))
    print(
        f"{'dataset':10s} {'variant':13s} {'test':>15s} {'vs defaults':>12s} {'wins':>5s} "
        f"{'best ep':>8s} {'fit s':>6s}"
    )
    for s in doc["summary"]:
        print(
            f"{s['dataset']:10s} {s['variant']:13s} {s['test_mean']:.4f} ± {s['test_std']:.4f} "
            f"{s['minus_defaults']:+12.4f} {s['wins_vs_defaults']:>3d}/{len(doc['seeds'])} "
            f"{s['best_epoch_median']:8.0f} {s['seconds_mean']:6.1f}"
        )
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
