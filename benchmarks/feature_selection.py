"""Feature selection with ``l1_inputs``: does the path rule drop noise columns and keep signal?

For each generated table (k informative + m pure-noise columns) and each of 5 seeds (the seed
drives the split, the initialisation and the data order; the table is the same):

1. ``select_features`` chooses λ on validation only: the plain group-lasso path first, whose
   member at the λ ``pilot_index`` picks gives the adaptive weights (1 / its column norms), then
   the adaptive path, where the largest λ whose val score is within the tolerance of the best
   wins (0.01, or one standard error of the best val accuracy when larger);
2. the default model (ensemble of 3) is trained on exactly the columns the path chose (the
   relaxed refit of ``SelectionPath.refit``; ``--no-refit``: at the chosen λ with the path's
   weights, where the new ensemble picks its own columns) and at λ = 0, and both are scored on
   the sealed test split once.

Reported per shape: % noise columns off and % informative columns off in the saved model, mean test
score difference (chosen − λ=0), and seed agreement (how many of the 5 seeds chose the most
common set of kept columns). Goal: ≥80% noise off, ≤10% informative off, test within 0.01 of λ=0,
agreement ≥4/5.

    python benchmarks/feature_selection.py --numeric-embedding none,pbld --jobs 8
    python benchmarks/feature_selection.py            # classic recipe, one table at a time
    python benchmarks/feature_selection.py --plain    # every column weighs 1 (no pilot)
    python benchmarks/feature_selection.py --quick    # one shape, 2 seeds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fitwell.api import train
from fitwell.config import build_config
from fitwell.selection import DEFAULT_LAMBDAS, RULE, RULE_NO_SHADOWS, select_features

GRID = DEFAULT_LAMBDAS
SHAPES = (
    ("classification", 5, 20),
    ("classification", 10, 10),
    ("classification", 20, 5),
    ("regression", 5, 20),
)
ROWS = 800
MAX_EPOCHS = 100


def make_table(task: str, k: int, m: int, *, n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """``k`` informative columns (|weight| in [0.5, 1.5], one interaction) and ``m`` noise ones."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k + m))
    w = rng.uniform(0.5, 1.5, size=k) * rng.choice([-1, 1], size=k)
    z = x[:, :k] @ w / np.sqrt(k) + 0.5 * np.tanh(x[:, 0] * x[:, k - 1])
    frame = pd.DataFrame(
        {f"s{i}": x[:, i] for i in range(k)} | {f"n{j}": x[:, k + j] for j in range(m)}
    )
    frame["label"] = (
        (z > 0).astype(int) if task == "classification" else z + 0.3 * rng.normal(size=n)
    )
    return frame


