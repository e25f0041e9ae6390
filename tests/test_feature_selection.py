"""Feature selection: the group-lasso proximal step, column groups, reporting and the path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fitwell.api import input_groups, load_and_prepare, train
from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.finish import l1_zeroed_features
from fitwell.selection import choose_lambda, select_features
from fitwell.training.optim import PopulationOptimizer

from .conftest import run_cli


def _table(k: int, m: int, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """``k`` informative columns (clear weights) and ``m`` pure-noise columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k + m))
    w = rng.uniform(0.7, 1.3, size=k) * rng.choice([-1, 1], size=k)
    frame = pd.DataFrame(
        {f"s{i}": x[:, i] for i in range(k)} | {f"n{j}": x[:, k + j] for j in range(m)}
    )
    frame["label"] = (x[:, :k] @ w > 0).astype(int)
    return frame


def test_group_proximal_step_matches_formula_for_sgd():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 4, 3))
    grad = torch.randn(2, 4, 3)
    lrs, lams = torch.tensor([0.1, 0.5]), torch.tensor([0.5, 3.0])
    groups = [0, 1, 1, 2]  # input 1 and 2 form one column (e.g. one-hot levels)
    opt = PopulationOptimizer(
        [w],
        [w],
        kind="sgd",
        lrs=lrs,
        l1s=torch.zeros(2),
        momentum=0.0,
        l1_inputs=lams,
        input_groups=groups,
    )
    before = w.detach().numpy().copy()
    w.grad = grad.clone()
    opt.step()
    for k in range(2):
        z = before[k] - float(lrs[k]) * grad[k].numpy()
        expected = np.empty_like(z)
        for rows in ([0], [1, 2], [3]):
            block = z[rows]
            thresh = float(lrs[k]) * float(lams[k]) * np.sqrt(len(rows))
            expected[rows] = block * max(0.0, 1 - thresh / np.linalg.norm(block))
        np.testing.assert_allclose(w[k].detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    # The strong member zeroes whole rows (columns), never part of a group.
    zero_rows = (w.detach()[1] == 0).all(dim=1)
    assert zero_rows.any()
    assert bool(zero_rows[1]) == bool(zero_rows[2])


def test_group_step_off_leaves_weights_alone():
    w = torch.nn.Parameter(torch.randn(1, 3, 2))
    opt = PopulationOptimizer(
        [w], [w], kind="sgd", lrs=torch.tensor([0.1]), l1s=torch.zeros(1), momentum=0.0
    )
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), before)


def test_one_hot_groups_map_back_to_original_columns(mixed_csv: Path):
    cfg = build_config({"data": str(mixed_csv), "target": "label"})
    pre = load_and_prepare(cfg).preprocessor
    groups = input_groups(pre)
    names = list(pre.encoded_groups())
    colour = [i for i, g in enumerate(groups) if names[g] == "colour"]
    assert len(colour) >= 3  # the one-hot levels (and missing indicator) share one group
    first = torch.ones(1, len(groups), 4)
    first[:, colour, :] = 0.0
    columns, encoded = l1_zeroed_features(first, pre)
    assert columns == ["colour"]
    assert len(encoded) == len(colour)


def test_ensemble_reports_only_columns_zero_in_every_member(mixed_csv: Path):
    pre = load_and_prepare(build_config({"data": str(mixed_csv), "target": "label"})).preprocessor
    groups = pre.encoded_groups()
    first = torch.ones(2, len(pre.encoded_names), 3)
    for i in groups["x1"]:
        first[:, i, :] = 0.0  # off in both members
    for i in groups["x2"]:
        first[0, i, :] = 0.0  # off in one member only: the ensemble still reads it
    columns, _ = l1_zeroed_features(first, pre)
    assert columns == ["x1"]


def test_selection_drops_noise_keeps_signal_and_saved_model_ignores_off_columns(tmp_path: Path):
    frame = _table(4, 8, n=500)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    run = train(
        path, target="label", l1_inputs=0.2, ensemble=1, max_epochs=60, out=tmp_path / "run"
    )
    off = run.metrics["l1_zeroed_features"]
    noise = [f"n{j}" for j in range(8)]
    assert sum(c in off for c in noise) >= 5, off
    assert not any(c.startswith("s") for c in off), off
    # Reported in metrics.json too, and the report names them.
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["l1_zeroed_features"] == off
    # Changing an off column does not change the saved model's outputs; a kept one does.
    x = frame.drop(columns="label")
    base = run.predict_proba(x)
    changed = x.copy()
    changed[off] = 100.0
    np.testing.assert_array_equal(run.predict_proba(changed), base)
    moved = x.copy()
    moved["s0"] = moved["s0"] + 3.0
    assert not np.array_equal(run.predict_proba(moved), base)


