"""Learning-rate schedules per member: a factor on each member's rate, set at every epoch start.

A schedule is a pure function of the epoch (``lr_factor``), so a resumed run sets the same rates
as an uninterrupted one without saving any schedule state, and members of one population can
follow different schedules (the optimizer already keeps one rate per member). Epoch granularity
keeps the per-step loop untouched; with early stopping a run rarely reaches ``max_epochs``, so
``cosine`` and ``onecycle`` are laid out over ``max_epochs`` as Keras' and PyTorch's schedules are
over their decay steps, and a run stopped early has only decayed part of the way.

``plateau`` reacts to the member's own validation losses instead of the epoch. It is still a pure
function (:func:`plateau_factor`) of the losses so far, which early stopping already keeps and
checkpoints, so a resumed run replays the same cuts without any state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fitwell.config import LR_SCHEDULES
from fitwell.training.callbacks import Callback

__all__ = [
    "LR_SCHEDULES",
    "LearningRateSchedule",
    "is_scheduled",
    "lr_factor",
    "plateau_factor",
    "plateau_patience",
]

# PyTorch's OneCycleLR defaults: 30% of the run rising from lr / 25, then a cosine down to
# lr / 1e4 (its div_factor and final_div_factor).
ONECYCLE_RISE = 0.3
ONECYCLE_START = 1 / 25
ONECYCLE_END = 1e-4
# ReduceLROnPlateau's default cut (PyTorch and Keras both use factor 0.1). A cut of 0.5 barely
# matters here: the wait is half the early-stopping patience, so a member that keeps stalling
# gets one or two cuts before it stops, and each must be large enough to change its course.
PLATEAU_FACTOR = 0.1
# The floor of the cuts, as a fraction of the member's rate: three cuts of 0.1.
PLATEAU_MIN_FACTOR = 1e-3
# Epochs without improvement before a cut when early stopping is off (PyTorch's default).
PLATEAU_DEFAULT_PATIENCE = 10
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
    elif schedule == "plateau":
        factor = 1.0  # the cuts come from the validation losses: see plateau_factor
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


def plateau_patience(patience: int) -> int:
    """Epochs without improvement before a plateau cut: half the early-stopping ``patience``
    (at least 1), so the rate drops with time left to use it before early stopping fires;
    ``PLATEAU_DEFAULT_PATIENCE`` when early stopping is off (``patience`` 0)."""
    return max(1, patience // 2) if patience > 0 else PLATEAU_DEFAULT_PATIENCE


def plateau_factor(val_losses: Sequence[float], *, patience: int, min_delta: float = 0.0) -> float:
    """Multiplier of a ``plateau`` member's rate after the epochs whose ``val_losses`` are given.

    ReduceLROnPlateau's rule, replayed from the start: an epoch improves when its loss is below
    ``best - min_delta`` (early stopping's test); after ``patience`` epochs in a row without
    improvement the factor is multiplied by ``PLATEAU_FACTOR`` (not below ``PLATEAU_MIN_FACTOR``)
    and the wait starts again. A non-finite loss counts as no improvement.
    """
    factor, best, wait = 1.0, math.inf, 0
    for loss in val_losses:
        if math.isfinite(loss) and loss < best - min_delta:
            best, wait = loss, 0
            continue
        wait += 1
        if wait >= patience:
            factor, wait = max(factor * PLATEAU_FACTOR, PLATEAU_MIN_FACTOR), 0
    return factor


def is_scheduled(member: Any) -> bool:
    """Whether a member's rate changes over the run at all."""
    return member.lr_schedule != "constant" or member.warmup_epochs > 0


class LearningRateSchedule(Callback):
    """Sets every active member's rate to ``lr * lr_factor(...)`` at the start of each epoch
    (times :func:`plateau_factor` of its validation losses so far for ``plateau`` members)."""

    def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
        wait = plateau_patience(trainer.loop.patience)
        for m in trainer.active:
            s = trainer.members[m]
            factor = lr_factor(trainer.epoch, s.lr_schedule, s.warmup_epochs, trainer.max_epochs)
            if s.lr_schedule == "plateau":
                losses = trainer.early_stopping.val_losses.get(m, [])
                factor *= plateau_factor(losses, patience=wait, min_delta=trainer.loop.min_delta)
            trainer.lr_factors[m] = factor
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
