"""fitwell auto: the repair table, the acceptance rule, the rung rule, the budget, the sealed test
split, resuming a killed search, refusing data without signal, and the command end to end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fitwell.auto import auto, parse_budget
from fitwell.auto import repairs as table
from fitwell.auto.pruning import RungPruner, rung_survivors, rungs_for
from fitwell.cli import main
from fitwell.config import TrainConfig
from fitwell.diagnosis.rules import CODES
from fitwell.errors import InputError

DEFAULTS = TrainConfig(hidden=(64, 64)).to_dict()


# --------------------------------------------------------------------------- repair table
def test_every_repairable_code_is_a_doctor_code_with_candidates_on_the_defaults():
    for code in table.REPAIRS:
        assert code in CODES
        assert table.candidates(code, DEFAULTS), code


def test_changes_that_would_change_nothing_are_skipped():
    relu_kaiming = DEFAULTS | {"activation": "relu", "init": "kaiming"}
    names = [c.name for c in table.candidates("vanishing_gradients", relu_kaiming)]
    assert names == ["batch norm", "one layer fewer"]
    one_layer = relu_kaiming | {"hidden": [64], "batch_norm": True}
    assert table.candidates("vanishing_gradients", one_layer) == []


@pytest.mark.parametrize(
    ("code", "settings", "expected"),
    [
        ("divergence", {"lr": 0.3}, [{"lr": 0.03}, {"lr": 0.003}, {"lr": 0.0003}]),
        ("slow_convergence", {"lr": 1e-6}, [{"lr": 1e-5}, {"lr": 1e-4}, {"lr": 1e-3}]),
        ("exploding_gradients", {"init_scale": 4.0, "lr": 0.01}, None),
        ("dead_relu", {"activation": "relu", "lr": 3e-3}, None),
        ("overfitting", {"l2": 0.0, "dropout": 0.2, "hidden": [64, 64]}, None),
        ("underfitting", {"hidden": [8, 8], "dropout": 0.0}, None),
    ],
)
def test_table_changes(code, settings, expected):
    got = [c.changes(DEFAULTS | settings) for c in table.candidates(code, DEFAULTS | settings)]
    if expected is not None:
        assert [{k: pytest.approx(v) for k, v in g.items()} for g in got] == expected
    if code == "overfitting":
        assert got[0] == {"l2": 1e-4}
        assert got[1] == {"dropout": [pytest.approx(0.4), pytest.approx(0.4)]}
        assert got[2] == {"hidden": [32, 32]}
    if code == "underfitting":
        assert got[0] == {"hidden": [64, 64]} and got[1] == {"hidden": [8, 8, 8]}
    if code == "dead_relu":
        assert got[0] == {"activation": "leaky_relu"}
    if code == "exploding_gradients":
        assert got[0] == {"init_scale": 1.0} and got[1] == {"lr": pytest.approx(0.001)}


def test_shape_changes_and_member_changes_are_told_apart():
    lr = table.candidates("divergence", DEFAULTS)[0]
    bn = next(c for c in table.candidates("exploding_gradients", DEFAULTS) if "norm" in c.name)
    assert lr.same_shape(DEFAULTS) and not bn.same_shape(DEFAULTS)


def test_repairable_keeps_severity_order_and_drops_info_and_unknown():
    findings = [
        {"code": "divergence", "severity": "error"},
        {"code": "overfitting", "severity": "info"},
        {"code": "leakage", "severity": "warning"},
        {"code": "lr_too_high", "severity": "warning"},
    ]
    assert table.repairable(findings) == ["divergence", "lr_too_high"]


@pytest.mark.parametrize(
    ("before", "after", "codes_after", "kept"),
    [
        ([1.0, 1.1, 1.2], [0.5, 0.52, 0.55], [], True),  # big gain, finding gone
        ([1.0, 1.1, 1.2], [0.5, 0.52, 0.55], ["divergence"], False),  # finding still there
        ([0.50, 0.51, 0.52], [0.49, 0.50, 0.60], [], False),  # gain 0.01 < spread 0.11
        ([math.nan, math.inf, 2.0], [0.4, 0.41, 0.42], [], True),  # diverged seeds count as inf
        ([0.5, 0.5, 0.5], [math.nan, math.nan, 0.3], [], False),  # median after not finite
        ([0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [], False),  # worse
    ],
)
def test_acceptance_rule(before, after, codes_after, kept):
    got, reason = table.accept_repair(before, after, code="divergence", codes_after=codes_after)
    assert got is kept, reason
    assert reason


# --------------------------------------------------------------------------- rung rule
def test_rung_survivors_keep_a_third_by_loss_with_ties_by_member():
    losses = {7: 0.5, 3: 0.5, 1: 0.9, 4: 0.1, 9: math.nan, 2: 0.7}
    assert rung_survivors(losses, eta=3) == [3, 4]
    shuffled = dict(reversed(list(losses.items())))
    assert rung_survivors(shuffled, eta=3) == [3, 4]
    assert rung_survivors({5: math.inf, 6: math.nan}, eta=3) == [5]
    assert rung_survivors({}, eta=3) == []
    assert rung_survivors({1: 0.2, 2: 0.1, 3: 0.3, 4: 0.4}, eta=2) == [1, 2]


def test_rungs_follow_max_epochs():
    assert rungs_for(200) == [7, 21, 63]
    assert rungs_for(20) == [4, 12]
    assert all(r < 10 for r in rungs_for(10))


def test_rung_pruner_stops_members_at_rung_epochs_on_best_so_far():
    stopped: dict[int, str] = {}
    trainer = SimpleNamespace(epoch=0, stop_member=lambda m, r: stopped.setdefault(m, r))
    pruner = RungPruner([2], eta=2)
    curves = {0: [0.9, 0.8], 1: [0.3, 0.95], 2: [0.5, 0.5], 3: [0.6, 0.4]}
    for epoch in (1, 2):
        trainer.epoch = epoch
        logs = {m: {"val_loss": c[epoch - 1]} for m, c in curves.items()}
        pruner.on_epoch_end(trainer, logs=logs)
    # best so far: 0 -> 0.8, 1 -> 0.3, 2 -> 0.5, 3 -> 0.4: members 1 and 3 go on.
    assert sorted(stopped) == [0, 2] and pruner.pruned == {0: 2, 2: 2}
    assert "rung epoch 2" in stopped[0]


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget(5) == 5
    assert parse_budget("1.5h") == 5400 and parse_budget("none") is None
    for bad in ("-3m", "ten", "0", "nanm"):
        with pytest.raises(InputError, match="time_budget"):
            parse_budget(bad)


# --------------------------------------------------------------------------- pipeline
def test_the_test_split_is_read_exactly_once(monkeypatch):
    from fitwell.data.splitting import SealedTest

    opened: list[int] = []
    real_open = SealedTest.open

    def counting_open(self):
        opened.append(1)
        return real_open(self)

    monkeypatch.setattr(SealedTest, "open", counting_open)
    run = auto(dataset="iris", time_budget=None, trials=6, population_size=3, max_epochs=15)
    assert len(opened) == 1
    record = run.metrics["auto"]
    assert record["search"]["trials"] == 6 and record["search"]["populations"] == 2
    assert [s["stage"] for s in record["stages"]] == ["baseline", "repairs", "search", "restarts"]


def test_same_seed_and_trials_choose_the_same_winner():
    kw = dict(dataset="iris", time_budget=None, trials=4, population_size=2, max_epochs=12)
    a, b = auto(**kw), auto(**kw)
    assert a.metrics["auto"]["search"]["best_trial"] == b.metrics["auto"]["search"]["best_trial"]
    assert a.metrics["auto"]["best_settings"] == b.metrics["auto"]["best_settings"]
    assert a.metrics["test_score"] == b.metrics["test_score"]


def test_the_time_budget_is_kept():
    started = time.perf_counter()
    # A start that finishes well inside the budget (30 epochs, no numeric embedding), so the
    # search has time to run; a start the budget cannot pay for is tests/test_auto_margin.py's.
    run = auto(
        dataset="digits", time_budget=12, hidden=[64, 64], max_epochs=30, numeric_embedding="none"
    )
    wall = time.perf_counter() - started
    used = run.metrics["auto"]["seconds_used"]
    assert used <= 12 * 1.1
    assert wall <= 12 * 1.1 + 6  # start-up: loading and preparing the table, writing nothing
    assert run.metrics["auto"]["search"]["trials"] >= 1


def test_a_repair_fixes_a_broken_learning_rate(tmp_path):
    run = auto(
        dataset="wine", lr=1.0, search=False, time_budget=None, out=tmp_path / "r", max_epochs=60
    )
    record = json.loads((tmp_path / "r" / "repairs.json").read_text())
    kept = [r for r in record["repairs"] if r["kept"]]
    assert kept and all("lr" in r["settings"] or "batch_norm" in r["settings"] for r in kept)
    chosen = [r for r in record["repairs"] if r.get("chosen")]
    assert len(chosen) >= 1
    assert run.metrics["auto"]["best_settings"]["lr"] < 1.0 or run.metrics["auto"][
        "best_settings"
    ].get("batch_norm")
    assert record["baseline"]["findings"]


def _noise_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(600, 6)), columns=[f"x{i}" for i in range(6)])
    frame["label"] = rng.integers(0, 3, size=600)
    frame.to_csv(path, index=False)
    return path


def test_no_signal_stops_after_the_baseline_and_exits_1(tmp_path, capsys):
    data = _noise_csv(tmp_path / "noise.csv")
    code = main(
        [
            "auto",
            str(data),
            "--target",
            "label",
            "--time-budget",
            "20s",
            "--out",
            str(tmp_path / "run"),
            "--max-epochs",
            "30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "no model beats the trivial baseline" in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["auto"]["refused"] == "no_signal"
    assert metrics["auto"]["search"] == {} and metrics["auto"]["repairs"] == []
    assert (tmp_path / "run" / "report.html").is_file()


def test_resume_after_a_killed_search(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fitwell.cli",
        "auto",
        "--dataset",
        "digits",
        "--hidden",
        "32",
        "--max-epochs",
        "30",
        "--time-budget",
        "none",
        "--trials",
        "24",
        "--out",
        str(out),
        "--quiet",
    ]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "study.journal"
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.is_file() and journal.read_text().count('"op_code":4') >= 16:
            time.sleep(0.3)
            break  # the second population of 8 trials has been asked and is training
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(journal)))
    before = optuna.load_study(study_name="fitwell-auto", storage=storage).get_trials()
    running = [t for t in before if t.state == TrialState.RUNNING]
    assert running, "the kill should leave a population's trials RUNNING"
    code = main(
        [
            "auto",
            "--dataset",
            "digits",
            "--hidden",
            "32",
            "--max-epochs",
            "30",
            "--time-budget",
            "none",
            "--trials",
            "24",
            "--out",
            str(out),
            "--resume",
            "--quiet",
        ]
    )
    assert code == 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    after = optuna.load_study(study_name="fitwell-auto", storage=storage).get_trials()
    numbers = [t.number for t in after]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in after if t.state == TrialState.RUNNING]
    for t in running:  # failed, and its parameters trained again as a new trial
        assert after[t.number].state == TrialState.FAIL
        assert any(u.params == t.params and u.number > t.number for u in after)
    counted = [t for t in after if t.state != TrialState.FAIL]
    assert len(counted) >= 24 - len(running)
    assert (out / "model.safetensors").is_file()
    rows = pd.read_csv(out / "trials.csv")
    assert len(rows) == len(after)


@pytest.fixture(scope="module")
def iris_auto(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "iris"
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fitwell.cli",
            "auto",
            "--dataset",
            "iris",
            "--time-budget",
            "30s",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out, time.perf_counter() - started


def test_end_to_end_iris_30s(iris_auto):
    proc, out, wall = iris_auto
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"repairs", "trials", "best_settings", "test"} <= set(doc)
    assert doc["test"]["accuracy"] >= 0.8
    assert len(doc["trials"]) == doc["auto"]["search"]["trials"] >= 8
    for name in (
        "repairs.json",
        "trials.csv",
        "report.html",
        "model.safetensors",
        "study.journal",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["state"]) <= {"complete", "pruned", "fail"}
    assert doc["auto"]["seconds_used"] <= 33
    report = (out / "report.html").read_text()
    assert 'id="repairs"' in report and 'id="search"' in report
    # The run predicts like any other.
    assert main(["predict", str(out), str(out / "trials.csv")]) == 2  # wrong columns: refused


def test_auto_starts_from_the_embedding_recipe_unless_told_otherwise(tmp_path: Path) -> None:
    from fitwell.auto.pipeline import _auto_recipe
    from fitwell.config import TrainConfig

    assert _auto_recipe(None, {})["numeric_embedding"] == "auto"
    assert _auto_recipe(None, {"numeric_embedding": "none"})["numeric_embedding"] == "none"
    assert "numeric_embedding" not in _auto_recipe({"numeric_embedding": "pbld"}, {})
    assert "numeric_embedding" not in _auto_recipe(TrainConfig(), {})
    start = tmp_path / "start.toml"
    start.write_text('numeric_embedding = "none"\n')
    assert "numeric_embedding" not in _auto_recipe(start, {})


def test_fitwell_auto_is_callable_before_and_after_its_modules_are_imported(monkeypatch):
    import fitwell
    import fitwell.auto.pipeline  # noqa: F401  (sets fitwell.auto to the package)

    calls = []
    monkeypatch.setattr(fitwell.auto, "auto", lambda *a, **k: calls.append((a, k)) or "run")
    assert fitwell.auto("data.csv", target="label", time_budget="10m") == "run"
    assert calls == [(("data.csv",), {"target": "label", "time_budget": "10m"})]
    assert "auto" in fitwell.__all__


# --------------------------------------------------------------------------- inputs and scaling
def test_standardized_inputs_lead_the_saturation_row_only_when_inputs_are_unscaled():
    unscaled = DEFAULTS | {"scale": False, "activation": "tanh", "init_scale": 8.0}
    first = table.candidates("saturated_activations", unscaled)[0]
    assert first.changes(unscaled) == {"scale": True, "init_scale": 1.0}
    assert table.changes_inputs(first, unscaled)
    names = [c.name for c in table.candidates("saturated_activations", DEFAULTS)]
    assert not any("standardized" in n for n in names)


@pytest.mark.parametrize("code", ["divergence", "lr_too_high", "exploding_gradients", "dead_relu"])
def test_the_doctors_evidence_of_unscaled_inputs_moves_scaling_to_the_front(code):
    unscaled = DEFAULTS | {"scale": False, "init_scale": 4.0}
    plain = table.candidates(code, unscaled)
    led = table.candidates(code, unscaled, {"inputs_unscaled": True})
    assert plain[-1].changes(unscaled)["scale"] is True
    assert led[0].changes(unscaled)["scale"] is True
    assert led[1:] == plain[:-1]  # the rest keep the table's order
    assert table.candidates(code, unscaled, {"inputs_unscaled": False}) == plain


def test_regularization_can_be_removed_as_a_dead_relu_repair_first_when_dropout_is_heavy():
    light = DEFAULTS | {"dropout": 0.2, "l2": 1e-3}
    assert table.candidates("dead_relu", light)[-1].name == "no regularization"
    heavy = DEFAULTS | {"dropout": 0.9, "l2": 1e-3}
    for code in ("dead_relu", "underfitting"):
        assert table.candidates(code, heavy)[0].name == "no regularization", code
    last = table.candidates("dead_relu", heavy)[0]
    assert last.changes(heavy) == {"dropout": 0.0, "l2": 0.0}
    per_layer = heavy | {"dropout": [0.9, 0.5]}
    assert last.changes(per_layer) == {"dropout": [0.0, 0.0], "l2": 0.0}
    assert last.same_shape(heavy)  # it trains beside lr /3, in one population
    for none in (0.0, [0.0, 0.0]):
        bare = DEFAULTS | {"dropout": none, "l1": 0.0, "l2": 0.0}
        assert "no regularization" not in [c.name for c in table.candidates("dead_relu", bare)]


def test_prepared_inputs_prepare_the_same_rows_again_with_other_scaling():
    from fitwell.api import load_and_prepare
    from fitwell.auto.executors import PreparedInputs

    start = TrainConfig(dataset="iris", scale=False, seed=3)
    prepared = load_and_prepare(start)
    inputs = PreparedInputs(start, prepared)
    assert inputs(start.to_dict()) is prepared
    scaled = inputs(start.to_dict() | {"scale": True})
    assert inputs(start.to_dict() | {"scale": True}) is scaled  # prepared once
    np.testing.assert_array_equal(scaled.y_train, prepared.y_train)
    np.testing.assert_array_equal(scaled.y_val, prepared.y_val)
    assert np.abs(prepared.x_train.mean(axis=0)).max() > 1.0
    np.testing.assert_allclose(scaled.x_train.mean(axis=0), 0.0, atol=1e-5)
