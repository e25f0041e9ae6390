"""Robust scaling with smooth clipping: the formulas, the fallbacks, and the replay at predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fitwell.config import build_config
from fitwell.data.preprocessing import Preprocessor, robust_spread, smooth_clip
from fitwell.errors import FitwellError


def test_smooth_clip_is_the_formula_and_stays_inside_three() -> None:
    z = np.array([-1e6, -3.0, -0.1, 0.0, 0.1, 3.0, 1e6])
    np.testing.assert_allclose(smooth_clip(z), z / np.sqrt(1 + (z / 3) ** 2))
    assert np.all(np.abs(smooth_clip(z)) < 3.0)
    assert smooth_clip(np.array([0.01]))[0] == pytest.approx(0.01, rel=1e-4)  # linear near 0


def test_robust_spread_is_the_iqr_then_half_the_range_then_one() -> None:
    x = np.arange(101.0)
    assert robust_spread(x) == pytest.approx(50.0)
    mostly_zero = np.r_[np.zeros(90), np.full(10, 8.0)]  # IQR 0: half the range
    assert robust_spread(mostly_zero) == pytest.approx(4.0)
    assert robust_spread(np.full(5, 2.0)) == 1.0


def test_robust_transform_uses_median_and_iqr_and_clips_outliers() -> None:
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(size=999), 1e6]  # one wild outlier
    frame = pd.DataFrame({"x": values})
    pre = Preprocessor.fit(frame, scaling="robust")
    out = pre.transform(frame)[:, 0]
    median, (q25, q75) = np.median(values), np.quantile(values, [0.25, 0.75])
    expected = smooth_clip((values - median) / (q75 - q25))
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6)
    assert out.max() <= 3.0  # the outlier is squashed, not 1e6 / std (float32 rounds to 3)
    standard = Preprocessor.fit(frame).transform(frame)[:, 0]
    assert np.std(standard[:-1]) < 0.01  # standardization lets the outlier crush the rest
    assert np.std(out[:-1]) > 0.5


def test_saved_robust_preprocessing_replays_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.exponential(size=200), "c": rng.choice(["a", "b"], 200)})
    pre = Preprocessor.fit(frame, scaling="robust")
    again = Preprocessor.from_json(pre.to_json())
    assert again.scaling == "robust"
    np.testing.assert_array_equal(again.transform(frame), pre.transform(frame))


def test_runs_saved_before_robust_scaling_load_as_standard() -> None:
    pre = Preprocessor.fit(pd.DataFrame({"x": [1.0, 2.0, 4.0]}))
    data = pre.to_json()
    del data["scaling"]
    assert Preprocessor.from_json(data).scaling == "standard"


def test_unknown_scaling_is_refused() -> None:
    with pytest.raises(FitwellError, match="scaling"):
        build_config({"scaling": "minmax"})


def test_train_and_predict_with_robust_scaling(tmp_path: Path) -> None:
    import fitwell

    run = fitwell.train(
        dataset="wine",
        scaling="robust",
        max_epochs=3,
        ensemble=1,
        out=tmp_path / "run",
        progress=False,
    )
    loaded = fitwell.load_run(tmp_path / "run")
    assert loaded.preprocessor.scaling == "robust"
    from fitwell.data.datasets import load_builtin

    frame, target = load_builtin("wine")
    features = frame.drop(columns=[target])
    np.testing.assert_array_equal(loaded.predict(features), run.predict(features))
