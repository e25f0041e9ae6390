"""Callbacks: the small protocol the training loop calls; built-in early stopping and progress.

Every hook takes the trainer plus ``**kwargs``. A callback stops training by setting
``trainer.stop_training = True`` (or stops one population member with ``trainer.stop_member``),
never by raising. Callbacks with state expose ``state_dict`` / ``load_state_dict`` so a resumed run
decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fitwell.training.loop import Trainer


class Callback:
    """Base class; override the hooks you need."""

    def on_fit_begin(self, trainer: Trainer, **kwargs: Any) -> None: ...

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, **kwargs: Any) -> None: ...

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None: ...

    def on_batch_end(self, trainer: Trainer, **kwargs: Any) -> None: ...

    def on_after_backward(self, trainer: Trainer, **kwargs: Any) -> None:
        """Gradients are populated and not yet applied: where gradient statistics are read."""

    def on_members_removed(self, trainer: Trainer, **kwargs: Any) -> None:
        """Stopped members were dropped from the batched model (``kept`` = surviving member ids)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def early_stopping_decision(
    val_losses: Sequence[float],
    *,
    patience: int,
    min_delta: float,
    quantity: str = "validation loss",
) -> tuple[bool, str]:
    """Decide from one member's validation losses so far whether to stop now.

    Stops when the last ``patience`` epochs brought no loss below ``best - min_delta``, or when the
    loss is not finite. Pure: the same sequence always gives the same ``(stop, reason)``.
    """
    if not val_losses:
        return False, ""
    last = val_losses[-1]
    if not math.isfinite(last):
        return True, f"{quantity} became {last} at epoch {len(val_losses)}"
    if patience <= 0:
        return False, ""
    best_epoch, best = 0, math.inf
    for epoch, loss in enumerate(val_losses, start=1):
        if loss < best - min_delta:
            best_epoch, best = epoch, loss
    waited = len(val_losses) - best_epoch
    if waited >= patience:
        # "by more than 0" reads oddly: name the margin only when there is one.
        by = f" by more than {min_delta:g}" if min_delta > 0 else ""
        return True, (
            f"{quantity} did not improve{by} for {patience} epochs "
            f"(best {best:.4g} at epoch {best_epoch})"
        )
    return False, ""


class EarlyStopping(Callback):
    """Per-member early stopping on validation loss, keeping each member's best weights.

    With ``patience = 0`` no member is stopped early, but the best epoch is still tracked.
    ``by="score"`` watches the validation score instead (its negative, so lower is better):
    with label smoothing or a few confident mistakes, the loss's best epoch can be one the
    accuracy calls worse. Ties then go to the later epoch (RealMLP's rule), since scores such
    as accuracy tie often and the later weights have trained longer. A loss that is not finite
    still stops the member either way.
    """

    def __init__(
        self,
        *,
        patience: int,
        min_delta: float = 0.0,
        restore_best: bool = True,
        by: str = "loss",
    ) -> None:
        if by not in ("loss", "score"):
            raise ValueError(f"by must be 'loss' or 'score'; got {by!r}")
        self.by = by
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best and patience > 0
        self.val_losses: dict[int, list[float]] = {}
        self.best_epoch: dict[int, int] = {}
        self.best_loss: dict[int, float] = {}
        self.stop_reason: dict[int, str] = {}
        self.best_state: dict[int, dict[str, torch.Tensor]] = {}

    def on_fit_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        for member in range(trainer.n_members_total):
            self.val_losses.setdefault(member, [])
            self.best_loss.setdefault(member, math.inf)
            self.best_epoch.setdefault(member, 0)

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        logs: dict[int, dict[str, float]] = kwargs["logs"]
        improved: list[int] = []
        for member, row in logs.items():
            # ``val_objective`` (val loss + group penalty) when a feature-selection penalty is on.
            loss = float(row.get("val_objective", row["val_loss"]))
            if self.by == "score" and math.isfinite(loss):
                loss = -float(row[f"val_{trainer.score}"])
            self.val_losses[member].append(loss)
            best = self.best_loss[member] - self.min_delta
            better = loss <= best if self.by == "score" else loss < best
            if math.isfinite(loss) and better:
                self.best_loss[member] = loss
                self.best_epoch[member] = trainer.epoch
                improved.append(member)
            stop, reason = early_stopping_decision(
                self.val_losses[member],
                patience=self.patience,
                min_delta=self.min_delta,
                quantity="validation loss" if self.by == "loss" else "validation score (negated)",
            )
            if stop:
                self.stop_reason[member] = reason
                trainer.stop_member(member, reason)
        if improved and self.restore_best:
            for member in improved:
                self.best_state[member] = trainer.member_state(member)

    def best_weights(self, member: int) -> dict[str, torch.Tensor] | None:
        return self.best_state.get(member) if self.restore_best else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "val_losses": {str(k): v for k, v in self.val_losses.items()},
            "best_epoch": {str(k): v for k, v in self.best_epoch.items()},
            "best_loss": {str(k): v for k, v in self.best_loss.items()},
            "stop_reason": {str(k): v for k, v in self.stop_reason.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.val_losses = {int(k): list(v) for k, v in state["val_losses"].items()}
        self.best_epoch = {int(k): int(v) for k, v in state["best_epoch"].items()}
        self.best_loss = {int(k): float(v) for k, v in state["best_loss"].items()}
        self.stop_reason = {int(k): str(v) for k, v in state["stop_reason"].items()}


class ProgressBar(Callback):
    """A rich progress bar on a terminal; silent when output is piped."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def on_fit_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=trainer.max_epochs, status="", completed=trainer.epoch
        )

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self._progress is None:
            return
        logs: dict[int, dict[str, float]] = kwargs["logs"]
        best = min(logs.values(), key=lambda r: r["val_loss"])
        status = f"val_loss {best['val_loss']:.4f}"
        if len(logs) > 1:
            status += f" ({len(logs)} members active)"
        self._progress.update(self._task, completed=trainer.epoch, status=status)

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
