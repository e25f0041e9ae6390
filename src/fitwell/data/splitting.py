"""Seeded three-way split (stratified for classification) and the sealed test split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from fitwell.errors import InputError

T = TypeVar("T")


def split_indices(
    n_rows: int,
    fractions: tuple[float, float, float],
    *,
    seed: int,
    stratify: np.ndarray | None = None,
    source: str = "data",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices for train, validation and test.

    Stratified splits keep class proportions in every split; they need at least one row of
    every class per split, and the error says which class is too small.
    """
    train_f, val_f, test_f = fractions
    n_test = int(round(n_rows * test_f))
    n_val = int(round(n_rows * val_f))
    if n_rows - n_test - n_val < 1 or n_val < 1 or n_test < 1:
        raise InputError(
            f"{source}: {n_rows} row(s) are too few for a {fractions} split; "
            "need at least one row in each of train, validation and test."
        )
    if stratify is not None:
        labels, counts = np.unique(stratify, return_counts=True)
        n_classes = len(labels)
        if min(n_test, n_val, n_rows - n_test - n_val) < n_classes:
            raise InputError(
                f"{source}: {n_rows} rows are too few to split {n_classes} classes "
                f"stratified by {fractions}."
            )
        if counts.min() < 3:
            small = labels[int(np.argmin(counts))]
            small = small.item() if isinstance(small, np.generic) else small
            raise InputError(
                f"{source}: class {small!r} has only {int(counts.min())} row(s); a stratified "
                "train/validation/test split needs at least 3 per class. Add rows or drop it."
            )
    idx = np.arange(n_rows)
    # Imported here: scikit-learn's model_selection costs ~80 MB resident, and `predict`,
    # which never splits, should not carry it (benchmarks/memory.py).
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(
        idx, test_size=n_test, random_state=seed, shuffle=True, stratify=stratify
    )
    strat_rest = stratify[rest] if stratify is not None else None
    train, val = train_test_split(
        rest, test_size=n_val, random_state=(seed + 1) % 2**32, shuffle=True, stratify=strat_rest
    )
    return np.sort(train), np.sort(val), np.sort(test)


class SealedTest(Generic[T]):
    """The test split, readable exactly once: after training and every model choice.

    Reading it twice is a programming error (it would let the test set steer a choice).
    """

    def __init__(self, loader: Callable[[], T], n_rows: int) -> None:
        self._loader: Callable[[], T] | None = loader
        self.n_rows = n_rows
        self.times_opened = 0

    @property
    def is_open(self) -> bool:
        return self.times_opened > 0

    def open(self) -> T:
        """Return the test data; a second call raises ``RuntimeError``."""
        if self._loader is None:
            raise RuntimeError("the sealed test split was already read once")
        loader, self._loader = self._loader, None
        self.times_opened += 1
        return loader()
