"""fitwell's classic defaults against ``--recipe realmlp``, the recipe with each ingredient left
out in turn, pytabkit's RealMLP-TD, LightGBM, CatBoost and HistGB, side by side in one run.

Every model sees the same rows per table and seed: MNIST-1D keeps its published 4000 / 1000
train / test split with 15% of train (stratified, seeded) as validation; every other table
gets fitwell's own seeded 70 / 15 / 15 splitter (``fitwell.data.splitting.split_indices``,
stratified for classification), and fitwell is handed exactly those indices. Each learner fits
on the training rows, uses the validation rows for its own choices (best epoch, early stopping)
and is scored once on the test rows: accuracy for classification, R^2 for regression. Raw
columns go to the other learners (text columns as pandas categories); fitwell reads them from a
CSV of the same table. Each fit runs on one thread; the time is the process CPU seconds of fit
plus test prediction (``time.process_time``), so a busy machine does not inflate it.

    python benchmarks/recipe.py [--seeds 3] [--tables mnist1d,digits] [--models classic,realmlp]

The benchmark-only learners are the ``bench`` extra (``pip install -e .[bench]``); the
``anes96``, ``fair`` and ``grunfeld`` tables ship inside statsmodels. Prints a table and writes
JSON (merged into an existing file, so parts can be re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

TABLES = (
    "mnist1d",
    "digits",
    "breast_cancer",
    "wine",
    "iris",
    "penguins",
    "anes96",
    "diabetes",
    "fair",
    "grunfeld",
    "friedman1",
)
REGRESSION = {"diabetes", "fair", "grunfeld", "friedman1"}
RECIPE = {"recipe": "realmlp"}
# Leave one ingredient out of the full recipe. Without NTK the recipe's lr (0.04 / 0.2) is an
# NTK rate, so "-ntk" also takes the classic rate 3e-3 (a standard layer at 0.04 diverges).
ABLATION: dict[str, dict[str, Any]] = {
    "-robust": {"scaling": "standard"},
    "-pbld": {"numeric_embedding": "none"},
    "-front": {"front_scale": False},
    "-ntk": {"parametrization": "standard", "lr": 3e-3},
    "-act(relu)": {"activation": "relu"},
    "-learn_act": {"learnable_activation": False},
    "-dropout": {"dropout": 0.0},
    "-drop_sched": {"dropout_schedule": "constant"},
    "-wd": {"weight_decay": 0.0},
    "-wd_sched": {"wd_schedule": "constant"},
    "-smoothing": {"label_smoothing": 0.0},
    "-coslog4": {"lr_schedule": "constant"},
    "-beta2": {"adam_beta2": 0.999},
}
# What RealMLP-TD does that the recipe does not (yet): each added to the full recipe alone.
# "best_score" only changes classification (on regression R^2 ranks epochs as the loss does).
ADDITIONS: dict[str, dict[str, Any]] = {
    "+he5": {"bias_init_mode": "he+5"},
    "+best_score": {"best_epoch_by": "score"},
    "+he5+best_score": {"bias_init_mode": "he+5", "best_epoch_by": "score"},
    "+data_init": {"init": "data"},
    "+data_init+he5": {"init": "data", "bias_init_mode": "he+5"},
    "+ensemble3": {"ensemble": 3},
    "+onehot9": {"embed_categories_above": 9},
}
COMPARISON = ("classic", "realmlp", "pytabkit", "lightgbm", "catboost", "hist_gb")
MODELS = (
    COMPARISON + tuple(f"realmlp{k}" for k in ABLATION) + tuple(f"realmlp{k}" for k in ADDITIONS)
)


# ------------------------------------------------------------------------------------ tables
def load(name: str) -> tuple[pd.DataFrame, str, int | None]:
    """The table, its target column and, for MNIST-1D, the first row of its fixed test set."""
    if name == "friedman1":
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=2000, noise=1.0, random_state=0)
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
        frame["y"] = y
        return frame, "y", None
    if name in ("anes96", "fair", "grunfeld"):
        try:
            import statsmodels.api as sm
        except ImportError:
            sys.exit(f"table {name!r} needs statsmodels: pip install statsmodels")
        data = getattr(sm.datasets, name).load_pandas().data
        # grunfeld: 220 firm-years, investment from value and capital, and the firm's name as
        # text with 11 levels (the one offline table with a 10-30-level text column).
        target = {"anes96": "PID", "fair": "affairs", "grunfeld": "invest"}[name]
        if name == "anes96":  # party identification: 7 classes, the label as text
            data[target] = data[target].astype(int).astype(str)
        return data.reset_index(drop=True), target, None
    from fitwell.data.datasets import load_builtin

    frame, target = load_builtin(name)
    # MNIST-1D is generated as its published 4000 train rows, then its 1000 test rows.
    return frame.reset_index(drop=True), target, 4000 if name == "mnist1d" else None


def split(
    frame: pd.DataFrame, target: str, regression: bool, test_from: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test row indices, the same for every model of this seed."""
    from sklearn.model_selection import train_test_split

    from fitwell.data.splitting import split_indices

    codes = None if regression else pd.factorize(frame[target], sort=True)[0]
    if test_from is not None:
        rows = np.arange(test_from)
        train, val = train_test_split(
            rows, test_size=0.15, random_state=seed, shuffle=True, stratify=codes[:test_from]
        )
        return np.sort(train), np.sort(val), np.arange(test_from, len(frame))
    return split_indices(len(frame), (0.7, 0.15, 0.15), seed=seed, stratify=codes)


