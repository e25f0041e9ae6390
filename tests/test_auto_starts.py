"""fitwell auto starts from a second recipe only when it beats the defaults beyond noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitwell.auto import auto
from fitwell.auto import starts as start_choice


def test_a_named_start_or_model_setting_leaves_no_choice():
    assert not start_choice.user_named_start(None, {"dataset": "wine", "seed": 3})
    assert not start_choice.user_named_start(None, {"data": "x.csv", "target": "y", "lr": None})
    assert start_choice.user_named_start("start.toml", {})
    assert start_choice.user_named_start(None, {"dataset": "wine", "hidden": (8,)})
    assert start_choice.user_named_start(None, {"recipe": "classic"})


def test_the_alternative_keeps_the_data_and_seed_settings_only():
    start = {"dataset": "wine", "seed": 4, "scaling": "standard", "lr": 0.003, "hidden": (64,)}
    got = start_choice.alternative_settings("realmlp", start, keep=["dataset", "seed", "scaling"])
    assert got == {"dataset": "wine", "seed": 4, "scaling": "standard", "recipe": "realmlp"}


def _rows(errors: int, n: int, *, offset: int = 0) -> np.ndarray:
    rows = np.zeros(n)
    rows[offset : offset + errors] = 1.0
    return rows


def test_a_gain_of_a_few_rows_on_a_small_set_is_noise():
    # 27 rows: the alternative gets 1 row more right than the defaults.
    base, other = _rows(2, 27), _rows(1, 27)
    better, gain, margin = start_choice.better_start(base, other, task="classification")
    assert gain == pytest.approx(1 / 27)
    assert not better and margin >= 1 / 27


def test_a_consistent_gain_on_a_large_set_is_kept():
    # 600 rows: the alternative fixes 40 of the defaults' 150 errors and adds none.
    base, other = _rows(150, 600), _rows(110, 600)
    better, gain, margin = start_choice.better_start(base, other, task="classification")
    assert better and gain == pytest.approx(40 / 600)
    assert margin < gain


def test_the_same_net_gain_with_many_swapped_rows_is_not_kept():
    # 600 rows, 12 rows net better, but the two disagree on 188 rows (100 vs 88 swapped).
    base = _rows(150, 600)
    other = _rows(138, 600, offset=100)  # right on rows 0..99, wrong on 150..237
    assert (base - other).sum() == 12
    better, gain, margin = start_choice.better_start(base, other, task="classification")
    assert gain == pytest.approx(12 / 600)
    assert not better and margin > gain


def test_regression_compares_squared_errors_and_a_diverged_alternative_loses():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, 400)
    better, gain, _ = start_choice.better_start(base, 0.5 * base, task="regression")
    assert better and gain > 0
    worse = base.copy()
    worse[3] = math.inf
    assert start_choice.better_start(base, worse, task="regression")[0] is False


@pytest.fixture
def cheap_alternatives(monkeypatch):
    """Alternatives that train in a second on iris: one hopeless, one that is the defaults' own
    shape with a different width (so either outcome can happen)."""
    monkeypatch.setattr(
        start_choice,
        "ALTERNATIVE_STARTS",
        {
            "hopeless": {"hidden": (4,), "lr": 1e-7, "max_epochs": 3},
            "narrow": {"hidden": (16,), "max_epochs": 30},
        },
    )


def test_auto_records_each_alternative_and_starts_from_one_only_when_it_clears_the_margin(
    cheap_alternatives, tmp_path
):
    run = auto(dataset="iris", time_budget=None, trials=0, repair=False, out=tmp_path / "r")
    record = run.metrics["auto"]["baseline"]
    by_name = {r["start"]: r for r in record["starts"]}
    assert set(by_name) == {"hopeless", "narrow"}
    hopeless = by_name["hopeless"]
    assert hopeless["kept"] is False and hopeless["gain"] < 0  # 3 epochs at lr 1e-7
    for r in by_name.values():
        assert r["kept"] == (r["gain"] > r["margin"])
    kept = [r["start"] for r in record["starts"] if r["kept"]]
    assert record["start"] == (kept[-1] if kept else "defaults")
    hidden = list(run.metrics["auto"]["best_settings"]["hidden"])
    assert (hidden == [16]) == (record["start"] == "narrow")


def test_a_kept_alternative_is_the_final_run_and_its_members_are_reused(
    cheap_alternatives, monkeypatch, tmp_path
):
    monkeypatch.setattr(start_choice, "better_start", lambda base, other, task: (True, 0.5, 0.1))
    run = auto(dataset="iris", time_budget=None, trials=0, repair=False, out=tmp_path / "r")
    record = run.metrics["auto"]
    assert record["baseline"]["start"] == "narrow"  # the last one kept wins
    assert list(record["best_settings"]["hidden"]) == [16]
    assert record["final"]["reused"] is True
    assert record["final"]["from"] == "the narrow start"


def test_a_user_setting_means_no_alternative_is_trained(cheap_alternatives, tmp_path):
    run = auto(
        dataset="iris", time_budget=None, trials=0, repair=False, hidden=(8,), out=tmp_path / "r"
    )
    assert "starts" not in run.metrics["auto"]["baseline"]


def test_the_searched_learning_rates_surround_the_start():
    from fitwell.auto import search

    assert search.lr_range(3e-3) == pytest.approx(search.LR_RANGE)  # fitwell's default
    low, high = search.lr_range(0.04)  # RealMLP's rate under the NTK parametrization
    assert low < 0.04 < high and high == pytest.approx(0.4)
    # The start itself is enqueued as it is, not clipped to another start's range.
    assert search.params_from_settings({"lr": 0.04, "hidden": [256] * 3})["lr"] == 0.04


class _Trainer:
    def __init__(self, max_epochs: int) -> None:
        self.epoch, self.max_epochs, self.stop_training = 0, max_epochs, False


def test_a_run_whose_first_epochs_cannot_finish_in_time_gives_up_at_once(monkeypatch):
    from fitwell.auto import budget

    clock = [100.0]
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
    slow, fast = _Trainer(max_epochs=256), _Trainer(max_epochs=256)
    # 60 s allowed; 3 epochs took 1.5 s: 256 epochs would take 128 s.
    cut = budget.Deadline(160.0, project_after=3)
    cut.on_fit_begin(slow)
    clock[0], slow.epoch = 101.5, 3
    cut.on_epoch_begin(slow)
    assert slow.stop_training and cut.fired and cut.projected_miss
    # 3 epochs in 0.3 s: 256 epochs take 25.6 s, inside the 60 s.
    ok = budget.Deadline(160.0, project_after=3)
    clock[0] = 100.0
    ok.on_fit_begin(fast)
    clock[0], fast.epoch = 100.3, 3
    ok.on_epoch_begin(fast)
    assert not fast.stop_training and not ok.fired
    # Without project_after only the deadline itself stops a run.
    plain = budget.Deadline(160.0)
    clock[0] = 100.0
    plain.on_fit_begin(slow.__class__(256))
    trainer = _Trainer(256)
    clock[0], trainer.epoch = 101.5, 3
    plain.on_epoch_begin(trainer)
    assert not trainer.stop_training
    clock[0] = 160.0
    plain.on_epoch_begin(trainer)
    assert trainer.stop_training and plain.fired and not plain.projected_miss
