"""fitwell auto's final stage reuses the winner's members instead of training them again."""

from __future__ import annotations

import math

import pytest
import torch

from fitwell.api import fit_prepared, load_and_prepare, make_config, resolve_device
from fitwell.auto import auto
from fitwell.auto.executors import LocalExecutor
from fitwell.auto.reuse import final_seeds, narrow_population, reusable_members
from fitwell.data.splitting import SealedTest
from fitwell.training.loop import Trainer


def test_final_seeds_follow_the_final_runs_rule():
    assert final_seeds(5, restarts=1, ensemble=3) == [5, 6, 7]
    assert final_seeds(5, restarts=4, ensemble=1) == [5, 6, 7, 8]
    assert final_seeds(0, restarts=1, ensemble=1) == [0]


def test_a_narrowed_population_is_the_run_of_its_members_alone():
    cfg = make_config(dataset="wine", hidden=(16,), max_epochs=8, restarts=3, ensemble=1)
    prepared = load_and_prepare(cfg)
    device = resolve_device("cpu")
    both = fit_prepared([cfg.replace(lr=1e-2), cfg.replace(lr=3e-3)], prepared, device=device)
    alone = fit_prepared([cfg.replace(lr=3e-3)], prepared, device=device)
    members = reusable_members(both, 1, [cfg.seed, cfg.seed + 1])
    assert members == [3, 4]  # setting 1's first two seeds, in seed order
    assert reusable_members(both, 1, [cfg.seed + 3]) is None  # a seed that never trained
    final = cfg.replace(lr=3e-3, restarts=1, ensemble=2)
    narrowed = narrow_population(both, members, final)
    assert [m.member for m in narrowed.fit.members] == [0, 1]
    assert [m.settings.seed for m in narrowed.fit.members] == [cfg.seed, cfg.seed + 1]
    for got, want in zip(narrowed.fit.members, alone.fit.members[:2], strict=True):
        assert got.val_loss == pytest.approx(want.val_loss, rel=1e-4)
        assert got.best_epoch == want.best_epoch
        for name, tensor in got.state.items():
            assert torch.allclose(tensor, want.state[name], atol=1e-5)
    assert {row["member"] for row in narrowed.fit.history} == {0, 1}
    assert len(narrowed.fit.history) == sum(m.epochs_run for m in narrowed.fit.members)
    assert {r["member"] for r in narrowed.signals["records"]} <= {0, 1}
    assert narrowed.signals["context"]["all_members"] == [0, 1]
    assert narrowed.configs == [final]
    best = min(narrowed.fit.members, key=lambda m: m.val_loss)
    assert narrowed.fit.best == best.member


def test_the_final_stage_trains_nothing_when_the_winner_was_trained_with_its_seeds(
    monkeypatch, tmp_path
):
    """A broken learning rate, repaired, search off: the final run is the kept repair's three
    seeds as they trained (same weights, same validation losses), no population trains after
    the repairs, and the sealed test split is still read exactly once."""
    events: list[str] = []
    outcomes = []
    real_init, real_run, real_open = Trainer.__init__, LocalExecutor.run, SealedTest.open

    def trainer_init(self, *args, **kwargs):
        events.append("train")
        real_init(self, *args, **kwargs)

    def executor_run(self, job):
        out = real_run(self, job)
        outcomes.append(out)
        events.append("population done")
        return out

    def counting_open(self):
        events.append("test opened")
        return real_open(self)

    monkeypatch.setattr(Trainer, "__init__", trainer_init)
    monkeypatch.setattr(LocalExecutor, "run", executor_run)
    monkeypatch.setattr(SealedTest, "open", counting_open)
    run = auto(
        dataset="wine",
        lr=1.0,
        search=False,
        time_budget=None,
        max_epochs=30,
        out=tmp_path / "r",
    )
    final = run.metrics["auto"]["final"]
    assert final["reused"] and final["from"].startswith("repair round")
    assert final["members"] == 3  # restarts 1, ensemble 3: seeds seed .. seed+2
    assert events.count("test opened") == 1
    last_population = len(events) - 1 - events[::-1].index("population done")
    assert "train" not in events[last_population:]
    # The final members are the kept repair's, weights and losses alike.
    kept = [
        m
        for out in outcomes
        for m in out.fitted.fit.members
        if math.isclose(m.settings.lr, run.extra["config"].lr)
    ]
    assert len(kept) == 3
    for got, want in zip(run.extra["fit"].members, kept, strict=True):
        assert got.settings.seed == want.settings.seed
        assert got.val_loss == want.val_loss
        for name, tensor in got.state.items():
            assert torch.equal(tensor, want.state[name])
    assert run.metrics["restarts"]["val_losses"] == [m.val_loss for m in kept]
    assert (tmp_path / "r" / "report.html").is_file()


