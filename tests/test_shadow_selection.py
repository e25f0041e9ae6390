"""Shadow columns in the selection path, and the group size under the numeric embedding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fitwell import api
from fitwell.config import build_config
from fitwell.data import Table
from fitwell.selection import (
    SHADOW_PREFIX,
    choose_lambda,
    pilot_index,
    select_features,
    with_shadows,
)
from fitwell.training.optim import input_count_scales


def _table(path: Path, k: int = 3, m: int = 4, n: int = 300) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, k + m))
    frame = pd.DataFrame(
        {f"s{i}": x[:, i] for i in range(k)} | {f"n{j}": x[:, k + j] for j in range(m)}
    )
    frame["label"] = (x[:, :k].sum(axis=1) > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("scores", "shadows", "expected"),
    [
        # Within tolerance: 0.1, 0.2, 0.3; the smallest with no shadow is 0.2.
        ([0.90, 0.80, 0.90, 0.895, 0.89], [4, 3, 1, 0, 0], 3),
        # A clean λ outside the tolerance does not count: none clean inside, so the largest.
        ([0.90, 0.95, 0.95, 0.95, 0.80], [4, 3, 1, 1, 0], 3),
        # λ = 0 can be the clean one when nothing looks like noise.
        ([0.90, 0.90, 0.90, 0.90, 0.90], [0, 0, 0, 0, 0], 0),
    ],
)
def test_choose_lambda_takes_smallest_shadow_free_lambda_within_tolerance(
    scores: list[float], shadows: list[int], expected: int
):
    lams = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert choose_lambda(lams, scores, 0.01, shadows) == expected


def test_choose_lambda_without_shadows_keeps_the_largest_within_tolerance():
    lams = [0.0, 0.1, 0.2, 0.3]
    assert choose_lambda(lams, [0.90, 0.90, 0.90, 0.85], 0.01) == 2
    assert choose_lambda(lams, [0.90, 0.90, 0.90, 0.85], 0.01, [2, 0, 0, 0]) == 1


def test_pilot_is_the_least_penalised_clean_member():
    lams = [0.0, 0.1, 0.2, 0.3]
    scores = [0.90, 0.90, 0.90, 0.90]
    assert pilot_index(lams, scores, 0.01, [0, 2, 0, 0]) == 2
    assert pilot_index(lams, scores, 0.01) == 3
    # Never the unpenalised member, even when it is the only clean one.
    assert pilot_index(lams, scores, 0.01, [0, 1, 1, 1]) == 3


def test_shadows_are_one_permutation_of_every_feature_column():
    frame = pd.DataFrame(
        {
            "a": np.arange(50.0),
            f"{SHADOW_PREFIX}a": np.arange(50.0) * 2,  # a name the shadow must not take
            "b": [f"x{i % 5}" for i in range(50)],
            "y": np.arange(50) % 2,
        }
    )
    weights = np.linspace(1, 2, 50)
    table = Table(frame.copy(), "y", "t.csv", weights)
    shadowed, names = with_shadows(table, seed=3)
    assert len(names) == 3 and len(set(names) | set(frame.columns)) == 7
    assert list(table.frame.columns) == list(frame.columns)  # the input is not changed
    assert shadowed.target == "y" and shadowed.weights is weights
    assert "y" not in {n.removeprefix(SHADOW_PREFIX) for n in names[:1]}
    a, b = shadowed.frame[names[0]], shadowed.frame[names[2]]
    assert sorted(a) == sorted(frame["a"]) and not a.equals(frame["a"])
    order = a.astype(int).to_numpy()  # a = 0..49, so its shadow is the permutation itself
    assert (b.to_numpy() == frame["b"].to_numpy()[order]).all()
    assert with_shadows(table, seed=3)[0].frame.equals(shadowed.frame)
    assert not with_shadows(table, seed=4)[0].frame.equals(shadowed.frame)


def test_select_trains_with_shadows_and_returns_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = _table(tmp_path / "t.csv")
    cfg = build_config({"data": str(path), "target": "label", "max_epochs": 5})
    seen: list[list[str]] = []
    real = api.load_and_prepare

    def spy(c, table=None):
        prepared = real(c, table)
        seen.append(list(prepared.preprocessor.encoded_groups()))
        return prepared

    monkeypatch.setattr("fitwell.selection.load_and_prepare", spy)
    result = select_features(cfg, [0.0, 0.1])
    columns = [f"s{i}" for i in range(3)] + [f"n{j}" for j in range(4)]
    assert sorted(seen[0]) == sorted(columns + [SHADOW_PREFIX + c for c in columns])
    assert result.shadows and result.to_dict()["shadows"] is True
    assert result.points[0].shadows_kept == len(columns)  # λ = 0 reads every input
    for p in result.points:
        assert sorted(p.kept + p.off) == sorted(columns)
    assert result.weights is not None and sorted(result.weights) == sorted(columns)
    plain = select_features(cfg, [0.0, 0.1], shadows=False)
    assert not plain.shadows and all(p.shadows_kept == 0 for p in plain.points)


def test_given_weights_reach_the_shadows(tmp_path: Path):
    path = _table(tmp_path / "t.csv", k=1, m=1)
    weights = {"s0": 0.5, "n0": 1000.0}
    cfg = build_config(
        {"data": str(path), "target": "label", "max_epochs": 5, "l1_inputs_weights": weights}
    )
    result = select_features(cfg, [0.0, 0.5])
    assert result.weights == weights
    # n0 and its shadow weigh 1000: both are off at once; s0's shadow weighs 0.5 like s0.
    assert "n0" in result.points[1].off


def test_input_count_scales_turn_rows_into_inputs():
    # Column 0: numeric, raw row + 3 embedding rows; column 1: one-hot of 3 levels, unchanged.
    rows = [0, 1, 1, 1, 0, 0, 0]
    reference = [0, 1, 1, 1]
    assert input_count_scales(rows, reference) == [pytest.approx(0.5), 1.0]
    assert input_count_scales(reference, reference) is None


def test_embedding_rows_do_not_raise_a_numeric_column_penalty(tmp_path: Path):
    path = _table(tmp_path / "t.csv", k=2, m=1)
    frame = pd.read_csv(path)
    frame["c"] = [f"l{i % 3}" for i in range(len(frame))]
    frame.to_csv(path, index=False)
    base = {"data": str(path), "target": "label", "l1_inputs": 0.1}
    classic = build_config(base | {"numeric_embedding": "none"})
    embedded = build_config(base | {"numeric_embedding": "pbld"})
    prepared = api.load_and_prepare(classic)
    assert api.penalty_weights(classic, prepared) is None
    scales = api.penalty_weights(embedded, prepared)
    assert scales is not None
    rows = api.first_layer_groups(embedded, prepared)
    columns = list(prepared.preprocessor.encoded_groups())
    for g, name in enumerate(columns):
        n_rows = rows.count(g)
        # sqrt(rows) * scale: 1 for a numeric column, sqrt(levels) for the one-hot column.
        inputs = 3 if name == "c" else 1
        assert math.sqrt(n_rows) * scales[g] == pytest.approx(math.sqrt(inputs)), name
    weighted = embedded.replace(l1_inputs_weights=dict.fromkeys(columns, 2.0))
    assert api.penalty_weights(weighted, prepared) == pytest.approx([2 * s for s in scales])
