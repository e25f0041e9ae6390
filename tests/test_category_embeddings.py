"""Learned embeddings of high-cardinality text columns: the codes, the per-member tables inside a
population, training that learns a per-category signal, predict and resume replaying it, and the
places that read the first layer (L1 groups, zeroed columns, the linear reference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fitwell import api, runs
from fitwell.category_embeddings import embedding_dim
from fitwell.data.preprocessing import MIN_CATEGORY_COUNT, Preprocessor
from fitwell.diagnosis.context import linear_reference
from fitwell.errors import InputError
from fitwell.finish import l1_zeroed_features
from fitwell.models import Architecture, PopulationMLP
from fitwell.resume import resume
from tests.conftest import run_cli
from tests.replay import assert_same_predictions
from tests.test_resume import _interrupted, assert_same_run

N_SHOPS = 200


def _table(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """A 200-category column whose hidden per-category value carries most of the target."""
    rng = np.random.default_rng(seed)
    value = np.random.default_rng(99).normal(size=N_SHOPS)  # the same hidden values every seed
    shop = rng.integers(0, N_SHOPS, size=n)
    x1 = rng.normal(size=n)
    y = 2.0 * value[shop] + 0.5 * x1 + 0.2 * rng.normal(size=n)
    return pd.DataFrame(
        {
            "shop": [f"shop{s:03d}" for s in shop],
            "x1": x1,
            "colour": rng.choice(["red", "green", "blue"], size=n),
            "y": y,
        }
    )


@pytest.fixture
def shops_csv(tmp_path: Path) -> Path:
    path = tmp_path / "shops.csv"
    _table().to_csv(path, index=False)
    return path


SETTINGS: dict[str, Any] = dict(
    target="y", hidden=(32, 32), max_epochs=25, patience=5, batch_size=64, seed=1
)


# ----------------------------------------------------------------------------- preprocessing
def test_codes_for_known_missing_and_unknown_values() -> None:
    seen = [f"c{i:02d}" for i in range(40)]
    frame = pd.DataFrame({"c": [*seen, *seen, "once", None]})
    pre = Preprocessor.fit(frame, embed_above=30)
    spec = pre.columns[0]
    assert spec.kind == "embedded" and spec.encoded_names == ["c"]
    assert MIN_CATEGORY_COUNT == 1 and spec.categories == sorted([*seen, "once"])
    assert pre.embedded_inputs() == [(0, 42)]
    new = pd.DataFrame({"c": ["c00", "once", "c39", None, "never seen", "c05"]})
    codes = pre.transform(new)
    assert codes.dtype == np.float32 and codes.shape == (6, 1)
    assert codes[:, 0].tolist() == [1, 41, 40, 0, 0, 6]
    assert pre.unknown_categories(new) == {"c": 1}  # "never seen"; missing is not counted


@pytest.mark.parametrize(
    ("embed_above", "kind"),
    [
        (30, "embedded"),
        (40, "categorical"),
        (41, "categorical"),
        (0, "categorical"),
        (-1, "categorical"),
        (39, "embedded"),
    ],
)
def test_threshold_counts_distinct_training_values(embed_above: int, kind: str) -> None:
    frame = pd.DataFrame({"c": [f"v{i}" for i in range(40)] * 3})  # 40 distinct values
    assert Preprocessor.fit(frame, embed_above=embed_above).columns[0].kind == kind


def test_preprocessor_round_trips_through_json() -> None:
    frame = _table(300)
    pre = Preprocessor.fit(frame.drop(columns="y"), embed_above=30)
    again = Preprocessor.from_json(json.loads(json.dumps(pre.to_json())))
    assert again == pre
    probe = frame.drop(columns="y").head(50).copy()
    probe.loc[0, "shop"] = "a shop never seen"
    np.testing.assert_array_equal(again.transform(probe), pre.transform(probe))
    assert pre.encoded_names[:1] == ["shop"] and "colour=red" in pre.encoded_names


@pytest.mark.parametrize(("n", "expected"), [(2, 2), (10, 6), (200, 31), (10**7, 600)])
def test_embedding_width_is_fastais_rule(n: int, expected: int) -> None:
    assert embedding_dim(n) == expected == min(600, round(1.6 * n**0.56))


# --------------------------------------------------------------------------------- the model
ARCH = Architecture(
    n_inputs=5,
    hidden=(16,),
    n_outputs=2,
    categorical=(1, 3),
    category_sizes=(7, 4),
    category_dims=(3, 2),
)


def _rows(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    x[:, 1] = torch.randint(0, 7, (n,), generator=g).float()
    x[:, 3] = torch.randint(0, 4, (n,), generator=g).float()
    return x


def test_first_layer_reads_the_other_inputs_then_each_columns_embedding() -> None:
    assert ARCH.first_layer_inputs == 5 - 2 + 3 + 2
    assert ARCH.first_layer_sources == [0, 2, 4, 1, 1, 1, 3, 3]
    assert Architecture.from_json(json.loads(json.dumps(ARCH.to_json()))) == ARCH


def test_each_member_has_its_own_tables_and_equals_itself_alone() -> None:
    pop = PopulationMLP(ARCH, 3)
    pop.initialize([1, 2, 3], init="auto", init_scale=1.0, bias_init=0.0)
    tables = pop.state_dict()["category_embedding_0"]
    assert tables.shape == (3, 7, 3) and not torch.equal(tables[0], tables[1])
    x = _rows(40)
    pop.eval()
    with torch.no_grad():
        shared = pop(x)  # [N, F]: every member reads the same rows
        batched = pop(x.unsqueeze(0).expand(3, -1, -1).contiguous())
        for k in range(3):
            alone = PopulationMLP(ARCH, 1)
            alone.load_state_dict(pop.member_state(k))
            torch.testing.assert_close(alone(x)[0], shared[k])
            torch.testing.assert_close(batched[k], shared[k])
            torch.testing.assert_close(pop._member_forward(x, k), shared[k])


def test_a_members_loss_trains_only_its_own_table_rows() -> None:
    pop = PopulationMLP(ARCH, 2)
    pop.initialize([1, 2], init="auto", init_scale=1.0, bias_init=0.0)
    x = _rows(10)
    x[:, 1] = 2.0  # every row has code 2 in the first embedded column
    pop(x.unsqueeze(0).expand(2, -1, -1).contiguous())[0].sum().backward()
    grad = pop.state_dict(keep_vars=True)["category_embedding_0"].grad
    assert grad is not None
    assert grad[1].abs().sum() == 0  # member 1's table: untouched by member 0's loss
    used = grad[0].abs().sum(dim=1) > 0
    assert used.tolist() == [False, False, True, False, False, False, False]


def test_keep_members_slices_the_tables() -> None:
    pop = PopulationMLP(ARCH, 3)
    pop.initialize([1, 2, 3], init="auto", init_scale=1.0, bias_init=0.0)
    before = pop.state_dict()["category_embedding_1"].clone()
    pop.keep_members(torch.tensor([0, 2]))
    torch.testing.assert_close(pop.state_dict()["category_embedding_1"], before[[0, 2]])


# ------------------------------------------------------------------------- training and runs
def test_embeddings_learn_the_per_category_signal_and_predict_replays(
    tmp_path: Path, shops_csv: Path
) -> None:
    run = api.train(shops_csv, out=tmp_path / "run", **SETTINGS)
    arch = run.model.arch
    assert arch.categorical == (0,)
    assert arch.category_dims == (embedding_dim(arch.category_sizes[0]),)
    # Only shop carries most of the variance (x1 explains ~6%): a model that ignored shop, or read
    # its code as a number, would stay near r2 0.06; the trivial baseline is 0.
    assert run.metrics["test_score"] > 0.8
    # The saved run predicts the same, and an unknown or missing shop is no error.
    frame = _table(40, seed=5).drop(columns="y")
    frame.loc[0, "shop"] = "a brand new shop"
    frame.loc[1, "shop"] = None
    loaded = api.load_run(tmp_path / "run")
    assert_same_predictions(loaded.predict(frame), run.predict(frame))
    assert np.isfinite(loaded.predict(frame)).all()
    saved = json.loads((tmp_path / "run" / runs.MODEL_META).read_text())
    assert Preprocessor.from_json(saved["preprocessing"]) == run.preprocessor
    # The report's first-layer magnitude per column counts the embedding's rows for shop.
    from fitwell.report.build import _first_layer_magnitudes

    magnitudes = _first_layer_magnitudes(tmp_path / "run")
    assert magnitudes is not None
    names, values = magnitudes
    assert names == ["shop", "x1", "colour"]
    first = run.model.state_dict()["weights.0"].abs().sum(dim=(0, 2))
    assert values[0] == pytest.approx(float(first[-arch.category_dims[0] :].sum()), rel=1e-5)


def test_below_the_threshold_the_column_stays_one_hot(shops_csv: Path) -> None:
    run = api.train(shops_csv, **{**SETTINGS, "max_epochs": 2, "embed_categories_above": 500})
    assert run.model.arch.categorical == ()
    names = run.preprocessor.encoded_names
    assert "shop" not in names and sum(n.startswith("shop=") for n in names) > N_SHOPS - 5


def test_cli_predict_with_an_unknown_category(tmp_path: Path, shops_csv: Path) -> None:
    res = run_cli(
        "train",
        str(shops_csv),
        "--target",
        "y",
        "--out",
        str(tmp_path / "r"),
        "--hidden",
        "16",
        "--max-epochs",
        "2",
        "--embed-categories-above",
        "30",
    )
    assert res.returncode == 0, res.stderr
    rows = _table(5, seed=3).drop(columns="y")
    rows.loc[0, "shop"] = "unheard of"
    rows.to_csv(tmp_path / "new.csv", index=False)
    res = run_cli("predict", str(tmp_path / "r"), str(tmp_path / "new.csv"))
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 6  # header + 5 predictions
    assert "'shop' has 1 value(s) unseen in training" in res.stderr
    bad = run_cli("train", str(shops_csv), "--target", "y", "--embed-categories-above", "many")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_resume_with_embeddings_is_bitwise_equal(tmp_path: Path, shops_csv: Path) -> None:
    settings = {"data": shops_csv, **SETTINGS, "max_epochs": 6, "hidden": (8,)}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 3, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_inconsistent_run_files_are_refused(tmp_path: Path, shops_csv: Path) -> None:
    api.train(shops_csv, out=tmp_path / "run", **{**SETTINGS, "max_epochs": 1, "hidden": (8,)})
    meta_path = tmp_path / "run" / runs.MODEL_META
    meta = json.loads(meta_path.read_text())
    # One category fewer in the preprocessing than the table has codes: the shapes of the
    # weights still match model.json's architecture, only the two descriptions disagree.
    meta["preprocessing"]["columns"][0]["categories"].pop()
    meta_path.write_text(json.dumps(meta))
    runs.seal_run(tmp_path / "run")  # checksums that vouch for the inconsistent files
    with pytest.raises(InputError, match="do not match the architecture"):
        api.load_run(tmp_path / "run")


# ------------------------------------------------------- what reads the first layer by column
def test_an_embedded_column_is_one_group_of_its_embedding_rows(shops_csv: Path) -> None:
    cfg = api.make_config(data=str(shops_csv), **SETTINGS)
    prepared = api.load_and_prepare(cfg)
    groups = api.first_layer_groups(cfg, prepared)
    arch = api.architecture(cfg, prepared, (8,))
    assert len(groups) == arch.first_layer_inputs
    columns = list(prepared.preprocessor.encoded_groups())
    shop = columns.index("shop")
    assert groups.count(shop) == arch.category_dims[0]
    # Zeroing exactly the embedding's rows switches the column off, and nothing else.
    w = torch.ones(arch.first_layer_inputs, 4)
    w[[i for i, g in enumerate(groups) if g == shop]] = 0.0
    off, _ = l1_zeroed_features(w, prepared.preprocessor)
    assert off == ["shop"]


def test_linear_reference_reads_codes_one_hot() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=300)
    x = np.column_stack([rng.normal(size=300), codes]).astype(np.float32)
    y = (np.sin(codes * 1.7) + 0.1 * rng.normal(size=300)).astype(np.float32)
    one_hot = np.column_stack([x[:, :1], np.eye(6)[codes]])
    got = linear_reference("regression", x[:200], y[:200], x[200:], y[200:], codes=[(1, 6)])
    want = linear_reference("regression", one_hot[:200], y[:200], one_hot[200:], y[200:])
    assert got == pytest.approx(want)
    as_number = linear_reference("regression", x[:200], y[:200], x[200:], y[200:])
    assert got[1] is not None and as_number[1] is not None and got[1] > as_number[1] + 0.3
