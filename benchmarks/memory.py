"""Peak memory and seconds per row of ``fitwell train`` and ``fitwell predict`` on big CSVs.

A generated table (N rows x 20 float columns + a binary target, written with 7 significant
digits) is trained on for ``--max-epochs`` epochs with the default settings (3 members, batch
size raised to 1024 so one epoch over millions of rows stays short), then the same rows are
predicted to a file. Each command runs in its own process under ``/usr/bin/time``: peak
resident memory (max RSS) and wall seconds.

What the table costs is measured against the same commands on a tiny table (``--tiny-rows``,
default 1,000 rows of the same columns, the same network): that process loads every library the
big one does, so ``peak(N rows) - peak(tiny)`` is the memory that grows with the rows. The
resident memory of a process that only imports fitwell and torch ("start-up") is shown too.

With ``--baseline REF`` the same commands also run on the code of git ref REF (exported to a
temporary folder), side by side in this run, and the table shows the ratios. With ``--recipe
realmlp`` the current code also trains with ``--recipe realmlp`` (3 x 256 units, PBLD numeric
embeddings computed per batch, robust scaling), and the ratios show it against the classic
network: the embeddings must not multiply the table's memory by their width.

The current code trains with ``--numeric-embedding none`` (the baseline's network, whatever
the default recipe). Goal: training peak above the tiny table's <= 3x the float32 table plus the
model (``model.safetensors``), predict peak <= 0.5 GB whatever the number of rows, seconds per
row not worse than the baseline.

    python benchmarks/memory.py --rows 1000000,5000000 --baseline REF
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "memory.json"
COLUMNS = 20


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """N x 20 Gaussian features, target = a noisy linear rule; written in chunks."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=COLUMNS)
    chunk = 250_000
    with path.open("w") as fh:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, COLUMNS)).astype(np.float64)
            y = ((x @ weights + rng.normal(scale=2.0, size=n)) > 0).astype(int)
            frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(COLUMNS)])
            frame["y"] = y
            frame.to_csv(fh, index=False, header=start == 0, float_format="%.7g")


