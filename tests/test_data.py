"""Loading, task inference, preprocessing on train rows only, and the sealed split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitwell.data import Preprocessor, SealedTest, load_table, prepare, split_indices
from fitwell.data.preparation import count_rows_seen, infer_task
from fitwell.errors import InputError


def test_task_inference():
    assert infer_task(pd.Series(["a", "b", "a"])) == "classification"
    assert infer_task(pd.Series([0, 1, 2, 1])) == "classification"
    assert infer_task(pd.Series([True, False])) == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 50))) == "regression"
    assert infer_task(pd.Series(np.arange(100))) == "regression"  # many distinct integers


def test_preprocessing_is_fitted_on_training_rows_only():
    from fitwell.data.loading import Table

    x = np.arange(100, dtype=float) ** 2  # skewed: train, val and test means all differ
    x[::7] = np.nan
    frame = pd.DataFrame({"x": x, "y": [0, 1] * 50})
    split = (0.6, 0.2, 0.2)
    prepared = prepare(Table(frame, "y", "t"), task="auto", split=split, seed=0, scale=True)
    train_idx, _, _ = split_indices(100, split, seed=0, stratify=frame["y"].to_numpy())
    train_x = frame["x"].iloc[train_idx]
    spec = prepared.preprocessor.columns[0]
    assert spec.fill == pytest.approx(train_x.median())  # imputation value from train rows
    assert spec.mean == pytest.approx(train_x.fillna(train_x.median()).mean())
    assert spec.mean != pytest.approx(frame["x"].fillna(frame["x"].median()).mean())
    # Train features are standardized with train statistics: mean 0, std 1 exactly.
    assert prepared.x_train[:, 0].mean() == pytest.approx(0.0, abs=1e-5)
    assert prepared.x_train[:, 0].std() == pytest.approx(1.0, abs=1e-4)


def test_imputation_and_one_hot_replay_with_unknown_categories():
    train = pd.DataFrame({"num": [1.0, np.nan, 3.0, 5.0], "cat": ["a", "b", None, "a"]})
    pre = Preprocessor.fit(train, scale=False)
    assert pre.encoded_names == ["num", "cat=a", "cat=b"]
    new = pd.DataFrame({"cat": ["b", "zzz", None], "num": [np.nan, 2.0, 4.0], "extra": [1, 2, 3]})
    out = pre.transform(new)
    np.testing.assert_array_equal(out[:, 0], [3.0, 2.0, 4.0])  # median of 1, 3, 5 fills NaN
    np.testing.assert_array_equal(out[:, 1:], [[0, 1], [0, 0], [1, 0]])  # unknown -> zeros
    assert pre.unknown_categories(new) == {"cat": 1}
    again = Preprocessor.from_json(pre.to_json())
    np.testing.assert_array_equal(again.transform(new), out)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=30, max_value=400),
    n_classes=st.integers(min_value=2, max_value=5),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_split_is_a_stratified_partition(n: int, n_classes: int, seed: int):
    labels = np.arange(n) % n_classes
    if round(n * 0.15) < n_classes:  # too few rows to put every class in every split
        with pytest.raises(InputError, match="too few"):
            split_indices(n, (0.7, 0.15, 0.15), seed=seed, stratify=labels)
        return
    train, val, test = split_indices(n, (0.7, 0.15, 0.15), seed=seed, stratify=labels)
    all_rows = np.concatenate([train, val, test])
    assert len(all_rows) == n and len(np.unique(all_rows)) == n  # disjoint and complete
    for part in (train, val, test):
        assert set(labels[part]) == set(range(n_classes))  # every class in every split
    again = split_indices(n, (0.7, 0.15, 0.15), seed=seed, stratify=labels)
    for a, b in zip((train, val, test), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sealed_test_opens_once():
    calls = []
    sealed = SealedTest(lambda: calls.append(1) or "data", n_rows=3)
    assert sealed.open() == "data"
    with pytest.raises(RuntimeError, match="already read"):
        sealed.open()
    assert calls == [1] and sealed.times_opened == 1


@pytest.mark.parametrize("name", ["iris", "wine", "penguins", "diabetes"])
def test_builtin_datasets_load_offline(name: str):
    table = load_table(dataset=name)
    assert len(table.frame) > 100 and table.target in table.frame.columns


def _rows_seen_by_pandas(rows: pd.DataFrame, seen: pd.DataFrame) -> int:
    hashes = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    return int(np.isin(hashes, pd.util.hash_pandas_object(seen, index=False).to_numpy()).sum())


@settings(max_examples=40, deadline=None)
@given(
    n_seen=st.integers(1, 60),
    n_rows=st.integers(1, 40),
    n_cols=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_rows_seen_counts_exact_copies(n_seen: int, n_rows: int, n_cols: int, seed: int):
    """Small integer values make many exact copies; the count matches pandas' row hashing."""
    rng = np.random.default_rng(seed)
    seen = pd.DataFrame(rng.integers(0, 3, (n_seen, n_cols)).astype(float))
    rows = pd.DataFrame(rng.integers(0, 3, (n_rows, n_cols)).astype(float))
    rows.iloc[::3] = np.nan if seed % 2 else -0.0  # NaN rows and negative zeros count too
    seen.iloc[::4] = np.nan if seed % 2 else 0.0
    expected = sum(
        any(
            all((a == b) or (np.isnan(a) and np.isnan(b)) for a, b in zip(r, s, strict=True))
            for s in seen.itertuples(index=False)
        )
        for r in rows.itertuples(index=False)
    )
    assert count_rows_seen(rows, seen) == expected
    # The seen rows picked out of a larger frame by position (as prepare does for train rows).
    extra = pd.DataFrame(rng.integers(3, 5, (n_seen, n_cols)).astype(float))
    mixed = pd.concat([extra, seen], ignore_index=True)
    order = rng.permutation(len(mixed))
    mixed = mixed.iloc[order].reset_index(drop=True)
    seen_at = np.flatnonzero(order >= n_seen)
    assert count_rows_seen(rows, mixed, seen_index=seen_at) == expected
    if not rows.isna().any().any():  # an integer column matches equal float values
        assert count_rows_seen(rows.astype({0: "int64"}), seen) == expected


