"""Reuse members already trained by the baseline, a repair or a confirmation as the final run.

The restarts stage trains the winner with the start configuration's seeds (``seed, seed+1, ...``:
``max(restarts, ensemble)`` members). When the winner was itself trained with those seeds (the
baseline and every repair candidate train 3), training it again gives the same members, up to
float32 rounding (members of a population train independently): the same validation losses,
the same restored best weights. So the final run is that population narrowed to those members,
renumbered from 0 as if they had trained alone, with the doctor's findings judged on them.

Nothing here trains or opens the test split; :func:`fitwell.finish.finish_run` still does that,
once, on the narrowed population.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from fitwell.diagnosis.context import findings_from_signals
from fitwell.scoring import sort_key
from fitwell.training import FitResult
from fitwell.training.loop import MemberResult

if TYPE_CHECKING:
    from fitwell.api import PopulationFit
    from fitwell.config import TrainConfig


@dataclasses.dataclass
class _Stopped:
    """What :func:`fitwell.finish.finish_run` reads of the trainer and the probe of a run:
    the members that diverged and the non-finite guard's events."""

    failed_members: set[int]
    stopped: set[int]
    events: list[dict[str, Any]]


def final_seeds(seed: int, *, restarts: int, ensemble: int) -> list[int]:
    """The seeds the final training gives its members (``fitwell.api``'s rule for one
    configuration: ``restarts`` seeds from ``seed``, then more until there are ``ensemble``)."""
    return [seed + i for i in range(max(restarts, ensemble))]


def reusable_members(pop: PopulationFit, setting: int, seeds: Sequence[int]) -> list[int] | None:
    """Member ids of ``setting`` with exactly ``seeds`` (in seed order), or ``None`` when the
    population did not train every one of them."""
    by_seed = {
        m.settings.seed: m.member for m in pop.fit.members if pop.origin[m.member] == setting
    }
    if not all(s in by_seed for s in seeds):
        return None
    return [by_seed[s] for s in seeds]


def narrow_population(
    pop: PopulationFit, members: Sequence[int], config: TrainConfig
) -> PopulationFit:
    """``pop`` cut down to ``members`` (renumbered 0, 1, ... in the order given) and run with
    ``config``: the same run as training those members alone, without training them again."""
    from fitwell.api import PopulationFit

    new = {old: i for i, old in enumerate(members)}
    fit = pop.fit
    kept = [dataclasses.replace(fit.members[old], member=new[old]) for old in members]
    history = [row | {"member": new[row["member"]]} for row in fit.history if row["member"] in new]
    finite = [m for m in kept if m.finite]
    if not finite:
        best = 0
    elif fit.metric is not None and all(math.isfinite(m.val_metric) for m in finite):
        metric = fit.metric
        best = min(finite, key=lambda m: (sort_key(m.val_metric, metric), m.val_loss)).member
    else:
        best = min(finite, key=lambda m: m.val_loss).member
    narrowed = FitResult(
        task=fit.task,
        members=kept,
        best=best,
        history=history,
        epochs_run=max((m.epochs_run for m in kept), default=0),
        metric=fit.metric,
    )
    events = [
        e | {"member": new[e["member"]]} for e in pop.trainer.events if e.get("member") in new
    ]
    stopped = _Stopped(
        failed_members={new[m] for m in pop.trainer.failed_members if m in new},
        stopped={new[m] for m in pop.probe.stopped if m in new},
        events=events,
    )
    return PopulationFit(
        configs=[config],
        origin=[0] * len(kept),
        fit=narrowed,
        signals=narrow_signals(
            pop.signals, new, best=narrowed.best_member, history=history, events=events
        ),
        arch=pop.arch,
        trainer=cast(Any, stopped),
        probe=cast(Any, stopped),
        seconds=0.0,
    )


def narrow_signals(
    signals: dict[str, Any],
    new: dict[int, int],
    *,
    best: MemberResult,
    history: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The doctor's document of some members of a population (``new`` maps their ids to the
    ids they get; ``best``, ``history`` and ``events`` already use the new ids): only their
    records, divergences, restarts and events, and the findings judged again on those alone.
    A population's probe, history and non-finite events cover every member, so without this a
    member that diverged would be blamed on a setting it does not belong to."""
    doc = copy.copy(signals)
    doc["records"] = [
        r | {"member": new[int(r["member"])]} for r in signals["records"] if int(r["member"]) in new
    ]
    doc["divergence"] = {
        str(new[int(k)]): v for k, v in signals["divergence"].items() if int(k) in new
    }
    ctx = dict(signals["context"])
    restored = bool(ctx.get("restored_best"))
    groups = []
    for g in ctx.get("restart_groups", []):
        narrowed = [(new[int(m)], s) for m, s in g if int(m) in new]
        if len(narrowed) >= 2:
            groups.append(narrowed)
    ctx.update(
        member=best.member,
        model_epoch=best.best_epoch if restored and best.best_epoch > 0 else best.epochs_run,
        lr=best.settings.lr,
        l2=best.settings.l2,
        dropout=list(best.settings.dropout),
        restart_groups=groups,
        all_members=sorted(new.values()),
        divergence={
            str(new[int(k)]): v for k, v in ctx.get("divergence", {}).items() if int(k) in new
        },
        events=[dict(e) for e in events],
    )
    doc["context"] = ctx
    doc["findings"] = findings_from_signals(doc, history)
    return doc
