"""Learning-rate schedules per member: a factor on each member's rate, set at every epoch start.

A schedule is a pure function of the epoch (``lr_factor``), so a resumed run sets the same rates
as an uninterrupted one without saving any schedule state, and members of one population can
follow different schedules (the optimizer already keeps one rate per member). Epoch granularity
keeps the per-step loop untouched; with early stopping a run rarely reaches ``max_epochs``, so
``cosine`` and ``onecycle`` are laid out over ``max_epochs`` as Keras' and PyTorch's schedules are
over their decay steps, and a run stopped early has only decayed part of the way.
"""

from __future__ import annotations

import math
from typing import Any

from fitwell.config import LR_SCHEDULES
from fitwell.training.callbacks import Callback

__all__ = ["LR_SCHEDULES", "LearningRateSchedule", "is_scheduled", "lr_factor"]

# PyTorch's OneCycleLR defaults: 30% of the run rising from lr / 25, then a cosine down to
# lr / 1e4 (its div_factor and final_div_factor).
ONECYCLE_RISE = 0.3
ONECYCLE_START = 1 / 25
ONECYCLE_END = 1e-4
# RealMLP's ``coslog4``: cosine cycles on a log2 time axis, 2**4 - 1 = 15 (four cycles).
COSLOG_CYCLES = 4


def lr_factor(epoch: int, schedule: str, warmup_epochs: int, max_epochs: int) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based).

    ``cosine``: ``0.5 * (1 + cos(pi * epoch / max_epochs))``. ``onecycle``: linear from 1/25 to
    1 over the first 30% of ``max_epochs``, then cosine to 1e-4. Warm-up multiplies any schedule
    by ``(epoch + 1) / (warmup_epochs + 1)`` during the first ``warmup_epochs`` epochs.
    """
    total = max(int(max_epochs), 1)
    t = min(max(epoch, 0), total) / total
    if schedule == "constant":
        factor = 1.0
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "onecycle":
        if t < ONECYCLE_RISE:
            factor = ONECYCLE_START + (1.0 - ONECYCLE_START) * t / ONECYCLE_RISE
        else:
            u = (t - ONECYCLE_RISE) / (1.0 - ONECYCLE_RISE)
            factor = ONECYCLE_END + (1.0 - ONECYCLE_END) * 0.5 * (1.0 + math.cos(math.pi * u))
    elif schedule == "coslog4":
        factor = coslog_factor(epoch, total)
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if epoch < warmup_epochs:
        factor *= (epoch + 1) / (warmup_epochs + 1)
    return factor


def is_scheduled(member: Any) -> bool:
    """Whether a member's rate changes over the run at all."""
    return member.lr_schedule != "constant" or member.warmup_epochs > 0


class LearningRateSchedule(Callback):
    """Sets every active member's rate to ``lr * lr_factor(...)`` at the start of each epoch."""

    def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
        for m in trainer.active:
            s = trainer.members[m]
            trainer.lr_factors[m] = lr_factor(
                trainer.epoch, s.lr_schedule, s.warmup_epochs, trainer.max_epochs
            )
        trainer.optimizer.set_lrs(trainer.scheduled_lrs())


def coslog_factor(epoch: int, max_epochs: int, cycles: int = COSLOG_CYCLES) -> float:
    """RealMLP's ``coslog4`` rate factor ``0.5 * (1 - cos(2 pi log2(1 + (2**cycles - 1) t)))``.

    pytabkit sets it every step; here it is set once per epoch, so ``t`` is the epoch's midpoint
    ``(epoch + 0.5) / max_epochs``: at ``t = 0`` (and ``t = 1``) the factor is 0, which would
    spend the first epoch at a zero rate. Cycles get longer as training goes on (a cycle ends
    where ``(2**c - 1) / (2**cycles - 1)`` of the epochs are done, c = 1..cycles).
    """
    total = max(int(max_epochs), 1)
    t = min(max(epoch + 0.5, 0.0), total) / total
    return 0.5 * (1.0 - math.cos(2.0 * math.pi * math.log2(1.0 + (2**cycles - 1) * t)))


def regularization_factor(epoch: int, schedule: str, max_epochs: int) -> float:
    """Multiplier of a member's dropout rate or weight decay during ``epoch`` (0-based).

    ``flat_cos`` (RealMLP's ``p_drop_sched`` / ``wd_sched``): 1 for the first half of
    ``max_epochs``, then ``0.5 * (1 + cos(pi * u))`` with ``u`` going from 0 to 1 over the
    second half (pytabkit: ``combine_scheds([0.5, 0.5], [constant 1, cosine 1 -> 0])``).
    """
    if schedule == "constant":
        return 1.0
    if schedule != "flat_cos":
        raise ValueError(f"unknown regularization schedule {schedule!r}")
    total = max(int(max_epochs), 1)
    t = min(max(epoch, 0), total) / total
    if t < 0.5:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (t - 0.5) / 0.5))


def regularization_scheduled(member: Any) -> bool:
    """Whether a member's dropout or weight decay changes over the run."""
    return member.dropout_schedule != "constant" or member.wd_schedule != "constant"


class RegularizationSchedule(Callback):
    """Sets every active member's dropout and weight-decay factors at each epoch start (pure
    functions of the epoch, like the rates: nothing to save for resume)."""

    def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
        for m in trainer.active:
            s = trainer.members[m]
            trainer.dropout_factors[m] = regularization_factor(
                trainer.epoch, s.dropout_schedule, trainer.max_epochs
            )
            trainer.wd_factors[m] = regularization_factor(
                trainer.epoch, s.wd_schedule, trainer.max_epochs
            )
        trainer.optimizer.set_weight_decays(trainer.scheduled_weight_decays())
