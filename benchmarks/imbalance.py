"""Class weights on imbalanced tables: accuracy, balanced accuracy and macro-F1 with and without.

Tables: generated (6 Gaussian columns, the rare class shifted on 3 of them) with the rare class at
1%, 2%, 5%, 10% and 20% of 3,000 rows, and breast cancer with its malignant class cut to 10% of
the benign count. Each trained with fitwell's defaults (``class_weight="none"``) and with
``class_weight="balanced"``, seeds 0-2 (split, initialisation, data order), scored once on the
sealed test split. Beside them, on the same splits (fitted on fitwell's training + validation
rows, as encoded by fitwell): scikit-learn's ``MLPClassifier()`` (it has no class weights) and
``HistGradientBoostingClassifier(class_weight="balanced")``. Prints a table and writes
``benchmarks/results/imbalance.json``.

``--metrics auto,balanced_accuracy`` also crosses the weighting with the metric that chooses the
members (``--restarts 8``: more members than the ensemble of 3, so the metric has a choice);
``--tables`` keeps the named tables; ``--out`` names the results file.

    python benchmarks/imbalance.py [--seeds 3]
    python benchmarks/imbalance.py --metrics auto,balanced_accuracy --restarts 8 \
        --tables "generated 5%,generated 10%" --out benchmarks/results/imbalance-metric.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def generated(share: float, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < share).astype(int)
    x = rng.normal(size=(n, 6)) + y[:, None] * np.array([1.0, 0.8, 0.6, 0, 0, 0])
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["label"] = np.where(y == 1, "rare", "common")
    return frame


def breast_cancer_cut(ratio: float = 0.1) -> pd.DataFrame:
    from fitwell.data.datasets import load_builtin

    frame, target = load_builtin("breast_cancer")
    benign = frame[frame[target] == "benign"]
    malignant = frame[frame[target] == "malignant"].sample(
        n=int(ratio * len(benign)), random_state=0
    )
    out = pd.concat([benign, malignant]).sample(frac=1.0, random_state=0)
    return out.rename(columns={target: "label"})


BASELINES = ("sklearn MLPClassifier()", "HistGB(class_weight=balanced)")


def sklearn_scores(path: Path, seed: int) -> dict[str, dict[str, float]]:
    """The baselines on fitwell's split of ``path`` for ``seed``: fitted on train + validation,
    scored once on the test rows."""
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    from sklearn.neural_network import MLPClassifier

    from fitwell.data import load_table, prepare

    prepared = prepare(
        load_table(str(path), target="label"),
        task="auto",
        split=(0.7, 0.15, 0.15),
        seed=seed,
        scale=True,
    )
    x = np.vstack([prepared.x_train, prepared.x_val])
    y = np.concatenate([prepared.y_train, prepared.y_val])
    x_test, y_test = prepared.test.open()
    models = {
        BASELINES[0]: MLPClassifier(random_state=seed),
        BASELINES[1]: HistGradientBoostingClassifier(class_weight="balanced", random_state=seed),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, model in models.items():
            pred = model.fit(x, y).predict(x_test)
            out[name] = {
                "accuracy": float(accuracy_score(y_test, pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
                "macro_f1": float(f1_score(y_test, pred, average="macro")),
            }
    return out


def main() -> None:
    import fitwell

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--metrics", default="auto", help="comma-separated --metric values")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--tables", help="comma-separated table names (default: all)")
    parser.add_argument("--no-baselines", action="store_true", help="fitwell only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "imbalance.json"))
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    tables = {
        "generated 1%": generated(0.01),
        "generated 2%": generated(0.02),
        "generated 5%": generated(0.05),
        "generated 10%": generated(0.10),
        "generated 20%": generated(0.20),
        "breast cancer 10:1": breast_cancer_cut(),
    }
    if args.tables:
        tables = {k: v for k, v in tables.items() if k in args.tables.split(",")}
    trained = [(w, m) for w in ("none", "balanced") for m in metrics]
    conditions = trained + ([] if args.no_baselines else [(learner, "-") for learner in BASELINES])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in tables.items():
            path = Path(tmp) / "t.csv"
            frame.to_csv(path, index=False)
            for weight, metric in trained:
                for seed in range(args.seeds):
                    run = fitwell.train(
                        path,
                        target="label",
                        class_weight=weight,
                        metric=metric,
                        restarts=args.restarts,
                        seed=seed,
                        progress=False,
                    )
                    test = run.metrics["test"]
                    rows.append(
                        {"table": name, "class_weight": weight, "metric": metric, "seed": seed}
                        | {m: float(test[m]) for m in METRICS}
                    )
                    print(f"  {name} {weight} {metric} seed {seed}", file=sys.stderr, flush=True)
            if not args.no_baselines:
                for seed in range(args.seeds):
                    for learner, scores in sklearn_scores(path, seed).items():
                        rows.append(
                            {"table": name, "class_weight": learner, "metric": "-", "seed": seed}
                            | scores
                        )
    summary = []
    print("\n| table | class_weight | metric | accuracy | balanced accuracy | macro-F1 |")
    print("|---|---|---|---|---|---|")
    for name in tables:
        for weight, metric in conditions:
            rs = [
                r
                for r in rows
                if r["table"] == name and r["class_weight"] == weight and r["metric"] == metric
            ]
            s = {"table": name, "class_weight": weight, "metric": metric}
            for m in METRICS:
                values = [r[m] for r in rs]
                s[m] = statistics.mean(values)
                s[m + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.append(s)
            print(
                f"| {name} | {weight} | {metric} | "
                + " | ".join(f"{s[m]:.3f} ± {s[m + '_std']:.3f}" for m in METRICS)
                + " |"
            )
    out = Path(args.out)
    record = {"seeds": args.seeds, "restarts": args.restarts, "rows": rows, "summary": summary}
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