def test_default_ensemble_of_three_agrees_on_switched_off_columns(tmp_path: Path):
    frame = _table(4, 8, n=500, seed=1)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    run = train(path, target="label", l1_inputs=0.2, max_epochs=60)
    off = run.metrics["l1_zeroed_features"]
    assert len(off) >= 4 and not any(c.startswith("s") for c in off), off
    # Reported = zero in every member the saved model averages (raw and any embedding rows).
    from fitwell.embeddings import per_input

    arch = run.model.arch
    first = run.model.weights[0].detach()
    assert first.shape[0] == 3
    names = list(frame.columns.drop("label"))
    per_column = [
        per_input(first[k].abs().sum(dim=1), arch.first_layer_sources, arch.n_inputs)
        for k in range(3)
    ]
    per_member = [
        {names[i] for i in range(len(names)) if bool(per_column[k][i] == 0)} for k in range(3)
    ]
    assert set(off) == set.intersection(*per_member)


def test_choose_lambda_takes_largest_within_tolerance():
    lams = [0.0, 0.01, 0.1, 0.3]
    assert choose_lambda(lams, [0.90, 0.92, 0.915, 0.80], 0.01) == 2
    assert choose_lambda(lams, [0.90, 0.92, 0.90, 0.80], 0.01) == 1
    assert choose_lambda(lams, [0.90, float("nan"), 0.95, 0.949], 0.0) == 2


def test_select_path_reads_validation_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    frame = _table(3, 5, n=300)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    from fitwell.data import splitting

    def sealed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the path opened the test split")

    monkeypatch.setattr(splitting.SealedTest, "open", sealed)
    cfg = build_config({"data": str(path), "target": "label", "max_epochs": 30})
    result = select_features(cfg, [0.0, 0.1, 0.3])
    assert [p.l1_inputs for p in result.points] == [0.0, 0.1, 0.3]
    assert result.points[0].off == []  # λ = 0 switches nothing off
    assert len(result.points[2].off) >= len(result.points[0].off)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"l1_inputs": -0.1}, "`l1_inputs` must be >= 0"),
        ({"l1_inputs": float("nan")}, "`l1_inputs` must be >= 0"),
        ({"l1_inputs": "abc"}, "`l1_inputs` must be a number"),
    ],
)
def test_config_rejects_bad_l1_inputs(settings: dict, message: str):
    with pytest.raises(InputError, match=message):
        build_config({"dataset": "digits"} | settings)


def test_select_rejects_bad_grids():
    cfg = build_config({"dataset": "digits"})
    with pytest.raises(InputError, match="`lambdas` must be >= 0"):
        select_features(cfg, [0.0, -1.0])
    with pytest.raises(InputError, match="at least one value"):
        select_features(cfg, [])


def test_cli_l1_inputs_and_select(tmp_path: Path):
    path = tmp_path / "t.csv"
    _table(3, 5, n=300).to_csv(path, index=False)
    bad = run_cli("train", str(path), "--target", "label", "--l1-inputs", "-1")
    assert bad.returncode == 2 and "`l1_inputs` must be >= 0" in bad.stderr
    out = run_cli(
        "select",
        str(path),
        "--target",
        "label",
        "--lambdas",
        "0,0.1,0.3",
        "--max-epochs",
        "20",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [p["l1_inputs"] for p in doc["path"]] == [0.0, 0.1, 0.3]
    assert doc["chosen_l1_inputs"] in (0.0, 0.1, 0.3)
    refit = doc["refit"]  # the settings that train on exactly the chosen columns
    if doc["chosen_off"]:
        free = {c for c, w in refit["l1_inputs_weights"].items() if w == 0}
        assert free == set(doc["chosen_kept"]) and refit["l1_inputs"] > 0
    else:
        assert refit == {"l1_inputs": 0.0, "l1_inputs_weights": None}
    bad = run_cli("select", str(path), "--target", "label", "--lambdas", "0,x")
    assert bad.returncode == 2 and "--lambdas" in bad.stderr


def test_estimator_reports_the_columns_it_does_not_read():
    from fitwell import FitwellClassifier

    frame = _table(4, 8, n=500)
    x, y = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    est = FitwellClassifier(l1_inputs=0.2, ensemble=1, max_epochs=60).fit(x, y)
    off = est.zeroed_features_
    assert len(off) >= 5 and all(i >= 4 for i in off), off  # noise columns are 4..11
    changed = x.copy()
    changed[:, off] = 100.0
    np.testing.assert_array_equal(est.predict_proba(changed), est.predict_proba(x))
    assert len(FitwellClassifier(ensemble=1, max_epochs=5).fit(x, y).zeroed_features_) == 0


def test_selection_names_columns_under_the_embedding_recipe(tmp_path: Path):
    """With PBLD each numeric column's group is its raw row and 3 embedding rows, counted as one
    input in sqrt(p_g): noise columns go off, and the saved model ignores them."""
    frame = _table(4, 8, n=500)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    run = train(
        path,
        target="label",
        l1_inputs=0.1,
        numeric_embedding="pbld",
        ensemble=1,
        max_epochs=60,
    )
    off = run.metrics["l1_zeroed_features"]
    assert sum(c.startswith("n") for c in off) >= 5 and not any(c.startswith("s") for c in off)
    x = frame.drop(columns="label")
    changed = x.copy()
    changed[off] = 100.0
    np.testing.assert_array_equal(run.predict_proba(changed), run.predict_proba(x))
