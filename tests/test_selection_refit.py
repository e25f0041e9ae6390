"""The relaxed refit: the saved model reads exactly the columns the path chose, across seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fitwell.api import train
from fitwell.config import build_config
from fitwell.selection import (
    REFIT_OFF_WEIGHT,
    PathPoint,
    SelectionPath,
    select_features,
)


def _weak_table(path: Path, n: int = 1000) -> Path:
    """Two strong columns, one weak but real (a third of their weight), three pure noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6))
    z = x[:, 0] - x[:, 1] + 0.35 * x[:, 2] + 0.3 * rng.normal(size=n)
    names = ["s0", "s1", "weak", "n0", "n1", "n2"]
    frame = pd.DataFrame({c: x[:, i] for i, c in enumerate(names)})
    frame["label"] = z
    frame.to_csv(path, index=False)
    return path


def _path(kept: list[str], off: list[str]) -> SelectionPath:
    points = [
        PathPoint(0.0, 0.9, 0.1, kept + off, []),
        PathPoint(0.05, 0.9, 0.1, kept, off),
    ]
    return SelectionPath("r2", 0.01, points, chosen=1)


def test_refit_unpenalises_the_kept_columns_and_holds_the_rest_at_zero():
    refit = _path(["a", "b"], ["c"]).refit()
    assert refit["l1_inputs"] > 0
    assert refit["l1_inputs_weights"] == {"a": 0.0, "b": 0.0, "c": REFIT_OFF_WEIGHT}
    nothing_off = SelectionPath("r2", 0.01, _path(["a"], []).points, chosen=0).refit()
    assert nothing_off == {"l1_inputs": 0.0, "l1_inputs_weights": None}


def test_refit_model_reads_exactly_the_chosen_columns(tmp_path: Path):
    data = _weak_table(tmp_path / "t.csv")
    # A set no penalty would choose (a noise column in, a strong one out), so the model's
    # columns can only come from the refit's settings.
    kept, off = ["s0", "weak", "n0"], ["s1", "n1", "n2"]
    run = train(data, target="label", max_epochs=8, seed=1, **_path(kept, off).refit())
    assert sorted(run.metrics["l1_zeroed_features"]) == sorted(off)


def test_weak_column_kept_and_noise_dropped_in_every_seed(tmp_path: Path):
    data = _weak_table(tmp_path / "t.csv")
    chosen = []
    for seed in (0, 1):
        cfg = build_config({"data": str(data), "target": "label", "max_epochs": 100, "seed": seed})
        sel = select_features(cfg, [0.0, 0.01, 0.03, 0.1, 0.3])
        run = train(data, target="label", max_epochs=100, seed=seed, **sel.refit())
        read = sorted(
            c
            for c in ["s0", "s1", "weak", "n0", "n1", "n2"]
            if c not in run.metrics["l1_zeroed_features"]
        )
        assert read == sorted(sel.chosen_point.kept), seed
        chosen.append(read)
    assert chosen == [["s0", "s1", "weak"]] * 2
