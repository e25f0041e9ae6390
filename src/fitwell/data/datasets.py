"""Built-in datasets. All ship inside installed packages or are generated locally: no downloads."""

from __future__ import annotations

import pandas as pd

from fitwell.config import BUILTIN_DATASETS
from fitwell.errors import InputError, did_you_mean


def load_builtin(name: str) -> tuple[pd.DataFrame, str]:
    """Return ``(frame, target_column)`` for a built-in dataset name."""
    if name in ("digits", "breast_cancer", "wine", "iris", "diabetes"):
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")(as_frame=True)
        frame = bunch.frame.copy()
        if name in ("breast_cancer", "wine", "iris"):
            # Class names read better than codes in reports and predictions.
            names = list(bunch.target_names)
            frame["target"] = [str(names[int(i)]) for i in frame["target"]]
        return frame, "target"
    if name == "penguins":
        import palmerpenguins

        return palmerpenguins.load_penguins(), "species"
    if name == "mnist1d":
        return _mnist1d(), "label"
    raise InputError(
        f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}."
        f"{did_you_mean(name, BUILTIN_DATASETS)}"
    )


def _mnist1d(num_samples: int = 5000, seed: int = 42) -> pd.DataFrame:
    """MNIST-1D generated locally (the published 4000/1000 split, concatenated).

    ``get_dataset()`` would try a download first; ``make_dataset`` only computes.
    """
    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype("float32")
    y = np.concatenate([data["y"], data["y_test"]]).astype("int64")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["label"] = y
    return frame


def mnist1d_arrays(num_samples: int, seed: int = 42) -> tuple[object, object]:
    """Larger generated MNIST-1D sets for throughput benchmarks: ``(X, y)`` as NumPy arrays."""
    frame = _mnist1d(num_samples=num_samples, seed=seed)
    return frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
