"""fitwell auto's repair rounds: candidates in the table's order, successive halving across
candidates, a round that ends at the first kept change, and findings judged per setting."""

from __future__ import annotations

import math
from types import SimpleNamespace

from fitwell.api import load_and_prepare, make_config, resolve_device
from fitwell.auto import repairs as table
from fitwell.auto.budget import Budget
from fitwell.auto.executors import (
    LocalExecutor,
    MemberOutcome,
    PopulationJob,
    PopulationOutcome,
    setting_members,
)
from fitwell.auto.pipeline import AutoSearch
from fitwell.auto.pruning import RungPruner, group_loss
from fitwell.config import TrainConfig


# --------------------------------------------------------------------------- rung rule by setting
def test_group_loss_is_the_median_with_diverged_seeds_last():
    assert group_loss([0.3, 0.1, 0.2]) == 0.2
    assert group_loss([0.3, math.inf, 0.1]) == 0.3
    assert group_loss([math.nan, math.inf, 0.1]) == math.inf
    assert group_loss([0.1, 0.3]) == 0.2
    assert group_loss([]) == math.inf


def test_setting_members_follow_each_settings_restarts():
    assert setting_members([{"restarts": 3}, {"restarts": 3}]) == [[0, 1, 2], [3, 4, 5]]
    assert setting_members([{"restarts": 2}, {}]) == [[0, 1], [2]]


def test_rung_pruner_by_setting_drops_whole_settings_on_their_median():
    stopped: dict[int, str] = {}
    trainer = SimpleNamespace(epoch=0, stop_member=lambda m, r: stopped.setdefault(m, r))
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    pruner = RungPruner([2], eta=3, groups=groups)
    # Setting 1 has the single best seed (0.05) but the worst median; setting 2 the best median.
    best = {0: 0.4, 1: 0.5, 2: 0.6, 3: 0.05, 4: 0.9, 5: 0.95, 6: 0.3, 7: 0.35, 8: math.nan}
    for epoch in (1, 2):
        trainer.epoch = epoch
        logs = {m: {"val_loss": v + (0.1 if epoch == 1 else 0.0)} for m, v in best.items()}
        pruner.on_epoch_end(trainer, logs=logs)
    assert sorted(stopped) == [0, 1, 2, 3, 4, 5]
    assert set(pruner.pruned.values()) == {2}
    assert "settings" in stopped[0]


def test_rung_pruner_by_setting_leaves_finished_settings_out_of_the_contest():
    stopped: dict[int, str] = {}
    trainer = SimpleNamespace(epoch=3, stop_member=lambda m, r: stopped.setdefault(m, r))
    pruner = RungPruner([3], eta=3, groups=[[0, 1], [2, 3]])
    # Setting 0's seeds stopped early (not in the logs): setting 1 is alone and goes on.
    pruner.on_epoch_end(trainer, logs={2: {"val_loss": 0.9}, 3: {"val_loss": 0.8}})
    assert stopped == {}


# --------------------------------------------------------------------------- repair rounds
class ScriptedExecutor:
    """Returns made-up outcomes: each setting's seeds get the losses and findings that
    ``script(settings)`` gives; records the populations it was asked to train."""

    def __init__(self, script):
        self.script = script
        self.jobs: list[PopulationJob] = []

    def run(self, job: PopulationJob) -> PopulationOutcome:
        self.jobs.append(job)
        members, findings = [], []
        for i, s in enumerate(job.settings):
            losses, codes, pruned_at = self.script(s)
            findings.append([{"code": c, "severity": "warning"} for c in codes])
            for seed, loss in enumerate(losses):
                members.append(
                    MemberOutcome(
                        member=len(members),
                        setting=i,
                        seed=seed,
                        val_loss=loss,
                        val_score=0.0,
                        train_loss=loss,
                        best_epoch=1,
                        epochs_run=10,
                        stop_reason="",
                        pruned_at=pruned_at,
                        val_curve=[loss],
                    )
                )
        return PopulationOutcome(
            members=members, findings=findings, seconds=0.0, epochs=10, stopped_by_deadline=False
        )

    def run_many(self, jobs):
        return [self.run(j) for j in jobs]

    def close(self):
        pass


