"""The chosen metric: its direction, its value on a split, and the members it prefers.

``metric`` (see :class:`fitwell.config.TrainConfig`) decides which member is kept and which join
the ensemble, what ``target_score`` means and which score leads the summary. Values come from
scikit-learn's functions with ``sample_weight`` (the run's row weights, when it has them), so
they match what a user computes with scikit-learn on the same predictions. Regression metrics
are in the target's original units (``scale``: the target's standard deviation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from fitwell.errors import InputError

if TYPE_CHECKING:
    from fitwell.models import Architecture
    from fitwell.training.loop import FitResult

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = ("log_loss", "rmse", "mae")
# Members scored per forward pass when ranking them (bounds memory: members x rows x classes).
RANK_CHUNK_MEMBERS = 16


def resolve_metric(metric: str, task: str) -> str:
    """``auto`` -> accuracy (classification) or r2; a metric of the other task is an error."""
    if metric == "auto":
        return "accuracy" if task == "classification" else "r2"
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if metric not in allowed:
        raise InputError(
            f"`metric` {metric!r} does not apply to a {task} task; use one of {', '.join(allowed)}."
        )
    return metric


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def meets_target(value: float, target: float, metric: str) -> bool:
    """``value`` reaches ``target``: at least it, or at most it for a lower-is-better metric."""
    if not math.isfinite(value):
        return False
    return value >= target if higher_is_better(metric) else value <= target


def sort_key(value: float, metric: str) -> float:
    """Smaller is better: the key that ranks members by ``metric`` (non-finite last)."""
    if not math.isfinite(value):
        return math.inf
    return -value if higher_is_better(metric) else value


def metric_value(
    metric: str,
    y_true: np.ndarray,
    outputs: np.ndarray,
    *,
    n_classes: int = 0,
    weights: np.ndarray | None = None,
    scale: float = 1.0,
) -> float:
    """``metric`` of one model's ``outputs`` (logits ``[N, C]``, or standardized regression
    outputs ``[N]`` / ``[N, 1]``) against ``y_true`` (class indices or standardized values).

    NaN where the metric is undefined (ROC-AUC on a split missing a class).
    """
    from sklearn import metrics as skm

    if metric in REGRESSION_METRICS:
        pred = np.asarray(outputs, dtype=np.float64).reshape(-1) * scale
        truth = np.asarray(y_true, dtype=np.float64) * scale
        if metric == "rmse":
            return float(skm.root_mean_squared_error(truth, pred, sample_weight=weights))
        if metric == "mae":
            return float(skm.mean_absolute_error(truth, pred, sample_weight=weights))
        return float(skm.r2_score(truth, pred, sample_weight=weights))
    logits = torch.as_tensor(np.asarray(outputs, dtype=np.float64))
    proba = torch.softmax(logits, dim=1).numpy()
    return proba_metric(metric, y_true, proba, n_classes=n_classes, weights=weights)


def proba_metric(
    metric: str,
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    n_classes: int,
    weights: np.ndarray | None = None,
) -> float:
    """A classification metric from class probabilities ``[N, C]``."""
    from sklearn import metrics as skm

    y = np.asarray(y_true, dtype=np.int64)
    labels = list(range(n_classes))
    pred = proba.argmax(axis=1)
    with warnings.catch_warnings():
        # A class without rows in this split: the labels are given, so the value is defined.
        warnings.simplefilter("ignore", UserWarning)
        if metric == "accuracy":
            return float(skm.accuracy_score(y, pred, sample_weight=weights))
        if metric == "balanced_accuracy":
            return float(skm.balanced_accuracy_score(y, pred, sample_weight=weights))
        if metric == "macro_f1":
            return float(
                skm.f1_score(
                    y, pred, labels=labels, average="macro", zero_division=0, sample_weight=weights
                )
            )
        if metric == "log_loss":
            return float(skm.log_loss(y, proba, labels=labels, sample_weight=weights))
        present = np.unique(y if weights is None else y[np.asarray(weights) > 0])
        if len(present) < n_classes:
            return math.nan
        if n_classes == 2:
            return float(skm.roc_auc_score(y, proba[:, 1], sample_weight=weights))
        return float(
            skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels, sample_weight=weights)
        )


def baseline_outputs(
    task: str, y_train: np.ndarray, n_rows: int, *, n_classes: int, weights: np.ndarray | None
) -> np.ndarray:
    """The trivial model's outputs for ``n_rows`` rows: the training rows' (weighted) class
    frequencies as log-probabilities, or their (weighted) mean."""
    w = np.ones(len(y_train)) if weights is None else np.asarray(weights, dtype=np.float64)
    if task == "classification":
        freq = np.bincount(np.asarray(y_train, dtype=np.int64), weights=w, minlength=n_classes)
        freq = np.maximum(freq / max(float(freq.sum()), 1e-300), 1e-15)
        return np.tile(np.log(freq), (n_rows, 1))
    mean = float(np.average(np.asarray(y_train, dtype=np.float64), weights=w))
    return np.full(n_rows, mean)


def member_metric_values(
    fit: FitResult,
    arch: Architecture,
    metric: str,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    scale: float = 1.0,
    device: torch.device | None = None,
) -> list[float]:
    """Each member's validation ``metric`` with the weights it ends with (its restored best
    epoch). NaN for members without finite weights."""
    from fitwell.models import stack_member_states
    from fitwell.predictor import model_from_state

    device = device or torch.device("cpu")
    values = [math.nan] * len(fit.members)
    scorable = [m for m in fit.members if m.finite and m.state]
    x = torch.as_tensor(np.asarray(x_val), dtype=torch.float32, device=device)
    n_classes = arch.n_outputs if fit.task == "classification" else 0
    for start in range(0, len(scorable), RANK_CHUNK_MEMBERS):
        group = scorable[start : start + RANK_CHUNK_MEMBERS]
        state = stack_member_states([m.state for m in group])
        model = model_from_state(arch, {k: v.to(device) for k, v in state.items()}).to(device)
        model.eval()
        with torch.no_grad():
            outputs = model.predict_chunks(x).double().cpu().numpy()
        for i, m in enumerate(group):
            out = outputs[i] if fit.task == "classification" else outputs[i, :, 0]
            values[m.member] = metric_value(
                metric, y_val, out, n_classes=n_classes, weights=weights, scale=scale
            )
    return values


def rank_members(fit: FitResult, metric: str, values: Sequence[float]) -> None:
    """Record ``values`` on the members and make the best by ``metric`` the fit's kept member
    (validation loss breaks ties, so an accuracy tie goes to the better-calibrated member)."""
    for m, v in zip(fit.members, values, strict=True):
        m.val_metric = float(v)
    fit.metric = metric
    candidates = [m for m in fit.members if m.finite and math.isfinite(m.val_metric)]
    if candidates:
        fit.best = min(
            candidates, key=lambda m: (sort_key(m.val_metric, metric), m.val_loss)
        ).member
