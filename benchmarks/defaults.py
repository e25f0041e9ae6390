"""fitwell's plain defaults vs. scikit-learn's MLP defaults on every built-in dataset.

Both see the same rows: fitwell trains on its train split and early-stops on its validation
split; scikit-learn's ``MLPClassifier()`` / ``MLPRegressor()`` (inside a Pipeline with the same
imputation, one-hot encoding and scaling) trains on train + validation. Both are scored on the same
sealed test split. Several seeds (split + init): medians and means;
``wins`` counts seeds where fitwell scores at least as well. Prints a table, writes JSON.

    python benchmarks/defaults.py [--seeds 7] [--datasets digits,wine]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATASETS = ["digits", "breast_cancer", "wine", "iris", "diabetes", "penguins", "mnist1d"]


def sklearn_score(prepared, seed: int, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x = np.vstack([prepared.x_train, prepared.x_val])
    y = np.concatenate([prepared.y_train, prepared.y_val])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if prepared.task == "classification":
            model = MLPClassifier(random_state=seed).fit(x, y)
            return float((model.predict(x_test) == y_test).mean())
        model = MLPRegressor(random_state=seed).fit(x, y)
        return float(model.score(x_test, y_test))


def run(datasets: list[str], seeds: list[int], config: dict) -> dict:
    import fitwell
    from fitwell.data import load_table, prepare

    rows = []
    for name in datasets:
        for seed in seeds:
            t0 = time.perf_counter()
            result = fitwell.train(dataset=name, seed=seed, **config)
            fit_s = time.perf_counter() - t0
            table = load_table(dataset=name)
            prepared = prepare(table, task="auto", split=(0.7, 0.15, 0.15), seed=seed, scale=True)
            x_test, y_test = prepared.test.open()
            t0 = time.perf_counter()
            sk = sklearn_score(prepared, seed, x_test, y_test)
            sk_s = time.perf_counter() - t0
            rows.append(
                {
                    "dataset": name,
                    "seed": seed,
                    "metric": result.metrics["score_name"],
                    "fitwell": result.metrics["test_score"],
                    "sklearn": sk,
                    "fitwell_seconds": fit_s,
                    "sklearn_seconds": sk_s,
                    "epochs": result.metrics["epochs_run"],
                }
            )
            print(
                f"  {name} seed {seed}: fitwell {rows[-1]['fitwell']:.4f} sklearn {sk:.4f}",
                file=sys.stderr,
                flush=True,
            )
    summary = []
    for name in datasets:
        rs = [r for r in rows if r["dataset"] == name]
        summary.append(
            {
                "dataset": name,
                "metric": rs[0]["metric"],
                "fitwell_median": statistics.median(r["fitwell"] for r in rs),
                "sklearn_median": statistics.median(r["sklearn"] for r in rs),
                "fitwell_mean": statistics.mean(r["fitwell"] for r in rs),
                "sklearn_mean": statistics.mean(r["sklearn"] for r in rs),
                "fitwell_seconds": statistics.median(r["fitwell_seconds"] for r in rs),
                "sklearn_seconds": statistics.median(r["sklearn_seconds"] for r in rs),
                "wins": sum(r["fitwell"] >= r["sklearn"] for r in rs),
                "runs": len(rs),
            }
        )
    return {"config": config, "seeds": seeds, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/defaults.json"))
    parser.add_argument(
        "--set", action="append", default=[], help="override a fitwell setting, e.g. --set lr=0.003"
    )
    args = parser.parse_args()
    config: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = json.loads(value) if value[:1] in "[{0123456789-." else value
    result = run(args.datasets.split(","), list(range(args.seeds)), config)
    print(
        f"{'dataset':<14}{'metric':<10}{'fitwell':>9}{'sklearn':>9}{'ratio':>7}"
        f"{'fw mean':>9}{'sk mean':>9}"
        f"{'wins':>6}{'fitwell s':>11}{'sklearn s':>11}"
    )
    for s in result["summary"]:
        ratio = s["fitwell_median"] / s["sklearn_median"] if s["sklearn_median"] else float("nan")
        print(
            f"{s['dataset']:<14}{s['metric']:<10}{s['fitwell_median']:>9.4f}"
            f"{s['sklearn_median']:>9.4f}{ratio:>7.3f}"
            f"{s['fitwell_mean']:>9.4f}{s['sklearn_mean']:>9.4f}{s['wins']:>3}/{s['runs']:<2}"
            f"{s['fitwell_seconds']:>11.1f}{s['sklearn_seconds']:>11.1f}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
