"""From a validated table to model-ready arrays: task, target encoding, split, preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fitwell.data.loading import Table
from fitwell.data.preprocessing import Preprocessor
from fitwell.data.splitting import SealedTest, split_indices
from fitwell.errors import InputError
from fitwell.heap import trim_heap

MAX_CLASSES_FOR_INTEGER_TARGET = 30


def infer_task(target: pd.Series) -> str:
    """Classification for text, bool and small-cardinality integer targets; else regression."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.to_numpy(dtype=float)
    integral = bool(np.all(np.equal(np.mod(values, 1), 0)))
    n_unique = int(pd.Series(values).nunique())
    if integral and n_unique <= MAX_CLASSES_FOR_INTEGER_TARGET:
        return "classification"
    return "regression"


@dataclass
class TargetEncoder:
    """Class labels <-> indices, or the standardization of a regression target."""

    task: str
    classes: list[Any] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, task: str, target: pd.Series, *, source: str, column: str) -> TargetEncoder:
        if task == "classification":
            values = target.to_numpy()
            labels = pd.unique(pd.Series(values))
            if len(labels) < 2:
                raise InputError(
                    f"{source}: target column {column!r} has a single class {_plain(labels[0])!r}; "
                    "classification needs at least two."
                )
            try:
                classes = sorted(labels.tolist())
            except TypeError:
                classes = sorted(labels.tolist(), key=str)
            return cls(task=task, classes=[_plain(c) for c in classes])
        try:
            values = target.to_numpy(dtype=float)
        except (TypeError, ValueError):
            raise InputError(
                f"{source}: target column {column!r} is not numeric; use --task classification."
            ) from None
        std = float(values.std())
        if not np.isfinite(values).all():
            raise InputError(f"{source}: target column {column!r} has non-finite values.")
        return cls(task=task, mean=float(values.mean()), std=std if std > 1e-12 else 1.0)

    def encode(self, target: pd.Series) -> np.ndarray:
        if self.task == "classification":
            lookup = {c: i for i, c in enumerate(self.classes)}
            return np.array([lookup[_plain(v)] for v in target.to_numpy()], dtype=np.int64)
        return ((target.to_numpy(dtype=float) - self.mean) / self.std).astype(np.float32)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Class indices -> labels, or standardized predictions -> original units."""
        if self.task == "classification":
            return np.asarray(self.classes, dtype=object)[outputs]
        return outputs * self.std + self.mean

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "classes": self.classes, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetEncoder:
        return cls(
            task=str(data["task"]),
            classes=list(data.get("classes", [])),
            mean=float(data.get("mean", 0.0)),
            std=float(data.get("std", 1.0)),
        )


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python values, so labels survive JSON unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class PreparedData:
    """Train and validation arrays, plus the sealed test split and what encodes them."""

    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    test: SealedTest[tuple[np.ndarray, np.ndarray]]
    preprocessor: Preprocessor
    target_encoder: TargetEncoder
    target: str
    source: str
    train_test_duplicates: int = 0
    # Sample weights of each split (``weight_column``), or None: every row weighs 1. The test
    # split's weights are not sealed: without its rows and labels they tell nothing.
    w_train: np.ndarray | None = None
    w_val: np.ndarray | None = None
    w_test: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def summary(self) -> dict[str, Any]:
        """Rows per split and class balance, for the run record."""
        out: dict[str, Any] = {
            "source": self.source,
            "target": self.target,
            "task": self.task,
            "rows": {
                "train": int(len(self.y_train)),
                "val": int(len(self.y_val)),
                "test": int(self.test.n_rows),
            },
            "input_columns": self.preprocessor.input_columns,
            "encoded_features": int(self.n_features),
            "train_test_duplicate_rows": int(self.train_test_duplicates),
        }
        if self.task == "classification":
            counts = np.bincount(self.y_train, minlength=len(self.target_encoder.classes))
            out["class_balance_train"] = {
                str(c): int(n) for c, n in zip(self.target_encoder.classes, counts, strict=True)
            }
        return out


# Odd 64-bit multipliers, one per column position, fixed so row hashes are reproducible.
_HASH_MULTIPLIERS = np.random.default_rng(0x5EED).integers(
    0, 2**63, size=4096, dtype=np.uint64
) * np.uint64(2) + np.uint64(1)


def _hashable_numeric(frame: pd.DataFrame) -> bool:
    """Plain numeric columns whose values float64 tells apart (no integers beyond 2**53, e.g.
    64-bit ids), so rows can be matched by their float64 bit patterns."""
    if len(frame.columns) > len(_HASH_MULTIPLIERS) or not all(
        pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_complex_dtype(t)
        for t in frame.dtypes
    ):
        return False
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_integer_dtype(column.dtype) and len(column):
            if float(column.abs().max()) >= 2.0**53:
                return False
    return True


def _column_bits(column: pd.Series, index: np.ndarray | None) -> np.ndarray:
    """One column's float64 bit patterns (uint64), -0.0 read as 0.0 and every NaN as one NaN."""
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    values = (values if index is None else values[index]) + 0.0  # a copy; -0.0 -> 0.0
    if not np.isfinite(values.sum()):
        values[np.isnan(values)] = np.nan
    return values.view(np.uint64)


