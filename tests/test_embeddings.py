"""The model's front: periodic numeric embeddings (PBLD) and the front scale, in the population."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import fitwell
from fitwell import api, runs
from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.estimators import FitwellClassifier
from fitwell.finish import l1_zeroed_features
from fitwell.models import (
    Architecture,
    PopulationMLP,
    eval_chunk_rows,
    front_width,
    model_bytes,
)
from fitwell.report.build import _first_layer_magnitudes
from fitwell.resume import resume
from fitwell.training.optim import PopulationOptimizer
from tests.replay import assert_same_predictions

from .conftest import run_cli
from .test_resume import SETTINGS, _interrupted, assert_same_run

FRONT_IDS = ["pbld", "scale", "pbld-scale"]
FRONTS: list[dict[str, Any]] = [
    {"numeric_embedding": "pbld"},
    {"front_scale": True},
    {"numeric_embedding": "pbld", "front_scale": True},
]


def _model(k: int = 3, *, n_inputs: int = 5, **front: Any) -> PopulationMLP:
    embed = front.get("numeric_embedding", "none") == "pbld"
    arch = Architecture(
        n_inputs=n_inputs,
        hidden=(8, 6),
        n_outputs=3,
        embedded=(0, 2, 3) if embed else (),
        embedding_frequencies=4,
        embedding_dim=2,
        **front,
    )
    model = PopulationMLP(arch, k)
    model.initialize(list(range(k)), init="auto", init_scale=1.0, bias_init=0.0)
    return model


def test_first_layer_reads_raw_inputs_then_each_embedding() -> None:
    arch = _model(numeric_embedding="pbld").arch
    assert arch.first_layer_inputs == 5 + 3 * 2
    assert arch.first_layer_sources == [0, 1, 2, 3, 4, 0, 0, 2, 2, 3, 3]
    assert arch.layer_sizes[0] == (11, 8)
    # No embedding: the first layer reads the encoded inputs, as before.
    assert Architecture(n_inputs=5, hidden=(8,), n_outputs=2).first_layer_sources == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("front", FRONTS, ids=FRONT_IDS)
def test_output_shapes_and_batched_equals_member_by_member(front: dict[str, Any]) -> None:
    k = 3
    model = _model(k, **front)
    shared = torch.randn(10, 5)
    per_member = torch.randn(k, 7, 5)
    assert model(shared).shape == (k, 10, 3)
    assert model(per_member).shape == (k, 7, 3)
    assert model(per_member, targets=torch.zeros(k, 7, dtype=torch.long)).shape == (k, 7)
    with torch.no_grad():
        batched = model.predict_chunks(shared)
        alone = torch.stack([model._member_forward(shared, m) for m in range(k)])
        rows = torch.stack([model(shared[None].expand(k, -1, -1))[m] for m in range(k)])
    torch.testing.assert_close(batched, alone)
    torch.testing.assert_close(batched, rows)


@pytest.mark.parametrize("front", FRONTS, ids=FRONT_IDS)
def test_members_are_independent(front: dict[str, Any]) -> None:
    model = _model(2, **front)
    x = torch.randn(2, 9, 5)
    before = model(x).detach()
    with torch.no_grad():
        for name in model._front_names:
            getattr(model, name)[0].add_(0.5)
    after = model(x).detach()
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    # Gradients too: member 1's loss reaches none of member 0's front parameters.
    model(x)[1].sum().backward()
    for name in model._front_names:
        grad = getattr(model, name).grad
        assert grad is not None and float(grad[0].abs().sum()) == 0.0
        assert float(grad[1].abs().sum()) > 0.0, name


def test_front_is_computed_per_batch_and_scale_starts_at_one() -> None:
    model = _model(2, numeric_embedding="pbld", front_scale=True)
    assert torch.equal(model.front_scales, torch.ones(2, 1, 11))
    # Every parameter is [K, ...]: nothing the size of the table is kept in the model.
    assert all(p.shape[0] == 2 for p in model.parameters())
    # Each member draws its front from its own seed: reproducible alone.
    alone = _model(1, numeric_embedding="pbld", front_scale=True)
    torch.testing.assert_close(alone.embed_frequencies[0], model.embed_frequencies[0])


def test_keep_members_slices_the_front() -> None:
    model = _model(3, numeric_embedding="pbld", front_scale=True)
    x = torch.randn(6, 5)
    before = model(x).detach()
    mapping = model.keep_members(torch.tensor([2, 0]))
    assert len(mapping) == len(list(model.parameters()))
    torch.testing.assert_close(model(x).detach(), before[[2, 0]])


def test_l1_input_groups_cover_each_columns_embedding(mixed_csv: Path) -> None:
    cfg = build_config({"data": str(mixed_csv), "target": "label", "numeric_embedding": "pbld"})
    prepared = api.load_and_prepare(cfg)
    pre = prepared.preprocessor
    arch = api.architecture(cfg, prepared, (4,))
    # x1, x2 numeric (embedded), colour one-hot (not embedded); 3 outputs each.
    assert pre.encoded_names[:2] == ["x1", "x2"] and arch.embedded == (0, 1)
    groups = api.input_groups(pre)
    rows = [groups[i] for i in arch.first_layer_sources]
    assert rows == [0, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1]
    # The group step with those groups switches x1 off whole: raw value and embedding rows.
    w = torch.nn.Parameter(torch.ones(1, arch.first_layer_inputs, 4))
    with torch.no_grad():
        w[0, [0, 5, 6, 7]] = 0.01
    opt = PopulationOptimizer(
        [w],
        [w],
        kind="sgd",
        lrs=torch.tensor([1.0]),
        l1s=torch.zeros(1),
        momentum=0.0,
        l1_inputs=torch.tensor([0.1]),
        input_groups=rows,
    )
    w.grad = torch.zeros_like(w)
    opt.step()
    after = w.detach()[0]
    assert float(after[[0, 5, 6, 7]].abs().sum()) == 0.0
    assert bool((after[[1, 8, 9, 10]] != 0).all())
    assert l1_zeroed_features(w, pre) == (["x1"], ["x1"])
    # An input is on while any of its rows is: x2's raw row alone off does not name it.
    with torch.no_grad():
        w[0, 1] = 0.0
    assert l1_zeroed_features(w, pre) == (["x1"], ["x1"])


@pytest.mark.parametrize("front_scale", [False, True], ids=["pbld", "pbld-scale"])
def test_train_then_load_and_predict(mixed_csv: Path, tmp_path: Path, front_scale: bool) -> None:
    run = fitwell.train(
        mixed_csv,
        target="label",
        out=tmp_path / "r",
        numeric_embedding="pbld",
        front_scale=front_scale,
        hidden=(8,),
        max_epochs=4,
        l1_inputs=1e-3,
    )
    meta = json.loads((tmp_path / "r" / runs.MODEL_META).read_text())
    assert meta["architecture"]["numeric_embedding"] == "pbld"
    assert meta["architecture"]["front_scale"] is front_scale
    assert run.model.embed_frequencies.shape == (3, 2, 16)  # 3 averaged members, 2 numeric
    # The report's first-layer magnitude per column counts each column's embedding rows too.
    names, values = _first_layer_magnitudes(tmp_path / "r")
    first = run.model.weights[0].detach().abs().sum(dim=(0, 2))
    assert names == ["x1", "x2", "colour"]
    np.testing.assert_allclose(values[0], float(first[[0, 5, 6, 7]].sum()), rtol=1e-5)
    frame = pd.read_csv(mixed_csv).drop(columns="label")
    loaded = fitwell.load_run(tmp_path / "r")
    np.testing.assert_array_equal(loaded.predict(frame), run.predict(frame))
    assert_same_predictions(loaded.predict_proba(frame), run.predict_proba(frame))


def test_resume_with_embeddings_is_bitwise_equal(tmp_path: Path, mixed_csv: Path) -> None:
    settings = {
        "data": mixed_csv,
        "target": "label",
        **SETTINGS,
        "restarts": 2,
        "numeric_embedding": "pbld",
        "front_scale": True,
    }
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 4, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_cli_flag_trains_and_predicts(mixed_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        "--numeric-embedding",
        "pbld",
        "--embedding-dim",
        "2",
        "--front-scale",
        "--hidden",
        "8",
        "--max-epochs",
        "2",
        "--out",
        str(out),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / runs.MODEL_META).read_text())
    assert meta["architecture"]["embedding_dim"] == 2
    res = run_cli("predict", str(out), str(mixed_csv))
    assert res.returncode == 0, res.stderr


def test_bad_settings_are_refused_with_a_suggestion() -> None:
    with pytest.raises(InputError, match="did you mean `pbld`"):
        build_config({"numeric_embedding": "pbd"})
    with pytest.raises(InputError, match="`embedding_dim` must be in"):
        build_config({"embedding_dim": 0})


def test_runs_saved_before_the_front_still_load() -> None:
    old = {"n_inputs": 4, "hidden": [8], "n_outputs": 2, "activation": "relu", "batch_norm": False}
    arch = Architecture.from_json(old)
    assert arch.numeric_embedding == "none" and not arch.front_scale
    assert Architecture.from_json(arch.to_json()) == arch
    with pytest.raises(InputError, match="impossible sizes"):
        Architecture.from_json({**old, "numeric_embedding": "pbld", "embedded": [4]})


def test_estimator_with_embeddings() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (np.sin(3 * x[:, 0]) > 0).astype(int)
    clf = FitwellClassifier(
        numeric_embedding="pbld", front_scale=True, hidden=(8,), max_epochs=3, ensemble=2
    )
    clf.fit(x, y)
    assert clf.model_.arch.first_layer_inputs == 3 + 3 * 3
    assert clf.predict_proba(x).shape == (200, 2)
    assert clf.zeroed_features_.tolist() == []


def test_evaluation_chunks_bound_the_embedded_rows() -> None:
    plain = Architecture(n_inputs=40, hidden=(32, 32), n_outputs=10)
    embedded = Architecture(
        n_inputs=40,
        hidden=(32, 32),
        n_outputs=10,
        numeric_embedding="pbld",
        embedded=tuple(range(40)),
    )
    # The widest tensor of the front (40 columns x 16 frequencies per row) sets the chunk size,
    # so a chunk's embedded rows stay about one cache's worth, whatever the table's length.
    rows = eval_chunk_rows(embedded, 3)
    assert rows < eval_chunk_rows(plain, 3)
    assert rows * 3 * front_width(embedded) <= max(1 << 17, 64 * 3 * front_width(embedded))
    assert model_bytes(embedded, 3, training=True, batch_size=64) > model_bytes(
        plain, 3, training=True, batch_size=64
    )
