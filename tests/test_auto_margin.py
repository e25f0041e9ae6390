"""fitwell auto's replacement margin (a search winner must beat the start beyond the validation
set's noise) and the start-only run (a budget too short for the start itself)."""

from __future__ import annotations

import numpy as np

from fitwell.auto import auto
from fitwell.auto.budget import Budget
from fitwell.auto.executors import MemberOutcome, PopulationJob, PopulationOutcome
from fitwell.auto.margin import paired_margin
from fitwell.auto.pipeline import AutoSearch
from fitwell.config import TrainConfig


def _noisy(n: int, gain: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-row losses of a start and of a candidate ``gain`` lower on average, with row-to-row
    noise in the difference larger than the gain."""
    rng = np.random.default_rng(seed)
    start = 0.5 + rng.exponential(0.3, n)
    candidate = start - gain + rng.normal(0.0, 0.3, n)
    return start, candidate


# --------------------------------------------------------------------------- the margin
def test_a_tiny_gain_on_a_small_validation_set_is_refused():
    start, candidate = _noisy(27, gain=0.02)
    replaced, record = paired_margin(start, candidate)
    assert not replaced
    assert record["rows"] == 27 and record["margin"] > 0.02


def test_a_large_consistent_gain_is_accepted_on_a_small_set():
    start = np.full(27, 0.5) + np.linspace(0.0, 0.1, 27)
    replaced, record = paired_margin(start, start - 0.3)
    assert replaced and record["improvement"] > record["margin"]


def test_the_same_small_gain_is_accepted_on_a_big_set():
    small = paired_margin(*_noisy(27, gain=0.05, seed=1))
    big = paired_margin(*_noisy(20_000, gain=0.05, seed=1))
    assert not small[0] and big[0]
    assert big[1]["standard_error"] < small[1]["standard_error"]


def test_a_candidate_that_is_worse_is_refused_and_non_finite_rows_lose():
    start, candidate = _noisy(500, gain=-0.2)
    assert not paired_margin(start, candidate)[0]
    good = np.full(10, 0.1)
    assert not paired_margin(np.full(10, 1.0), np.r_[good[:9], np.inf])[0]


def test_row_weights_count_in_the_mean():
    start = np.r_[np.full(50, 1.0), np.full(50, 0.0)]
    candidate = np.r_[np.full(50, 0.0), np.full(50, 0.9)]  # better on the first half only
    assert not paired_margin(start, candidate)[0]  # 0.05 mean gain, large spread
    weights = np.r_[np.full(50, 10.0), np.full(50, 0.1)]
    assert paired_margin(start, candidate, weights=weights)[0]


# --------------------------------------------------------------------------- start only
class _CutBaseline:
    """An executor whose populations all run into their time limit."""

    def __init__(self) -> None:
        self.jobs: list[PopulationJob] = []

    def run(self, job: PopulationJob) -> PopulationOutcome:
        self.jobs.append(job)
        members = [
            MemberOutcome(
                member=i,
                setting=0,
                seed=i,
                val_loss=0.5,
                val_score=0.0,
                train_loss=0.5,
                best_epoch=1,
                epochs_run=2,
                stop_reason="deadline",
                pruned_at=None,
                val_curve=[0.5],
            )
            for i in range(3)
        ]
        return PopulationOutcome(
            members=members, findings=[[]], seconds=1.0, epochs=2, stopped_by_deadline=True
        )

    def run_many(self, jobs):
        return [self.run(j) for j in jobs]

    def close(self) -> None:
        pass


def test_a_cut_baseline_gets_the_budget_left_and_makes_the_run_start_only():
    executor = _CutBaseline()
    budget = Budget(60.0)
    job = AutoSearch(
        TrainConfig(hidden=(64,)),
        executor=executor,
        budget=budget,
        trials=None,
        population_size=8,
        log=lambda _m: None,
    )
    job.run_baseline()
    # Not stopped at its share (15% = 9 s): given the budget less the write reserve.
    seconds = executor.jobs[0].seconds
    assert seconds is not None and 0.15 * 60 < seconds <= 60 - 3
    assert job.start_only is not None and "did not finish" in job.start_only
    assert job.baseline["start_only"] == job.start_only


def test_a_budget_too_short_for_the_start_reuses_the_baseline_as_the_final_run():
    lines: list[str] = []
    # 1000 epochs without early stopping cannot end in 2 s: the baseline is cut by the clock.
    run = auto(
        dataset="digits",
        time_budget=2,
        hidden=[256, 256],
        max_epochs=1000,
        patience=0,
        log=lines.append,
    )
    record = run.metrics["auto"]
    assert record["start_only"] and "did not finish" in record["start_only"]
    assert record["final"]["reused"] and record["final"]["from"] == "the baseline"
    assert record["search"] == {} and record["repairs"] == []
    assert any("only the start configuration" in line for line in lines)
    assert any("skipped, the budget pays for the start alone" in line for line in lines)