def _row_bits(frame: pd.DataFrame, index: np.ndarray) -> np.ndarray:
    """The bit patterns ``[len(index), columns]`` of a few rows, to confirm hash matches."""
    return np.stack([_column_bits(frame[c], index) for c in frame.columns], axis=1)


def _row_hashes(frame: pd.DataFrame, index: np.ndarray | None) -> np.ndarray:
    """A 64-bit multiply-add hash of each row's bit patterns, one column at a time (so no copy
    of the whole table is made); wraps modulo 2**64."""
    n = len(frame) if index is None else len(index)
    hashes = np.zeros(n, dtype=np.uint64)
    for j, name in enumerate(frame.columns):
        bits = _column_bits(frame[name], index)
        bits ^= bits >> np.uint64(32)  # sign and exponent reach the low bits
        bits *= _HASH_MULTIPLIERS[j]
        hashes += bits
    return hashes


def count_rows_seen(
    rows: pd.DataFrame, seen: pd.DataFrame, *, seen_index: np.ndarray | None = None
) -> int:
    """How many of ``rows`` (e.g. the test split) also occur, value for value, in ``seen``
    (``seen_index``: the positions of ``seen`` to look in, default all).

    Numeric frames (the common case) are matched by a 64-bit multiply-add hash of each row's bit
    patterns, and every hash match is then confirmed by comparing the rows themselves, so the
    count is exact. That takes a few vectorized passes, one column at a time: ~5x faster than
    pandas' per-column hashing on the 64-column digits table. Other frames use
    :func:`pandas.util.hash_pandas_object`.
    """
    positions = np.arange(len(seen)) if seen_index is None else np.asarray(seen_index)
    if not (_hashable_numeric(rows) and _hashable_numeric(seen)) or len(positions) == 0:
        subset = seen if seen_index is None else seen.iloc[positions]
        hashes = pd.util.hash_pandas_object(rows, index=False).to_numpy()
        seen_hashes = pd.util.hash_pandas_object(subset, index=False).to_numpy()
        return int(np.isin(hashes, seen_hashes).sum())
    hashes, seen_hashes = _row_hashes(rows, None), _row_hashes(seen, seen_index)
    order = np.argsort(seen_hashes, kind="stable")
    sorted_hashes = seen_hashes[order]
    first = np.searchsorted(sorted_hashes, hashes).clip(max=len(sorted_hashes) - 1)
    candidates = np.flatnonzero(sorted_hashes[first] == hashes)
    first = first[candidates]
    if len(candidates) == 0:
        return 0
    confirmed = (_row_bits(rows, candidates) == _row_bits(seen, positions[order[first]])).all(
        axis=1
    )
    count = int(confirmed.sum())
    # A row whose hash matched a different row first (a hash collision): check every seen row
    # with that hash. Rare, so a plain loop.
    for i, start in zip(candidates[~confirmed], first[~confirmed], strict=True):
        stop = np.searchsorted(sorted_hashes, hashes[i], side="right")
        mine = _row_bits(rows, np.array([i]))
        others = _row_bits(seen, positions[order[start:stop]])
        count += bool((others == mine).all(axis=1).any())
    return count


