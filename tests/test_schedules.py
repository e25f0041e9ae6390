"""Learning-rate schedules per member, warm-up and Adam's beta2: the factors against their
formulas, a scheduled member equal to itself trained alone, resume, and the config errors."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from fitwell import api
from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.resume import resume
from fitwell.training.schedules import lr_factor
from tests.test_population import MEMBERS, _assert_same_member, _trainer
from tests.test_resume import SETTINGS, _interrupted, assert_same_run


@pytest.mark.parametrize(
    ("epoch", "schedule", "warmup", "expected"),
    [
        (0, "constant", 0, 1.0),
        (7, "constant", 0, 1.0),
        (0, "cosine", 0, 1.0),
        (50, "cosine", 0, 0.5),  # half-way through 100 epochs
        (100, "cosine", 0, 0.0),
        (25, "cosine", 0, 0.5 * (1 + math.cos(math.pi / 4))),
        (0, "onecycle", 0, 1 / 25),
        (30, "onecycle", 0, 1.0),  # the peak at 30% of 100 epochs
        (15, "onecycle", 0, 1 / 25 + (1 - 1 / 25) * 0.5),
        (100, "onecycle", 0, 1e-4),
        (0, "constant", 4, 1 / 5),  # warm-up: (epoch + 1) / (warmup + 1)
        (3, "constant", 4, 4 / 5),
        (4, "constant", 4, 1.0),
        (1, "cosine", 3, 0.5 * (1 + math.cos(math.pi / 100)) * 2 / 4),
    ],
)
def test_factor_formulas(epoch: int, schedule: str, warmup: int, expected: float) -> None:
    assert lr_factor(epoch, schedule, warmup, 100) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_scheduled_member_in_population_matches_member_trained_alone(optimizer: str) -> None:
    members = [
        replace(MEMBERS[0], lr_schedule="cosine"),
        replace(MEMBERS[1], lr_schedule="onecycle", warmup_epochs=2),
        MEMBERS[2],  # constant among scheduled ones
        replace(MEMBERS[3], warmup_epochs=3),
    ]
    together = _trainer(members, optimizer=optimizer).fit()
    for member, settings in enumerate(members):
        alone = _trainer([settings], optimizer=optimizer).fit()
        _assert_same_member(together.members[member], alone.members[0])
    # The schedule was applied: the logged rate of the cosine member fell, of the constant not.
    rates = {m: [r["lr"] for r in together.history if r["member"] == m] for m in (0, 2)}
    assert rates[0][0] == pytest.approx(MEMBERS[0].lr) and rates[0][-1] < MEMBERS[0].lr
    assert rates[2] == pytest.approx([MEMBERS[2].lr] * len(rates[2]))


def test_a_schedule_changes_the_result() -> None:
    plain = _trainer([MEMBERS[0]]).fit().members[0]
    cosine = _trainer([replace(MEMBERS[0], lr_schedule="onecycle")]).fit().members[0]
    assert plain.val_loss != cosine.val_loss


def test_adam_beta2_reaches_the_optimizer() -> None:
    from fitwell.training import LoopSettings

    trainer = _trainer([MEMBERS[0]])
    assert trainer.optimizer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    trainer.loop = LoopSettings(batch_size=32, max_epochs=6, patience=0, adam_beta2=0.95)
    from fitwell.training.loop import Trainer

    t2 = Trainer(
        trainer.arch,
        [MEMBERS[0]],
        trainer.loop,
        task="classification",
        x_train=trainer.x_train.numpy(),
        y_train=trainer.y_train.numpy(),
        x_val=trainer.x_val.numpy(),
        y_val=trainer.y_val.numpy(),
        device=torch.device("cpu"),
    )
    assert t2.optimizer.optimizer.param_groups[0]["betas"] == (0.9, 0.95)


def test_resume_with_a_schedule_is_bitwise_equal(tmp_path: Path, mixed_csv: Path) -> None:
    settings: dict[str, Any] = {
        "data": mixed_csv,
        "target": "label",
        **SETTINGS,
        "lr_schedule": "onecycle",
        "warmup_epochs": 2,
        "adam_beta2": 0.95,
    }
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 4, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr_schedule": "cosin"}, "`lr_schedule` must be one of constant, cosine, onecycle"),
        ({"warmup_epochs": -1}, "`warmup_epochs` must be >= 0"),
        ({"warmup_epochs": 2.5}, "`warmup_epochs` must be an integer"),
        ({"adam_beta2": 1.0}, "`adam_beta2` must be in (0, 1)"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({"dataset": "iris", **values})


def test_population_members_may_differ_in_schedule() -> None:
    configs = [
        {"dataset": "iris", "lr_schedule": s, "max_epochs": 5} for s in ("constant", "cosine")
    ]
    run = api.train_population(configs, progress=False)
    assert {m["lr_schedule"] for m in run.metrics["population"]} == {"constant", "cosine"}
