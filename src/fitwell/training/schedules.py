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
