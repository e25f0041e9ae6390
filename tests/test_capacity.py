"""The wider reference network behind the underfitting rule, on a table where a linear model
is weak: it is trained only when the run fits its training rows poorly, and its result is kept
in ``signals.json`` so ``fitwell doctor`` re-derives the same finding from the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fitwell
from fitwell.diagnosis.context import findings_from_files
from fitwell.models import Architecture
from fitwell.training.capacity import reference_architecture


def board(folder: Path, cells: int) -> Path:
    """A cells x cells checkerboard: no linear model beats chance; a 1-unit network cannot draw
    it, and the finer the board the more units it takes."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, cells, size=(1500, 2))
    frame = pd.DataFrame(x, columns=["a", "b"])
    frame["label"] = (np.floor(x[:, 0]) + np.floor(x[:, 1])).astype(int) % 2
    path = folder / f"board{cells}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def checkerboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return board(tmp_path_factory.mktemp("cap"), 4)


def test_reference_is_wider_and_at_least_two_layers() -> None:
    small = Architecture(n_inputs=5, hidden=(8,), n_outputs=3, activation="sigmoid")
    assert reference_architecture(small).hidden == (256, 256)
    big = Architecture(n_inputs=5, hidden=(100, 100, 100), n_outputs=3, batch_norm=True)
    ref = reference_architecture(big)
    assert ref.hidden == (400, 400, 400) and ref.activation == "relu" and not ref.batch_norm
    # The cost stays bounded: 256 -> 512, and a run wider than that keeps its own width.
    assert reference_architecture(Architecture(5, (256, 256), 3)).hidden == (512, 512)
    assert reference_architecture(Architecture(5, (1024,), 3)).hidden == (1024, 1024)


def test_capacity_starved_network_is_underfitting(checkerboard: Path, tmp_path: Path) -> None:
    out = tmp_path / "starved"
    run = fitwell.train(
        checkerboard, target="label", hidden=[1], dropout=0.0, ensemble=1, max_epochs=60, out=out
    )
    under = [f for f in run.metrics["findings"] if f["code"] == "underfitting"]
    assert under, run.metrics["findings"]
    evidence = under[0]["evidence"]
    assert evidence["wider_val_score"] - evidence["val_score"] > 0.05
    assert "no_signal" not in {f["code"] for f in run.metrics["findings"]}
    signals = json.loads((out / "signals.json").read_text())
    assert signals["context"]["capacity"]["hidden"] == [256, 256]
    assert [f["code"] for f in findings_from_files(out)] == [
        f["code"] for f in run.metrics["findings"]
    ]


def test_a_network_that_fits_pays_for_no_reference(tmp_path: Path) -> None:
    out = tmp_path / "healthy"
    xor = board(tmp_path, 2)
    run = fitwell.train(xor, target="label", hidden=[64, 64], ensemble=1, max_epochs=100, out=out)
    assert run.metrics["train"]["accuracy"] >= 0.95
    assert "underfitting" not in {f["code"] for f in run.metrics["findings"]}
    signals = json.loads((out / "signals.json").read_text())
    assert signals["context"].get("capacity") is None


def test_auto_search_trials_skip_the_reference(checkerboard: Path) -> None:
    """Search populations are only ranked by loss: no reference run; baseline and repairs
    populations get one, so the repair table sees capacity-starved starts."""
    from fitwell.api import load_and_prepare, make_config
    from fitwell.auto.executors import LocalExecutor, PopulationJob

    cfg = make_config(data=str(checkerboard), target="label")
    executor = LocalExecutor(load_and_prepare(cfg), device=torch.device("cpu"), threads=1)
    setting = {
        "data": str(checkerboard),
        "target": "label",
        "hidden": [1],
        "dropout": 0.0,
        "ensemble": 1,
        "max_epochs": 60,
    }
    found = {
        check: {
            f["code"]
            for f in executor.run(PopulationJob([setting], check_capacity=check)).findings[0]
        }
        for check in (True, False)
    }
    assert "underfitting" in found[True]
    assert "underfitting" not in found[False]
