"""``recipe = "realmlp"``: the preset's values (RealMLP-TD's, per task), explicit settings winning
over it, the task chosen late for ``task = "auto"``, and a run trained, saved and replayed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fitwell
from fitwell import api, runs
from fitwell.cli import main
from fitwell.config import build_config, load_toml, resolve_front
from fitwell.errors import InputError
from fitwell.resume import resume
from tests.test_resume import SETTINGS, _interrupted, assert_same_run

# pytabkit 1.8.0's RealMLP_TD_CLASS / RealMLP_TD_REG, written out by hand (not read from the
# preset) so that a changed preset fails here.
SHARED: dict[str, Any] = {
    "scaling": "robust",
    "numeric_embedding": "pbld",
    "embedding_frequencies": 16,
    "embedding_dim": 3,
    "front_scale": True,
    "hidden": (256, 256, 256),
    "parametrization": "ntk",
    "learnable_activation": True,
    "dropout": 0.15,
    "dropout_schedule": "flat_cos",
    "weight_decay": 0.02,
    "wd_schedule": "flat_cos",
    "optimizer": "adam",
    "adam_beta2": 0.95,
    "lr_schedule": "coslog4",
    "batch_size": 256,
    "max_epochs": 256,
    "ensemble": 1,
}
CLASSIFICATION = {
    "activation": "selu",
    "lr": 0.04,
    "label_smoothing": 0.1,
    "best_epoch_by": "score",  # val_metric_name="class_error"
}
REGRESSION = {"activation": "mish", "lr": 0.2, "label_smoothing": 0.0, "best_epoch_by": "loss"}


def _values(cfg: Any, names: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in names}


@pytest.mark.parametrize(
    ("task", "by_task"), [("classification", CLASSIFICATION), ("regression", REGRESSION)]
)
def test_realmlp_preset_sets_realmlp_td_values_per_task(task: str, by_task: dict) -> None:
    cfg = build_config({"recipe": "realmlp", "task": task})
    assert _values(cfg, SHARED) == SHARED
    assert _values(cfg, by_task) == by_task
    # Nothing stops early (patience covers every epoch) and the best epoch comes back.
    assert cfg.patience >= cfg.max_epochs and cfg.restore_best
    # The resolved front is the one RealMLP-TD trains: nothing left for the task to decide.
    assert resolve_front(cfg, task) == cfg


def test_classic_is_todays_defaults() -> None:
    classic = build_config({"recipe": "classic"})
    assert classic == build_config({})
    assert classic.activation == "relu" and classic.numeric_embedding == "none"
    assert build_config({"recipe": "realmlp"}) != classic


@pytest.mark.parametrize(
    ("task", "by_task"), [("classification", CLASSIFICATION), ("regression", REGRESSION)]
)
def test_auto_task_gets_the_values_of_the_task_found(task: str, by_task: dict) -> None:
    cfg = build_config({"recipe": "realmlp", "dataset": "iris"})
    resolved = resolve_front(cfg, task)
    assert _values(resolved, by_task) == by_task
    assert resolved.task == task  # recorded, so the saved config replays the same run
    assert resolve_front(resolved, task) == resolved
    # The saved TOML (plain values) builds the same configuration again.
    assert build_config(resolved.to_dict()) == resolved
    # A configuration written out before the task was known (a run's state) resolves alike.
    assert resolve_front(build_config(cfg.to_dict()), task) == resolved


def test_explicit_settings_win_over_the_preset() -> None:
    given = {
        "dropout": 0.3,
        "activation": "relu",
        "lr": 0.01,
        "batch_size": 32,
        "scaling": "standard",
    }
    cfg = build_config({"recipe": "realmlp", **given})
    assert _values(cfg, given) == given
    assert cfg.parametrization == "ntk" and cfg.label_smoothing == 0.1  # the rest: the preset
    # An explicit value equal to the classification preset's survives a regression target.
    cfg = build_config({"recipe": "realmlp", "activation": "selu", "lr": 0.04})
    resolved = resolve_front(cfg, "regression")
    assert (resolved.activation, resolved.lr, resolved.label_smoothing) == ("selu", 0.04, 0.0)
    # ... and through replace() before the task is known.
    resolved = resolve_front(cfg.replace(seed=3, label_smoothing=0.2), "regression")
    assert (resolved.activation, resolved.lr, resolved.label_smoothing) == ("selu", 0.04, 0.2)


def test_unknown_recipe_is_refused_with_a_suggestion() -> None:
    with pytest.raises(InputError, match=r"`recipe` must be one of classic, realmlp.*`realmlp`"):
        build_config({"recipe": "realmpl"})


def test_cli_flag_wins_over_the_recipe_and_a_bad_name_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    flags = ["--recipe", "realmlp", "--activation", "relu", "--hidden", "16", "--max-epochs", "2"]
    assert main(["train", "--dataset", "iris", "--quiet", "--out", str(out), *flags]) == 0
    saved = load_toml(out / runs.CONFIG_FILE)
    assert saved["recipe"] == "realmlp" and saved["activation"] == "relu"
    assert saved["hidden"] == [16] and saved["max_epochs"] == 2
    assert saved["parametrization"] == "ntk" and saved["label_smoothing"] == 0.1
    capsys.readouterr()
    assert (
        main(["train", "--dataset", "iris", "--recipe", "tabm", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert "`recipe` must be one of classic, realmlp" in err and "Traceback" not in err


def _table(tmp_path: Path, mixed_csv: Path, task: str) -> tuple[Path, pd.DataFrame]:
    frame = pd.read_csv(mixed_csv)
    if task == "regression":  # a numeric target that the features explain
        frame["label"] = frame["x1"] * 2.0 + np.arange(len(frame)) % 3
    data = tmp_path / "t.csv"
    frame.to_csv(data, index=False)
    return data, frame


@pytest.mark.parametrize(
    ("task", "by_task"),
    [("classification", CLASSIFICATION), ("regression", REGRESSION)],
)
def test_recipe_run_trains_saves_and_replays(
    tmp_path: Path, mixed_csv: Path, task: str, by_task: dict
) -> None:
    data, frame = _table(tmp_path, mixed_csv, task)
    run = fitwell.train(
        data, target="label", out=tmp_path / "r", recipe="realmlp", hidden=(16, 16), max_epochs=4
    )
    saved = build_config(load_toml(tmp_path / "r" / runs.CONFIG_FILE))
    assert saved.task == task and _values(saved, by_task) == by_task
    assert saved.scaling == "robust" and saved.numeric_embedding == "pbld"
    features = frame.drop(columns="label")
    loaded = fitwell.load_run(tmp_path / "r")
    np.testing.assert_array_equal(loaded.predict(features), run.predict(features))
    assert loaded.model.arch.learnable_activation and loaded.model.arch.parametrization == "ntk"


def test_resumed_recipe_run_on_a_regression_target_is_bitwise_equal(
    tmp_path: Path, mixed_csv: Path
) -> None:
    """The run's state is written before the task is known; resuming must resolve it alike."""
    data, _ = _table(tmp_path, mixed_csv, "regression")
    settings = {"data": data, "target": "label", "recipe": "realmlp", **SETTINGS}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 3, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert 'activation = "mish"' in (tmp_path / "b" / runs.CONFIG_FILE).read_text()
