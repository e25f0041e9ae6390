"""Sample weights (`weight_column`, estimators' `sample_weight`) and class-weight tables."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import fitwell
from fitwell.api import class_weights, load_and_prepare
from fitwell.cli import main
from fitwell.config import build_config, load_toml
from fitwell.data import load_table
from fitwell.diagnosis.context import baseline_val_score
from fitwell.errors import FitwellError, InputError
from fitwell.estimators import FitwellClassifier, FitwellRegressor
from fitwell.metrics import SplitAccumulator, classification_report, training_objective
from fitwell.models import Architecture, PopulationMLP
from fitwell.training import LoopSettings, MemberSettings, Trainer


# ------------------------------------------------------------------------ the weighted loss
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("members", [1, 3])
def test_weighted_loss_is_the_weighted_mean_of_row_losses(task: str, members: int) -> None:
    torch.manual_seed(1)
    c = 3 if task == "classification" else 1
    outputs = torch.randn(members, 6, c)
    targets = torch.randint(0, 3, (6,)) if task == "classification" else torch.randn(6)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0, 3.0]).expand(members, 6)
    objective, losses = training_objective(task, outputs, targets, row_weights=w)
    expected = []
    for k in range(members):
        if task == "classification":
            rows = torch.nn.functional.cross_entropy(outputs[k], targets, reduction="none")
        else:
            rows = (outputs[k, :, 0] - targets) ** 2
        expected.append((rows * w[k]).sum() / w[k].sum())
    torch.testing.assert_close(losses, torch.stack(expected))
    assert objective.item() == pytest.approx(float(sum(expected)), rel=1e-6)


def test_fused_population_loss_takes_the_weights() -> None:
    """A population's fused output layer + cross-entropy gives the same weighted objective and
    gradients as the plain path."""
    torch.manual_seed(2)
    arch = Architecture(n_inputs=4, hidden=(8,), n_outputs=3)
    model = PopulationMLP(arch, 3)
    assert model.fuses_cross_entropy
    x = torch.randn(3, 5, 4)
    y = torch.randint(0, 3, (3, 5))
    w = torch.rand(3, 5)
    from fitwell.metrics import row_objective

    fused, fused_losses = row_objective(model(x, targets=y), w)
    grads_fused = torch.autograd.grad(fused, list(model.parameters()))
    plain, plain_losses = training_objective("classification", model(x), y, row_weights=w)
    grads_plain = torch.autograd.grad(plain, list(model.parameters()))
    torch.testing.assert_close(fused_losses, plain_losses)
    for a, b in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _trainer(x, y, xv, yv, w=None, wv=None, *, members: int = 1) -> Trainer:
    arch = Architecture(n_inputs=x.shape[1], hidden=(16,), n_outputs=2)
    settings = [MemberSettings(seed=s, lr=0.01, dropout=(0.0,)) for s in range(members)]
    loop = LoopSettings(batch_size=100_000, max_epochs=8, patience=0)
    return Trainer(
        arch,
        settings,
        loop,
        task="classification",
        x_train=x,
        y_train=y,
        x_val=xv,
        y_val=yv,
        device=torch.device("cpu"),
        w_train=w,
        w_val=wv,
    )


@pytest.mark.parametrize("members", [1, 2])
def test_rows_weighted_zero_change_nothing(members: int) -> None:
    """Full-batch training without dropout: rows of weight 0 (here: random rows with the wrong
    labels) leave the weights and the validation curve as training without them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    junk = rng.normal(size=(40, 3)).astype(np.float32) * 3
    x_all = np.concatenate([x, junk])
    y_all = np.concatenate([y, 1 - (junk[:, 0] > 0).astype(np.int64)])
    w_all = np.concatenate([np.ones(60), np.zeros(40)])
    plain = _trainer(x, y, x, y, members=members).fit()
    weighted = _trainer(x_all, y_all, x_all, y_all, w_all, w_all, members=members).fit()
    for a, b in zip(plain.members, weighted.members, strict=True):
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
        for name in a.state:
            torch.testing.assert_close(a.state[name], b.state[name], rtol=1e-4, atol=1e-5)