def _search(executor, **start) -> AutoSearch:
    job = AutoSearch(
        TrainConfig(**({"hidden": (64, 64)} | start)),
        executor=executor,
        budget=Budget(None),
        trials=None,
        population_size=8,
        log=lambda _m: None,
    )
    job.current_losses = [2.3, 2.3, 2.3]
    return job


def test_a_round_tries_candidates_in_table_order_and_stops_at_the_first_kept():
    # dead_relu: leaky_relu (a shape change) first; then bias 0.01; then lr /3 (per member).
    def script(s):
        if s.get("activation") == "leaky_relu":
            return [0.2, 0.21, 0.22], [], None
        return [2.3, 2.3, 2.3], ["dead_relu"], None

    executor = ScriptedExecutor(script)
    job = _search(executor, activation="relu", bias_init=-5.0)
    job._repair_round(1, "dead_relu")
    assert len(executor.jobs) == 1  # only leaky_relu's population trained
    assert executor.jobs[0].settings[0]["activation"] == "leaky_relu"
    records = {r["change"]: r for r in job.repairs}
    assert records["leaky_relu"]["kept"] and records["leaky_relu"].get("chosen")
    assert not records["lr /3"]["kept"] and "not tried" in records["lr /3"]["reason"]
    assert job.current["activation"] == "leaky_relu"
    assert job.trained and job.trained[0][3] == "repair round 1 (leaky_relu)"


def test_a_round_goes_on_while_no_candidate_is_kept():
    def script(s):
        if s.get("bias_init") == 0.01:
            return [0.2, 0.21, 0.22], [], None
        return [2.3, 2.3, 2.3], ["dead_relu"], None

    executor = ScriptedExecutor(script)
    job = _search(executor, activation="relu", bias_init=-5.0)
    job._repair_round(1, "dead_relu")
    assert [j.settings[0].get("bias_init") for j in executor.jobs] == [-5.0, 0.01]
    assert job.current["bias_init"] == 0.01


def test_per_member_candidates_compete_by_setting_and_a_pruned_one_is_not_kept():
    def script(s):
        lr = s["lr"]
        if math.isclose(lr, 0.5 / 3):  # stopped at a rung, though its loss looks fine
            return [0.1, 0.1, 0.1], [], 4
        return [0.3, 0.31, 0.32], [], None

    executor = ScriptedExecutor(script)
    job = _search(executor, lr=0.5, max_epochs=30)
    job._repair_round(1, "lr_too_high")
    assert len(executor.jobs) == 1 and len(executor.jobs[0].settings) == 3
    assert executor.jobs[0].rank_settings and executor.jobs[0].rungs == [4, 12]
    records = {r["change"]: r for r in job.repairs}
    assert not records["lr /3"]["kept"] and "rung epoch 4" in records["lr /3"]["reason"]
    assert records["lr /10"]["kept"]
    assert math.isclose(job.current["lr"], 0.05)  # the lowest median of the kept: a tie, first


def test_a_candidate_trained_in_an_earlier_round_is_not_trained_again():
    # vanishing gradients, then saturation: "relu + kaiming init" and "batch norm" are in both.
    def script(s):
        return [2.0, 2.1, 2.2], ["vanishing_gradients", "saturated_activations"], None

    executor = ScriptedExecutor(script)
    job = _search(executor, activation="sigmoid", hidden=(32,) * 7)
    job._repair_round(1, "vanishing_gradients")
    assert len(executor.jobs) == 3  # three shape changes, none kept
    job._repair_round(2, "saturated_activations")
    assert len(executor.jobs) == 3
    again = [r for r in job.repairs if r["round"] == 2]
    assert [r["change"] for r in again] == ["relu + kaiming init", "batch norm"]
    assert all(r["member_epochs"] == 0 and not r["kept"] for r in again)


