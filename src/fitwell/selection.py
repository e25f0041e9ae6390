"""Feature selection by a regularisation path: one population over a grid of ``l1_inputs``.

Members differ only in ``l1_inputs`` (same seeds, same data order), so the path is one batched
model. By default it is an adaptive group lasso in two steps: the plain path first, whose member
at a penalised λ gives each column a weight (1 / its first-layer norm), then the weighted path.
Every choice reads validation scores only; the test split stays sealed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fitwell.api import (
    first_layer_groups,
    fit_prepared,
    load_and_prepare,
    member_weights,
    resolve_device,
)
from fitwell.config import TrainConfig
from fitwell.errors import InputError
from fitwell.finish import l1_zeroed_features
from fitwell.metrics import score_name

DEFAULT_LAMBDAS = (0.0, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.15, 0.2, 0.3)
DEFAULT_TOLERANCE = 0.01


@dataclass
class PathPoint:
    """One λ of the path: the columns its member reads and its validation score."""

    l1_inputs: float
    val_score: float
    val_loss: float
    kept: list[str]
    off: list[str]


@dataclass
class SelectionPath:
    """The path and the chosen λ (largest whose val score is within ``tolerance`` of the best)."""

    score: str
    tolerance: float
    points: list[PathPoint]
    chosen: int
    weights: dict[str, float] | None = None

    @property
    def chosen_point(self) -> PathPoint:
        return self.points[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "tolerance": self.tolerance,
            "rule": "largest l1_inputs whose val score >= best val score - tolerance "
            "(tolerance: the given one, or one standard error of the best val accuracy if larger)",
            "chosen_l1_inputs": self.chosen_point.l1_inputs,
            "chosen_kept": self.chosen_point.kept,
            "chosen_off": self.chosen_point.off,
            "l1_inputs_weights": self.weights,
            "path": [p.__dict__ for p in self.points],
        }


def choose_lambda(lambdas: Sequence[float], scores: Sequence[float], tolerance: float) -> int:
    """Index of the largest λ whose score (higher is better) is within ``tolerance`` of the best.

    Non-finite scores never qualify. A larger λ reads fewer columns, so among near-ties the
    simplest model wins (the "one standard error" habit, with a fixed tolerance).
    """
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        raise InputError("every λ of the path diverged; lower `lr` or the largest λ.")
    best = max(finite)
    ok = [i for i, s in enumerate(scores) if math.isfinite(s) and s >= best - tolerance]
    return max(ok, key=lambda i: (lambdas[i], -i))


def path_tolerance(task: str, scores: Sequence[float], n_val: int, tolerance: float) -> float:
    """The tolerance the rule uses: ``tolerance``, or for classification one standard error of
    the best validation accuracy, ``sqrt(a * (1 - a) / n_val)``, when that is larger.

    Why: on a small validation split one row moves accuracy by ``1 / n_val`` (0.008 at 120 rows),
    so a fixed 0.01 lets a lucky row decide between λs (the one-standard-error rule of Hastie,
    Tibshirani & Friedman, with the binomial error of the best score). Regression scores
    (R²) keep the fixed ``tolerance``.
    """
    finite = [s for s in scores if math.isfinite(s)]
    if task != "classification" or not finite or n_val < 1:
        return tolerance
    best = min(max(max(finite), 0.0), 1.0)
    return max(tolerance, math.sqrt(best * (1.0 - best) / n_val))


def pilot_index(lambdas: Sequence[float], scores: Sequence[float], tolerance: float) -> int:
    """The plain-path member whose column norms become the adaptive weights.

    :func:`choose_lambda` among the penalised members (λ > 0), measured against the best score of
    the whole path; when none is within ``tolerance``, the smallest λ > 0. Why never λ = 0: the
    first-layer norms of an unpenalised network stay close to their random initial values, so
    they weigh noise and signal columns alike (measured on ``benchmarks/feature_selection.py``).
    """
    positive = [i for i, lam in enumerate(lambdas) if lam > 0]
    if not positive:
        return choose_lambda(lambdas, scores, tolerance)
    finite = [s for s in scores if math.isfinite(s)]
    best = max(finite) if finite else float("nan")
    ok = [i for i in positive if math.isfinite(scores[i]) and scores[i] >= best - tolerance]
    if ok:
        return max(ok, key=lambda i: (lambdas[i], -i))
    return min(positive, key=lambda i: (lambdas[i], i))


def check_lambdas(lambdas: Sequence[float], tolerance: float) -> list[float]:
    """Validate the grid and tolerance, collecting every problem into one message."""
    problems = []
    values = [float(v) for v in lambdas]
    if not values:
        problems.append("`lambdas` must hold at least one value; got none")
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        problems.append(f"`lambdas` must be >= 0 and finite; got {bad}. Use 0 for no penalty")
    if len(set(values)) != len(values):
        problems.append(f"`lambdas` must be distinct; got {values}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        problems.append(f"`tolerance` must be >= 0; got {tolerance}")
    if problems:
        raise InputError("; ".join(problems) + ".")
    return sorted(values)


def select_features(
    cfg: TrainConfig,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    prepared: Any = None,
    seeds: int = 1,
) -> SelectionPath:
    """Train ``seeds`` members per λ (one batched population) and choose λ on validation data.

    ``cfg`` gives everything but ``l1_inputs``; the members of each λ have seeds ``cfg.seed,
    cfg.seed + 1, ...``, and a λ's validation score is their mean (its columns off: those off in
    every one of them). ``prepared`` (from :func:`fitwell.api.load_and_prepare`) skips loading.
    Unless ``cfg.l1_inputs_adaptive`` is False, and when no ``cfg.l1_inputs_weights`` are
    given, the plain path (every column weighing 1) runs first; the column norms of its members
    at the λ :func:`pilot_index` picks become the weights (:func:`fitwell.api.member_weights`)
    of the second, adaptive path, and come back in ``SelectionPath.weights`` to train the chosen
    model with.
    """
    grid = check_lambdas(lambdas, tolerance)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"`seeds` must be an integer >= 1; got {seeds!r}.")
    prepared = prepared if prepared is not None else load_and_prepare(cfg)
    device = resolve_device(cfg.device)
    base = cfg.replace(restarts=seeds, ensemble=1)
    if base.l1_inputs_adaptive is not False and base.l1_inputs_weights is None:
        # First step: the plain path; penalised members' column norms weigh the second path.
        plain = base.replace(l1_inputs_adaptive=False)
        base = base.replace(l1_inputs_adaptive=True)
        points, states, _, tol = _path(plain, grid, prepared, device, tolerance)
        pilot = pilot_index([p.l1_inputs for p in points], [p.val_score for p in points], tol)
        if not states[pilot]:
            raise InputError(
                f"the plain path diverged at l1_inputs = {grid[pilot]:g}, so it gives no adaptive "
                "weights; lower `lr`, or pass --no-l1-inputs-adaptive."
            )
        weights = member_weights(
            states[pilot], prepared.preprocessor, first_layer_groups(base, prepared)
        )
        base = base.replace(l1_inputs_weights=weights)
    points, _, chosen, tol = _path(base, grid, prepared, device, tolerance)
    return SelectionPath(score_name(prepared.task), tol, points, chosen, base.l1_inputs_weights)


def _path(
    base: TrainConfig,
    grid: Sequence[float],
    prepared: Any,
    device: Any,
    tolerance: float,
) -> tuple[list[PathPoint], list[list[dict[str, Any]]], int, float]:
    """One batched population over ``grid``: its points, each λ's members' tensors, the chosen
    index and the tolerance used (:func:`path_tolerance`)."""
    pop = fit_prepared([base.replace(l1_inputs=lam) for lam in grid], prepared, device=device)
    columns = list(prepared.preprocessor.encoded_groups())
    points, states = [], []
    for i, lam in enumerate(grid):
        members = [m for m in pop.fit.members if pop.origin[m.member] == i]
        finite = [m for m in members if m.finite and m.state]
        if finite:
            first = torch.cat([m.state["weights.0"] for m in finite])
            off, _ = l1_zeroed_features(first, prepared.preprocessor)
            score = float(np.mean([m.val_score for m in finite]))
            loss = float(np.mean([m.val_loss for m in finite]))
        else:
            off, score, loss = [], float("nan"), float("nan")
        kept = [c for c in columns if c not in off]
        points.append(PathPoint(lam, score, loss, kept, off))
        states.append([m.state for m in finite])
    scores = [p.val_score for p in points]
    tol = path_tolerance(prepared.task, scores, len(prepared.y_val), tolerance)
    chosen = choose_lambda(list(grid), scores, tol)
    return points, states, chosen, tol
