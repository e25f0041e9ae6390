"""One-hot inputs against learned embeddings for a high-cardinality text column.

A generated regression table: one text column of ``--categories`` values drawn with skewed
frequencies (probability ~ 1 / (rank + 5), so a few are common and many are rare), whose hidden
value per category carries most of the target, beside four numeric columns:
``y = 1.5 * v[category] + x1 + 0.5 * x2 * x3 + 0.3 * noise`` (x4 is noise). For each seed (the
table, split and initialisation all follow it) fitwell trains the same network twice: with the
column one-hot (``embed_categories_above = 0``) and with a learned embedding
(``embed_categories_above = 30``, fastai's width rule). Reports the test r2, the seconds
``fitwell.train`` took and the parameters of one member. Prints a table and writes JSON.

    python benchmarks/categories.py [--seeds 3] [--rows 5000] [--categories 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS: dict[str, dict] = {
    "one-hot": {"embed_categories_above": 0},
    "embedding": {"embed_categories_above": 30},
}
# The same network for both: small enough that 6 runs take a few minutes on 2 cores.
SETTINGS: dict = {"hidden": (128, 128), "restarts": 1, "max_epochs": 60, "patience": 10}


def make_table(rows: int, categories: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    value = rng.normal(size=categories)
    weights = 1.0 / (np.arange(categories) + 5.0)
    category = rng.choice(categories, size=rows, p=weights / weights.sum())
    x = rng.normal(size=(rows, 4))
    y = 1.5 * value[category] + x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=rows)
    frame = pd.DataFrame(x, columns=["x1", "x2", "x3", "x4"])
    frame.insert(0, "category", [f"c{c:05d}" for c in category])
    frame["y"] = y
    return frame


def run(rows: int, categories: int, seeds: list[int]) -> dict:
    import fitwell

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up: the first fit in a process pays for imports and first kernel calls.
        warm = Path(tmp) / "warm.csv"
        make_table(300, 40, 0).to_csv(warm, index=False)
        fitwell.train(warm, target="y", **{**SETTINGS, "max_epochs": 2})
        for seed in seeds:
            path = Path(tmp) / f"table_{seed}.csv"
            make_table(rows, categories, seed).to_csv(path, index=False)
            for variant, settings in VARIANTS.items():
                t0 = time.perf_counter()
                result = fitwell.train(path, target="y", seed=seed, **SETTINGS, **settings)
                seconds = time.perf_counter() - t0
                n_members = result.model.n_members
                params = sum(t.numel() for t in result.model.state_dict().values()) // n_members
                results.append(
                    {
                        "seed": seed,
                        "variant": variant,
                        "test_r2": result.metrics["test_score"],
                        "best_epoch": result.metrics["best_epoch"],
                        "seconds": seconds,
                        "parameters": params,
                        "inputs": len(result.preprocessor.encoded_names),
                    }
                )
                r = results[-1]
                print(f"  seed {seed} {variant}: r2 {r['test_r2']:.4f}", file=sys.stderr)
    summary = []
    for variant in VARIANTS:
        rs = [r for r in results if r["variant"] == variant]
        summary.append(
            {
                "variant": variant,
                "test_r2_mean": statistics.mean(r["test_r2"] for r in rs),
                "test_r2_std": statistics.stdev(r["test_r2"] for r in rs) if len(rs) > 1 else 0.0,
                "seconds_mean": statistics.mean(r["seconds"] for r in rs),
                "parameters": statistics.median(r["parameters"] for r in rs),
                "best_epoch_median": statistics.median(r["best_epoch"] for r in rs),
            }
        )
    return {
        "rows": rows,
        "categories": categories,
        "seeds": seeds,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()},
        "results": results,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/categories.json"))
    args = parser.parse_args()
    doc = run(args.rows, args.categories, list(range(args.seeds)))
    print(f"{'variant':10s} {'test r2':>16s} {'seconds':>8s} {'params':>9s} {'best ep':>8s}")
    for s in doc["summary"]:
        print(
            f"{s['variant']:10s} {s['test_r2_mean']:.4f} ± {s['test_r2_std']:.4f} "
            f"{s['seconds_mean']:8.1f} {s['parameters']:9,.0f} {s['best_epoch_median']:8.0f}"
        )
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
