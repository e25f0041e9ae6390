"""`metric`: which member and ensemble it chooses, what `target_score` means, the doctor's use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fitwell
from fitwell.cli import main
from fitwell.config import build_config
from fitwell.diagnosis.findings import diagnose
from fitwell.diagnosis.rules import RunContext, imbalance_findings, no_signal_findings
from fitwell.ensemble import ensemble_members
from fitwell.errors import FitwellError, InputError
from fitwell.models import Architecture
from fitwell.scoring import (
    meets_target,
    member_metric_values,
    metric_value,
    rank_members,
    resolve_metric,
)
from fitwell.training.loop import FitResult, MemberResult, MemberSettings


def _linear_member(w: list[list[float]], b: list[float]) -> dict[str, torch.Tensor]:
    """A one-member linear model's tensors: ``logits = x @ w + b``."""
    return {
        "weights.0": torch.tensor([w], dtype=torch.float32),
        "biases.0": torch.tensor([[b]], dtype=torch.float32),
    }


def _fit(states: list[dict[str, torch.Tensor]], val_losses: list[float]) -> FitResult:
    members = [
        MemberResult(
            member=i,
            settings=MemberSettings(seed=i, lr=1e-3),
            epochs_run=1,
            best_epoch=1,
            stop_reason="",
            val_loss=loss,
            val_score=math.nan,
            train_loss=math.nan,
            train_score=math.nan,
            state=state,
        )
        for i, (state, loss) in enumerate(zip(states, val_losses, strict=True))
    ]
    best = min(range(len(members)), key=lambda i: val_losses[i])
    return FitResult("classification", members, best, [], 1)


@pytest.fixture
def rare_class_val() -> tuple[np.ndarray, np.ndarray]:
    """Validation rows, 10% of class 1; feature 0 separates the classes at 0."""
    rng = np.random.default_rng(0)
    y = (np.arange(200) % 10 == 0).astype(np.int64)
    x = np.stack([np.where(y == 1, 1.0, -1.0) + 0.8 * rng.normal(size=200), rng.normal(size=200)])
    return x.T.astype(np.float32), y


def test_metric_changes_the_kept_member_and_the_ensemble(rare_class_val) -> None:
    """Member 0 reads feature 0 timidly (the lowest log loss, but it misses rare rows), member 1
    reads it with over-confident logits (the worst log loss, the best balanced accuracy),
    member 2 always says "common" with the class frequencies (balanced accuracy 0.5).
    Validation loss keeps member 0, balanced accuracy member 1; the ensemble follows."""
    x, y = rare_class_val
    prior = math.log(0.9 / 0.1)
    states = [
        _linear_member([[-0.6, 0.6], [0.0, 0.0]], [1.0, 0.0]),
        _linear_member([[-40.0, 40.0], [0.0, 0.0]], [0.0, 0.0]),
        _linear_member([[0.0, 0.0], [0.0, 0.0]], [prior, 0.0]),
    ]
    arch = Architecture(n_inputs=2, hidden=(), n_outputs=2)
    losses = member_metric_values(_fit(states, [0, 0, 0]), arch, "log_loss", x, y)
    assert losses[0] < losses[2] < losses[1]  # the case is what the docstring says
    balanced = member_metric_values(_fit(states, [0, 0, 0]), arch, "balanced_accuracy", x, y)
    assert balanced[1] > balanced[0] > balanced[2] == pytest.approx(0.5)

    by_loss = _fit(states, losses)
    assert by_loss.best == 0
    assert [m.member for m in ensemble_members(by_loss, 2)] == [0, 2]

    by_metric = _fit(states, losses)
    rank_members(by_metric, "balanced_accuracy", balanced)
    assert by_metric.best == 1
    assert [m.member for m in ensemble_members(by_metric, 2)] == [1, 0]

    # Lower is better: log loss as the metric ranks as the loss does.
    by_log_loss = _fit(states, losses)
    rank_members(by_log_loss, "log_loss", losses)
    assert [m.member for m in ensemble_members(by_log_loss, 3)] == [0, 2, 1]


