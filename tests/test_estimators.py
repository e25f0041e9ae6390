"""scikit-learn estimators: the estimator checks, Pipeline, GridSearchCV and learned attributes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fitwell
from fitwell.estimators import FitwellClassifier, FitwellRegressor

# Small and quick: the checks fit dozens of times on ~100-300 rows.
FAST = {"hidden": (16,), "max_epochs": 15, "lr": 0.01, "batch_size": 32, "patience": 5}

EXPECTED_FAILURES: dict[str, str] = {
    # Weight 2 is not the same fit as a repeated row for a stochastic mini-batch fit with a
    # held-out validation split (the batches and the split differ); scikit-learn expects the
    # same for its own SGD estimators. tests/test_sample_weights.py checks the weighting itself.
    "check_sample_weight_equivalence_on_dense_data": "mini-batch SGD with a held-out split",
}


def _expected_failed(estimator: object) -> dict[str, str]:
    return EXPECTED_FAILURES


@parametrize_with_checks(
    [FitwellClassifier(**FAST), FitwellRegressor(**FAST)],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_lazy_export() -> None:
    assert fitwell.FitwellClassifier is FitwellClassifier
    assert fitwell.FitwellRegressor is FitwellRegressor


def test_classifier_learns_and_exposes_learned_state() -> None:
    x, y = make_classification(n_samples=300, n_features=6, n_informative=4, random_state=0)
    labels = np.array(["no", "yes"])[y]
    clf = FitwellClassifier(**FAST).fit(x, labels)
    assert list(clf.classes_) == ["no", "yes"]
    assert clf.n_features_in_ == 6
    assert 1 <= clf.best_epoch_ <= clf.n_iter_ <= FAST["max_epochs"]
    assert set(clf.history_.columns) >= {"epoch", "member", "train_loss", "val_loss"}
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    assert clf.score(x, labels) > 0.85
    # A second fit with the same random_state gives the same model.
    again = FitwellClassifier(**FAST).fit(x, labels)
    np.testing.assert_allclose(again.predict_proba(x), proba)


def test_restarts_keep_the_best_validation_member() -> None:
    x, y = make_classification(n_samples=200, n_features=5, random_state=1)
    clf = FitwellClassifier(**{**FAST, "restarts": 3}).fit(x, y)
    assert len(clf.val_scores_) == 3
    assert set(clf.history_["member"]) == {0, 1, 2}


def test_regressor_in_pipeline_and_grid_search() -> None:
    x, y = make_regression(n_samples=240, n_features=5, noise=5.0, random_state=0)
    y = y * 100 + 1000  # far from standard scale: the regressor must undo its scaling
    pipe = make_pipeline(StandardScaler(), FitwellRegressor(**{**FAST, "max_epochs": 40}))
    grid = GridSearchCV(pipe, {"fitwellregressor__lr": [1e-4, 1e-2]}, cv=2)
    grid.fit(x, y)
    assert grid.best_params_["fitwellregressor__lr"] == 1e-2
    assert grid.score(x, y) > 0.9
    pred = grid.predict(x)
    assert abs(pred.mean() - y.mean()) < 0.2 * y.std()


def test_bad_parameter_is_reported_at_fit() -> None:
    x, y = make_classification(n_samples=50, n_features=4, random_state=0)
    with pytest.raises(ValueError, match="activation"):
        FitwellClassifier(activation="relux").fit(x, y)