# ------------------------------------------------------------------------------------ models
def fitwell_model(settings: dict[str, Any]) -> Callable[..., dict]:
    def fit(ctx: dict) -> dict:
        import fitwell
        import fitwell.data.preparation as preparation

        fixed = (ctx["train"], ctx["val"], ctx["test"])
        original = preparation.split_indices
        # fitwell's pipeline (preprocessing on train rows, sealed test) on the shared rows.
        preparation.split_indices = lambda *a, **k: fixed  # type: ignore[assignment]
        try:
            run = fitwell.train(
                data=ctx["csv"], target=ctx["target"], seed=ctx["seed"], threads=1, **settings
            )
        finally:
            preparation.split_indices = original
        return {
            "score": float(run.metrics["test_score"]),
            "epochs": int(run.metrics["epochs_run"]),
        }

    return fit


def _xy(ctx: dict, rows: np.ndarray, *, cat_as: str = "category") -> tuple[pd.DataFrame, Any]:
    x = ctx["frame"].drop(columns=ctx["target"]).iloc[rows].reset_index(drop=True)
    for col in x.columns:
        if not pd.api.types.is_numeric_dtype(x[col]):
            if cat_as == "str":
                x[col] = x[col].fillna("missing").astype(str)
            else:
                x[col] = pd.Categorical(x[col], categories=ctx["levels"][col])
    y = ctx["frame"][ctx["target"]].iloc[rows].to_numpy()
    return x, y