def test_ties_in_the_metric_go_to_the_lower_validation_loss() -> None:
    state = _linear_member([[0.0, 0.0]], [0.0, 0.0])
    fit = _fit([state, state, state], [0.5, 0.2, 0.3])
    rank_members(fit, "accuracy", [0.8, 0.9, 0.9])
    assert [m.member for m in ensemble_members(fit, 3)] == [1, 2, 0]


def test_member_values_match_scikit_learn(rare_class_val) -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    x, y = rare_class_val
    state = _linear_member([[-0.6, 0.6], [0.3, 0.0]], [1.0, 0.0])
    arch = Architecture(n_inputs=2, hidden=(), n_outputs=2)
    w = np.linspace(0.1, 3.0, len(y))
    logits = x.astype(np.float64) @ np.array([[-0.6, 0.6], [0.3, 0.0]]) + np.array([1.0, 0.0])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fit = _fit([state], [0.0])
    got = member_metric_values(fit, arch, "roc_auc", x, y, weights=w)[0]
    assert got == pytest.approx(roc_auc_score(y, proba[:, 1], sample_weight=w), abs=1e-6)
    got = member_metric_values(fit, arch, "macro_f1", x, y, weights=w)[0]
    assert got == pytest.approx(
        f1_score(y, proba.argmax(1), average="macro", sample_weight=w), abs=1e-9
    )


def test_regression_metrics_are_in_the_targets_units() -> None:
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    rng = np.random.default_rng(1)
    y_std, pred_std = rng.normal(size=50), rng.normal(size=50)
    w = rng.uniform(0, 2, size=50)
    assert metric_value("rmse", y_std, pred_std, weights=w, scale=7.0) == pytest.approx(
        root_mean_squared_error(7 * y_std, 7 * pred_std, sample_weight=w)
    )
    assert metric_value("mae", y_std, pred_std, scale=7.0) == pytest.approx(
        mean_absolute_error(7 * y_std, 7 * pred_std)
    )


@pytest.mark.parametrize(
    ("value", "target", "metric", "met"),
    [
        (0.91, 0.9, "accuracy", True),
        (0.89, 0.9, "accuracy", False),
        (0.30, 0.35, "log_loss", True),
        (0.40, 0.35, "log_loss", False),
        (2.0, 2.0, "rmse", True),
        (2.1, 2.0, "mae", False),
        (math.nan, 2.0, "rmse", False),
    ],
)
def test_target_is_at_least_or_at_most(value: float, target: float, metric: str, met: bool) -> None:
    assert meets_target(value, target, metric) is met


def test_metric_of_the_other_task_is_refused() -> None:
    with pytest.raises(InputError) as err:
        resolve_metric("rmse", "classification")
    assert str(err.value) == (
        "`metric` 'rmse' does not apply to a classification task; use one of accuracy, "
        "balanced_accuracy, macro_f1, roc_auc, log_loss."
    )
    assert resolve_metric("auto", "regression") == "r2"


def test_unknown_metric_is_refused_with_a_suggestion() -> None:
    with pytest.raises(FitwellError, match="`metric` must be one of .*got 'macro-f1'"):
        build_config({"metric": "macro-f1"})


@pytest.fixture
def regression_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = 50 + 10 * x[:, 0] + rng.normal(size=200)
    path = tmp_path / "reg.csv"
    frame.to_csv(path, index=False)
    return path