def run_seed(
    task: str,
    k: int,
    m: int,
    seed: int,
    folder: Path,
    *,
    adaptive: bool,
    grid: tuple,
    path_seeds: int,
    shadows: bool,
    embedding: str,
    refit: bool = True,
    max_epochs: int = MAX_EPOCHS,
) -> dict[str, Any]:
    """One seed of one table: the path's choice, then the chosen model and λ = 0 on test."""
    path = folder / f"{task}_{k}_{m}_{seed}.csv"
    make_table(task, k, m).to_csv(path, index=False)
    names = [f"s{i}" for i in range(k)] + [f"n{j}" for j in range(m)]
    score = "accuracy" if task == "classification" else "r2"
    common = {
        "target": "label",
        "seed": seed,
        "max_epochs": max_epochs,
        "numeric_embedding": embedding,
    }
    cfg = build_config({"data": str(path), "l1_inputs_adaptive": adaptive} | common)
    started = time.perf_counter()
    cpu = time.process_time()
    sel = select_features(cfg, grid, seeds=path_seeds, shadows=shadows)
    lam = sel.chosen_point.l1_inputs
    base = train(path, **common)
    if refit:
        # The saved model reads exactly the columns the path chose (SelectionPath.refit).
        settings = sel.refit()
    else:
        # The path's adaptive weights at the chosen λ: a new ensemble picks its own columns.
        settings = {"l1_inputs": lam, "l1_inputs_weights": sel.weights}
    chosen = base if settings["l1_inputs"] == 0 else train(path, **settings, **common)
    off = set(chosen.metrics["l1_zeroed_features"])
    r = {
        "seed": seed,
        "lambda": lam,
        "noise_off": sum(f"n{j}" in off for j in range(m)) / m,
        "informative_off": sum(f"s{i}" in off for i in range(k)) / k,
        "test_chosen": chosen.metrics["test"][score],
        "test_lambda0": base.metrics["test"][score],
        "kept": sorted(c for c in names if c not in off),
        "path_kept": sorted(sel.chosen_point.kept),
        "path": [(p.l1_inputs, p.val_score, len(p.kept), p.shadows_kept) for p in sel.points],
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    print(
        f"  {embedding} {task} k={k} m={m} seed={seed}: λ={lam:g} noise off {r['noise_off']:.0%} "
        f"informative off {r['informative_off']:.0%} test {r['test_chosen']:.4f} "
        f"(λ=0 {r['test_lambda0']:.4f}) {r['cpu_seconds']} cpu s",
        flush=True,
    )
    return r


def summarise(recipe: str, task: str, k: int, m: int, rows: list[dict]) -> dict[str, Any]:
    """One table's seeds: mean columns off, test difference and seed agreement."""
    common = Counter(tuple(r["kept"]) for r in rows).most_common(1)[0][1]
    return {
        "recipe": recipe,
        "task": task,
        "informative": k,
        "noise": m,
        "score": "accuracy" if task == "classification" else "r2",
        "noise_off": float(np.mean([r["noise_off"] for r in rows])),
        "informative_off": float(np.mean([r["informative_off"] for r in rows])),
        "test_diff": float(np.mean([r["test_chosen"] - r["test_lambda0"] for r in rows])),
        "worst_test_diff": float(min(r["test_chosen"] - r["test_lambda0"] for r in rows)),
        "agreement": common,
        "seeds": len(rows),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in rows), 1),
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain group lasso (every column weighs 1) instead of the adaptive weights",
    )
    parser.add_argument("--grid", help="comma-separated l1_inputs grid (default: GRID)")
    parser.add_argument(
        "--path-seeds", type=int, default=1, help="members per λ in the path (select --seeds)"
    )
    parser.add_argument(
        "--shape", help="comma-separated indices into SHAPES (0-3) to run, in that order"
    )
    parser.add_argument(
        "--no-shadows",
        action="store_true",
        help="choose λ without shadow columns (the largest λ within the tolerance)",
    )
    parser.add_argument(
        "--numeric-embedding",
        default="none",
        help="comma-separated recipes, side by side: none (classic, train's default), pbld "
        "(each numeric column embedded), auto",
    )
    parser.add_argument(
        "--no-refit",
        action="store_true",
        help="train the saved model at the chosen λ with the path's weights (it picks its own "
        "columns) instead of on exactly the path's chosen columns",
    )
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS)
    parser.add_argument(
        "--from-partial",
        help="comma-separated .partial.jsonl files of earlier runs: print their table and stop",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="tables run at once, one process each (1 thread each)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "feature_selection.json")
    )
    args = parser.parse_args()
    if args.from_partial:
        from_partial(args.from_partial.split(","))
        return
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shape is not None:
        shapes = tuple(SHAPES[int(i)] for i in args.shape.split(","))
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    grid = GRID if args.grid is None else tuple(float(v) for v in args.grid.split(","))
    recipes = [r.strip() for r in args.numeric_embedding.split(",") if r.strip()]
    started = time.perf_counter()
    tables = [(recipe, shape) for recipe in recipes for shape in shapes]
    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "adaptive": not args.plain,
            "grid": grid,
            "path_seeds": args.path_seeds,
            "shadows": not args.no_shadows,
            "max_epochs": args.max_epochs,
            "refit": not args.no_refit,
        }
        # Each finished seed is appended here too, so an interrupted run keeps what it measured.
        partial = Path(args.out).with_suffix(".partial.jsonl")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("")
        calls = [
            (task, k, m, seed, Path(tmp) / recipe, settings | {"embedding": recipe}, partial)
            for recipe, (task, k, m) in tables
            for seed in seeds
        ]
        if args.jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
                runs = list(pool.map(_run_call, calls))
        else:
            runs = [_run_call(c) for c in calls]
    results = [
        summarise(recipe, task, k, m, runs[i * len(seeds) : (i + 1) * len(seeds)])
        for i, (recipe, (task, k, m)) in enumerate(tables)
    ]
    print_table(results)
    doc = {
        "grid": grid,
        "adaptive": not args.plain,
        "path_seeds": args.path_seeds,
        "shadows": not args.no_shadows,
        "refit": not args.no_refit,
        "recipes": recipes,
        "rows": ROWS,
        "max_epochs": args.max_epochs,
        "rule": RULE_NO_SHADOWS if args.no_shadows else RULE,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.out} in {doc['seconds']} s")


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| recipe | table | noise off | informative off | test − λ=0 (mean / worst) | λ chosen "
        "| agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lams = ", ".join(f"{x['lambda']:g}" for x in r["runs"])
        print(
            f"| {r['recipe']} | {r['task']} k={r['informative']} m={r['noise']} ({r['score']}) | "
            f"{r['noise_off']:.0%} | {r['informative_off']:.0%} | "
            f"{r['test_diff']:+.4f} / {r['worst_test_diff']:+.4f} | {lams} | "
            f"{r['agreement']}/{r['seeds']} |"
        )


def from_partial(files: list[str]) -> None:
    """The table of seeds already finished, from runs' ``.partial.jsonl`` files."""
    groups: dict[tuple, list[dict]] = {}
    for name in files:
        for line in Path(name).read_text().splitlines():
            row = json.loads(line)
            key = (row.pop("recipe"), row.pop("task"), row.pop("informative"), row.pop("noise"))
            groups.setdefault(key, []).append(row)
    results = [
        summarise(*key, sorted(rows, key=lambda r: r["seed"])) for key, rows in groups.items()
    ]
    print_table(results)


def _run_call(call: tuple) -> dict[str, Any]:
    """One seed of one (recipe, table), in its own process when ``--jobs`` > 1."""
    task, k, m, seed, folder, settings, partial = call
    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    row = run_seed(task, k, m, seed, folder, **settings)
    with partial.open("a") as fh:
        head = {"recipe": settings["embedding"], "task": task, "informative": k, "noise": m}
        fh.write(json.dumps(head | row) + "\n")
    return row


if __name__ == "__main__":
    main()