def _score(ctx: dict, pred: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    if ctx["regression"]:
        return float(r2_score(y, pred))
    return float(np.mean(np.asarray(pred).ravel().astype(str) == y.astype(str)))


def pytabkit_model(ctx: dict) -> dict:
    from pytabkit import RealMLP_TD_Classifier, RealMLP_TD_Regressor

    cls = RealMLP_TD_Regressor if ctx["regression"] else RealMLP_TD_Classifier
    x, y = _xy(ctx, ctx["train"])
    xv, yv = _xy(ctx, ctx["val"])
    xt, yt = _xy(ctx, ctx["test"])
    # pytabkit refuses missing numbers: the training rows' median fills them.
    fill = x.select_dtypes("number").median()
    x, xv, xt = (d.fillna(fill) for d in (x, xv, xt))
    model = cls(random_state=ctx["seed"], n_threads=1, device="cpu", verbosity=0)
    model.fit(x, y, xv, yv)
    return {"score": _score(ctx, model.predict(xt), yt)}


def lightgbm_model(ctx: dict) -> dict:
    import lightgbm as lgb

    cls = lgb.LGBMRegressor if ctx["regression"] else lgb.LGBMClassifier
    x, y = _xy(ctx, ctx["train"])
    xv, yv = _xy(ctx, ctx["val"])
    xt, yt = _xy(ctx, ctx["test"])
    model = cls(n_estimators=1000, random_state=ctx["seed"], n_jobs=1, verbose=-1)
    model.fit(x, y, eval_set=[(xv, yv)], callbacks=[lgb.early_stopping(100, verbose=False)])
    return {"score": _score(ctx, model.predict(xt), yt), "trees": int(model.best_iteration_)}


def catboost_model(ctx: dict) -> dict:
    from catboost import CatBoostClassifier, CatBoostRegressor

    cls = CatBoostRegressor if ctx["regression"] else CatBoostClassifier
    x, y = _xy(ctx, ctx["train"], cat_as="str")
    xv, yv = _xy(ctx, ctx["val"], cat_as="str")
    xt, yt = _xy(ctx, ctx["test"], cat_as="str")
    cats = list(ctx["levels"])
    model = cls(
        random_seed=ctx["seed"],
        thread_count=1,
        verbose=0,
        cat_features=cats,
        allow_writing_files=False,
    )
    model.fit(x, y, eval_set=(xv, yv), use_best_model=True, early_stopping_rounds=100)
    return {"score": _score(ctx, model.predict(xt), yt), "trees": int(model.tree_count_)}


def hist_gb_model(ctx: dict) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingRegressor if ctx["regression"] else HistGradientBoostingClassifier
    x, y = _xy(ctx, ctx["train"])
    xt, yt = _xy(ctx, ctx["test"])
    model = cls(random_state=ctx["seed"], categorical_features="from_dtype")
    model.fit(x, y)
    return {"score": _score(ctx, model.predict(xt), yt)}


def model_fn(name: str, regression: bool) -> Callable[[dict], dict] | None:
    """The fit function of ``name``, or None when it does not apply to the task."""
    if name == "classic":
        return fitwell_model({"recipe": "classic"})
    if name == "realmlp":
        return fitwell_model(RECIPE)
    if name.startswith("realmlp+"):
        added = ADDITIONS[name[len("realmlp") :]]
        if regression and added.get("best_epoch_by") == "score":
            return None
        return fitwell_model(RECIPE | added)
    if name.startswith("realmlp-"):
        change = ABLATION[name[len("realmlp") :]]
        if regression and "label_smoothing" in change:
            return None  # no smoothing in the regression recipe
        if regression and change.get("lr") is not None:
            change = change | {"lr": 3e-3}
        return fitwell_model(RECIPE | change)
    return {
        "pytabkit": pytabkit_model,
        "lightgbm": lightgbm_model,
        "catboost": catboost_model,
        "hist_gb": hist_gb_model,
    }[name]


# ------------------------------------------------------------------------------------- run
def run(
    tables: list[str],
    seeds: list[int],
    models: list[str],
    log: Callable[[str], None],
    save: Callable[[list[dict]], None],
) -> list[dict]:
    """Fit every model on every table and seed; ``save`` gets the rows after each fit, so a
    run stopped early keeps what it measured."""
    import torch

    from fitwell.errors import TrainingFailed

    torch.set_num_threads(1)
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="fitwell-recipe-bench-"))
    for name in tables:
        frame, target, test_from = load(name)
        regression = name in REGRESSION
        csv = folder / f"{name}.csv"
        frame.to_csv(csv, index=False)
        frame = pd.read_csv(csv)  # every learner reads the values fitwell reads
        levels = {
            c: sorted(frame[c].dropna().astype(str).unique())
            for c in frame.columns
            if c != target and not pd.api.types.is_numeric_dtype(frame[c])
        }
        for c in levels:
            frame[c] = frame[c].where(frame[c].isna(), frame[c].astype(str))
        if not regression:
            frame[target] = frame[target].astype(str)
        for seed in seeds:
            train, val, test = split(frame, target, regression, test_from, seed)
            ctx = {
                "frame": frame,
                "target": target,
                "regression": regression,
                "csv": str(csv),
                "levels": levels,
                "seed": seed,
                "train": train,
                "val": val,
                "test": test,
            }
            for model in models:
                fit = model_fn(model, regression)
                if fit is None:
                    continue
                cpu, wall = time.process_time(), time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        result = fit(ctx)
                    except TrainingFailed as failed:  # e.g. diverged: a result, not a crash
                        result = {"score": None, "failed": str(failed)}
                row = {
                    "table": name,
                    "task": "regression" if regression else "classification",
                    "seed": seed,
                    "model": model,
                    "rows": [len(train), len(val), len(test)],
                    **result,
                    "cpu_seconds": time.process_time() - cpu,
                    "wall_seconds": time.perf_counter() - wall,
                }
                rows.append(row)
                save(rows)
                shown = "failed" if row["score"] is None else f"{row['score']:.4f}"
                log(f"  {name} seed {seed} {model}: {shown} ({row['cpu_seconds']:.1f} cpu s)")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    tables = list(dict.fromkeys(r["table"] for r in rows))
    for table in tables:
        rs = [r for r in rows if r["table"] == table]
        for model in [m for m in MODELS if any(r["model"] == m for r in rs)]:
            scores = [r["score"] for r in rs if r["model"] == model and r["score"] is not None]
            failed = sum(1 for r in rs if r["model"] == model and r["score"] is None)
            cpu = [r["cpu_seconds"] for r in rs if r["model"] == model]
            if not scores:
                continue
            out.append(
                {
                    "table": table,
                    "task": rs[0]["task"],
                    "model": model,
                    "seeds": len(scores),
                    "score_mean": statistics.mean(scores),
                    "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "cpu_seconds_mean": statistics.mean(cpu),
                    "failed": failed,
                }
            )
    return out


