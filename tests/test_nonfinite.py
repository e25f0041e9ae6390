"""Numerical faults: caught at the step, rolled back with a halved learning rate, at most 3
times, then the member (or the run, exit 3) stops; a non-finite tensor is never saved."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fitwell import api, runs
from fitwell.cli import main
from fitwell.errors import TrainingFailed
from fitwell.models import Architecture
from fitwell.training import Callback, LoopSettings, MemberSettings, Trainer
from fitwell.training.guard import MAX_RETRIES, nonfinite_members


class Poison(Callback):
    """Makes chosen members' loss and gradients NaN at chosen (epoch, step) moments: what a
    diverging step looks like. ``gradient_only`` leaves the loss finite (a NaN that only the
    backward pass produced)."""

    def __init__(self, when: set[tuple[int, int, int]], *, gradient_only: bool = False) -> None:
        self.when = when
        self.gradient_only = gradient_only
        self.step = 0

    def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
        self.step = 0

    def on_after_backward(self, trainer: Any, **kwargs: Any) -> None:
        self.step += 1
        for member in trainer.active:
            if (trainer.epoch + 1, self.step, member) in self.when:
                pos = trainer.position(member)
                trainer.model.weights[0].grad[pos, 0, 0] = float("nan")
                if not self.gradient_only:
                    kwargs["losses"][pos] = float("nan")


def _trainer(k: int, callbacks: list[Callback], lr: float = 0.01, epochs: int = 4) -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    arch = Architecture(n_inputs=3, hidden=(5,), n_outputs=2)
    members = [MemberSettings(seed=s, lr=lr) for s in range(k)]
    return Trainer(
        arch,
        members,
        LoopSettings(max_epochs=epochs, batch_size=32, patience=0),
        task="classification",
        x_train=x,
        y_train=y,
        x_val=x[:32],
        y_val=y[:32],
        device=torch.device("cpu"),
        callbacks=callbacks,
    )


def test_nonfinite_members_matches_elementwise_oracle() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0])
    w = torch.ones(3, 4, 5)
    w[1, 2, 3] = float("inf")
    flat = torch.ones(3 * 6)  # batch-norm layout: member-major
    flat[2 * 6 + 1] = float("nan")
    got = nonfinite_members(losses, [w, flat], 3)
    oracle = [
        not (torch.isfinite(w[m]).all() and torch.isfinite(flat[m * 6 : (m + 1) * 6]).all())
        for m in range(3)
    ]
    assert got.tolist() == oracle == [False, True, True]
    assert nonfinite_members(torch.tensor([float("nan"), 0.0]), [], 2).tolist() == [True, False]


def test_one_fault_is_rolled_back_with_half_the_lr() -> None:
    trainer = _trainer(1, [Poison({(2, 2, 0)})])
    fit = trainer.fit()
    assert [(e["epoch"], e["step"], e["member"], e["action"], e["lr"]) for e in trainer.events] == [
        (2, 2, 0, "rollback_halve_lr", 0.005)
    ]
    assert trainer.members[0].lr == 0.005
    rows = {r["epoch"]: r for r in fit.history}
    assert [rows[e]["nonfinite_retries"] for e in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [rows[e]["lr"] for e in (1, 2, 3, 4)] == [0.01, 0.005, 0.005, 0.005]
    assert fit.best_member.finite
    assert all(bool(torch.isfinite(t).all()) for t in fit.best_member.state.values())


def test_gradient_only_fault_is_caught_at_the_next_step() -> None:
    """The per-step check reads the loss only: a NaN gradient under a finite loss poisons the
    weights, so the next step's loss is NaN and the member goes back to the epoch's start."""
    trainer = _trainer(1, [Poison({(2, 1, 0)}, gradient_only=True)])
    fit = trainer.fit()
    assert [(e["epoch"], e["step"], e["what"]) for e in trainer.events] == [(2, 2, "loss")]
    assert fit.best_member.finite
    assert all(bool(torch.isfinite(t).all()) for t in fit.best_member.state.values())


def test_gradient_only_fault_at_the_last_step_is_caught_by_the_evaluation() -> None:
    trainer = _trainer(1, [Poison({(2, 3, 0)}, gradient_only=True)])  # 96 rows / 32: 3 steps
    fit = trainer.fit()
    assert [(e["epoch"], e["step"], e["what"]) for e in trainer.events] == [
        (2, None, "evaluation loss")
    ]
    rows = {r["epoch"]: r for r in fit.history}
    assert math.isfinite(rows[2]["train_loss"]) and math.isfinite(rows[2]["val_loss"])
    assert all(bool(torch.isfinite(t).all()) for t in fit.best_member.state.values())


def test_rollback_restores_the_start_of_epoch_weights() -> None:
    """A fault at the first step of an epoch rolls back to exactly the epoch's start."""
    seen: dict[str, torch.Tensor] = {}

    class Watch(Callback):
        def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
            if trainer.epoch == 1:
                seen["start"] = trainer.model.weights[0].detach().clone()

        def on_batch_end(self, trainer: Any, **kwargs: Any) -> None:
            if trainer.epoch == 1 and "after" not in seen:
                seen["after"] = trainer.model.weights[0].detach().clone()

    trainer = _trainer(1, [Poison({(2, 1, 0)}), Watch()])
    trainer.fit()
    assert torch.equal(seen["after"], seen["start"])


