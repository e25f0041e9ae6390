"""All findings of one run: every rule of :mod:`fitwell.diagnosis.rules`, combined and ordered.

``diagnose`` decides which rules apply (a poor score is not blamed on the data when the
optimizer itself failed); ``first_detection`` replays a run epoch by epoch, for the benchmark's
"epoch of first detection".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fitwell.diagnosis.rules import (
    CODES,
    OPTIMIZATION_FAULTS,
    RunContext,
    _curve,
    divergence_findings,
    imbalance_findings,
    leakage_findings,
    local_minimum_findings,
    no_signal_findings,
    overfitting_findings,
    signal_findings,
    underfitting_findings,
)


def diagnose(
    records: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    ctx: RunContext,
    *,
    layers: Sequence[str],
    activation: str,
) -> list[dict]:
    """All findings of one run, most severe first."""
    score = "accuracy" if ctx.task == "classification" else "r2"
    out = divergence_findings(ctx)
    mine = [r for r in records if r.get("member") == ctx.member]
    diverged_at = ctx.divergence.get(ctx.member, {}).get("epoch")
    for f in signal_findings(mine, layers, activation, ctx.lr):
        # After a divergence the signals describe the blow-up, not a separate fault.
        if diverged_at is None or (f["epoch"] is not None and f["epoch"] < diverged_at):
            out.append(f)
    out += overfitting_findings(history, ctx)
    found = {f["code"] for f in out if f["severity"] != "info"}
    failed = bool(found & set(OPTIMIZATION_FAULTS))
    if not failed:
        out += underfitting_findings(history, ctx, score)
    out += local_minimum_findings(history, ctx, score)
    if not failed and not any(f["code"] == "underfitting" for f in out):
        val = dict(_curve(history, ctx.member, f"val_{score}"))
        epoch = ctx.model_epoch if ctx.model_epoch in val else (max(val) if val else None)
        out += no_signal_findings(val.get(epoch) if epoch is not None else None, ctx)
    out += leakage_findings(ctx)
    out += imbalance_findings(ctx)
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: (rank[f["severity"]], CODES.index(f["code"])))


def first_detection(
    records: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    ctx: RunContext,
    *,
    layers: Sequence[str],
    activation: str,
) -> dict[str, int]:
    """Epoch at which each code is first reported at warning/error level, replaying the run.

    Rules run on the signals of epochs ``1..e`` for each ``e``; run-level codes that need the
    finished run (restarts, baseline, leakage) count at the last epoch.
    """
    epochs = sorted({int(r["epoch"]) for r in history if r.get("member") == ctx.member})
    first: dict[str, int] = {}
    for e in epochs:
        sub_ctx = RunContext(**{**ctx.__dict__, "model_epoch": _model_epoch_at(history, ctx, e)})
        part = [r for r in records if r["epoch"] <= e]
        rows = [r for r in history if r["epoch"] <= e]
        for f in diagnose(part, rows, sub_ctx, layers=layers, activation=activation):
            if f["severity"] == "info":
                continue
            if f["code"] in ("local_minimum", "leakage"):
                first.setdefault(f["code"], epochs[-1])
            elif f["code"] == "divergence" and f["epoch"] is not None:
                first.setdefault(f["code"], int(f["epoch"]))
            else:
                first.setdefault(f["code"], e)
    return first


def _model_epoch_at(history: Sequence[dict[str, Any]], ctx: RunContext, e: int) -> int:
    if not ctx.restored_best:
        return e
    val = [p for p in _curve(history, ctx.member, "val_loss") if p[0] <= e]
    return min(val, key=lambda p: p[1])[0] if val else e
