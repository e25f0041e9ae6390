"""The default model averages the best members of the population (``ensemble``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fitwell import api
from fitwell.cli import main
from fitwell.data import load_table
from fitwell.ensemble import ensemble_members
from fitwell.models import ensemble_outputs, stack_member_states
from fitwell.training.loop import FitResult, MemberResult, MemberSettings


def test_classification_average_is_over_probabilities() -> None:
    outputs = torch.randn(3, 5, 4)
    combined = ensemble_outputs(outputs, "classification")
    expected = torch.softmax(outputs, dim=-1).mean(dim=0)
    torch.testing.assert_close(torch.softmax(combined, dim=-1), expected)
    torch.testing.assert_close(combined.exp().sum(dim=-1), torch.ones(5))


def test_regression_average_and_single_member_identity() -> None:
    outputs = torch.randn(4, 6, 1)
    torch.testing.assert_close(ensemble_outputs(outputs, "regression"), outputs.mean(dim=0))
    assert torch.equal(ensemble_outputs(outputs[:1], "classification"), outputs[0])


def test_stacking_keeps_member_order_and_layouts() -> None:
    a = {"weights.0": torch.zeros(1, 2, 3), "bn_weights.0": torch.zeros(3)}
    b = {"weights.0": torch.ones(1, 2, 3), "bn_weights.0": torch.ones(3)}
    stacked = stack_member_states([a, b])
    assert stacked["weights.0"].shape == (2, 2, 3) and stacked["bn_weights.0"].shape == (6,)
    assert float(stacked["weights.0"][1].sum()) == 6.0


def _member(i: int, val_loss: float, finite: bool = True) -> MemberResult:
    return MemberResult(
        member=i,
        settings=MemberSettings(seed=i, lr=1e-3),
        epochs_run=1,
        best_epoch=1,
        stop_reason="",
        val_loss=val_loss,
        val_score=0.5,
        train_loss=0.1,
        train_score=0.5,
        finite=finite,
    )


def test_members_join_best_first_by_validation_loss_and_never_diverged() -> None:
    members = [
        _member(0, 0.9),
        _member(1, 0.2),
        _member(2, 0.1, finite=False),
        _member(3, 0.5),
        _member(4, math.nan),
        _member(5, 0.3),
    ]
    fit = FitResult(task="classification", members=members, best=1, history=[], epochs_run=1)
    chosen = ensemble_members(fit, 3, excluded={5})
    assert [m.member for m in chosen] == [1, 3, 0]
    assert [m.member for m in ensemble_members(fit, 1, excluded=set())] == [1]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> api.Run:
    out = tmp_path_factory.mktemp("ens") / "run"
    return api.train(dataset="wine", hidden=(16,), max_epochs=15, ensemble=3, restarts=4, out=out)


def test_run_saves_and_reloads_the_averaged_members(ensemble_run: api.Run) -> None:
    run = ensemble_run
    assert run.run_dir is not None
    ens = run.metrics["ensemble"]
    assert len(ens["members"]) == 3 and ens["members"][0] == run.metrics["restarts"]["best"]
    losses = {p["member"]: p["val_loss"] for p in run.metrics["population"]}
    assert len(losses) == 4  # max(restarts, ensemble) members trained
    left_out = set(losses) - set(ens["members"])
    assert all(losses[m] >= max(losses[j] for j in ens["members"]) for m in left_out)
    loaded = api.load_run(run.run_dir)
    assert loaded.model.n_members == 3
    table = load_table(dataset="wine")
    frame = table.frame.drop(columns=[table.target]).head(40)
    np.testing.assert_array_equal(loaded.predict(frame), run.predict(frame))
    proba = loaded.predict_proba(frame)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # The saved ensemble's probabilities are the mean of its members' probabilities.
    x = torch.as_tensor(loaded.preprocessor.transform(frame, source="wine"))
    with torch.no_grad():
        members = loaded.model.predict_chunks(x)
    np.testing.assert_allclose(
        proba, torch.softmax(members, dim=-1).mean(dim=0).numpy(), rtol=1e-5, atol=1e-6
    )


def test_ensemble_one_is_the_single_best_member(tmp_path: Path) -> None:
    run = api.train(dataset="wine", hidden=(16,), max_epochs=5, ensemble=1, out=tmp_path / "r")
    assert run.metrics["ensemble"]["members"] == [0]
    assert api.load_run(tmp_path / "r").model.n_members == 1


def test_cli_json_names_the_ensemble(
    tmp_path: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "train",
            str(mixed_csv),
            "--target",
            "label",
            "--hidden",
            "8",
            "--max-epochs",
            "3",
            "--ensemble",
            "2",
            "--json",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["ensemble"]) == 2 and summary["ensemble"][0] == summary["restarts"]["best"]


def test_bad_ensemble_size_is_a_clear_error(
    tmp_path: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["train", str(mixed_csv), "--target", "label", "--ensemble", "0"])
    assert rc == 2
    assert "`ensemble` must be >= 1" in capsys.readouterr().err
