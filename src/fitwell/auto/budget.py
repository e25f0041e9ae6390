"""The time budget of ``fitwell auto``: each stage's share and a callback that keeps to it.

Shares are cumulative deadlines, so a stage that ends early leaves its time to the next ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fitwell.training import Callback

# Fraction of the budget by the end of each stage (cumulative).
STAGES = ("baseline", "repairs", "search", "restarts")
SHARES = {"baseline": 0.15, "repairs": 0.35, "search": 0.80, "restarts": 1.00}


@dataclass
class Budget:
    """Seconds for the whole search (``None``: no time limit, e.g. ``--trials`` only)."""

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def deadline(self, stage: str) -> float | None:
        """The clock time (``time.perf_counter``) by which ``stage`` must end."""
        if self.seconds is None:
            return None
        return self.started + SHARES[stage] * self.seconds

    def left(self, stage: str) -> float:
        """Seconds left until the stage's deadline (``inf`` without a budget)."""
        deadline = self.deadline(stage)
        return float("inf") if deadline is None else deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Deadline(Callback):
    """Stops the whole population at a clock time, mid-epoch; members keep their best weights.

    The check is one clock read per step (~50 ns), so an epoch on a large table cannot overrun
    the budget by more than one step.
    """

    def __init__(
        self, deadline: float | None, *, min_epochs: int = 1, project_after: int | None = None
    ) -> None:
        self.deadline = deadline
        self.min_epochs = min_epochs  # a model needs one validated epoch to exist at all
        # After this many epochs, give up at once when the pace so far would not reach
        # max_epochs by the deadline (a run that will be cut is not worth its time).
        self.project_after = project_after
        self.fired = False
        self.projected_miss = False
        self._began = time.perf_counter()

    def on_fit_begin(self, trainer: Any, **kwargs: Any) -> None:
        self._began = time.perf_counter()

    def _check(self, trainer: Any) -> None:
        if self.deadline is None or trainer.epoch < self.min_epochs:
            return
        now = time.perf_counter()
        if now >= self.deadline:
            self.fired = True
            trainer.stop_training = True
        elif self.project_after is not None and trainer.epoch == self.project_after:
            pace = (now - self._began) / trainer.epoch
            if self._began + pace * trainer.max_epochs > self.deadline:
                self.fired = self.projected_miss = True
                trainer.stop_training = True

    def on_batch_end(self, trainer: Any, **kwargs: Any) -> None:
        self._check(trainer)

    def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
        self._check(trainer)
