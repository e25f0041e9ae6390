"""The Python API: train, restarts, L1 feature selection, regression, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fitwell


def test_test_split_is_read_exactly_once(mixed_csv: Path):
    run = fitwell.train(mixed_csv, target="label", hidden=(8,), max_epochs=3)
    assert run.extra["prepared"].test.times_opened == 1


def test_restarts_keep_the_best_on_validation(mixed_csv: Path):
    run = fitwell.train(mixed_csv, target="label", hidden=(4,), max_epochs=5, restarts=4, seed=7)
    restarts = run.metrics["restarts"]
    assert len(restarts["val_scores"]) == 4 and restarts["seeds"] == [7, 8, 9, 10]
    assert restarts["best"] == int(np.argmin(restarts["val_losses"]))
    assert len(set(restarts["val_losses"])) > 1  # different initialisations really differ
    assert set(run.history["member"]) == {0, 1, 2, 3}


def test_l1_switches_off_noise_features(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 400
    signal = rng.normal(size=(n, 3))
    noise = rng.normal(size=(n, 6))
    y = (signal[:, 0] + signal[:, 1] - signal[:, 2] > 0).astype(int)
    cols = [f"signal{i}" for i in range(3)] + [f"noise{i}" for i in range(6)]
    frame = pd.DataFrame(np.hstack([signal, noise]), columns=cols).assign(y=y)
    path = tmp_path / "noisy.csv"
    frame.to_csv(path, index=False)
    run = fitwell.train(
        path, target="y", hidden=(32,), l1=0.05, lr=1e-2, batch_size=32, max_epochs=100, patience=0
    )
    off = run.metrics["l1_zeroed_features"]
    assert not any(c.startswith("signal") for c in off)
    assert len([c for c in off if c.startswith("noise")]) >= 4
    # The saved model averages several members: a column is off when every member dropped it
    # (its raw row and, with embeddings, its embedding rows).
    from fitwell.embeddings import per_input

    arch = run.model.arch
    per_row = run.model.weights[0].detach().abs().sum(dim=(0, 2))
    per_column = per_input(per_row, arch.first_layer_sources, arch.n_inputs).cpu().numpy()
    for i, name in enumerate(cols):
        assert (per_column[i] == 0.0) == (name in off)
    assert run.metrics["test"]["accuracy"] > 0.9
    baseline = fitwell.train(
        path, target="y", hidden=(32,), lr=1e-2, batch_size=32, max_epochs=20, patience=0
    )
    assert baseline.metrics["l1_zeroed_features"] == []


def test_regression_reports_units_and_predicts():
    # Seed 1: the seed-0 test split of diabetes is unusually hard (r2 ~0.05 for sklearn too).
    run = fitwell.train(dataset="diabetes", hidden=(32,), max_epochs=30, seed=1)
    test = run.metrics["test"]
    assert run.task == "regression"
    assert {"rmse", "mae", "r2", "loss"} <= set(test)
    assert test["r2"] > 0.2 and 30 < test["rmse"] < 90  # diabetes targets are in the 25..346 range
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.drop(columns="target").head(5)
    pred = run.predict(frame)
    assert pred.shape == (5,) and 25 < pred.mean() < 346


def test_population_members_may_differ_only_in_per_member_settings(mixed_csv: Path):
    base = {"data": str(mixed_csv), "target": "label", "hidden": (8,), "max_epochs": 3}
    with pytest.raises(fitwell.InputError, match="differs in `hidden`"):
        fitwell.train_population([base, base | {"hidden": (16,)}])
    run = fitwell.train_population([base | {"lr": 1e-3}, base | {"lr": 1e-2, "l2": 1e-3}])
    pop = run.metrics["population"]
    assert [m["lr"] for m in pop][:2] == [1e-3, 1e-2] and pop[1]["l2"] == 1e-3
    # Two settings, ensemble 3: one more seed of the first setting joins the population.
    assert (pop[2]["config_index"], pop[2]["seed"], pop[2]["lr"]) == (0, 1, 1e-3)


def test_saved_run_loads_and_predicts_like_the_trained_one(mixed_csv: Path, tmp_path: Path):
    run = fitwell.train(mixed_csv, target="label", hidden=(8,), max_epochs=4, out=tmp_path / "r")
    loaded = fitwell.load_run(tmp_path / "r")
    frame = pd.read_csv(mixed_csv)
    np.testing.assert_array_equal(loaded.predict(frame), run.predict(frame))
    np.testing.assert_allclose(loaded.predict_proba(frame), run.predict_proba(frame), rtol=1e-6)


def test_training_caps_numpy_blas_threads_and_restores_them():
    """OpenBLAS workers spin after NumPy products (the doctor's linear reference) and take CPU
    from the training thread: a run caps them at its thread count, then puts them back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from fitwell.training import Callback

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen: list[set[int]] = []

    class RecordThreads(Callback):
        def on_epoch_end(self, trainer, **kwargs):
            seen.append(blas_threads())

    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        fitwell.train(dataset="digits", max_epochs=2, threads=1, callbacks=[RecordThreads()])
        assert blas_threads() == {2}
    assert seen == [{1}, {1}]
