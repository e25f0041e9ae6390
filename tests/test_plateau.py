"""``lr_schedule = "plateau"``: the cut rule on made-up losses, per member inside a population,
the logged rates of a real run against the rule, resume, and the config errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fitwell import api
from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.resume import resume
from fitwell.training import LoopSettings, Trainer
from fitwell.training.schedules import (
    PLATEAU_FACTOR,
    PLATEAU_MIN_FACTOR,
    LearningRateSchedule,
    plateau_factor,
    plateau_patience,
)
from tests.test_population import ARCH, MEMBERS, _assert_same_member, _data
from tests.test_resume import SETTINGS, _interrupted, assert_same_run


@pytest.mark.parametrize(
    ("losses", "patience", "min_delta", "expected"),
    [
        ([], 2, 0.0, 1.0),
        ([1.0, 0.9, 0.8, 0.7], 2, 0.0, 1.0),  # improving: never cut
        ([1.0, 1.0], 2, 0.0, 1.0),  # one epoch without improvement: waits
        ([1.0, 1.0, 1.0], 2, 0.0, 0.1),  # two: cut
        ([1.0, 1.0, 1.0, 1.0], 2, 0.0, 0.1),  # the wait starts again after a cut
        ([1.0, 1.0, 1.0, 1.0, 1.0], 2, 0.0, 0.01),
        ([1.0, 1.1, 0.9, 1.2, 0.95], 2, 0.0, 0.1),  # 0.9 improved: then two without
        ([1.0, 0.9995, 0.999], 2, 1e-3, 0.1),  # below min_delta is not an improvement
        ([1.0, float("nan"), float("inf")], 2, 0.0, 0.1),  # non-finite: no improvement
        ([1.0] * 40, 1, 0.0, PLATEAU_MIN_FACTOR),  # never below the floor
    ],
)
def test_plateau_factor(
    losses: list[float], patience: int, min_delta: float, expected: float
) -> None:
    got = plateau_factor(losses, patience=patience, min_delta=min_delta)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("patience", "expected"), [(20, 10), (5, 2), (1, 1), (0, 10)])
def test_plateau_waits_half_the_early_stopping_patience(patience: int, expected: int) -> None:
    assert plateau_patience(patience) == expected


def test_stalled_member_is_cut_and_improving_member_is_not() -> None:
    """Two members in one population, fed made-up validation losses: only the one that stalls
    for ``patience // 2`` epochs gets its rate multiplied by the plateau factor."""
    members = [MEMBERS[0], MEMBERS[1]]
    members = [replace(m, lr_schedule="plateau") for m in members]
    set_rates: list[list[float]] = []
    trainer = SimpleNamespace(
        active=[0, 1],
        members=members,
        epoch=0,
        max_epochs=100,
        loop=LoopSettings(patience=6),  # plateau waits 3 epochs
        early_stopping=SimpleNamespace(val_losses={0: [], 1: []}),
        lr_factors={},
    )
    trainer.scheduled_lrs = lambda: [
        members[m].lr * trainer.lr_factors.get(m, 1.0) for m in trainer.active
    ]
    trainer.optimizer = SimpleNamespace(set_lrs=set_rates.append)
    schedule = LearningRateSchedule()
    stalled = [1.0, 0.8, 0.8, 0.81, 0.85, 0.9]  # best at epoch 2, then 3 epochs without
    improving = [1.0, 0.8, 0.7, 0.6, 0.5, 0.4]
    for epoch in range(len(stalled) + 1):
        trainer.epoch = epoch
        schedule.on_epoch_begin(trainer)
        trainer.early_stopping.val_losses[0] = stalled[: epoch + 1]
        trainer.early_stopping.val_losses[1] = improving[: epoch + 1]
    # The rates set at the start of each epoch: the cut lands after epoch 5's loss (3 epochs
    # since the best at epoch 2), i.e. from the start of epoch 6 (index 5) on.
    stalled_rates = [r[0] for r in set_rates]
    improving_rates = [r[1] for r in set_rates]
    cut = members[0].lr * PLATEAU_FACTOR
    assert stalled_rates == pytest.approx([members[0].lr] * 5 + [cut] * 2)
    assert improving_rates == pytest.approx([members[1].lr] * 7)


def _plateau_trainer(members: list[Any], patience: int) -> Trainer:
    loop = LoopSettings(batch_size=32, max_epochs=25, patience=patience)
    cpu = torch.device("cpu")
    return Trainer(ARCH, members, loop, task="classification", device=cpu, **_data())


def test_real_run_cuts_by_its_own_losses_and_matches_members_alone() -> None:
    """In a real population each plateau member's logged rate follows the rule applied to its own
    validation losses (members stall at different epochs), and equals the member trained alone."""
    members = [
        replace(MEMBERS[0], lr=0.05, lr_schedule="plateau"),  # a high rate: stalls early
        replace(MEMBERS[2], lr_schedule="plateau"),
        MEMBERS[1],  # constant beside them
    ]
    together = _plateau_trainer(members, patience=6).fit()
    wait = plateau_patience(6)
    cut_epochs = []
    for m, settings in enumerate(members):
        rows = [r for r in together.history if r["member"] == m]
        losses = [r["val_loss"] for r in rows]
        plateau = settings.lr_schedule == "plateau"
        expected = [
            settings.lr * (plateau_factor(losses[:i], patience=wait) if plateau else 1.0)
            for i in range(len(rows))
        ]
        assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12)
        cuts = [r["epoch"] for r in rows if r["lr"] < settings.lr]
        cut_epochs.append(cuts[0] if cuts else None)
    assert cut_epochs[0] is not None  # the rule fired in this run: the check above means something
    assert cut_epochs[2] is None
    for m, settings in enumerate(members[:2]):
        alone = _plateau_trainer([settings], patience=6).fit()
        _assert_same_member(together.members[m], alone.members[0])


def test_resume_with_plateau_is_bitwise_equal(tmp_path: Path, mixed_csv: Path) -> None:
    settings: dict[str, Any] = {
        "data": mixed_csv,
        "target": "label",
        **SETTINGS,
        "max_epochs": 14,
        "patience": 4,  # plateau waits 2 epochs
        "lr": 0.05,
        "lr_schedule": "plateau",
    }
    run = api.train(out=tmp_path / "a", **settings)
    rates = [float(r) for r in run.history["lr"]]
    # A cut comes after the interruption at epoch 4, so the resumed run has to replay it.
    assert any(r < 0.05 for r in rates[5:])
    _interrupted(tmp_path / "b", 4, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_plateau_is_a_valid_schedule_and_a_typo_is_refused() -> None:
    assert build_config({"dataset": "iris", "lr_schedule": "plateau"}).lr_schedule == "plateau"
    with pytest.raises(InputError, match="did you mean `?'?plateau"):
        build_config({"dataset": "iris", "lr_schedule": "plateu"})
