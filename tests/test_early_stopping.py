"""Early-stopping decisions on made-up loss sequences, without training."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fitwell.training.callbacks import EarlyStopping, early_stopping_decision

# (validation losses, patience, min_delta, epoch at which training stops or None)
CASES = [
    ([1.0, 0.9, 0.8, 0.7, 0.6], 2, 0.0, None),
    ([1.0, 0.9, 0.95, 0.97], 2, 0.0, 4),
    ([1.0, 0.9, 0.95, 0.85, 0.86, 0.87, 0.88], 3, 0.0, 7),
    ([1.0, 0.99, 0.985, 0.98], 2, 0.05, 3),  # improvements smaller than min_delta do not count
    ([0.5, 0.6, 0.7, 0.8, 0.9], 0, 0.0, None),  # patience 0: never stop on a plateau
    ([0.5, math.nan], 5, 0.0, 2),  # a non-finite loss stops at once
    ([0.5, 0.4, math.inf], 5, 0.0, 3),
]


def _first_stop(losses: list[float], patience: int, min_delta: float) -> int | None:
    for epoch in range(1, len(losses) + 1):
        stop, reason = early_stopping_decision(
            losses[:epoch], patience=patience, min_delta=min_delta
        )
        if stop:
            assert reason  # every stop is explained
            return epoch
    return None


@pytest.mark.parametrize(("losses", "patience", "min_delta", "expected"), CASES)
def test_stop_epoch(losses: list[float], patience: int, min_delta: float, expected: int | None):
    assert _first_stop(losses, patience, min_delta) == expected


def test_reason_names_best_epoch():
    stop, reason = early_stopping_decision([1.0, 0.5, 0.6, 0.7], patience=2, min_delta=0.0)
    assert stop
    assert "epoch 2" in reason and "0.5" in reason


def test_reason_without_min_delta_reads_naturally():
    _, reason = early_stopping_decision([1.0, 0.5, 0.6, 0.7], patience=2, min_delta=0.0)
    assert reason == "validation loss did not improve for 2 epochs (best 0.5 at epoch 2)"


def test_reason_names_min_delta_when_set():
    _, reason = early_stopping_decision([1.0, 0.5, 0.6, 0.7], patience=2, min_delta=0.01)
    assert reason == (
        "validation loss did not improve by more than 0.01 for 2 epochs (best 0.5 at epoch 2)"
    )


class FakeTrainer:
    """Just enough of a Trainer for the callback: weights that encode the epoch."""

    def __init__(self, n_members: int) -> None:
        self.n_members_total = n_members
        self.epoch = 0
        self.stopped: dict[int, str] = {}

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        return {"w": torch.full((1, 2), float(self.epoch * 10 + member))}

    def stop_member(self, member: int, reason: str) -> None:
        self.stopped.setdefault(member, reason)


def _drive(callback: EarlyStopping, trainer: FakeTrainer, losses: dict[int, list[float]]) -> None:
    callback.on_fit_begin(trainer)  # type: ignore[arg-type]
    n_epochs = max(len(v) for v in losses.values())
    for epoch in range(1, n_epochs + 1):
        trainer.epoch = epoch
        logs: dict[int, dict[str, Any]] = {
            m: {"val_loss": seq[epoch - 1]}
            for m, seq in losses.items()
            if m not in trainer.stopped and epoch <= len(seq)
        }
        callback.on_epoch_end(trainer, logs=logs)  # type: ignore[arg-type]


def test_restores_each_members_best_weights():
    trainer = FakeTrainer(2)
    cb = EarlyStopping(patience=2)
    _drive(cb, trainer, {0: [1.0, 0.8, 0.9, 0.95, 0.7], 1: [1.0, 0.9, 0.8, 0.7, 0.6]})
    assert trainer.stopped.keys() == {0}  # member 0 stops at epoch 4, member 1 goes on
    assert cb.best_epoch == {0: 2, 1: 5}
    best0 = cb.best_weights(0)
    best1 = cb.best_weights(1)
    assert best0 is not None and best1 is not None
    assert float(best0["w"][0, 0]) == 2 * 10 + 0  # weights of epoch 2, not the last epoch
    assert float(best1["w"][0, 0]) == 5 * 10 + 1


def test_patience_zero_keeps_last_weights():
    trainer = FakeTrainer(1)
    cb = EarlyStopping(patience=0)
    _drive(cb, trainer, {0: [1.0, 0.5, 0.9]})
    assert not trainer.stopped
    assert cb.best_epoch[0] == 2  # still tracked for the report
    assert cb.best_weights(0) is None  # nothing restored: the final model is the last epoch


def test_state_round_trip_decides_the_same():
    losses = [1.0, 0.8, 0.85, 0.9, 0.95]
    trainer_a, a = FakeTrainer(1), EarlyStopping(patience=3)
    _drive(a, trainer_a, {0: losses})
    trainer_b, b = FakeTrainer(1), EarlyStopping(patience=3)
    _drive(b, trainer_b, {0: losses[:3]})
    c = EarlyStopping(patience=3)
    c.load_state_dict(b.state_dict())
    trainer_c = FakeTrainer(1)
    trainer_c.epoch = 3
    for epoch in (4, 5):
        trainer_c.epoch = epoch
        c.on_epoch_end(trainer_c, logs={0: {"val_loss": losses[epoch - 1]}})  # type: ignore[arg-type]
    assert trainer_c.stopped.keys() == trainer_a.stopped.keys() == {0}
    assert c.best_epoch == a.best_epoch


def test_best_epoch_by_score_follows_accuracy_and_gives_ties_to_the_later_epoch():
    # Loss keeps falling while accuracy peaks at epochs 2 and 4 (a tie) and then drops.
    trainer = FakeTrainer(1)
    trainer.score = "accuracy"  # type: ignore[attr-defined]
    cb = EarlyStopping(patience=10, by="score")
    cb.on_fit_begin(trainer)  # type: ignore[arg-type]
    rows = [(1.0, 0.80), (0.9, 0.90), (0.8, 0.85), (0.7, 0.90), (0.6, 0.88)]
    for epoch, (loss, acc) in enumerate(rows, start=1):
        trainer.epoch = epoch
        logs = {0: {"val_loss": loss, "val_accuracy": acc}}
        cb.on_epoch_end(trainer, logs=logs)  # type: ignore[arg-type]
    assert cb.best_epoch[0] == 4
    best = cb.best_weights(0)
    assert best is not None and float(best["w"][0, 0]) == 40
    by_loss = EarlyStopping(patience=10)
    trainer.epoch = 0
    by_loss.on_fit_begin(trainer)  # type: ignore[arg-type]
    for epoch, (loss, acc) in enumerate(rows, start=1):
        trainer.epoch = epoch
        by_loss.on_epoch_end(trainer, logs={0: {"val_loss": loss, "val_accuracy": acc}})  # type: ignore[arg-type]
    assert by_loss.best_epoch[0] == 5


def test_best_epoch_by_score_still_stops_on_a_non_finite_loss():
    trainer = FakeTrainer(1)
    trainer.score = "accuracy"  # type: ignore[attr-defined]
    cb = EarlyStopping(patience=10, by="score")
    cb.on_fit_begin(trainer)  # type: ignore[arg-type]
    for epoch, loss in enumerate([1.0, float("nan")], start=1):
        trainer.epoch = epoch
        cb.on_epoch_end(trainer, logs={0: {"val_loss": loss, "val_accuracy": 0.5}})  # type: ignore[arg-type]
    assert 0 in trainer.stopped and "nan" in trainer.stopped[0]
