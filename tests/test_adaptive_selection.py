"""Adaptive group lasso for ``l1_inputs``: weights from pilot norms, the weighted prox step, the
weights saved with the run and replayed on resume, and the path rule's standard-error tolerance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fitwell import api, runs
from fitwell.config import build_config, load_toml
from fitwell.errors import InputError
from fitwell.resume import resume
from fitwell.selection import path_tolerance, pilot_index, select_features
from fitwell.training import Callback
from fitwell.training.optim import ADAPTIVE_NORM_FLOOR, PopulationOptimizer, adaptive_group_weights

from .conftest import run_cli


def _table(path: Path, k: int = 3, m: int = 5, n: int = 300) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, k + m))
    frame = pd.DataFrame(
        {f"s{i}": x[:, i] for i in range(k)} | {f"n{j}": x[:, k + j] for j in range(m)}
    )
    frame["label"] = (x[:, :k].sum(axis=1) > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def test_adaptive_weights_are_inverse_mean_normalised_norms():
    norms = torch.tensor([[2.0, 1.0, 0.0], [4.0, 4.0, 4.0]])
    # Fit 1 relative norms: 2, 1, 0 (mean 1); fit 2: 1, 1, 1. Averaged: 1.5, 1, 0.5.
    expected = torch.tensor([1 / 1.5, 1.0, 2.0])
    torch.testing.assert_close(adaptive_group_weights(norms), expected)
    # Scale-free: multiplying a fit's norms changes nothing.
    torch.testing.assert_close(adaptive_group_weights(norms * 7.0), expected)
    # A column the pilot switched off gets the floor's large weight; all-zero: all weigh 1.
    single = adaptive_group_weights(torch.tensor([3.0, 0.0, 0.0]))
    assert math.isclose(float(single[1]), 1 / ADAPTIVE_NORM_FLOOR, rel_tol=1e-5)
    torch.testing.assert_close(adaptive_group_weights(torch.zeros(3)), torch.ones(3))


def test_weighted_group_step_matches_formula_and_zeroes_the_heavy_column():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.full((1, 3, 2), 0.5))
    weights = [1.0, 20.0, 0.0]
    opt = PopulationOptimizer(
        [w],
        [w],
        kind="sgd",
        lrs=torch.tensor([0.1]),
        l1s=torch.zeros(1),
        momentum=0.0,
        l1_inputs=torch.tensor([0.5]),
        group_weights=weights,
    )
    w.grad = torch.zeros_like(w)
    opt.step()
    norm = 0.5 * np.sqrt(2)
    got = w.detach()[0].numpy()
    for g, wg in enumerate(weights):
        thresh = 0.1 * 0.5 * 1.0 * wg  # eta * l1_inputs * sqrt(p_g) * w_g, p_g = 1
        expected = 0.5 * max(0.0, 1 - thresh / norm)
        np.testing.assert_allclose(got[g], expected, rtol=1e-6)
    assert (got[1] == 0).all()  # the heavy column is exactly zero
    np.testing.assert_array_equal(got[2], 0.5)  # weight 0: not penalised at all
    penalty = opt.group_penalty()
    assert penalty is not None
    expected_penalty = 0.5 * sum(wg * float(np.linalg.norm(got[g])) for g, wg in enumerate(weights))
    assert math.isclose(float(penalty[0]), expected_penalty, rel_tol=1e-6)


def test_group_weights_of_the_wrong_length_are_refused():
    w = torch.nn.Parameter(torch.ones(1, 3, 2))
    opt = PopulationOptimizer(
        [w],
        [w],
        kind="sgd",
        lrs=torch.tensor([0.1]),
        l1s=torch.zeros(1),
        l1_inputs=torch.tensor([0.5]),
        group_weights=[1.0, 1.0],
    )
    w.grad = torch.zeros_like(w)
    with pytest.raises(ValueError, match="2 values for 3 groups"):
        opt.step()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"l1_inputs_weights": {"a": -1.0}}, "finite numbers >= 0"),
        ({"l1_inputs_weights": {"a": "x"}}, "finite numbers >= 0"),
        ({"l1_inputs_weights": [1.0, 2.0]}, "table of column name"),
        ({"l1_inputs_adaptive": "yes"}, "true or false"),
    ],
)
def test_config_rejects_bad_adaptive_settings(settings: dict, message: str):
    with pytest.raises(InputError, match=message):
        build_config({"dataset": "digits"} | settings)


def test_weights_must_name_every_column(tmp_path: Path):
    path = _table(tmp_path / "t.csv")
    with pytest.raises(InputError, match="missing"):
        api.train(path, target="label", l1_inputs=0.1, l1_inputs_weights={"s0": 1.0})


def test_pilot_is_never_the_unpenalised_member():
    lams = [0.0, 0.03, 0.1, 0.3]
    assert pilot_index(lams, [0.95, 0.90, 0.85, 0.5], 0.01) == 1  # none close: smallest λ > 0
    assert pilot_index(lams, [0.95, 0.945, 0.942, 0.5], 0.01) == 2
    assert pilot_index([0.0], [0.9], 0.01) == 0


def test_path_tolerance_is_one_standard_error_for_accuracy():
    assert math.isclose(
        path_tolerance("classification", [0.9, 0.8], 100, 0.01), math.sqrt(0.09 / 100)
    )
    assert path_tolerance("classification", [1.0], 100, 0.01) == 0.01
    assert path_tolerance("regression", [0.9], 100, 0.01) == 0.01


class _Interrupt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.epoch == self.at:
            raise KeyboardInterrupt


def test_pilot_weights_are_saved_and_replayed_on_resume(tmp_path: Path):
    path = _table(tmp_path / "t.csv")
    settings: dict[str, Any] = dict(
        data=path,
        target="label",
        hidden=(8, 8),
        max_epochs=6,
        patience=3,
        seed=3,
        l1_inputs=0.05,
        l1_inputs_adaptive=True,
    )
    api.train(out=tmp_path / "a", **settings)
    saved = load_toml(tmp_path / "a" / runs.CONFIG_FILE)["l1_inputs_weights"]
    assert sorted(saved) == sorted(f"{p}{i}" for p, n in (("s", 3), ("n", 5)) for i in range(n))
    with pytest.raises(KeyboardInterrupt):
        api.train(out=tmp_path / "b", callbacks=[_Interrupt(4)], **settings)
    state = json.loads((tmp_path / "b" / runs.RUN_STATE_FILE).read_text())
    assert state["configs"][0]["l1_inputs_weights"] == saved
    resume(tmp_path / "b")
    for name in (runs.MODEL_FILE, runs.HISTORY_FILE, runs.CONFIG_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_adaptive_select_returns_weights_and_switches_noise_off(tmp_path: Path):
    path = _table(tmp_path / "t.csv", n=400)
    cfg = build_config(
        {"data": str(path), "target": "label", "max_epochs": 40, "l1_inputs_adaptive": True}
    )
    result = select_features(cfg, [0.0, 0.03, 0.1, 0.3])
    assert result.weights is not None and set(result.weights) == set(result.points[0].kept)
    # Signal columns weigh less than noise columns.
    assert max(result.weights[f"s{i}"] for i in range(3)) < min(
        result.weights[f"n{j}"] for j in range(5)
    )
    chosen = result.chosen_point
    assert chosen.l1_inputs > 0
    assert all(c.startswith("s") for c in chosen.kept) and len(chosen.kept) == 3
    assert result.to_dict()["l1_inputs_weights"] == result.weights


def test_cli_select_adaptive_prints_weights(tmp_path: Path):
    path = _table(tmp_path / "t.csv")
    out = run_cli(
        "select",
        str(path),
        "--target",
        "label",
        "--lambdas",
        "0,0.1",
        "--max-epochs",
        "10",
        "--l1-inputs-adaptive",
    )
    assert out.returncode == 0, out.stderr
    assert "adaptive weights" in out.stdout


def test_path_with_several_seeds_per_lambda(tmp_path: Path):
    path = _table(tmp_path / "t.csv")
    cfg = build_config({"data": str(path), "target": "label", "max_epochs": 10})
    with pytest.raises(InputError, match="`seeds` must be an integer >= 1"):
        select_features(cfg, [0.0, 0.1], seeds=0)
    result = select_features(cfg, [0.0, 0.1], seeds=2)
    assert [p.l1_inputs for p in result.points] == [0.0, 0.1]
    assert all(math.isfinite(p.val_score) for p in result.points)


def test_select_is_adaptive_by_default_and_plain_on_request(tmp_path: Path):
    path = _table(tmp_path / "t.csv")
    cfg = build_config({"data": str(path), "target": "label", "max_epochs": 5})
    assert cfg.l1_inputs_adaptive is None  # train stays plain: no pilot unless asked
    assert select_features(cfg, [0.0, 0.1]).weights is not None
    plain = cfg.replace(l1_inputs_adaptive=False)
    assert select_features(plain, [0.0, 0.1]).weights is None


def test_adaptive_weights_fold_embedding_rows_into_their_column() -> None:
    """With PBLD embeddings the first layer has rows per embedding output; a column whose raw and
    embedding rows are all zero gets the largest weight, and each column gets exactly one."""
    import pandas as pd

    from fitwell.api import first_layer_groups, member_weights
    from fitwell.config import build_config
    from fitwell.data.preprocessing import Preprocessor

    pre = Preprocessor.fit(
        pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.1, 0.3], "c": ["x", "y", "x"]})
    )
    cfg = build_config({"numeric_embedding": "pbld", "embedding_dim": 2})
    prepared = SimpleNamespace(preprocessor=pre, task="classification")
    groups = first_layer_groups(cfg, prepared)  # type: ignore[arg-type]
    # raw inputs a, b, c=x, c=y; then 2 embedding rows for a and 2 for b
    assert groups == [0, 1, 2, 2, 0, 0, 1, 1]
    w = torch.ones(1, len(groups), 5)
    w[0, [i for i, g in enumerate(groups) if g == 0]] = 0.0  # column "a" switched off
    weights = member_weights([{"weights.0": w}], pre, groups)
    assert set(weights) == {"a", "b", "c"}
    assert weights["a"] > weights["b"] and weights["a"] > weights["c"]