def measured(cmd: list[str], src: Path, cwd: Path) -> dict:
    """Run ``cmd`` with ``src`` first on the import path; peak RSS (MiB) and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "__peak_kb %M", *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    peak = next(
        (int(line.split()[1]) for line in proc.stderr.splitlines() if "__peak_kb" in line), -1
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
    return {"peak_mib": peak / 1024, "seconds": seconds}


def code_of(ref: str, into: Path) -> Path:
    """The ``src`` folder of git ref ``ref``, exported under ``into``."""
    archive = subprocess.run(
        ["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_version(label: str, src: Path, data: Path, rows: int, epochs: int, work: Path) -> dict:
    py = sys.executable
    cli = [py, "-c", "import sys; from fitwell.cli import main; sys.exit(main())"]
    run_dir = work / f"run-{label.split()[0]}-{rows}"
    out = work / f"pred-{label.split()[0]}-{rows}.csv"
    idle = measured([py, "-c", "import torch, pandas, pyarrow, fitwell.api"], src, work)
    train = measured(
        [
            *cli,
            "train",
            str(data),
            "--target",
            "y",
            "--max-epochs",
            str(epochs),
            "--batch-size",
            "1024",
            "--out",
            str(run_dir),
            "--overwrite",
            "--quiet",
            # The same network as the baseline's, whatever the default recipe: this compares
            # memory and time per row, not recipes (unless the recipe is what is measured).
            *(["--numeric-embedding", "none"] if label == "current" else []),
            *(["--recipe", label.split()[1]] if label.startswith("recipe ") else []),
        ],
        src,
        work,
    )
    predict = measured([*cli, "predict", str(run_dir), str(data), "--out", str(out)], src, work)
    predicted = sum(1 for _ in out.open()) - 1
    if predicted != rows:
        raise SystemExit(f"{label}: predict wrote {predicted} rows, expected {rows}")
    out.unlink()
    model_mib = (run_dir / "model.safetensors").stat().st_size / 2**20
    return {
        "version": label,
        "rows": rows,
        "idle": idle,
        "train": train,
        "predict": predict,
        "model_mib": model_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,5000000")
    parser.add_argument(
        "--tiny-rows",
        type=int,
        default=1000,
        help="rows of the fixed-cost reference table (same columns, same network)",
    )
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--baseline", default=None, help="git ref to compare against")
    parser.add_argument(
        "--baseline-rows",
        default=None,
        help="row counts to run the baseline on (default: all of --rows)",
    )
    parser.add_argument(
        "--recipe",
        default=None,
        help="also train the current code with this --recipe (e.g. realmlp), compared with classic",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    base_sizes = (
        [int(r) for r in args.baseline_rows.split(",")] if args.baseline_rows else list(sizes)
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="fitwell-memory-") as tmp:
        work = Path(tmp)
        versions = [("current", ROOT / "src")]
        if args.baseline:
            versions.append((f"baseline {args.baseline}", code_of(args.baseline, work)))
        if args.recipe:
            versions.append((f"recipe {args.recipe}", ROOT / "src"))
        for rows in [args.tiny_rows, *sizes]:
            data = work / f"table-{rows}.csv"
            write_table(data, rows)
            for label, src in versions:
                if label != "current" and rows not in [args.tiny_rows, *base_sizes]:
                    continue
                print(f"  {rows:,} rows: {label} ...", file=sys.stderr, flush=True)
                results.append(run_version(label, src, data, rows, args.max_epochs, work))
            data.unlink()
    tiny = {r["version"]: r for r in results if r["rows"] == args.tiny_rows}
    big = [r for r in results if r["rows"] != args.tiny_rows]
    for r in big:
        ref = tiny[r["version"]]
        table_mib = r["rows"] * COLUMNS * 4 / 2**20
        r["float32_table_mib"] = table_mib
        r["budget_mib"] = 3 * table_mib + r["model_mib"]
        for step in ("train", "predict"):
            r[step]["above_start_mib"] = r[step]["peak_mib"] - r["idle"]["peak_mib"]
            r[step]["tiny_peak_mib"] = ref[step]["peak_mib"]
            r[step]["above_tiny_mib"] = r[step]["peak_mib"] - ref[step]["peak_mib"]
            r[step]["above_tiny_per_table"] = r[step]["above_tiny_mib"] / table_mib
            r[step]["us_per_row"] = 1e6 * r[step]["seconds"] / r["rows"]
        r["train"]["above_start_per_table"] = r["train"]["above_start_mib"] / table_mib
        r["train_within_goal"] = r["train"]["above_tiny_mib"] <= r["budget_mib"]
        r["predict_within_goal"] = r["predict"]["peak_mib"] <= 500
    print(
        f"\n| version | rows | float32 table MiB | 3x table + model MiB | train peak MiB "
        f"(tiny: {args.tiny_rows:,} rows) | train above tiny MiB (x table) | train s | "
        "predict peak MiB (tiny) | predict above tiny MiB | predict s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in big:
        t, p = r["train"], r["predict"]
        print(
            f"| {r['version']} | {r['rows']:,} | {r['float32_table_mib']:.0f} | "
            f"{r['budget_mib']:.0f} | {t['peak_mib']:.0f} ({t['tiny_peak_mib']:.0f}) | "
            f"{t['above_tiny_mib']:.0f} ({t['above_tiny_per_table']:.2f}x) | {t['seconds']:.1f} | "
            f"{p['peak_mib']:.0f} ({p['tiny_peak_mib']:.0f}) | {p['above_tiny_mib']:.0f} | "
            f"{p['seconds']:.1f} |"
        )
    print(
        "\nstart-up (imports only) MiB: "
        + ", ".join(f"{v} {r['idle']['peak_mib']:.0f}" for v, r in tiny.items())
    )
    ratios = []
    for r in big:
        # current / baseline, and the recipe / current (classic): same rows, same run.
        if r["version"] == "current":
            base = next(
                (b for b in big if b["rows"] == r["rows"] and b["version"].startswith("baseline")),
                None,
            )
        elif r["version"].startswith("recipe "):
            base = next(b for b in big if b["rows"] == r["rows"] and b["version"] == "current")
        else:
            base = None
        if base is not None:
            ratios.append(
                {
                    "rows": r["rows"],
                    "compared": f"{r['version']} / {base['version']}",
                    "train_peak_ratio": r["train"]["peak_mib"] / base["train"]["peak_mib"],
                    "predict_peak_ratio": r["predict"]["peak_mib"] / base["predict"]["peak_mib"],
                    "train_seconds_ratio": r["train"]["seconds"] / base["train"]["seconds"],
                    "predict_seconds_ratio": r["predict"]["seconds"] / base["predict"]["seconds"],
                }
            )
    if ratios:
        print("\n| rows | compared | train peak | predict peak | train s | predict s |")
        print("|---|---|---|---|---|---|")
        for q in ratios:
            print(
                f"| {q['rows']:,} | {q['compared']} | {q['train_peak_ratio']:.2f} | "
                f"{q['predict_peak_ratio']:.2f} | "
                f"{q['train_seconds_ratio']:.2f} | {q['predict_seconds_ratio']:.2f} |"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "max_epochs": args.max_epochs,
                "tiny_rows": args.tiny_rows,
                "baseline": args.baseline,
                "recipe": args.recipe,
                "tiny": list(tiny.values()),
                "runs": big,
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
