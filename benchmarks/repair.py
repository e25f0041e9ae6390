"""Automatic repair of the diagnosis benchmark's broken setups, against a random-repair baseline.

For each broken setup (the family in ``benchmarks/diagnosis.py``) and seed, side by side:
the broken run as configured (``fitwell train``), its healthy twin (the same data, split and
epochs with the fault removed: the healthy recipe of the diagnosis benchmark), ``fitwell auto``
started from the broken configuration with search off, and the same auto with the repair table
replaced by random changes drawn from the whole table (the baseline an independent study found
as good as published repair tools). A setup is *repaired* when its test score ends within 0.02
of the twin's, or closes at least 90% of the gap. ``no_signal`` must be refused, ``leakage``
flagged. Compute is auto's wall time over one broken run's. Prints a table and writes JSON.

    python benchmarks/repair.py [--seeds 1] [--only divergence,dead_relu]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diagnosis import HEALTHY, _source, _write_tables, setups  # noqa: E402


def healthy_twin(setup: Any) -> dict[str, Any]:
    """The setup's epochs, split and restarts with the healthy recipe (no fault)."""
    keep = {k: v for k, v in setup.settings.items() if k in ("split", "max_epochs", "restarts")}
    twin = {**HEALTHY, **keep}
    if setup.expected == "local_minimum":
        twin |= {"hidden": (32, 32), "lr": 0.03, "dropout": 0.0}
    return twin


def random_candidates(seed: int):
    """A stand-in for ``repairs.candidates``: as many changes as the table offers for the
    finding, drawn at random from every change of the table."""
    from fitwell.auto import repairs as table

    rng = random.Random(seed)
    pool = [c for changes in table.REPAIRS.values() for c in changes]

    def candidates(code: str, settings: Any) -> list[Any]:
        n = len(table.REPAIRS.get(code, ())) or 1
        usable = [c for c in pool if c.changes(settings)]
        return rng.sample(usable, min(n, len(usable)))

    return candidates


def run(names: list[str] | None, seeds: list[int]) -> dict:
    import fitwell
    from fitwell.auto import auto
    from fitwell.auto import repairs as table
    from fitwell.errors import TrainingFailed

    folder = Path(tempfile.mkdtemp(prefix="fitwell-repair-"))
    tables = _write_tables(folder)
    broken = [s for s in setups() if s.expected is not None]
    if names:
        broken = [s for s in broken if s.expected in names or s.name in names]
    rows = []
    real_candidates = table.candidates
    for setup in broken:
        for seed in seeds:
            source = _source(setup, tables)
            settings = {"ensemble": 1, **setup.settings}
            row: dict[str, Any] = {"setup": setup.name, "expected": setup.expected, "seed": seed}
            t0 = time.perf_counter()
            try:
                row["broken"] = fitwell.train(**source, seed=seed, **settings).metrics["test_score"]
            except TrainingFailed:
                row["broken"] = None  # diverged: no model at all
            row["broken_seconds"] = time.perf_counter() - t0
            twin = fitwell.train(**source, seed=seed, **healthy_twin(setup), ensemble=1)
            row["twin"] = twin.metrics["test_score"]
            for policy in ("table", "random"):
                table.candidates = real_candidates if policy == "table" else random_candidates(seed)
                t0 = time.perf_counter()
                try:
                    result = auto(**source, seed=seed, search=False, time_budget=None, **settings)
                    record = result.metrics["auto"]
                    row[policy] = {
                        "score": result.metrics["test_score"],
                        "refused": record["refused"],
                        "leakage": any(
                            f["code"] == "leakage" and f["severity"] != "info"
                            for f in result.metrics["findings"]
                        ),
                        "kept": [
                            f"{r['finding']}: {r['change']}"
                            for r in record["repairs"]
                            if r.get("chosen") or r.get("reason", "").startswith("applied")
                        ],
                    }
                except TrainingFailed as exc:
                    row[policy] = {
                        "score": None,
                        "refused": None,
                        "leakage": False,
                        "kept": [],
                        "error": str(exc),
                    }
                row[policy]["seconds"] = time.perf_counter() - t0
                row[policy]["compute_ratio"] = row[policy]["seconds"] / row["broken_seconds"]
                row[policy]["repaired"] = _repaired(setup.expected, row, row[policy])
            table.candidates = real_candidates
            rows.append(row)
            print(
                f"  {setup.name} seed {seed}: broken {row['broken']}, twin {row['twin']:.3f}, "
                f"auto {row['table']['score']} ({row['table']['repaired']}), random "
                f"{row['random']['score']} ({row['random']['repaired']})",
                file=sys.stderr,
                flush=True,
            )
    summary = {}
    for policy in ("table", "random"):
        scored = [r for r in rows if r["expected"] not in ("no_signal", "leakage")]
        summary[policy] = {
            "repaired": sum(r[policy]["repaired"] for r in scored),
            "of": len(scored),
            "refused_or_flagged": sum(
                r[policy]["repaired"] for r in rows if r["expected"] in ("no_signal", "leakage")
            ),
            "of_refusals": len(rows) - len(scored),
            "median_compute_ratio": statistics.median(r[policy]["compute_ratio"] for r in rows)
            if rows
            else None,
        }
    return {"seeds": seeds, "rows": rows, "summary": summary}


def _repaired(code: str, row: dict[str, Any], result: dict[str, Any]) -> bool:
    if code == "no_signal":
        return result["refused"] == "no_signal"
    if code == "leakage":
        return bool(result["leakage"])
    score, twin = result["score"], row["twin"]
    if score is None:
        return False
    broken = row["broken"] if row["broken"] is not None else 0.0
    gap = twin - broken
    return score >= twin - 0.02 or (gap > 0 and (score - broken) >= 0.9 * gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", default="", help="finding codes or setup names, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/repair.json"))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or None
    result = run(names, list(range(args.seeds)))
    print(
        f"{'setup':<30}{'seed':>5}{'broken':>8}{'twin':>7}{'auto':>7}{'ok':>4}{'x run':>7}"
        f"{'random':>8}{'ok':>4}  auto kept"
    )
    for r in result["rows"]:
        t, rnd = r["table"], r["random"]
        fmt = lambda v: "  —  " if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"{r['setup']:<30}{r['seed']:>5}{fmt(r['broken']):>8}{r['twin']:>7.3f}"
            f"{fmt(t['score']):>7}{'yes' if t['repaired'] else 'no':>4}"
            f"{t['compute_ratio']:>7.1f}{fmt(rnd['score']):>8}"
            f"{'yes' if rnd['repaired'] else 'no':>4}  {'; '.join(t['kept'])}"
        )
    for policy, s in result["summary"].items():
        print(
            f"{policy}: repaired {s['repaired']}/{s['of']}, refused/flagged "
            f"{s['refused_or_flagged']}/{s['of_refusals']}, median compute "
            f"{s['median_compute_ratio']:.1f}x one broken run"
        )
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
