"""Successive halving inside a population: at each rung epoch, keep the best third.

Optuna's pruners decide trial by trial in the order trials report, which in lockstep makes the
result depend on that order (best-first kept 1 of 8 where halving should keep 4). Here the whole
population is ranked at once, so the decision depends on the losses alone; the pruned members'
curves still go to the study, as PRUNED trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fitwell.training import Callback

ETA = 3  # keep 1/ETA of the members at each rung


def rungs_for(max_epochs: int, *, eta: int = ETA, count: int = 3) -> list[int]:
    """Rung epochs ``r, r*eta, r*eta**2, ...`` below ``max_epochs``, with ``r`` the largest of 4
    and ``max_epochs // eta**count``: the first rung comes after a few epochs, when the order of
    the learning curves starts to mean something."""
    first = max(4, max_epochs // eta**count)
    return [first * eta**i for i in range(count) if first * eta**i < max_epochs]


def rung_survivors(best_losses: Mapping[int, float], *, eta: int = ETA) -> list[int]:
    """The members that go on: the ``ceil(n / eta)`` lowest best-so-far validation losses.

    Non-finite losses rank last; equal losses are ordered by member id, so the decision is the
    same whatever order the members were listed in.
    """
    n = len(best_losses)
    if n == 0:
        return []
    keep = math.ceil(n / eta)

    def key(item: tuple[int, float]) -> tuple[int, float, int]:
        member, loss = item
        finite = math.isfinite(loss)
        return (0 if finite else 1, loss if finite else 0.0, member)

    ranked = sorted(best_losses.items(), key=key)
    return sorted(m for m, _ in ranked[:keep])


def group_loss(losses: Sequence[float]) -> float:
    """A group of seeds' loss at a rung: the median of their best-so-far losses (a diverged
    seed counts as +inf, so a setting that diverges for most seeds ranks last)."""
    values = sorted(v if math.isfinite(v) else math.inf for v in losses)
    if not values:
        return math.inf
    mid = len(values) // 2
    if len(values) % 2:
        return values[mid]
    low, high = values[mid - 1], values[mid]
    return math.inf if math.isinf(high) else (low + high) / 2


class RungPruner(Callback):
    """Stops the members that successive halving drops, at the rung epochs.

    ``pruned`` maps each stopped member to the rung epoch; members stopped early by early
    stopping before a rung are not in the contest. With ``groups`` (member ids per setting,
    e.g. a repair candidate's seeds) settings compete instead of members: each by the median of
    its seeds' best-so-far losses, and a dropped setting loses all its seeds.
    """

    def __init__(
        self,
        rungs: Sequence[int],
        *,
        eta: int = ETA,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.rungs = sorted(set(int(r) for r in rungs))
        self.eta = eta
        self.groups = None if groups is None else [list(g) for g in groups]
        self.best: dict[int, float] = {}
        self.pruned: dict[int, int] = {}

    def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        logs: dict[int, dict[str, float]] = kwargs.get("logs", {})
        for m, row in logs.items():
            loss = float(row["val_loss"])
            if math.isfinite(loss):
                self.best[m] = min(self.best.get(m, math.inf), loss)
            else:
                self.best.setdefault(m, math.inf)
        if trainer.epoch not in self.rungs:
            return
        if self.groups is not None:
            self._prune_groups(trainer, logs, self.groups)
            return
        contest = {m: self.best.get(m, math.inf) for m in logs}
        if len(contest) <= 1:
            return
        keep = set(rung_survivors(contest, eta=self.eta))
        for m in contest:
            if m not in keep:
                self.pruned[m] = trainer.epoch
                trainer.stop_member(
                    m,
                    f"pruned at rung epoch {trainer.epoch} (successive halving kept "
                    f"{len(keep)} of {len(contest)})",
                )

    def _prune_groups(self, trainer: Any, logs: Mapping[int, Any], groups: list[list[int]]) -> None:
        # Settings with a seed still training compete; one whose seeds all stopped is done.
        live = [i for i, g in enumerate(groups) if any(m in logs for m in g)]
        if len(live) <= 1:
            return
        contest = {i: group_loss([self.best.get(m, math.inf) for m in groups[i]]) for i in live}
        keep = set(rung_survivors(contest, eta=self.eta))
        for i in live:
            if i in keep:
                continue
            for m in groups[i]:
                if m in logs:
                    self.pruned[m] = trainer.epoch
                    trainer.stop_member(
                        m,
                        f"pruned at rung epoch {trainer.epoch} (successive halving kept "
                        f"{len(keep)} of {len(live)} settings)",
                    )