def test_fourth_fault_stops_and_run_fails_with_exit_3() -> None:
    trainer = _trainer(1, [Poison({(1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 2, 0)})])
    fit = trainer.fit()
    actions = [e["action"] for e in trainer.events]
    assert actions == ["rollback_halve_lr"] * MAX_RETRIES + ["stop"]
    assert [e["lr"] for e in trainer.events] == [0.005, 0.0025, 0.00125, 0.00125]
    assert not fit.best_member.finite
    assert fit.epochs_run == 2
    assert "after 3 rollbacks" in fit.best_member.stop_reason


def test_in_a_population_only_the_faulty_member_is_touched() -> None:
    poisoned = _trainer(3, [Poison({(1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1)})])
    clean = _trainer(3, [])
    fit_p, fit_c = poisoned.fit(), clean.fit()
    assert {e["member"] for e in poisoned.events} == {1}
    assert not fit_p.members[1].finite and fit_p.members[1].epochs_run == 2
    # Others are untouched up to float32 rounding: a halved lr makes the population's rates
    # differ, and the optimizer then applies them by interpolation instead of a fused lr.
    for m in (0, 2):
        for name, t in fit_c.members[m].state.items():
            torch.testing.assert_close(fit_p.members[m].state[name], t, rtol=1e-5, atol=1e-6)
    assert fit_p.best in (0, 2)


def test_diverging_cli_run_exits_3_and_writes_no_model(
    tmp_path: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "train",
            str(mixed_csv),
            "--target",
            "label",
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--init-scale",
            "30",
            "--hidden",
            "16,16",
            "--max-epochs",
            "6",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3, err
    # Either the guard gives up after 3 rollbacks or the doctor's divergence probe stops the
    # exploding loss first; both end in exit 3 with no model written.
    assert err.startswith("error: training diverged")
    assert not (tmp_path / "out").exists()


def test_recovered_run_is_finite_and_recorded(tmp_path: Path, mixed_csv: Path) -> None:
    run = api.train(
        mixed_csv,
        target="label",
        hidden=(8,),
        max_epochs=3,
        lr=0.01,
        out=tmp_path / "out",
        ensemble=1,
        callbacks=[Poison({(2, 1, 0)})],
    )
    assert run.history["nonfinite_retries"].tolist() == [0, 1, 1]
    events = run.metrics["nonfinite_events"]
    assert [(e["epoch"], e["step"], e["action"], e["lr"]) for e in events] == [
        (2, 1, "rollback_halve_lr", 0.005)
    ]
    assert math.isfinite(run.metrics["test"]["accuracy"])
    loaded = api.load_run(tmp_path / "out")
    assert all(bool(torch.isfinite(p).all()) for p in loaded.model.parameters())


def test_save_model_refuses_non_finite_tensors(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="non-finite"):
        runs.save_model(tmp_path, {"w": torch.tensor([1.0, float("nan")])}, {})
    assert not (tmp_path / runs.MODEL_FILE).exists()