def test_weights_change_the_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=80) > 0).astype(np.int64)
    w = rng.uniform(0, 3, size=80)
    plain = _trainer(x, y, x, y).fit().members[0]
    weighted = _trainer(x, y, x, y, w, w).fit().members[0]
    assert abs(plain.val_loss - weighted.val_loss) > 1e-4


# ---------------------------------------------------------------- scores with sample_weight
def test_split_accumulator_matches_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, log_loss, r2_score

    rng = np.random.default_rng(4)
    logits = torch.randn(2, 50, 3)
    y = torch.randint(0, 3, (50,))
    w = torch.rand(50)
    acc = SplitAccumulator("classification", 2, torch.device("cpu"))
    acc.add(logits[:, :20], y[:20], w[:20])
    acc.add(logits[:, 20:], y[20:], w[20:])
    loss, score = acc.result()
    for k in range(2):
        proba = torch.softmax(logits[k].double(), dim=1).numpy()
        assert loss[k] == pytest.approx(log_loss(y, proba, sample_weight=w, labels=[0, 1, 2]))
        assert score[k] == pytest.approx(accuracy_score(y, proba.argmax(1), sample_weight=w))
    out = torch.as_tensor(rng.normal(size=(1, 40, 1)), dtype=torch.float32)
    t = torch.as_tensor(rng.normal(size=40), dtype=torch.float32)
    wr = torch.as_tensor(rng.uniform(0, 2, size=40), dtype=torch.float32)
    acc = SplitAccumulator("regression", 1, torch.device("cpu"))
    acc.add(out, t, wr)
    _, r2 = acc.result()
    assert r2[0] == pytest.approx(r2_score(t, out[0, :, 0], sample_weight=wr), rel=1e-5)


def test_classification_report_matches_scikit_learn() -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, size=120)
    proba = rng.dirichlet(np.ones(3), size=120)
    w = rng.uniform(0, 2, size=120)
    got, extra = classification_report(y, proba, 3, w)
    pred = proba.argmax(1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w))
    assert got["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y, pred, sample_weight=w)
    )
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", sample_weight=w))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, sample_weight=w))
    assert got["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr", sample_weight=w)
    )
    recall = skm.recall_score(y, pred, average=None, sample_weight=w)
    assert [c["recall"] for c in extra["per_class"]] == pytest.approx(list(recall))
    assert [c["support"] for c in extra["per_class"]] == np.bincount(y).tolist()
    unweighted, _ = classification_report(y, proba, 3)
    assert unweighted["ece"] == pytest.approx(
        classification_report(y, proba, 3, np.ones(120))[0]["ece"]
    )


def test_trivial_baseline_is_weighted() -> None:
    # By count class 0 is the majority; by weight class 1 is.
    y_train = np.array([0, 0, 0, 1])
    w_train = np.array([1.0, 1.0, 1.0, 5.0])
    y_val = np.array([0, 1, 1])
    w_val = np.array([3.0, 1.0, 0.0])
    assert baseline_val_score("classification", y_train, y_val) == pytest.approx(1 / 3)
    assert baseline_val_score("classification", y_train, y_val, w_train, w_val) == 0.25
    yr, wr = np.array([0.0, 0.0, 4.0]), np.array([1.0, 1.0, 2.0])
    yv, wv = np.array([1.0, 3.0]), np.array([1.0, 3.0])
    # weighted training mean 2; weighted val mean 2.5: 1 - (1*1 + 3*1) / (1*2.25 + 3*0.25)
    assert baseline_val_score("regression", yr, yv, wr, wv) == pytest.approx(1 - 4 / 3)