def test_rows_seen_survives_hash_collisions(monkeypatch: pytest.MonkeyPatch):
    """Every row hashing alike must still give the exact count: matches are confirmed."""
    from fitwell.data import preparation

    monkeypatch.setattr(
        preparation,
        "_row_hashes",
        lambda frame, index: np.zeros(len(frame) if index is None else len(index), np.uint64),
    )
    seen = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 5.0, 6.0]})
    rows = pd.DataFrame({"a": [3.0, 1.0, 9.0, 2.0], "b": [6.0, 1.0, 9.0, 5.0]})
    assert count_rows_seen(rows, seen) == 2  # (3, 6) and (2, 5); (1, 1) and (9, 9) are new


def test_rows_seen_with_text_columns_uses_pandas_hashing():
    seen = pd.DataFrame({"a": ["x", "y", "z"], "b": [1, 2, 3]})
    rows = pd.DataFrame({"a": ["y", "y", "q"], "b": [2, 3, 1]})
    assert count_rows_seen(rows, seen) == _rows_seen_by_pandas(rows, seen) == 1


def test_rows_seen_keeps_large_integer_ids_apart():
    """2**60 and 2**60 + 1 are one float64: such columns are compared as integers."""
    seen = pd.DataFrame({"id": np.array([2**60, 7], dtype=np.int64), "x": [1.0, 2.0]})
    rows = pd.DataFrame({"id": np.array([2**60 + 1, 2**60], dtype=np.int64), "x": [1.0, 1.0]})
    assert count_rows_seen(rows, seen) == 1
