"""`fitwell auto` against fitwell's defaults, scikit-learn's MLP (default and a budget-matched
grid) and gradient boosting, on the same splits, side by side in one run.

Every learner sees the same rows: fitwell's train / validation split (seeded) for fitting and
choosing, the sealed test split once for the score. scikit-learn's learners are fitted on train +
validation (the grid chooses on validation first, then refits). The grid runs points of a
shuffled ``ParameterGrid`` until its wall time reaches auto's budget. Prints a table and writes
JSON.

    python benchmarks/auto.py [--budget 60] [--seeds 1] [--datasets digits,wine]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATASETS = ["digits", "wine", "breast_cancer", "penguins", "mnist1d", "diabetes"]
# Generated tables beyond the built-in sets: name -> rows of MNIST-1D (written as a CSV).
GENERATED = {"mnist1d_40k": 40_000}


def _source(name: str, folder: Path) -> dict:
    """Keyword arguments naming the table: a built-in dataset, or a generated CSV."""
    if name not in GENERATED:
        return {"dataset": name}
    from fitwell.data.datasets import _mnist1d

    path = folder / f"{name}.csv"
    if not path.exists():
        _mnist1d(num_samples=GENERATED[name]).to_csv(path, index=False)
    return {"data": str(path), "target": "label"}


GRID = {
    "hidden_layer_sizes": [(64,), (256,), (128, 128), (256, 256), (512, 512)],
    "alpha": [1e-5, 1e-4, 1e-3, 1e-2],
    "learning_rate_init": [3e-4, 1e-3, 3e-3],
}


def _score(task: str, model, x, y) -> float:
    if task == "classification":
        return float((model.predict(x) == y).mean())
    return float(model.score(x, y))


def sklearn_models(prepared, seed: int, budget: float, x_test, y_test) -> dict[str, dict]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import ParameterGrid
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    task = prepared.task
    mlp = MLPClassifier if task == "classification" else MLPRegressor
    hgb = (
        HistGradientBoostingClassifier
        if task == "classification"
        else HistGradientBoostingRegressor
    )
    x = np.vstack([prepared.x_train, prepared.x_val])
    y = np.concatenate([prepared.y_train, prepared.y_val])
    out: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        model = mlp(random_state=seed).fit(x, y)
        out["sklearn_mlp"] = {
            "score": _score(task, model, x_test, y_test),
            "seconds": time.perf_counter() - t0,
        }
        t0 = time.perf_counter()
        model = hgb(random_state=seed).fit(x, y)
        out["hist_gb"] = {
            "score": _score(task, model, x_test, y_test),
            "seconds": time.perf_counter() - t0,
        }
        t0 = time.perf_counter()
        points = list(ParameterGrid(GRID))
        np.random.default_rng(seed).shuffle(points)
        best, best_val, tried = None, -np.inf, 0
        for params in points:
            if time.perf_counter() - t0 > budget:
                break
            m = mlp(random_state=seed, early_stopping=False, **params)
            m.fit(prepared.x_train, prepared.y_train)
            val = _score(task, m, prepared.x_val, prepared.y_val)
            tried += 1
            if val > best_val:
                best, best_val = params, val
        model = mlp(random_state=seed, **best).fit(x, y)
        out["sklearn_grid"] = {
            "score": _score(task, model, x_test, y_test),
            "seconds": time.perf_counter() - t0,
            "points": tried,
            "best": {k: list(v) if isinstance(v, tuple) else v for k, v in best.items()},
        }
    return out


def run(datasets: list[str], seeds: list[int], budget: float, partial: Path | None = None) -> dict:
    import tempfile

    import fitwell
    from fitwell.auto import auto
    from fitwell.data import load_table, prepare

    rows = []
    folder = Path(tempfile.mkdtemp(prefix="fitwell-auto-bench-"))
    for name in datasets:
        source = _source(name, folder)
        for seed in seeds:
            row: dict = {"dataset": name, "seed": seed}
            t0 = time.perf_counter()
            run_ = auto(**source, seed=seed, time_budget=budget)
            record = run_.metrics["auto"]
            row["metric"] = run_.metrics["score_name"]
            row["auto"] = {
                "score": run_.metrics["test_score"],
                "seconds": time.perf_counter() - t0,
                "trials": (record.get("search") or {}).get("trials", 0),
                "repairs_kept": sum(bool(r.get("kept")) for r in record["repairs"]),
                "winner": record["winner"],
                # Whether a search winner cleared the replacement margin, and why the run
                # trained the start alone (a budget too short for it), when it did.
                "margin": record.get("margin"),
                "start_only": record.get("start_only"),
            }
            t0 = time.perf_counter()
            default = fitwell.train(**source, seed=seed)
            row["defaults"] = {
                "score": default.metrics["test_score"],
                "seconds": time.perf_counter() - t0,
            }
            table = load_table(
                source.get("data"), dataset=source.get("dataset"), target=source.get("target")
            )
            prepared = prepare(
                table,
                task="auto",
                split=(0.7, 0.15, 0.15),
                seed=seed,
                scale=True,
            )
            x_test, y_test = prepared.test.open()
            row |= sklearn_models(prepared, seed, budget, x_test, y_test)
            rows.append(row)
            print(
                "  "
                + name
                + f" seed {seed}: "
                + ", ".join(f"{k} {row[k]['score']:.4f}" for k in METHODS)
                + f" | auto {row['auto']['seconds']:.0f} s: {row['auto']['winner']}"
                + (
                    f" [start only: {row['auto']['start_only']}]"
                    if row["auto"]["start_only"]
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
            if partial is not None:  # rows so far, so a run stopped early still leaves them
                partial.write_text(json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    summary = []
    for name in datasets:
        rs = [r for r in rows if r["dataset"] == name]
        s = {"dataset": name, "metric": rs[0]["metric"], "runs": len(rs)}
        for k in METHODS:
            scores = [r[k]["score"] for r in rs]
            s[k] = statistics.mean(scores)
            s[k + "_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
            s[k + "_seconds"] = statistics.mean(r[k]["seconds"] for r in rs)
        others = max(s[k] for k in METHODS if k != "auto")
        s["auto_minus_best_other"] = s["auto"] - others
        summary.append(s)
    return {
        "budget_seconds": budget,
        "seeds": seeds,
        "rows": rows,
        "summary": summary,
        "load_average": list(os.getloadavg()),
    }


METHODS = ("auto", "defaults", "sklearn_mlp", "sklearn_grid", "hist_gb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="auto's budget, seconds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/auto.json"))
    args = parser.parse_args()
    out = Path(args.out)
    partial = out.with_suffix(".partial.json")
    result = run(args.datasets.split(","), list(range(args.seeds)), args.budget, partial)
    partial.unlink(missing_ok=True)
    print(
        f"{'dataset':<14}{'metric':<9}"
        + "".join(f"{k:>16}" for k in METHODS)
        + f"{'auto-best':>11}"
    )
    for s in result["summary"]:
        print(
            f"{s['dataset']:<14}{s['metric']:<9}"
            + "".join(f"{s[k]:>9.4f}±{s[k + '_std']:<6.3f}" for k in METHODS)
            + f"{s['auto_minus_best_other']:>+11.4f}"
        )
    print(
        f"{'seconds':<23}"
        + "".join(
            f"{statistics.mean(s[k + '_seconds'] for s in result['summary']):>16.1f}"
            for k in METHODS
        )
    )
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
