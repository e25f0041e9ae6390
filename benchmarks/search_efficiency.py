"""Search as populations vs. one trial at a time: trials per minute and best validation loss.

The same TPE search (same seed, space and time budget; repairs off) runs three ways, side by
side in one run: trials trained one at a time (population of 1), trials trained as populations
of 8 with no pruning (the same work per trial, batched), and populations of 8 with the rung rule
(fitwell auto's default). Widths are limited to at most 128 (where batching pays on a CPU).
Prints a table and writes JSON.

    python benchmarks/search_efficiency.py [--budget 60] [--datasets digits,mnist1d]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODES = {
    "one at a time": {"population_size": 1, "prune": False},
    "populations of 8": {"population_size": 8, "prune": False},
    "populations of 8, pruned": {"population_size": 8, "prune": True},
}


def run(datasets: list[str], budget: float, seed: int) -> dict:
    from fitwell.auto import auto
    from fitwell.auto import search as space

    space.WIDTHS = (32, 64, 128)  # the CPU regime where batching members pays
    rows = []
    for name in datasets:
        for mode, options in MODES.items():
            result = auto(dataset=name, seed=seed, time_budget=budget, repair=False, **options)
            search = result.metrics["auto"]["search"]
            stage = next(s for s in result.metrics["auto"]["stages"] if s["stage"] == "search")
            rows.append(
                {
                    "dataset": name,
                    "mode": mode,
                    "trials": search["trials"],
                    "complete": search["complete"],
                    "pruned": search["pruned"],
                    "search_seconds": stage["seconds"],
                    "trials_per_minute": 60.0 * search["trials"] / stage["seconds"],
                    "best_val_loss": search["best_val_loss"],
                    "test_score": result.metrics["test_score"],
                }
            )
            print(f"  {name} / {mode}: {rows[-1]['trials']} trials", file=sys.stderr, flush=True)
    for name in datasets:
        base = next(r for r in rows if r["dataset"] == name and r["mode"] == "one at a time")
        for r in rows:
            if r["dataset"] == name:
                r["ratio_vs_one_at_a_time"] = r["trials_per_minute"] / base["trials_per_minute"]
    return {"budget_seconds": budget, "seed": seed, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/search_efficiency.json"))
    args = parser.parse_args()
    result = run(args.datasets.split(","), args.budget, args.seed)
    print(
        f"{'dataset':<10}{'mode':<27}{'trials':>7}{'complete':>9}{'pruned':>7}"
        f"{'trials/min':>11}{'ratio':>7}{'best val loss':>14}{'test':>8}"
    )
    for r in result["rows"]:
        print(
            f"{r['dataset']:<10}{r['mode']:<27}{r['trials']:>7}{r['complete']:>9}"
            f"{r['pruned']:>7}{r['trials_per_minute']:>11.1f}{r['ratio_vs_one_at_a_time']:>7.2f}"
            f"{r['best_val_loss']:>14.4f}{r['test_score']:>8.4f}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
