"""Automatic repair of the diagnosis benchmark's broken setups, against a random-repair baseline.

For each broken setup (the family in ``benchmarks/diagnosis.py``) and seed, side by side:
the broken run as configured (``fitwell train``), its healthy twin (the same data, split and
epochs with the fault removed: the healthy recipe of the diagnosis benchmark), ``fitwell auto``
started from the broken configuration with search off, and the same auto with the repair table
replaced by random changes drawn from the whole table (the baseline an independent study found
as good as published repair tools). A setup is *repaired* when its test score ends within 0.02
of the twin's, or closes at least 90% of the gap. ``no_signal`` must be refused, ``leakage``
flagged.

Compute is counted as training work, not wall time (a shared machine's clock says more about
the other jobs than about the work): member-epochs (one member trained one epoch over the
training rows, every population included: the doctor's capacity reference, the final training)
over those of one ``fitwell train`` run of the broken configuration; beside it the same count
over the healthy twin's run (a broken run that diverges in its first epoch costs next to
nothing, so a repair is also put against the run that works), multiply-add work (member-epochs
weighted by the network's parameters, so a widened network costs what it weighs) and wall time.
Every run uses fitwell's defaults besides the setup's settings (``--ensemble 3``: one run
trains 3 members, as ``fitwell train --config BROKEN.toml`` does); ``--ensemble 1`` is the
diagnosis benchmark's single-model run. Prints a table and writes JSON.

    python benchmarks/repair.py [--seeds 1] [--ensemble 3] [--only divergence,dead_relu]
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


class WorkCounter:
    """Counts training work done inside the ``with`` block: every epoch of every population
    (``Trainer._train_one_epoch``), as member-epochs and as parameter-weighted member-epochs."""

    def __init__(self) -> None:
        self.member_epochs = 0
        self.param_epochs = 0.0

    def __enter__(self) -> WorkCounter:
        from fitwell.training.loop import Trainer

        self._real = Trainer._train_one_epoch
        real, counter = self._real, self

        def counted(trainer: Any) -> None:
            k = len(trainer.active)
            params = sum(p.numel() for p in trainer.model.parameters())
            counter.member_epochs += k
            counter.param_epochs += params * len(trainer.x_train)  # all k members' weights
            real(trainer)

        Trainer._train_one_epoch = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from fitwell.training.loop import Trainer

        Trainer._train_one_epoch = self._real  # type: ignore[method-assign]


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
    # Each change once, though several findings' rows list it.
    named = {c.name: c for changes in table.REPAIRS.values() for c in changes}
    pool = list(named.values())

    def candidates(code: str, settings: Any, evidence: Any = None) -> list[Any]:
        n = len(table.REPAIRS.get(code, ())) or 1
        usable = [c for c in pool if c.changes(settings)]
        return rng.sample(usable, min(n, len(usable)))

    return candidates


def _measured(fn: Any, **kwargs: Any) -> tuple[Any, dict[str, float]]:
    """``fn(**kwargs)``'s result (or the TrainingFailed it raised) and its work and wall time."""
    from fitwell.errors import TrainingFailed

    t0 = time.perf_counter()
    with WorkCounter() as work:
        try:
            result: Any = fn(**kwargs)
        except TrainingFailed as exc:
            result = exc
    return result, {
        "member_epochs": work.member_epochs,
        "param_epochs": work.param_epochs,
        "seconds": time.perf_counter() - t0,
    }


