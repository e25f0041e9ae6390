"""Same seed, same machine: bitwise-equal weights and identical metrics; different seeds differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fitwell import api, runs

SETTINGS: dict[str, Any] = dict(
    target="label", hidden=(8, 8), max_epochs=4, dropout=0.2, batch_size=32
)


def _weights(run: Path) -> bytes:
    return (run / runs.MODEL_FILE).read_bytes()


def _metrics(run: Path) -> dict[str, Any]:
    m = json.loads((run / runs.METRICS_FILE).read_text())
    for key in ("train_seconds", "finished_at"):
        m.pop(key, None)
    return m


@pytest.mark.parametrize(
    "extra", [{}, {"restarts": 3, "threads": 2}], ids=["single", "population-2-threads"]
)
def test_same_seed_gives_bitwise_equal_runs(
    tmp_path: Path, mixed_csv: Path, extra: dict[str, Any]
) -> None:
    a = api.train(mixed_csv, seed=7, out=tmp_path / "a", **SETTINGS, **extra)
    b = api.train(mixed_csv, seed=7, out=tmp_path / "b", **SETTINGS, **extra)
    assert _weights(tmp_path / "a") == _weights(tmp_path / "b")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert (tmp_path / "a" / runs.HISTORY_FILE).read_bytes() == (
        tmp_path / "b" / runs.HISTORY_FILE
    ).read_bytes()
    assert a.predict(mixed_csv).tolist() == b.predict(mixed_csv).tolist()


def test_different_seeds_differ(tmp_path: Path, mixed_csv: Path) -> None:
    api.train(mixed_csv, seed=1, out=tmp_path / "a", **SETTINGS)
    api.train(mixed_csv, seed=2, out=tmp_path / "b", **SETTINGS)
    assert _weights(tmp_path / "a") != _weights(tmp_path / "b")
    assert _metrics(tmp_path / "a")["val"] != _metrics(tmp_path / "b")["val"]


def test_seed_does_not_depend_on_global_rng_state(tmp_path: Path, mixed_csv: Path) -> None:
    """Randomness is explicit: disturbing the global generators changes nothing."""
    import random

    import numpy as np
    import torch

    api.train(mixed_csv, seed=3, out=tmp_path / "a", **SETTINGS)
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    torch.rand(10)
    api.train(mixed_csv, seed=3, out=tmp_path / "b", **SETTINGS)
    assert _weights(tmp_path / "a") == _weights(tmp_path / "b")