def prepare(
    table: Table,
    *,
    task: str,
    split: tuple[float, float, float],
    seed: int,
    scale: bool,
    release: bool = False,
    scaling: str = "standard",
    embed_above: int = 0,
) -> PreparedData:
    """Infer the task, encode the target, split the rows and fit preprocessing on train rows.

    ``release``: the table's rows are handed over (``table.frame`` is left empty), so that their
    memory goes back column by column as the encoded splits fill; for callers that own the table.
    ``embed_above``: text columns with more distinct training values become one integer-code
    input for a learned embedding (:class:`Preprocessor`); 0 or less: all one-hot.
    """
    if table.target is None:
        raise InputError(f"{table.source}: no target column given; use `--target COLUMN`.")
    frame = table.frame.reset_index(drop=True)
    target = frame[table.target]
    features = frame.drop(columns=[table.target])
    resolved = infer_task(target) if task == "auto" else task
    encoder = TargetEncoder.fit(resolved, target, source=table.source, column=table.target)
    y_all = encoder.encode(target)
    stratify = y_all if resolved == "classification" else None
    if stratify is not None:
        counts = np.bincount(y_all, minlength=len(encoder.classes))
        if counts.min() < 3:
            small = encoder.classes[int(np.argmin(counts))]
            row = int(np.flatnonzero(y_all == int(np.argmin(counts)))[0])
            raise InputError(
                f"{table.source}: target column {table.target!r}: class {small!r} has only "
                f"{int(counts.min())} row(s) (first at data row {row}); a stratified "
                "train/validation/test split needs at least 3 per class. Add rows or drop it."
            )
    train_idx, val_idx, test_idx = split_indices(
        len(frame), split, seed=seed, stratify=stratify, source=table.source
    )
    duplicates = count_rows_seen(features.iloc[test_idx], features, seen_index=train_idx)
    pre = Preprocessor.fit(
        features, scale=scale, rows=train_idx, scaling=scaling, embed_above=embed_above
    )
    if release:  # nothing else holds the rows now: each column goes once it is encoded
        table.frame = table.frame.iloc[:0]
        del frame
    # Column by column from the one frame: no copy of the table per split. The test rows are
    # encoded now (with the training rows' statistics) but stay sealed until the end.
    x_train, x_val, x_test = pre.transform_splits(
        features, [train_idx, val_idx, test_idx], source=table.source, release=release
    )
    del features
    trim_heap()  # pandas' per-column temporaries leave free pages behind; hand them back
    y_test = y_all[test_idx]
    weights = table.weights
    if weights is not None:
        for name, idx in (("training", train_idx), ("validation", val_idx)):
            if not (weights[idx] > 0).any():
                raise InputError(
                    f"{table.source}: every {name} row weighs 0 in the weight column; give more "
                    "rows a weight above 0 or change the split."
                )

    def load_test() -> tuple[np.ndarray, np.ndarray]:
        return x_test, y_test

    return PreparedData(
        task=resolved,
        x_train=x_train,
        y_train=y_all[train_idx],
        x_val=x_val,
        y_val=y_all[val_idx],
        test=SealedTest(load_test, n_rows=len(test_idx)),
        preprocessor=pre,
        target_encoder=encoder,
        target=table.target,
        source=table.source,
        train_test_duplicates=duplicates,
        w_train=None if weights is None else weights[train_idx],
        w_val=None if weights is None else weights[val_idx],
        w_test=None if weights is None else weights[test_idx],
    )