def run(names: list[str] | None, seeds: list[int], ensemble: int) -> dict:
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
            settings = {"ensemble": ensemble, **setup.settings}
            row: dict[str, Any] = {"setup": setup.name, "expected": setup.expected, "seed": seed}
            result, cost = _measured(fitwell.train, **source, seed=seed, **settings)
            # diverged: no model at all
            row["broken"] = (
                None if isinstance(result, TrainingFailed) else result.metrics["test_score"]
            )
            row["broken_cost"] = cost
            twin, twin_cost = _measured(
                fitwell.train, **source, seed=seed, **{"ensemble": ensemble, **healthy_twin(setup)}
            )
            row["twin"] = twin.metrics["test_score"]
            row["twin_cost"] = twin_cost
            for policy in ("table", "random"):
                table.candidates = real_candidates if policy == "table" else random_candidates(seed)
                result, cost = _measured(
                    auto, **source, seed=seed, search=False, time_budget=None, **settings
                )
                if isinstance(result, TrainingFailed):
                    row[policy] = {
                        "score": None,
                        "refused": None,
                        "leakage": False,
                        "kept": [],
                        "error": str(result),
                    }
                else:
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
                        "final": record.get("final", {}),
                    }
                row[policy]["cost"] = cost
                row[policy]["x_run"] = _ratio(cost, row["broken_cost"], "member_epochs")
                row[policy]["x_twin"] = _ratio(cost, row["twin_cost"], "member_epochs")
                row[policy]["x_run_params"] = _ratio(cost, row["broken_cost"], "param_epochs")
                row[policy]["x_run_wall"] = _ratio(cost, row["broken_cost"], "seconds")
                row[policy]["repaired"] = _repaired(setup.expected, row, row[policy])
            table.candidates = real_candidates
            rows.append(row)
            print(
                f"  {setup.name} seed {seed}: broken {row['broken']}, twin {row['twin']:.3f}, "
                f"auto {row['table']['score']} ({row['table']['repaired']}, "
                f"{row['table']['x_run']:.1f}x), random "
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
        }
        for key in ("x_run", "x_twin", "x_run_params", "x_run_wall"):
            values = [r[policy][key] for r in rows]
            summary[policy][f"median_{key}"] = statistics.median(values) if values else None
            summary[policy][f"max_{key}"] = max(values) if values else None
        summary[policy]["within_3x_run"] = sum(r[policy]["x_run"] <= 3.0 for r in rows)
        summary[policy]["repaired_within_3x_run"] = sum(
            r[policy]["repaired"] and r[policy]["x_run"] <= 3.0 for r in scored
        )
    return {"seeds": seeds, "ensemble": ensemble, "rows": rows, "summary": summary}


def _ratio(cost: dict[str, float], unit: dict[str, float], key: str) -> float:
    return cost[key] / max(unit[key], 1e-9)


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
    parser.add_argument(
        "--ensemble", type=int, default=3, help="members of one run (fitwell's default: 3)"
    )
    parser.add_argument("--only", default="", help="finding codes or setup names, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/repair.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or None
    result = run(names, list(range(args.seeds)), args.ensemble)
    print(
        f"{'setup':<33}{'seed':>4}{'broken':>8}{'twin':>7}{'auto':>7}{'ok':>4}{'x run':>7}"
        f"{'x twin':>7}{'x work':>7}{'x wall':>7}{'random':>8}{'ok':>4}{'x run':>7}  auto kept"
    )
    for r in result["rows"]:
        t, rnd = r["table"], r["random"]
        fmt = lambda v: "  —  " if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"{r['setup']:<33}{r['seed']:>4}{fmt(r['broken']):>8}{r['twin']:>7.3f}"
            f"{fmt(t['score']):>7}{'yes' if t['repaired'] else 'no':>4}"
            f"{t['x_run']:>7.1f}{t['x_twin']:>7.1f}{t['x_run_params']:>7.1f}{t['x_run_wall']:>7.1f}"
            f"{fmt(rnd['score']):>8}{'yes' if rnd['repaired'] else 'no':>4}{rnd['x_run']:>7.1f}"
            f"  {'; '.join(t['kept'])}"
        )
    for policy, s in result["summary"].items():
        print(
            f"{policy}: repaired {s['repaired']}/{s['of']}, refused/flagged "
            f"{s['refused_or_flagged']}/{s['of_refusals']}; member-epochs x one broken run: "
            f"median {s['median_x_run']:.2f}, max {s['max_x_run']:.1f} "
            f"({s['within_3x_run']}/{len(result['rows'])} within 3x); x the twin's run: median "
            f"{s['median_x_twin']:.2f}; parameter-weighted: median {s['median_x_run_params']:.2f}; "
            f"wall: median {s['median_x_run_wall']:.2f}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
