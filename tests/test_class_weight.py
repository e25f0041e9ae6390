"""Class weights: scikit-learn's balanced rule, the weighted objective, and its effect."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import fitwell
from fitwell.api import class_weights
from fitwell.config import build_config
from fitwell.errors import FitwellError
from fitwell.metrics import training_objective


def test_balanced_weights_follow_scikit_learns_rule() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 90 + [1] * 10 + [2] * 20)
    prepared = SimpleNamespace(
        task="classification", y_train=y, target_encoder=SimpleNamespace(classes=["a", "b", "c"])
    )
    got = class_weights(build_config({"class_weight": "balanced"}), prepared)  # type: ignore[arg-type]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(got, expected)
    assert class_weights(build_config({}), prepared) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("members", [1, 3])
def test_weighted_objective_is_the_mean_of_weighted_row_losses(members: int) -> None:
    torch.manual_seed(1)
    outputs = torch.randn(members, 10, 3)
    targets = torch.randint(0, 3, (10,))
    w = torch.tensor([0.5, 2.0, 4.0])
    objective, losses = training_objective("classification", outputs, targets, 0.0, w)
    rows = torch.nn.functional.cross_entropy(
        outputs.reshape(-1, 3), targets.repeat(members), reduction="none"
    ).view(members, 10)
    expected = (rows * w[targets]).mean(dim=1)
    torch.testing.assert_close(losses, expected)
    assert objective.item() == pytest.approx(float(expected.sum()), rel=1e-5)


def test_unknown_class_weight_is_refused() -> None:
    with pytest.raises(FitwellError, match="class_weight"):
        build_config({"class_weight": "auto"})


def test_balanced_weights_lift_the_rare_class(tmp_path: Path) -> None:
    """5% rare class shifted on three columns: unweighted training predicts almost only the
    common class; balanced weights raise balanced accuracy well beyond seed noise."""
    rng = np.random.default_rng(0)
    n = 3000
    y = (rng.random(n) < 0.05).astype(int)
    x = rng.normal(size=(n, 6)) + y[:, None] * np.array([1.0, 0.8, 0.6, 0, 0, 0])
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["label"] = np.where(y == 1, "rare", "common")
    path = tmp_path / "imbalanced.csv"
    frame.to_csv(path, index=False)
    plain = fitwell.train(path, target="label", progress=False, ensemble=1, max_epochs=40)
    weighted = fitwell.train(
        path, target="label", class_weight="balanced", progress=False, ensemble=1, max_epochs=40
    )
    assert (
        weighted.metrics["test"]["balanced_accuracy"]
        > plain.metrics["test"]["balanced_accuracy"] + 0.1
    )