def test_early_stopping_is_the_first_overfitting_repair_when_it_is_off():
    off = TrainConfig(patience=0).to_dict()
    assert table.candidates("overfitting", off)[0].changes(off) == {"patience": 20}
    on = TrainConfig().to_dict()
    assert "early stopping" not in table.candidates("overfitting", on)[0].name


# --------------------------------------------------------------------------- findings per setting
def test_a_settings_findings_ignore_the_other_settings_divergence():
    cfg = make_config(dataset="wine", hidden=(16,), max_epochs=6, optimizer="sgd")
    prepared = load_and_prepare(cfg)
    executor = LocalExecutor(prepared, device=resolve_device("cpu"), threads=None)
    settings = [
        cfg.to_dict() | {"lr": lr, "restarts": 3, "ensemble": 1, "seed": 0} for lr in (50.0, 0.01)
    ]
    out = executor.run(PopulationJob(settings=settings, check_capacity=False))
    codes = [{f["code"] for f in found if f["severity"] != "info"} for found in out.findings]
    assert "divergence" in codes[0]
    assert "divergence" not in codes[1]


class InputsExecutor(ScriptedExecutor):
    """A scripted executor that can train populations with other input preprocessing."""

    prepares_inputs = True


def test_unscaled_inputs_are_standardized_first_for_saturated_units():
    def script(s):
        if s.get("scale"):
            return [0.1, 0.11, 0.12], [], None
        return [2.0, 2.1, 2.2], ["saturated_activations"], None

    executor = InputsExecutor(script)
    job = _search(executor, scale=False, activation="tanh", init_scale=8.0)
    job._repair_round(1, "saturated_activations")
    assert len(executor.jobs) == 1 and executor.jobs[0].settings[0]["scale"] is True
    record = job.repairs[0]
    assert record["change"].startswith("standardized inputs") and record["kept"]
    assert job.current["scale"] is True and job.current["init_scale"] == 1.0
    assert job.current["activation"] == "tanh"


def test_an_executor_with_inputs_prepared_once_does_not_try_scaling():
    def script(s):
        return [2.0, 2.1, 2.2], ["saturated_activations"], None

    executor = ScriptedExecutor(script)
    job = _search(executor, scale=False, activation="tanh", init_scale=8.0)
    job._repair_round(1, "saturated_activations")
    assert all(j.settings[0]["scale"] is False for j in executor.jobs)
    skipped = next(r for r in job.repairs if r["change"].startswith("standardized"))
    assert not skipped["kept"] and "prepared once" in skipped["reason"]


def test_the_findings_evidence_puts_scaling_first_for_divergence():
    def script(s):
        return [2.0, 2.1, 2.2], ["divergence"], None

    executor = InputsExecutor(script)
    job = _search(executor, scale=False, lr=0.3)
    job.current_findings = [
        {"code": "divergence", "severity": "error", "evidence": {"inputs_unscaled": True}}
    ]
    job._repair_round(1, "divergence")
    assert executor.jobs[0].settings == [s | {"scale": True} for s in executor.jobs[0].settings]
    assert job.repairs[0]["change"].startswith("standardized inputs")


def test_heavy_dropout_is_removed_first_when_it_leaves_units_dead():
    # "no regularization" leads (dropout 0.9), lr /3 trains beside it; the round ends there.
    def script(s):
        if s.get("dropout") == 0.0:
            return [0.1, 0.11, 0.12], [], None
        return [2.3, 2.3, 2.31], ["dead_relu"], None

    executor = ScriptedExecutor(script)
    job = _search(executor, dropout=0.9)
    job._repair_round(1, "dead_relu")
    assert len(executor.jobs) == 1 and len(executor.jobs[0].settings) == 2  # lr /3 beside it
    records = {r["change"]: r for r in job.repairs}
    assert records["no regularization"]["kept"] and not records["lr /3"]["kept"]
    assert "not tried" in records["leaky_relu"]["reason"]
    assert job.current["dropout"] == 0.0