def test_the_final_stage_trains_when_it_needs_more_seeds_than_were_trained(monkeypatch):
    trained: list[int] = []
    real_init = Trainer.__init__

    def trainer_init(self, arch, members, *args, **kwargs):
        trained.append(len(members))
        real_init(self, arch, members, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", trainer_init)
    run = auto(
        dataset="iris",
        search=False,
        repair=False,
        time_budget=None,
        max_epochs=10,
        restarts=5,
        ensemble=1,
    )
    assert not run.metrics["auto"]["final"]["reused"]
    assert 5 in trained  # the final population, five seeds
    assert len(run.extra["fit"].members) == 5


def test_a_confirmed_search_winner_is_the_final_run_without_training_again(monkeypatch):
    """A start too small to learn wine (2 sigmoid units): a search trial wins, and its
    confirmation (the baseline's seeds, trained whole) is the final run: nothing trains after
    the confirmations, and the test split is read once."""
    events: list[str] = []
    real_init, real_run, real_open = Trainer.__init__, LocalExecutor.run, SealedTest.open

    def trainer_init(self, *args, **kwargs):
        events.append("train")
        real_init(self, *args, **kwargs)

    def executor_run(self, job):
        out = real_run(self, job)
        events.append(f"done {job.label}")
        return out

    def counting_open(self):
        events.append("test opened")
        return real_open(self)

    monkeypatch.setattr(Trainer, "__init__", trainer_init)
    monkeypatch.setattr(LocalExecutor, "run", executor_run)
    monkeypatch.setattr(SealedTest, "open", counting_open)
    run = auto(
        dataset="wine",
        hidden=(2,),
        activation="sigmoid",
        repair=False,
        trials=4,
        time_budget="40s",
        max_epochs=15,
    )
    info = run.metrics["auto"]
    assert info["winner"].startswith("search trial")
    final = info["final"]
    assert final["reused"] and final["from"].startswith("the confirmation of trial")
    assert events.count("test opened") == 1
    last_confirm = len(events) - 1 - events[::-1].index("done confirm")
    assert "train" not in events[last_confirm:]


class _Executor:
    def __init__(self, keeps_weights: bool) -> None:
        self.keeps_weights = keeps_weights


@pytest.mark.parametrize(
    ("keeps_weights", "restarts", "reserve"),
    [(True, 1, 5.0), (False, 1, 40.0), (True, 5, 40.0)],
)
def test_the_search_keeps_time_for_a_final_run_only_when_it_will_train_one(
    keeps_weights, restarts, reserve
):
    from fitwell.auto.budget import Budget
    from fitwell.auto.pipeline import AutoSearch

    start = make_config(dataset="wine", restarts=restarts)
    job = AutoSearch(
        start,
        executor=_Executor(keeps_weights),  # type: ignore[arg-type]
        budget=Budget(100.0),
        trials=None,
        population_size=8,
        log=lambda line: None,
    )
    job.final_estimate = 40.0
    assert job.reuses_members() is (keeps_weights and restarts <= 3)
    assert job._search_left() == pytest.approx(100.0 - reserve, abs=0.5)
