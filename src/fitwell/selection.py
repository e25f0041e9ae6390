"""Feature selection by a regularisation path: one population over a grid of ``l1_inputs``.

Members differ only in ``l1_inputs`` (same seeds, same data order), so the path is one batched
model. By default it is an adaptive group lasso in two steps: the plain path first, whose member
at a penalised λ gives each column a weight (1 / its first-layer norm), then the weighted path.

Shadow columns calibrate where noise stops: the path trains on the table plus one row-permuted
copy of each input column (the same values, no relation to the target; the pseudo-variables of
Wu, Boos & Stefanski 2007, Boruta's shadows). Among the λs whose validation score is within the
tolerance of the best, the smallest one whose member reads no shadow is chosen: the least
penalised model in which nothing that looks like noise survives, so a weak but real column is
not dropped only because dropping it costs less than one standard error. Every choice reads
validation scores only; the test split stays sealed, and the shadows never leave the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fitwell.api import (
    first_layer_groups,
    fit_prepared,
    load_and_prepare,
    load_table_of,
    member_weights,
    resolve_device,
)
from fitwell.config import TrainConfig
from fitwell.data import Table
from fitwell.errors import InputError
from fitwell.finish import l1_zeroed_features
from fitwell.metrics import score_name
from fitwell.training.optim import ADAPTIVE_NORM_FLOOR

# Finer at the low end, where noise columns go; about 1.4x apart from 0.01 to 0.5.
DEFAULT_LAMBDAS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
DEFAULT_TOLERANCE = 0.01
SHADOW_PREFIX = "shadow::"
# The refit's penalty: a column off in the chosen member weighs 1 / the adaptive floor (as a column
# an adaptive pilot switched off) at l1_inputs 1, so each step's threshold (lr * 1000) is far
# above what one optimizer step can add to its norm; the kept columns weigh 0 (unpenalised).
REFIT_L1_INPUTS = 1.0
REFIT_OFF_WEIGHT = 1.0 / ADAPTIVE_NORM_FLOOR


@dataclass
class PathPoint:
    """One λ of the path: the columns its member reads and its validation score."""

    l1_inputs: float
    val_score: float
    val_loss: float
    kept: list[str]
    off: list[str]
    # Shadow columns (row-permuted copies) this λ's members still read; 0 without shadows.
    shadows_kept: int = 0


@dataclass
class SelectionPath:
    """The path and the chosen λ (:func:`choose_lambda`)."""

    score: str
    tolerance: float
    points: list[PathPoint]
    chosen: int
    weights: dict[str, float] | None = None
    shadows: bool = False

    @property
    def chosen_point(self) -> PathPoint:
        return self.points[self.chosen]

    def refit(self) -> dict[str, Any]:
        """Settings that train a model reading exactly the chosen columns (a relaxed refit).

        ``l1_inputs`` and ``l1_inputs_weights`` for ``train``: the chosen member's columns are
        unpenalised (weight 0) and every other column is held at zero. Why not retrain at the
        chosen λ with the path's weights: a new ensemble at that λ reads the union of its own
        members' columns, which drifts from the set the path reported (a weak column that the
        path's member kept is dropped by all three, or the reverse) and differs across seeds even
        when the path's choice does not; and the kept columns, unshrunk, fit better.
        """
        point = self.chosen_point
        if not point.off:
            return {"l1_inputs": 0.0, "l1_inputs_weights": None}
        weights = dict.fromkeys(point.kept, 0.0) | dict.fromkeys(point.off, REFIT_OFF_WEIGHT)
        return {"l1_inputs": REFIT_L1_INPUTS, "l1_inputs_weights": weights}

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "tolerance": self.tolerance,
            "rule": RULE if self.shadows else RULE_NO_SHADOWS,
            "shadows": self.shadows,
            "chosen_l1_inputs": self.chosen_point.l1_inputs,
            "chosen_kept": self.chosen_point.kept,
            "chosen_off": self.chosen_point.off,
            "l1_inputs_weights": self.weights,
            "refit": self.refit(),
            "path": [p.__dict__ for p in self.points],
        }


RULE_NO_SHADOWS = (
    "largest l1_inputs whose val score >= best val score - tolerance "
    "(tolerance: the given one, or one standard error of the best val accuracy if larger)"
)
RULE = (
    "smallest l1_inputs whose val score >= best val score - tolerance and whose member reads no "
    "shadow column; the largest such l1_inputs when every one reads a shadow "
    "(tolerance: the given one, or one standard error of the best val accuracy if larger)"
)


def choose_lambda(
    lambdas: Sequence[float],
    scores: Sequence[float],
    tolerance: float,
    shadows_kept: Sequence[int] | None = None,
) -> int:
    """Index of the λ the path chooses, among those whose score (higher is better) is within
    ``tolerance`` of the best.

    Without ``shadows_kept``: the largest of them. A larger λ reads fewer columns, so among
    near-ties the simplest model wins (the "one standard error" habit). With ``shadows_kept``
    (per λ, how many shadow columns its members read): the smallest of them that reads none,
    and the largest when every one reads a shadow. Why: past the λ where the last shadow goes,
    a larger λ only drops columns that beat every shadow, i.e. that carry signal; the one-SE
    rule drops the weakest of them whenever the validation split cannot price them, and which
    ones it drops changes with the seed. Non-finite scores never qualify.
    """
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        raise InputError("every λ of the path diverged; lower `lr` or the largest λ.")
    best = max(finite)
    ok = [i for i, s in enumerate(scores) if math.isfinite(s) and s >= best - tolerance]
    if shadows_kept is not None:
        clean = [i for i in ok if shadows_kept[i] == 0]
        if clean:
            return min(clean, key=lambda i: (lambdas[i], i))
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


def pilot_index(
    lambdas: Sequence[float],
    scores: Sequence[float],
    tolerance: float,
    shadows_kept: Sequence[int] | None = None,
) -> int:
    """The plain-path member whose column norms become the adaptive weights.

    :func:`choose_lambda` among the penalised members (λ > 0), measured against the best score of
    the whole path; when none is within ``tolerance``, the smallest λ > 0. Why never λ = 0: the
    first-layer norms of an unpenalised network stay close to their random initial values, so
    they weigh noise and signal columns alike (measured on ``benchmarks/feature_selection.py``).
    With shadows, the pilot is the least penalised clean member: a column the pilot switches
    off weighs 1000 and never returns, so an over-penalised pilot would lose weak real columns.
    """
    positive = [i for i, lam in enumerate(lambdas) if lam > 0]
    if not positive:
        return choose_lambda(lambdas, scores, tolerance, shadows_kept)
    finite = [s for s in scores if math.isfinite(s)]
    best = max(finite) if finite else float("nan")
    ok = [i for i in positive if math.isfinite(scores[i]) and scores[i] >= best - tolerance]
    if ok:
        if shadows_kept is not None:
            clean = [i for i in ok if shadows_kept[i] == 0]
            if clean:
                return min(clean, key=lambda i: (lambdas[i], i))
        return max(ok, key=lambda i: (lambdas[i], -i))
    return min(positive, key=lambda i: (lambdas[i], i))


def with_shadows(table: Table, seed: int) -> tuple[Table, list[str]]:
    """``table`` plus one shadow per input column: the column's values in a permuted row order,
    one permutation (seeded by ``seed``) for all of them.

    Why one permutation: the shadows keep the columns' joint distribution (their correlations,
    their interactions) and lose only their link to the target and to the real columns, so a
    shadow is exactly as easy to fit as the column it copies, minus the signal. The frame is a
    new one; ``table`` is not changed.
    """
    frame = table.frame
    features = table.feature_columns
    order = np.random.default_rng(seed).permutation(len(frame))
    taken = set(frame.columns)
    names = []
    for c in features:
        name = f"{SHADOW_PREFIX}{c}"
        while name in taken:
            name = "_" + name
        taken.add(name)
        names.append(name)
    shadows = frame[features].iloc[order].reset_index(drop=True)
    shadows.index = frame.index
    shadows.columns = names
    shadowed = pd.concat([frame, shadows], axis=1)
    return Table(shadowed, table.target, table.source, table.weights), names


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
    shadows: bool = True,
) -> SelectionPath:
    """Train ``seeds`` members per λ (one batched population) and choose λ on validation data.

    ``cfg`` gives everything but ``l1_inputs``; the members of each λ have seeds ``cfg.seed,
    cfg.seed + 1, ...``, and a λ's validation score is their mean (its columns off: those off in
    every one of them). With ``shadows`` (default True) the path trains on the table plus a
    shadow of each column (:func:`with_shadows`, seeded by ``cfg.seed``) and λ is chosen by
    :func:`choose_lambda` with the shadows each λ reads; the shadows appear in no list, weight
    or model that comes back. ``prepared`` (from :func:`fitwell.api.load_and_prepare`) skips
    loading, and then there are no shadows. Unless ``cfg.l1_inputs_adaptive`` is False, and
    when no ``cfg.l1_inputs_weights`` are given, the plain path (every column weighing 1) runs
    first; the column norms of its members at the λ :func:`pilot_index` picks become the
    weights (:func:`fitwell.api.member_weights`) of the second, adaptive path, and come back in
    ``SelectionPath.weights`` to train the chosen model with.
    """
    grid = check_lambdas(lambdas, tolerance)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"`seeds` must be an integer >= 1; got {seeds!r}.")
    shadow_of: dict[str, str] = {}  # shadow name -> the column it copies
    if prepared is None:
        table = load_table_of(cfg)
        if shadows:
            originals = table.feature_columns
            table, names = with_shadows(table, cfg.seed)
            shadow_of = dict(zip(names, originals, strict=True))
        prepared = load_and_prepare(cfg, table)
    shadow_names = list(shadow_of)
    device = resolve_device(cfg.device)
    base = cfg.replace(restarts=seeds, ensemble=1)
    given = base.l1_inputs_weights
    if given is not None and shadow_of:
        # Given weights name the real columns; a shadow weighs what its column weighs.
        copied = {s: given[c] for s, c in shadow_of.items() if c in given}
        base = base.replace(l1_inputs_weights=given | copied)
    if base.l1_inputs_adaptive is not False and base.l1_inputs_weights is None:
        # First step: the plain path; penalised members' column norms weigh the second path.
        plain = base.replace(l1_inputs_adaptive=False)
        base = base.replace(l1_inputs_adaptive=True)
        points, states, _, tol = _path(plain, grid, prepared, device, tolerance, shadow_names)
        pilot = pilot_index(
            [p.l1_inputs for p in points],
            [p.val_score for p in points],
            tol,
            [p.shadows_kept for p in points] if shadow_names else None,
        )
        if not states[pilot]:
            raise InputError(
                f"the plain path diverged at l1_inputs = {grid[pilot]:g}, so it gives no adaptive "
                "weights; lower `lr`, or pass --no-l1-inputs-adaptive."
            )
        weights = member_weights(
            states[pilot], prepared.preprocessor, first_layer_groups(base, prepared)
        )
        base = base.replace(l1_inputs_weights=weights)
    points, _, chosen, tol = _path(base, grid, prepared, device, tolerance, shadow_names)
    final = base.l1_inputs_weights
    if final is not None and shadow_of:
        final = {c: w for c, w in final.items() if c not in shadow_of}
    return SelectionPath(
        score_name(prepared.task), tol, points, chosen, final, shadows=bool(shadow_of)
    )


def _path(
    base: TrainConfig,
    grid: Sequence[float],
    prepared: Any,
    device: Any,
    tolerance: float,
    shadow_names: Sequence[str] = (),
) -> tuple[list[PathPoint], list[list[dict[str, Any]]], int, float]:
    """One batched population over ``grid``: its points, each λ's members' tensors, the chosen
    index and the tolerance used (:func:`path_tolerance`). Shadow columns are counted in
    ``PathPoint.shadows_kept`` and left out of ``kept`` and ``off``."""
    pop = fit_prepared([base.replace(l1_inputs=lam) for lam in grid], prepared, device=device)
    hidden = set(shadow_names)
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
        points.append(
            PathPoint(
                lam,
                score,
                loss,
                [c for c in kept if c not in hidden],
                [c for c in off if c not in hidden],
                sum(c in hidden for c in kept),
            )
        )
        states.append([m.state for m in finite])
    scores = [p.val_score for p in points]
    tol = path_tolerance(prepared.task, scores, len(prepared.y_val), tolerance)
    clean = [p.shadows_kept for p in points] if shadow_names else None
    chosen = choose_lambda(list(grid), scores, tol, clean)
    return points, states, chosen, tol