def test_lower_is_better_target_through_the_cli(
    regression_csv: Path, tmp_path: Path, capsys
) -> None:
    common = [str(regression_csv), "--target", "y", "--metric", "rmse", "--max-epochs", "3"]
    common += ["--ensemble", "1", "--json"]
    assert main(["train", *common, "--target-score", "1000", "--out", str(tmp_path / "a")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "rmse" and doc["target_met"] is True
    assert doc["test_score"] == doc["test"]["rmse"]
    assert main(["train", *common, "--target-score", "0.001", "--out", str(tmp_path / "b")]) == 1
    assert json.loads(capsys.readouterr().out)["target_met"] is False
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["chosen_by"] == "val_rmse" and metrics["metric_higher_is_better"] is False
    assert "at most" in (tmp_path / "a" / "report.html").read_text()


def test_wrong_task_metric_exits_2_before_writing(
    regression_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    args = ["train", str(regression_csv), "--target", "y", "--metric", "roc_auc"]
    assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "error: `metric` 'roc_auc' does not apply to a regression task; use one of rmse, mae, r2.\n"
    )
    assert not out.exists()


def test_default_metric_keeps_the_loss_choice(regression_csv: Path) -> None:
    run = fitwell.train(regression_csv, target="y", max_epochs=3, restarts=3, ensemble=2)
    m = run.metrics
    assert m["metric"] == "r2" and m["chosen_by"] == "val_loss"
    losses = m["restarts"]["val_losses"]
    assert m["restarts"]["best"] == int(np.argmin(losses))
    assert m["test_score"] == m["test"]["r2"]


def test_chosen_metric_picks_the_best_member_on_it(regression_csv: Path) -> None:
    run = fitwell.train(
        regression_csv, target="y", max_epochs=3, restarts=4, ensemble=2, metric="mae"
    )
    values = run.metrics["restarts"]["val_mae"]
    assert run.metrics["restarts"]["best"] == int(np.nanargmin(values))
    assert run.metrics["ensemble"]["members"][1] == int(np.argsort(values)[1])
    assert run.metrics["ensemble"]["val"]["mae"] > 0


# ----------------------------------------------------------------------------- the doctor
def _ctx(**kw) -> RunContext:
    return RunContext(task="classification", n_val=200, **kw)


@pytest.mark.parametrize(
    ("share", "metric", "warned"),
    [(0.05, "accuracy", True), (0.05, "balanced_accuracy", False), (0.30, "accuracy", False)],
)
def test_imbalance_warning(share: float, metric: str, warned: bool) -> None:
    ctx = _ctx(metric=metric, minority_share=share, n_classes=2)
    codes = [f["code"] for f in diagnose([], [], ctx, layers=[], activation="relu")]
    assert ("imbalanced_accuracy" in codes) is warned
    if warned:
        (f,) = imbalance_findings(ctx)
        assert f["severity"] == "warning"
        assert "--metric balanced_accuracy" in f["advice"]
        assert "--class-weight balanced" in f["advice"]
        assert (
            "--class-weight"
            not in imbalance_findings(
                _ctx(metric=metric, minority_share=share, n_classes=2, class_weight="balanced")
            )[0]["advice"]
        )


def test_ten_balanced_classes_are_not_imbalanced() -> None:
    """Ten equal classes hold just under 10% each (digits: 9.9%); accuracy suits them. The
    smallest of ten must be under half its balanced share (5%) to count as rare."""
    assert imbalance_findings(_ctx(metric="accuracy", minority_share=0.099, n_classes=10)) == []
    assert imbalance_findings(_ctx(metric="accuracy", minority_share=0.04, n_classes=10))


def test_imbalance_warning_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 400
    y = np.where(np.arange(n) % 20 == 0, "rare", "common")  # 5%
    frame = pd.DataFrame(rng.normal(size=(n, 2)), columns=["a", "b"])
    frame["label"] = y
    path = tmp_path / "imb.csv"
    frame.to_csv(path, index=False)
    plain = fitwell.train(path, target="label", max_epochs=2, ensemble=1)
    assert "imbalanced_accuracy" in [f["code"] for f in plain.metrics["findings"]]
    chosen = fitwell.train(path, target="label", max_epochs=2, ensemble=1, metric="macro_f1")
    assert "imbalanced_accuracy" not in [f["code"] for f in chosen.metrics["findings"]]


@pytest.mark.parametrize(
    ("metric", "value", "base", "found"),
    [
        ("log_loss", 0.50, 0.52, True),  # within 2 standard errors of the baseline
        ("log_loss", 0.30, 0.52, False),
        ("log_loss", 0.60, 0.52, True),  # worse than the baseline
        ("balanced_accuracy", 0.55, 0.5, True),
        ("balanced_accuracy", 0.80, 0.5, False),
    ],
)
def test_no_signal_on_the_chosen_metric(metric: str, value: float, base: float, found: bool):
    ctx = _ctx(
        metric=metric, metric_val_score=value, metric_baseline=base, metric_standard_error=0.05
    )
    got = no_signal_findings(None, ctx)
    assert bool(got) is found
    if found:
        assert got[0]["evidence"]["metric"] == metric
