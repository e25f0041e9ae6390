"""`fitwell export`: the ONNX graph predicts what `fitwell predict` writes, from raw columns.

Each run kind is trained once (tiny networks, a few epochs), exported through the CLI, run with
onnxruntime on raw rows (missing numbers, missing and unseen categories, CSV missing markers)
and compared with the CSV `fitwell predict` writes for the same rows.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

import fitwell
from fitwell import export, onnx_graph
from fitwell.cli import main
from fitwell.data.preprocessing import ColumnSpec
from fitwell.errors import FitwellError, InputError
from fitwell.export import export_onnx, graph_feeds
from fitwell.predictor import load_run, model_from_state

TOLERANCE = 1e-5
TINY = {"max_epochs": 3, "hidden": (8,), "ensemble": 1}


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Numeric and text columns with missing values; targets depend on all of them."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n) * 20 + 50
    x2 = rng.exponential(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    size = rng.choice(["S", "M", "L"], size=n)
    signal = (x1 - 50) / 20 + np.log1p(x2) + (colour == "red") - (size == "S")
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x 2": x2,  # a name with a space: graph inputs are named after the columns
            "colour": colour,
            "size": size,
            "label": np.where(signal > 0.8, "yes", "no"),
            "price": 4.0 * signal + 10.0 + 0.1 * rng.normal(size=n),
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "x 2"] = np.nan
    frame.loc[rng.choice(n, 10, replace=False), "colour"] = np.nan
    return frame


def _raw_rows() -> pd.DataFrame:
    """Rows to predict: missing numbers, a missing and an unseen category, a CSV NA marker."""
    rows = _table(n=30, seed=1).drop(columns=["label", "price"])
    rows.loc[0, "x1"] = np.nan
    rows.loc[1, "colour"] = "purple"  # unseen in training: no category
    rows.loc[2, "colour"] = np.nan
    rows.loc[3, "size"] = "NA"  # read as missing by predict's CSV reader and by the graph
    rows.loc[4, ["x1", "x 2", "colour", "size"]] = [np.nan, np.nan, np.nan, "XXL"]
    return rows


def _new_rows() -> pd.DataFrame:
    """:func:`_raw_rows` as a CSV reader returns them (the NA marker read as missing), the way
    `fitwell predict` reads files."""
    return pd.read_csv(io.StringIO(_raw_rows().to_csv(index=False)))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-data")
    frame = _table()
    paths = {"classification": root / "cls.csv", "regression": root / "reg.csv"}
    frame.drop(columns=["price"]).to_csv(paths["classification"], index=False)
    frame.drop(columns=["label"]).to_csv(paths["regression"], index=False)
    paths["rows"] = root / "rows.csv"
    _raw_rows().to_csv(paths["rows"], index=False)
    return paths


RUNS: dict[str, dict[str, Any]] = {
    "single": {"target": "label", **TINY},
    "ensemble_pbld": {
        "target": "label",
        **TINY,
        "hidden": (8, 8),
        "ensemble": 3,
        "restarts": 3,
        "numeric_embedding": "pbld",
        "activation": "gelu",
    },
    "regression": {
        "target": "price",
        **TINY,
        "ensemble": 2,
        "restarts": 2,
        "scaling": "robust",
        "batch_norm": True,
        "activation": "selu",
    },
    # RealMLP's layers: NTK scaling folded into the weights, a learned activation shape, mish
    "ntk_learnable_mish": {
        "target": "label",
        **TINY,
        "ensemble": 2,
        "restarts": 2,
        "parametrization": "ntk",
        "learnable_activation": True,
        "activation": "mish",
        "lr": 0.04,
    },
    "regression_pbld": {
        "target": "price",
        **TINY,
        "numeric_embedding": "pbld",
        "activation": "elu",
        "scale": False,
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tables: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for name, settings in RUNS.items():
        task = "classification" if settings["target"] == "label" else "regression"
        fitwell.train(tables[task], out=root / name, seed=3, **settings)
        out[name] = root / name
    return out


def _cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _refused(result: tuple[int, str, str], *words: str) -> str:
    rc, _, err = result
    assert rc == 2, err
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    for w in words:
        assert w in err, (w, err)
    return err


def _onnx_outputs(model: Path, rows: pd.DataFrame, run_dir: Path, **kw: Any) -> dict:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = graph_feeds(load_run(run_dir).preprocessor, rows, **kw)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.mark.parametrize("name", list(RUNS))
def test_graph_predicts_what_predict_writes(
    name: str,
    runs: dict[str, Path],
    tables: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = runs[name]
    model = tmp_path / "model.onnx"
    rc, out, err = _cli(capsys, "export", run_dir, "--format", "onnx", "--out", model)
    assert rc == 0, err
    assert out.strip() == str(model)
    onnx.checker.check_model(onnx.load(model), full_check=True)
    predictions = tmp_path / "predictions.csv"
    assert _cli(capsys, "predict", run_dir, tables["rows"], "--out", predictions)[0] == 0
    expected = pd.read_csv(predictions)
    # the rows as pandas reads them (NaN for every missing cell) and as raw text: the graph
    # reads an empty string and the marker "NA" as missing, as predict reads the file
    parsed = pd.read_csv(tables["rows"])
    raw = pd.read_csv(tables["rows"], keep_default_na=False, na_values={"x1": [""], "x 2": [""]})
    assert parsed["size"].isna().any() and (raw["size"] == "NA").any()
    got = _onnx_outputs(model, parsed, run_dir)
    from_text = _onnx_outputs(model, raw, run_dir)
    for key, value in got.items():
        np.testing.assert_array_equal(from_text[key], value)
    if RUNS[name]["target"] == "label":
        proba = expected[[c for c in expected.columns if c.startswith("proba_")]].to_numpy()
        assert got["probabilities"].shape == proba.shape
        assert np.abs(got["probabilities"] - proba).max() <= TOLERANCE
        assert got["prediction"].tolist() == expected["prediction"].astype(str).tolist()
    else:
        values = expected["prediction"].to_numpy()
        assert values.std() > 1.0  # in the target's units, not standardized
        assert got["prediction"].shape == values.shape
        # relative to the target's size: the graph computes in float32 like the model
        assert np.abs(got["prediction"] - values).max() <= TOLERANCE * max(
            1.0, np.abs(values).max()
        )


# high-cardinality text columns: a code looked up in each member's learned table ----------------
SHOPS = [f"shop{i:02d}" for i in range(45)]  # above embed_categories_above (30): embedded


def _shop_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """An embedded column between numeric ones, a one-hot column after it, missing values."""
    rng = np.random.default_rng(seed)
    effect = dict(zip(SHOPS, np.random.default_rng(99).normal(size=len(SHOPS)), strict=True))
    shop = rng.choice(SHOPS, size=n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    signal = np.array([effect[s] for s in shop]) + x1 + (colour == "red")
    frame = pd.DataFrame(
        {
            "x1": x1,
            "shop": shop,
            "colour": colour,
            "x2": x2,
            "label": np.where(signal > 0.3, "yes", "no"),
            "price": 3.0 * signal + 20.0 + 0.1 * rng.normal(size=n),
        }
    )
    frame.loc[rng.choice(n, 15, replace=False), "shop"] = np.nan
    frame.loc[rng.choice(n, 15, replace=False), "x2"] = np.nan
    return frame


def _shop_rows() -> pd.DataFrame:
    """Every shop, then a missing, an unseen, an empty and a CSV-marker shop."""
    rows = _shop_table(n=len(SHOPS) + 4, seed=1).drop(columns=["label", "price"])
    rows["shop"] = [*SHOPS, None, "shop-new", "", "NA"]
    rows.loc[0, "x2"] = np.nan
    return rows


SHOP_RUNS: dict[str, dict[str, Any]] = {
    "classification": {"target": "label", **TINY, "ensemble": 3, "restarts": 3},
    "regression": {
        "target": "price",
        **TINY,
        "numeric_embedding": "pbld",  # periodic embeddings of x1, x2 before the shop's vectors
        "activation": "gelu",
    },
}


@pytest.mark.parametrize("name", list(SHOP_RUNS))
def test_embedded_text_column_predicts_what_predict_writes(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = SHOP_RUNS[name]
    data = tmp_path / "train.csv"
    _shop_table().drop(columns=["price" if name == "classification" else "label"]).to_csv(
        data, index=False
    )
    run = fitwell.train(data, out=tmp_path / "run", seed=3, **settings)
    assert [s.kind for s in run.preprocessor.columns] == [
        "numeric",
        "embedded",
        "categorical",
        "numeric",
    ]
    assert run.model.arch.categorical == (1,) and run.model.n_members == settings["ensemble"]
    model = tmp_path / "model.onnx"
    rc, _, err = _cli(capsys, "export", tmp_path / "run", "--out", model)
    assert rc == 0, err
    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    assert [c["kind"] for c in json.loads(meta["inputs"])][1] == "embedded"
    rows = tmp_path / "rows.csv"
    _shop_rows().to_csv(rows, index=False)
    predictions = tmp_path / "predictions.csv"
    assert _cli(capsys, "predict", tmp_path / "run", rows, "--out", predictions)[0] == 0
    expected = pd.read_csv(predictions)
    parsed = pd.read_csv(rows)  # "", "NA" and the missing shop all read as missing
    raw = pd.read_csv(rows, keep_default_na=False, na_values={"x1": [""], "x2": [""]})
    assert raw["shop"].tolist()[-4:] == ["", "shop-new", "", "NA"]
    got = _onnx_outputs(model, parsed, tmp_path / "run")
    from_text = _onnx_outputs(model, raw, tmp_path / "run")
    for key, value in got.items():
        np.testing.assert_array_equal(from_text[key], value)
    key = "probabilities" if name == "classification" else "prediction"
    if name == "classification":
        want = expected[[c for c in expected.columns if c.startswith("proba_")]].to_numpy()
        assert got["prediction"].tolist() == expected["prediction"].astype(str).tolist()
    else:
        want = expected["prediction"].to_numpy()
    assert got[key].shape == want.shape
    assert np.abs(got[key] - want).max() <= TOLERANCE
    # each shop reads its own row of the tables; missing and unseen values all read code 0
    first = _shop_rows().iloc[[0] * (len(SHOPS) + 4)].reset_index(drop=True)
    first["shop"] = [*SHOPS, None, "shop-new", "", "NA"]
    same = _onnx_outputs(model, first, tmp_path / "run")[key]
    assert np.ptp(same[: len(SHOPS)], axis=0).max() > 1e-3
    for row in same[-3:]:
        np.testing.assert_array_equal(row, same[-4])


def test_embedded_column_alone_and_refusals(tmp_path: Path) -> None:
    """A run whose only input is an embedded column (no raw inputs left for the first layer);
    an embedded category spelled like a missing value is refused, not exported wrong."""
    data = tmp_path / "shops.csv"
    _shop_table().loc[:, ["shop", "label"]].to_csv(data, index=False)
    run = fitwell.train(data, target="label", out=tmp_path / "run", **TINY)
    assert run.model.arch.categorical == (0,) and run.model.arch.n_inputs == 1
    model = export_onnx(run, tmp_path / "m.onnx")
    rows = _shop_rows()[["shop"]]
    got = _onnx_outputs(model, rows, tmp_path / "run")["probabilities"]
    np.testing.assert_allclose(got, run.predict_proba(rows), atol=TOLERANCE, rtol=0)
    run.preprocessor.columns[0].categories.insert(0, "")
    with pytest.raises(InputError, match="'shop' has the empty string as a category"):
        export_onnx(run, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_ensemble_graph_averages_every_member(runs: dict[str, Path], tmp_path: Path) -> None:
    """Three members in one graph, their class probabilities averaged (not one member's)."""
    run = load_run(runs["ensemble_pbld"])
    assert run.model.n_members == 3
    model = export_onnx(run, tmp_path / "all.onnx")
    rows = _new_rows()
    averaged = _onnx_outputs(model, rows, runs["ensemble_pbld"])["probabilities"]
    x = torch.as_tensor(run.preprocessor.transform(rows))
    members = []
    for k in range(3):
        single = model_from_state(run.model.arch, run.model.member_state(k)).eval()
        members.append(torch.softmax(single.predict_chunks(x)[0], dim=1).numpy())
    assert min(np.abs(averaged - m).max() for m in members) > TOLERANCE
    np.testing.assert_allclose(averaged, np.mean(members, axis=0), atol=TOLERANCE)


def test_graph_inputs_outputs_and_metadata(runs: dict[str, Path], tmp_path: Path) -> None:
    path = export_onnx(runs["single"], tmp_path / "m.onnx")
    model = onnx.load(path)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["x1", "x 2", "colour", "size"]
    assert inputs["x1"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["colour"].elem_type == onnx.TensorProto.STRING
    dims = [(d.dim_param, d.dim_value) for d in inputs["x1"].shape.dim]
    assert dims == [("N", 0), ("", 1)]  # dynamic batch, one column
    assert [o.name for o in model.graph.output] == ["prediction", "probabilities"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == ["no", "yes"]
    assert meta["task"] == "classification" and meta["target"] == "label"
    # any batch size, one row included
    one = _onnx_outputs(path, _new_rows().iloc[[4]], runs["single"])
    assert one["probabilities"].shape == (1, 2)
    np.testing.assert_allclose(one["probabilities"].sum(axis=1), 1.0, atol=1e-6)


def test_integer_classes_come_out_as_int64(tmp_path: Path) -> None:
    frame = _table(n=120)
    frame["grade"] = (frame["price"] > 10).astype(int) + 3  # classes 3 and 4
    path = tmp_path / "int.csv"
    frame.drop(columns=["label", "price"]).to_csv(path, index=False)
    run = fitwell.train(path, target="grade", out=tmp_path / "run", **TINY)
    model = export_onnx(run, tmp_path / "m.onnx")
    got = _onnx_outputs(model, _new_rows(), tmp_path / "run")
    assert got["prediction"].dtype == np.int64
    assert got["prediction"].tolist() == run.predict(_new_rows()).tolist()


def test_double_inputs_keep_large_values_exact(tmp_path: Path) -> None:
    """Timestamps: float32 cannot hold them to the second; `--numeric-type double` can."""
    rng = np.random.default_rng(0)
    n = 150
    stamp = 1.7e9 + rng.integers(0, 600, size=n).astype(float)
    frame = pd.DataFrame({"stamp": stamp, "label": np.where(stamp % 600 > 300, "late", "early")})
    path = tmp_path / "stamps.csv"
    frame.to_csv(path, index=False)
    run = fitwell.train(path, target="label", out=tmp_path / "run", **TINY)
    with pytest.warns(UserWarning, match="column\\(s\\) 'stamp' .* --numeric-type double"):
        export_onnx(run, tmp_path / "float.onnx")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"),
                 "--numeric-type", "double"]) == 0  # fmt: skip
    rows = frame.drop(columns=["label"]).head(40)
    got = _onnx_outputs(tmp_path / "m.onnx", rows, tmp_path / "run", numeric_type="double")
    assert onnx.load(tmp_path / "m.onnx").graph.input[0].type.tensor_type.elem_type == (
        onnx.TensorProto.DOUBLE
    )
    np.testing.assert_allclose(got["probabilities"], run.predict_proba(rows), atol=TOLERANCE)


def test_text_missing_markers_and_categories(tmp_path: Path) -> None:
    """Empty strings and CSV missing markers take the most frequent category; a category that
    happens to be spelled like a marker (possible from a DataFrame) stays itself."""
    spec = ColumnSpec("c", "categorical", "b", categories=["NA", "a", "b"])
    markers = onnx_graph.missing_markers(spec)
    assert "" in markers and "null" in markers and "NA" not in markers


def test_existing_file_is_replaced_whole(runs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    export_onnx(runs["single"], target)
    assert onnx.load(target).graph.input  # a whole model, not the old bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left
    plain = tmp_path.parent / f"{tmp_path.name}-plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


# errors ---------------------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_refuses_to_write_into_the_run(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs["single"]
    before = _files(run_dir)
    for target in (run_dir / "model.safetensors", run_dir / "model.onnx"):
        _refused(_cli(capsys, "export", run_dir, "--out", target), "run directory")
    assert _files(run_dir) == before


def test_refuses_bad_outputs_and_runs(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs["single"]
    _refused(_cli(capsys, "export", run_dir, "--out", tmp_path), "not a file name")
    _refused(_cli(capsys, "export", run_dir, "--out", ""), "not a file name")
    _refused(_cli(capsys, "export", run_dir, "--out", tmp_path / "no" / "m.onnx"), "does not exist")
    _refused(_cli(capsys, "export", tmp_path / "nothing", "--out", tmp_path / "m.onnx"), "nothing")
    damaged = tmp_path.parent / f"{tmp_path.name}-damaged"
    shutil.copytree(run_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    _refused(_cli(capsys, "export", damaged, "--out", tmp_path / "m.onnx"), str(damaged))
    with pytest.raises(SystemExit):  # argparse: an unknown format
        main(["export", str(run_dir), "--format", "pmml", "--out", str(tmp_path / "m")])
    with pytest.raises(InputError, match="numeric_type"):
        export_onnx(run_dir, tmp_path / "m.onnx", numeric_type="half")
    assert list(tmp_path.iterdir()) == []


def test_refuses_what_the_graph_cannot_compute(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = load_run(runs["single"])
    run.preprocessor.columns[2].kind = "hashed"  # a kind of column a later fitwell might add
    with pytest.raises(InputError, match="column 'colour' is of kind 'hashed'"):
        export_onnx(run, tmp_path / "m.onnx")

    run = load_run(runs["single"])
    run.model.register_buffer("extra_scale", torch.ones(3))
    with pytest.raises(InputError, match="extra_scale"):
        export_onnx(run, tmp_path / "m.onnx")

    run = load_run(runs["single"])
    run.preprocessor.columns[2].categories.append("")  # a level spelled like a missing value
    with pytest.raises(InputError, match="'colour' has the empty string as a category"):
        export_onnx(run, tmp_path / "m.onnx")

    run = load_run(runs["single"])
    monkeypatch.setattr(export, "MAX_WEIGHT_BYTES", 100)
    with pytest.raises(InputError, match="GiB, beyond the 2 GiB one ONNX file holds"):
        export_onnx(run, tmp_path / "m.onnx")
    monkeypatch.undo()

    run = load_run(runs["single"])
    run.preprocessor.columns[0].name = "prediction"
    with pytest.raises(InputError, match="'prediction' has the name of a graph output"):
        export_onnx(run, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_graph_that_disagrees_is_never_written(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_graph, "BATCH_NORM_EPS", 10.0)  # a wrong constant in the graph
    with pytest.raises(FitwellError, match="disagrees with fitwell's predictions"):
        export_onnx(runs["regression"], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_without_the_extra_one_line_says_what_to_install(
    module: str,
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # its import fails
    monkeypatch.delitem(sys.modules, "fitwell.onnx_graph", raising=False)  # as in a new process
    err = _refused(_cli(capsys, "export", runs["single"], "--out", tmp_path / "m.onnx"))
    assert "pip install 'fitwell[onnx]'" in err and f"{module} is not installed" in err
    assert list(tmp_path.iterdir()) == []
