"""How much of its time budget ``fitwell auto`` puts to use, the current code against a git ref.

Each run is ``fitwell auto --dataset D --time-budget B --seed S --threads 1 --json`` in its own
process, the current code and the baseline's (``git archive REF src``) one after the other for
every table and seed, so both see the same machine load. Per run: test score, the seconds the
run used, search trials and confirmations, and what the final run was (members reused or
trained again). Written for the change that lets the search use the time a final run that
reuses trained members does not need; any two versions can be compared.

    python benchmarks/auto_budget_use.py --baseline REF --datasets digits,wine --budget 60 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_of(ref: str, into: Path) -> Path:
    """The ``src`` folder of git ref ``ref``, exported under ``into``."""
    archive = subprocess.run(
        ["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_auto(src: Path, dataset: str, budget: float, seed: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from fitwell.cli import main; sys.exit(main())",
        "auto",
        "--dataset",
        dataset,
        "--time-budget",
        str(budget),
        "--seed",
        str(seed),
        "--threads",
        "1",
        "--json",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(proc.stdout)
    auto = doc["auto"]
    search = auto.get("search") or {}
    return {
        "test_score": doc["test_score"],
        "seconds_used": auto.get("seconds_used")
        or sum(s["seconds"] for s in auto.get("stages", [])),
        "trials": search.get("trials", 0),
        "confirmed": len(search.get("confirmed") or []),
        "winner": auto.get("winner"),
        "final": auto.get("final"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git ref to compare against")
    parser.add_argument("--datasets", default="digits,wine")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/auto_budget_use.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fitwell-budget-use-") as tmp:
        work = Path(tmp)
        versions = [("current", ROOT / "src"), (args.baseline, code_of(args.baseline, work))]
        for dataset in args.datasets.split(","):
            for seed in range(args.seeds):
                for label, src in versions:
                    out = work / f"{label.replace('/', '_')}-{dataset}-{seed}"
                    r = run_auto(src, dataset, args.budget, seed, out)
                    r.update(version=label, dataset=dataset, seed=seed)
                    rows.append(r)
                    print(
                        f"  {dataset} seed {seed} {label}: test {r['test_score']:.4f}, "
                        f"{r['seconds_used']:.0f} s used, {r['trials']} trials, "
                        f"final {r['final']}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(
        f"\n| table | version | test score (mean) | seconds used of {args.budget:.0f} | "
        "search trials | confirmations | final from a confirmation |"
    )
    print("|---|---|---|---|---|---|---|")
    summary = []
    for dataset in args.datasets.split(","):
        for label, _ in versions:
            rs = [r for r in rows if r["dataset"] == dataset and r["version"] == label]
            s = {
                "dataset": dataset,
                "version": label,
                "test_score": statistics.mean(r["test_score"] for r in rs),
                "seconds_used": statistics.mean(r["seconds_used"] for r in rs),
                "trials": statistics.mean(r["trials"] for r in rs),
                "confirmed": statistics.mean(r["confirmed"] for r in rs),
                "from_confirmation": sum(
                    1 for r in rs if "confirmation" in str((r["final"] or {}).get("from", ""))
                ),
                "runs": len(rs),
            }
            summary.append(s)
            print(
                f"| {dataset} | {label} | {s['test_score']:.4f} | {s['seconds_used']:.0f} | "
                f"{s['trials']:.1f} | {s['confirmed']:.1f} | {s['from_confirmation']} of "
                f"{s['runs']} |"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/auto_budget_use.py " + " ".join(sys.argv[1:]),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