# ------------------------------------------------------------------------- weight_column
@pytest.fixture
def weighted_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(6)
    n = 200
    frame = pd.DataFrame({"k": np.arange(n), "x": rng.normal(size=n)})
    frame["w"] = 1.0 + np.arange(n)
    frame["label"] = np.where(frame["x"] + 0.3 * rng.normal(size=n) > 0, "yes", "no")
    path = tmp_path / "weighted.csv"
    frame.to_csv(path, index=False)
    return path


def test_weights_travel_through_the_split(weighted_csv: Path) -> None:
    cfg = build_config(
        {"data": str(weighted_csv), "target": "label", "weight_column": "w", "scale": False}
    )
    prepared = load_and_prepare(cfg)
    assert "w" not in prepared.preprocessor.input_columns
    x_test, _ = prepared.test.open()
    for x, w in (
        (prepared.x_train, prepared.w_train),
        (prepared.x_val, prepared.w_val),
        (x_test, prepared.w_test),
    ):
        k = prepared.preprocessor.input_columns.index("k")
        np.testing.assert_array_equal(x[:, k] + 1, w)


def test_weighted_run_end_to_end(weighted_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = [str(weighted_csv), "--target", "label", "--weight-column", "w", "--max-epochs", "3"]
    assert main(["train", *args, "--ensemble", "1", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weight_column"] == "w"
    assert main(["predict", str(out), str(weighted_csv)]) == 0
    with_column = capsys.readouterr()
    assert "extra column" not in with_column.err
    bare = tmp_path / "bare.csv"
    pd.read_csv(weighted_csv).drop(columns=["w", "label"]).to_csv(bare, index=False)
    assert main(["predict", str(out), str(bare)]) == 0
    assert capsys.readouterr().out == with_column.out


def _table(tmp_path: Path, weights: list[object]) -> Path:
    frame = pd.DataFrame(
        {"x": range(len(weights)), "w": weights, "y": [0, 1] * (len(weights) // 2)}
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            [1, 1, -0.5, 1],
            "{p}: weight column 'w' holds -0.5 in data row 2; weights must be finite and >= 0.",
        ),
        (
            [1, "heavy", 1, 1],
            "{p}: weight column 'w' holds 'heavy' in data row 1; weights must be numbers.",
        ),
        (
            [1, 1, 1, None],
            "{p}: weight column 'w' is missing a value in data row 3; weights must be numbers.",
        ),
        (
            [0, 0, 0, 0],
            "{p}: weight column 'w' is zero in every row; at least one row must weigh more than 0.",
        ),
        (
            [1, "inf", 1, 1],
            "{p}: weight column 'w' holds inf in data row 1; weights must be finite and >= 0.",
        ),
    ],
)
def test_bad_weights_are_refused(tmp_path: Path, weights: list[object], message: str) -> None:
    path = _table(tmp_path, weights)
    with pytest.raises(InputError) as err:
        load_table(path, target="y", weight_column="w")
    assert str(err.value) == message.format(p=path)


def test_missing_weight_column_is_refused_through_the_cli(tmp_path: Path, capsys) -> None:
    path = _table(tmp_path, [1, 1, 1, 1])
    assert main(["train", str(path), "--target", "y", "--weight-column", "ww"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: weight column 'ww' not found. Did you mean `w`?\n"
    )
    assert main(["train", str(path), "--target", "y", "--weight-column", "y"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: weight column 'y' is the target column; choose another column for "
        "--weight-column.\n"
    )


# -------------------------------------------------------------------- class-weight tables
def test_class_weight_table_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("class_weight = {yes = 5.0, no = 1.0}\n")
    cfg = build_config(load_toml(toml))
    assert cfg.class_weight == {"yes": 5.0, "no": 1.0}
    prepared = SimpleNamespace(
        task="classification", target_encoder=SimpleNamespace(classes=["no", "yes"])
    )
    assert class_weights(cfg, prepared) == (1.0, 5.0)  # type: ignore[arg-type]
    only_yes = build_config({"class_weight": {"yes": 3}})
    assert class_weights(only_yes, prepared) == (1.0, 3.0)  # type: ignore[arg-type]
    numeric = SimpleNamespace(task="classification", target_encoder=SimpleNamespace(classes=[0, 1]))
    assert class_weights(build_config({"class_weight": {"1": 2.0}}), numeric) == (1.0, 2.0)  # type: ignore[arg-type]


def test_class_weight_table_errors(weighted_csv: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(
        FitwellError, match="`class_weight` factors must be finite numbers >= 0; got -1"
    ):
        build_config({"class_weight": {"yes": -1}})
    toml = tmp_path / "c.toml"
    toml.write_text("class_weight = {yes = 5.0, noo = 1.0}\n")
    out = tmp_path / "run"
    args = ["train", str(weighted_csv), "--target", "label", "--config", str(toml)]
    assert main([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "error: `class_weight` names class 'noo', which the target does not have; classes are "
        "'no', 'yes' (did you mean `no`?).\n"
    )
    assert not out.exists()


# ----------------------------------------------------------------------------- estimators
FAST = {"hidden": (16,), "max_epochs": 6, "lr": 0.01, "dropout": 0.0, "ensemble": 1}


def test_estimator_zero_weights_equal_dropping_rows() -> None:
    """A copy of every row with shuffled labels, weighted 0: the same standardization (the
    copy has the same mean and spread), full batches, validation on the training rows."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    settings = {**FAST, "batch_size": 1000, "validation_fraction": 0.0}
    plain = FitwellClassifier(**settings).fit(x, y)
    x2 = np.concatenate([x, x])
    y2 = np.concatenate([y, rng.permutation(y)])
    w2 = np.concatenate([np.ones(60), np.zeros(60)])
    weighted = FitwellClassifier(**settings).fit(x2, y2, sample_weight=w2)
    np.testing.assert_allclose(weighted.predict_proba(x), plain.predict_proba(x), atol=1e-4)


def test_estimator_weights_and_metric_take_effect() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(120, 2))
    y = x[:, 0] + 0.1 * rng.normal(size=120)
    w = rng.uniform(0, 4, size=120)
    a = FitwellRegressor(**FAST).fit(x, y)
    b = FitwellRegressor(**FAST).fit(x, y, sample_weight=w)
    assert not np.allclose(a.predict(x), b.predict(x))
    FitwellRegressor(**{**FAST, "restarts": 2}, metric="mae").fit(x, y, sample_weight=w)
    with pytest.raises(InputError, match="does not apply to a regression task"):
        FitwellRegressor(metric="accuracy").fit(x, y)
    with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
        FitwellRegressor(**FAST).fit(x, y, sample_weight=-w)


def test_estimator_class_weight() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(200, 2))
    y = np.where(x[:, 0] + rng.normal(size=200) > 1.5, "rare", "common")
    heavy = FitwellClassifier(**FAST, class_weight={"rare": 50.0}).fit(x, y)
    plain = FitwellClassifier(**FAST).fit(x, y)
    assert (heavy.predict(x) == "rare").mean() > (plain.predict(x) == "rare").mean()
    FitwellClassifier(**FAST, class_weight="balanced", metric="balanced_accuracy").fit(x, y)
    with pytest.raises(ValueError, match="`class_weight` names class 'rarest'"):
        FitwellClassifier(**FAST, class_weight={"rarest": 2.0}).fit(x, y)


def test_api_weighted_metrics_use_the_test_weights(weighted_csv: Path) -> None:
    """The headline is scikit-learn's weighted score: heavier rows count more."""
    run = fitwell.train(
        weighted_csv, target="label", weight_column="w", max_epochs=3, ensemble=1, metric="roc_auc"
    )
    assert run.metrics["test_score"] == run.metrics["test"]["roc_auc"]
    assert run.metrics["chosen_by"] == "val_roc_auc"