def print_table(summary: list[dict]) -> None:
    print(f"{'table':14s} {'model':20s} {'test score':>17s} {'fit cpu s':>10s} {'seeds':>5s}")
    for s in summary:
        scale = 1 if s["task"] == "regression" else 100
        print(
            f"{s['table']:14s} {s['model']:20s} {scale * s['score_mean']:8.2f} ± "
            f"{scale * s['score_std']:5.2f} {s['cpu_seconds_mean']:10.1f} {s['seeds']:5d}"
        )


def markdown(summary: list[dict], models: list[str]) -> str:
    """One row per table, one column per model: test score mean ± std (CPU seconds)."""
    models = [m for m in models if any(s["model"] == m for s in summary)]
    lines = [
        "| table | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for table in dict.fromkeys(s["table"] for s in summary):
        cells = []
        for m in models:
            hit = [s for s in summary if s["table"] == table and s["model"] == m]
            if not hit:
                cells.append("")
                continue
            s = hit[0]
            scale = 1 if s["task"] == "regression" else 100
            digits = 3 if s["task"] == "regression" else 1
            failed = f", {s['failed']} failed" if s.get("failed") else ""
            cells.append(
                f"{scale * s['score_mean']:.{digits}f} ± {scale * s['score_std']:.{digits}f} "
                f"({s['cpu_seconds_mean']:.0f} s{failed})"
            )
        lines.append(f"| {table} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delta_cell(pairs: list[tuple[float, float]]) -> str:
    """Mean score with the ingredient left out (minus the full recipe's, same seeds), x 100."""
    score = statistics.mean(a for a, _ in pairs)
    delta = statistics.mean(a - b for a, b in pairs)
    return f"{100 * score:.1f} ({100 * delta:+.1f})"


def ablation_markdown(rows: list[dict]) -> str:
    """One row per left-out ingredient, one column per table: its test score minus the full
    recipe's on the same seeds (points of accuracy, or of R^2 x 100)."""
    tables = [t for t in TABLES if any(r["table"] == t and "-" in r["model"] for r in rows)]
    head = "| left out | " + " | ".join(tables) + " |"
    lines = [head, "|---|" + "---|" * len(tables)]
    full = {
        (r["table"], r["seed"]): r["score"]
        for r in rows
        if r["model"] == "realmlp" and r["score"] is not None
    }
    for name in ABLATION:
        cells = []
        for t in tables:
            hit = [r for r in rows if r["table"] == t and r["model"] == f"realmlp{name}"]
            failed = sum(1 for r in hit if r["score"] is None)
            hit = [r for r in hit if r["score"] is not None]
            pairs = [(r["score"], full[t, r["seed"]]) for r in hit if (t, r["seed"]) in full]
            if failed:
                cells.append(f"{failed} failed" + (f", {_delta_cell(pairs)}" if pairs else ""))
                continue
            if not pairs:
                cells.append("")
                continue
            cells.append(_delta_cell(pairs))
        lines.append(f"| {name[1:]} | " + " | ".join(cells) + " |")
    seeds = {
        t: sorted({r["seed"] for r in rows if r["table"] == t and "-" in r["model"]})
        for t in tables
    }
    lines.append(
        "| (full recipe, same seeds) | "
        + " | ".join(
            f"{100 * statistics.mean(full[t, s] for s in seeds[t] if (t, s) in full):.1f}"
            for t in tables
        )
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds first-seed, first-seed + 1...")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument(
        "--models",
        default=",".join(COMPARISON),
        help="comma-separated; 'ablation' adds every realmlp-<ingredient> run, 'additions' "
        "every realmlp+<difference> run; "
        f"all: {', '.join(MODELS)}",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/recipe.json"))
    parser.add_argument("--fresh", action="store_true", help="replace the JSON, do not merge")
    parser.add_argument(
        "--markdown", action="store_true", help="also print the summary as a Markdown table"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: merge these result files (e.g. of runs over disjoint tables, in "
        "parallel) into --out",
    )
    args = parser.parse_args()
    if args.merge:
        merged: dict[tuple, dict] = {}
        for path in args.merge:
            for r in json.loads(Path(path).read_text())["rows"]:
                merged[(r["table"], r["seed"], r["model"])] = r
        write(list(merged.values()), Path(args.out), args.markdown)
        return
    models: list[str] = []
    for m in args.models.split(","):
        if m in ("ablation", "additions"):
            models += [f"realmlp{k}" for k in (ABLATION if m == "ablation" else ADDITIONS)]
        else:
            models.append(m)
    unknown = [m for m in models if m not in MODELS]
    tables = args.tables.split(",")
    unknown += [t for t in tables if t not in TABLES]
    if unknown:
        sys.exit(f"unknown model or table: {', '.join(unknown)}")

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = Path(args.out)
    prior = [] if args.fresh or not out.exists() else json.loads(out.read_text())["rows"]

    def save(rows: list[dict]) -> None:  # keep other tables' / models' / seeds' rows
        done = {(r["table"], r["seed"], r["model"]) for r in rows}
        kept = [r for r in prior if (r["table"], r["seed"], r["model"]) not in done]
        write(kept + rows, out, quiet=True)

    rows = run(tables, seeds, models, lambda s: print(s, file=sys.stderr, flush=True), save)
    save(rows)
    write(json.loads(out.read_text())["rows"], out, args.markdown)


def write(rows: list[dict], out: Path, as_markdown: bool = False, quiet: bool = False) -> None:
    order = {t: i for i, t in enumerate(TABLES)}
    rows.sort(key=lambda r: (order[r["table"]], MODELS.index(r["model"]), r["seed"]))
    summary = summarize(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    if quiet:
        return
    print_table(summary)
    if as_markdown:
        additions = [f"realmlp{k}" for k in ADDITIONS]
        print(markdown(summary, [m for m in MODELS if m in COMPARISON or m in additions]))
        print(ablation_markdown(rows))


if __name__ == "__main__":
    main()
