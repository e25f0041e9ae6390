"""Classification metrics of the final model: scikit-learn's values, ECE by its formula, ROC-AUC
skipped with a reason where it is undefined, and the keys in metrics.json and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, roc_auc_score

from fitwell.metrics import (
    classification_report,
    expected_calibration_error,
    reliability_bins,
)
from tests.conftest import run_cli


def _proba(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    y = rng.integers(0, k, size=n)
    logits[np.arange(n), y] += 1.5  # better than chance, not perfect
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_scores_equal_scikit_learns(k: int) -> None:
    y, p = _proba(300, k)
    scores, extra = classification_report(y, p, k)
    pred = p.argmax(axis=1)
    assert scores["accuracy"] == pytest.approx(float((pred == y).mean()))
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert scores["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert scores["log_loss"] == pytest.approx(log_loss(y, p))
    auc = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr")
    assert scores["roc_auc"] == pytest.approx(auc)
    assert [c["support"] for c in extra["per_class"]] == np.bincount(y, minlength=k).tolist()


def test_ece_by_hand() -> None:
    # Two rows at confidence 0.9 (one right), two at 0.6 (both right): bins 13 and 9 of 15.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_reliability_bins_by_hand_and_consistent_with_ece() -> None:
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    bins = reliability_bins(y, p)
    assert [(b["low"], b["confidence"], b["accuracy"], b["share"]) for b in bins] == [
        pytest.approx((9 / 15, 0.6, 1.0, 0.5)),
        pytest.approx((13 / 15, 0.9, 0.5, 0.5)),
    ]
    y, p = _proba(400, 4)
    bins = reliability_bins(y, p)
    assert sum(b["share"] for b in bins) == pytest.approx(1.0)
    ece = sum(b["share"] * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(expected_calibration_error(y, p))
    w = np.where(y == 0, 3.0, 1.0)  # weighted like the ECE
    ece_w = sum(
        b["share"] * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(y, p, w)
    )
    assert ece_w == pytest.approx(expected_calibration_error(y, p, w))


def test_roc_auc_is_skipped_with_a_reason_when_a_class_has_no_rows() -> None:
    y, p = _proba(50, 3)
    y[y == 2] = 0
    scores, extra = classification_report(y, p, 3)
    assert scores["roc_auc"] is None
    assert "1 of 3 classes have no rows" in extra["roc_auc_skipped"]


def test_a_majority_class_model_is_exposed(tmp_path: Path) -> None:
    """99% accuracy from predicting the majority means balanced accuracy 0.5."""
    y = np.zeros(1000, dtype=int)
    y[:10] = 1
    p = np.tile([0.99, 0.01], (1000, 1))
    scores, _ = classification_report(y, p, 2)
    assert scores["accuracy"] == pytest.approx(0.99)
    assert scores["balanced_accuracy"] == pytest.approx(0.5)


def test_metrics_json_and_summary_carry_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "iris", "--max-epochs", "5", "--ensemble", "1", "--out", str(out)]
    result = run_cli("train", *args)
    assert result.returncode == 0, result.stderr
    assert "balanced accuracy" in result.stdout and "macro-F1" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "ece"):
        assert key in metrics["test"], key
    assert len(metrics["test_detail"]["per_class"]) == 3
    assert metrics["test_detail"]["reliability"]
    report = (out / "report.html").read_text()
    assert "precision" in report
    assert 'alt="reliability diagram on the test split" src="data:image/svg+xml;base64,' in report
