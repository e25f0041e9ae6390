"""``fitwell auto``: diagnose, repair, search as populations, restart, and test once.

The table is loaded, split and preprocessed once. Every stage trains populations on those
arrays through an executor and reads validation results only; the last stage trains the winner's
restarts with :func:`fitwell.api.train_population`, which opens the sealed test split once.

Stages and their cumulative share of the time budget (:mod:`fitwell.auto.budget`):
1. baseline (15%): the start configuration as a population of 3 seeds, with the doctor; it is
   not cut at its share, and when the budget cannot pay for more the run is the start alone;
2. repairs (to 35%): the doctor's findings drive the repair table (:mod:`fitwell.auto.repairs`),
   at most two rounds; a change is kept only when it beats the seeds' spread and its finding
   is gone; candidates compete by successive halving and a round ends at its first kept change;
3. search (to 80%): Optuna TPE from the repaired configuration (:mod:`fitwell.auto.search`);
   its winner replaces that configuration only beyond the validation set's noise
   (:mod:`fitwell.auto.margin`);
4. restarts (to 100%): the winner trained with the start configuration's restarts and ensemble
   (or, when an earlier stage already trained it with those seeds, its members reused:
   :mod:`fitwell.auto.reuse`), then the one read of the test split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fitwell import runs
from fitwell.auto import repairs as repair_table
from fitwell.auto import search as search_space
from fitwell.auto import starts as start_choice
from fitwell.auto.budget import SHARES, Budget, Deadline
from fitwell.auto.executors import (
    Executor,
    PopulationJob,
    PopulationOutcome,
    PreparedInputs,
    make_executor,
)
from fitwell.auto.margin import paired_margin
from fitwell.auto.pruning import rungs_for
from fitwell.auto.reuse import final_seeds, narrow_population, reusable_members
from fitwell.config import TrainConfig, resolve_front, resolve_hidden
from fitwell.errors import InputError

BASELINE_SEEDS = 3
# Findings that a run stopped early by the clock would show whatever its configuration.
SHOWN_BY_A_CUT = frozenset({"slow_convergence", "underfitting", "overfitting", "local_minimum"})
FINAL_SAFETY = 1.25
# The best search trials retrained with the baseline's seeds before one is chosen: a single
# seed's lowest validation loss out of many trials is an optimistic pick (the winner's curse).
CONFIRM_TOP = 2  # the restarts stage's time estimate, with room for the run's files
# An alternative start (:mod:`fitwell.auto.starts`) may take this share of the time left; it
# gives up after its first epochs when their pace would not finish it in that time.
START_SHARE = 0.5
START_PROJECT_EPOCHS = 3
POPULATION_SIZE = 8
REPAIR_ROUNDS = 2
# With a study shared by several drivers: seconds to wait for the others' running trials before
# confirming (plus three of this driver's waves).
PEER_WAIT = 30.0
REPAIRS_FILE = "repairs.json"
TRIALS_FILE = "trials.csv"
AUTO_STATE_FILE = "auto_state.json"
AUTO_STATE_FORMAT = "fitwell-auto-state"
# Files of the search that live in the run directory beside the run's own.
AUTO_FILES = (
    AUTO_STATE_FILE,
    REPAIRS_FILE,
    search_space.STUDY_FILE,
    search_space.STUDY_FILE + ".lock",
)
_NOT_SEARCHED = start_choice.DATA_SETTINGS


def parse_budget(value: str | float | int | None) -> float | None:
    """``90``, ``"90s"``, ``"10m"``, ``"1.5h"`` -> seconds; ``None`` or ``"none"``: no limit."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("none", "off", ""):
            return None
        units = {"s": 1.0, "m": 60.0, "h": 3600.0}
        factor = units.get(text[-1], None)
        number = text[:-1] if factor is not None else text
        try:
            seconds = float(number) * (factor or 1.0)
        except ValueError:
            raise InputError(
                f"`time_budget` must be seconds or a duration such as 90s, 10m, 1h; got {value!r}."
            ) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"`time_budget` must be a positive duration; got {value!r}.")
    return seconds


def _seeded(settings: dict[str, Any], *, seed: int, seeds: int) -> dict[str, Any]:
    return settings | {"seed": seed, "restarts": seeds, "ensemble": 1}


def _losses(outcome: PopulationOutcome, setting: int) -> list[float]:
    return [m.val_loss for m in outcome.of_setting(setting)]


_NONE: tuple[Any, int, int, bool] = (None, 0, 0, False)


def _key(settings: dict[str, Any]) -> str:
    """Settings as a comparable key (lists and tuples alike)."""
    import json

    return json.dumps(settings, sort_keys=True, default=str)


def _codes(findings: Sequence[dict[str, Any]]) -> list[str]:
    return [str(f["code"]) for f in findings if f.get("severity") in ("error", "warning")]


def _stage_line(name: str, budget: Budget) -> str:
    if budget.seconds is None:
        return name
    share = SHARES[name]
    return f"{name} (until {share:.0%} of the budget: {budget.left(name):.0f} s left)"


class AutoSearch:
    """One ``fitwell auto`` run: the state the stages share, and each stage as a method."""

    def __init__(
        self,
        start: TrainConfig,
        *,
        executor: Executor,
        budget: Budget,
        trials: int | None,
        population_size: int,
        log: Callable[[str], None],
        prune: bool = True,
        parallel: int = 1,
        shared: bool = False,
    ) -> None:
        self.start = start
        self.seed = start.seed
        self.executor = executor
        self.budget = budget
        self.trials = trials
        self.population_size = population_size
        self.prune = prune
        self.parallel = parallel
        self.shared = shared
        self.log = log
        self.current = start.to_dict()
        self.current_losses: list[float] = []
        # The current configuration's per-row validation losses (its seeds' averaged
        # prediction) and the rows' weights: what a search winner must beat by the margin.
        self.current_rows: list[float] = []
        self.val_weights: list[float] | None = None
        # Per-row losses of the confirmed trials, and of the best search trial so far.
        self.confirmed_rows: dict[int, list[float]] = {}
        self.trial_rows: dict[int, list[float]] = {}
        self.margin: dict[str, Any] | None = None
        # Why only the start configuration is trained (the budget cannot pay for more).
        self.start_only: str | None = None
        self.current_findings: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] = {}
        self.repairs: list[dict[str, Any]] = []
        self.restarts = max(start.restarts, 1)
        self.stages: list[dict[str, Any]] = []
        self.search_record: dict[str, Any] = {}
        self.seconds_per_population: float | None = None
        # Seconds the restarts stage is expected to need (from the baseline, then from the best
        # trial's own cost): the search ends early enough to leave it that.
        self.final_estimate = 0.0
        self.baseline_cut = False
        self.confirmed: list[dict[str, Any]] = []
        # The populations that trained the configuration the restarts stage may choose, with
        # the baseline's seeds: (settings, outcome, setting index, what it was).
        self.trained: list[tuple[dict[str, Any], PopulationOutcome, int, str]] = []
        # Repair candidates trained so far, by their settings: (outcome, setting index, round,
        # whether it trained whole: not stopped at a rung nor by the budget).
        self.evaluated: dict[str, tuple[PopulationOutcome, int, int, bool]] = {}

    # ------------------------------------------------------------------ helpers
    def reuses_members(self) -> bool:
        """Whether the final run will be members already trained, whichever candidate wins:
        the executor hands back trained populations, every candidate trains the final run's
        seeds (restarts and ensemble at most the baseline's 3), and no adaptive L1 weights
        are left for the final run to compute. The restarts stage then trains nothing, and
        :meth:`winner` picks only among candidates trained whole (:meth:`reusable`)."""
        adaptive = self.current.get("l1_inputs_adaptive") and (
            self.current.get("l1_inputs_weights") is None
        )
        return (
            bool(getattr(self.executor, "keeps_weights", False))
            and self._final_seeds() <= BASELINE_SEEDS
            and not adaptive
        )

    def _search_left(self) -> float:
        """Seconds the search may still use: to its share's end, or later when the restarts
        stage needs less than its share, earlier when it needs more. When the final run
        reuses trained members, the restarts stage needs only the time to write the run."""
        if self.budget.seconds is None:
            return math.inf
        if self.reuses_members():
            reserve = min(WRITE_RESERVE * self.budget.seconds, WRITE_RESERVE_MAX)
        else:
            reserve = max(self.final_estimate, (1.0 - SHARES["search"]) * self.budget.seconds)
            reserve = min(reserve, 0.5 * self.budget.seconds)  # the search keeps some time
        return self.budget.seconds - self.budget.elapsed() - reserve

    def _run(
        self,
        settings: list[dict[str, Any]],
        stage: str,
        *,
        label: str,
        rungs: Sequence[int] = (),
        seconds: float | None = None,
        rank_settings: bool = False,
        project_after: int | None = None,
    ) -> Any:
        left = self.budget.left(stage) if seconds is None else seconds
        job = PopulationJob(
            settings=settings,
            seconds=None if math.isinf(left) else max(left, 0.0),
            rungs=list(rungs),
            label=label,
            check_capacity=stage != "search",
            rank_settings=rank_settings,
            project_after=project_after,
        )
        return self.executor.run(job)

    def _timed(self, name: str, started: float) -> None:
        seconds = time.perf_counter() - started
        share = None if self.budget.seconds is None else seconds / self.budget.seconds
        self.stages.append({"stage": name, "seconds": round(seconds, 3), "share": share})

    # ------------------------------------------------------------------ stage 1
    def run_baseline(self) -> list[dict[str, Any]]:
        started = time.perf_counter()
        self.log(f"[1/5] {_stage_line('baseline', self.budget)}: start config x {BASELINE_SEEDS}")
        # The baseline is not cut at its share's end: a start cut by the clock is a worse
        # start than none, and the later stages only take the time it leaves. Only the last
        # deadline (the budget less the write reserve) stops it.
        last = _final_deadline(self.budget)
        out = self._run(
            [_seeded(self.current, seed=self.seed, seeds=BASELINE_SEEDS)],
            "baseline",
            label="baseline",
            seconds=None if last is None else last - time.perf_counter(),
        )
        self.seconds_per_population = out.seconds
        self.final_estimate = FINAL_SAFETY * out.seconds * self._final_seeds() / BASELINE_SEEDS
        self.current_losses = _losses(out, 0)
        self.current_rows, self.val_weights = out.rows_of(0), out.val_weights
        self.current_findings = out.findings[0]
        self.baseline_cut = out.stopped_by_deadline
        self.trained = [(dict(self.current), out, 0, "the baseline")]
        self.baseline = {
            "val_losses": self.current_losses,
            "median_val_loss": repair_table.median_loss(self.current_losses),
            "spread": repair_table.seed_spread(self.current_losses),
            "findings": [
                {k: f.get(k) for k in ("code", "severity", "advice")} for f in out.findings[0]
            ],
            "seconds": round(out.seconds, 3),
            "stopped_by_deadline": out.stopped_by_deadline,
        }
        codes = _codes(out.findings[0])
        self.log(
            f"      median val loss {self.baseline['median_val_loss']:.4g} "
            f"(seed spread {self.baseline['spread']:.3g}); findings: "
            + (", ".join(dict.fromkeys(codes)) if codes else "none")  # each code once
        )
        self.start_only = self._start_only(out, last)
        if self.start_only is not None:
            self.baseline["start_only"] = self.start_only
            self.log(f"      only the start configuration: {self.start_only}")
        self._timed("baseline", started)
        return out.findings[0]

    def run_starts(self, candidates: Sequence[tuple[str, dict[str, Any]]], prepared: Any) -> None:
        """Train each alternative start as its own population of the baseline's seeds and
        start from it when, on the same validation rows, its ensemble beats the baseline's by
        more than the noise of the comparison (:func:`fitwell.auto.starts.better_start`).

        An alternative may take half of the time left (:meth:`_start_seconds`) and gives up
        after its first epochs when their pace would not finish it in that time; one cut by the
        clock is not compared, since a cut run says nothing of its recipe."""
        if not candidates:
            return
        started = time.perf_counter()
        records: list[dict[str, Any]] = []
        self.baseline["starts"] = records
        base_out = self.trained[0][1]
        base_rows = start_choice.ensemble_row_losses(
            base_out.fitted, 0, prepared.x_val, prepared.y_val
        )
        chosen_name = "defaults"
        for name, settings in candidates:
            record: dict[str, Any] = {"start": name, "kept": False}
            records.append(record)
            seeded = _seeded(settings, seed=self.seed, seeds=BASELINE_SEEDS)
            allowed = self._start_seconds()
            if self.baseline_cut or self.start_only or base_rows is None or allowed <= 0:
                record["reason"] = (
                    "the baseline was cut by the budget"
                    if self.baseline_cut
                    else "the budget pays for the start configuration alone"
                    if self.start_only
                    else "the baseline's weights are not here to compare with"
                    if base_rows is None
                    else "no time left for it"
                )
                self.log(f"      start {name}: not tried ({record['reason']})")
                continue
            out = self._run(
                [seeded],
                "repairs",
                label=f"start {name}",
                seconds=allowed,
                project_after=None if math.isinf(allowed) else START_PROJECT_EPOCHS,
            )
            record["seconds"] = round(out.seconds, 3)
            rows = (
                None
                if out.error is not None or out.stopped_by_deadline
                else start_choice.ensemble_row_losses(out.fitted, 0, prepared.x_val, prepared.y_val)
            )
            if rows is None:
                record["reason"] = out.error or (
                    f"would not finish in the {allowed:.0f} s it may take: not compared"
                )
                self.log(f"      start {name}: {record['reason']}")
                continue
            better, gain, margin = start_choice.better_start(base_rows, rows, task=prepared.task)
            what = "error rate" if prepared.task == "classification" else "squared error"
            record.update(
                {
                    "measure": f"validation {what} of the ensemble",
                    "value": float(rows.mean()),
                    "defaults_value": float(base_rows.mean()),
                    "median_val_loss": repair_table.median_loss(_losses(out, 0)),
                    "gain": gain,
                    "margin": margin,
                    "kept": better,
                    "findings": _codes(out.findings[0]),
                }
            )
            self.log(
                f"      start {name}: validation {what} of its ensemble {rows.mean():.4g} vs "
                f"{base_rows.mean():.4g} (gain {gain:.4g}, margin {margin:.4g}): "
                + ("starting from it" if better else "keeping " + chosen_name)
            )
            if better:
                chosen_name, base_rows = name, rows
                self.current = dict(settings)
                self.current_losses = _losses(out, 0)
                self.current_rows = out.rows_of(0)
                self.current_findings = out.findings[0]
                self.trained.append((dict(settings), out, 0, f"the {name} start"))
                self.seconds_per_population = out.seconds
                self.final_estimate = (
                    FINAL_SAFETY * out.seconds * self._final_seeds() / BASELINE_SEEDS
                )
        self.baseline["start"] = chosen_name
        self._timed("starts", started)

    def _start_seconds(self) -> float:
        """Seconds an alternative start may take: ``START_SHARE`` of what is left once the
        restarts stage's estimate is set aside (so the search keeps the rest)."""
        if self.budget.seconds is None:
            return math.inf
        left = self.budget.seconds - self.budget.elapsed() - self.final_estimate
        return START_SHARE * left

    def _start_only(self, out: PopulationOutcome, last: float | None) -> str | None:
        """Why the budget pays for the start configuration alone, or ``None`` when it pays for
        more: the baseline was cut by the last deadline, or what is left of the budget could not
        train another population like it (a repair candidate, or a confirmation of a search
        winner, trains the same seeds)."""
        if last is None or self.budget.seconds is None:
            return None
        share = SHARES["baseline"] * self.budget.seconds
        if out.stopped_by_deadline:
            return (
                f"the baseline did not finish within the budget ({out.seconds:.0f} s, "
                f"its share {share:.0f} s): its members are the final run; no repairs, no search"
            )
        left = last - time.perf_counter()
        if left < out.seconds:
            return (
                f"the baseline took {out.seconds:.0f} s (its share {share:.0f} s) and "
                f"{max(left, 0.0):.0f} s are left, too few to train another configuration as "
                "long: its members are the final run; no repairs, no search"
            )
        return None

    # ------------------------------------------------------------------ stage 2
    def _final_seeds(self) -> int:
        return max(self.restarts, self.start.ensemble)

    def _confirm_estimate(self) -> float:
        """Seconds one confirmation is expected to take: the final run's estimate, for the
        baseline's seeds."""
        return self.final_estimate * BASELINE_SEEDS / self._final_seeds()

    def run_repairs(self) -> None:
        started = time.perf_counter()
        tried: set[str] = set()
        cut_codes = [
            c for c in repair_table.repairable(self.current_findings) if c in SHOWN_BY_A_CUT
        ]
        if self.baseline_cut and cut_codes:
            # A run stopped by the clock is unfinished: these findings describe the cut, not the
            # configuration. Faults of the optimization itself show in the first epochs and
            # are still repaired.
            tried.update(cut_codes)
            self.log(
                f"[2/5] repairs: {', '.join(cut_codes)} not repaired: the baseline was cut short "
                "by the budget, so these findings may describe the cut"
            )
            self.repairs.append(
                {
                    "round": 0,
                    "finding": ", ".join(cut_codes),
                    "change": "none",
                    "kept": False,
                    "reason": "the baseline was cut short by the time budget; these findings "
                    "may describe an unfinished run, so they were not repaired",
                }
            )
        round_no = 0
        while round_no < REPAIR_ROUNDS:
            codes = [c for c in repair_table.repairable(self.current_findings) if c not in tried]
            if not codes:
                break
            round_no += 1
            code = codes[0]
            tried.add(code)
            if code in repair_table.RESTARTS_ONLY:
                change = repair_table.REPAIRS[code][0]
                before_restarts = self.restarts
                self.restarts = int(change.changes({"restarts": self.restarts})["restarts"])
                restarts_record: dict[str, Any] = {
                    "round": round_no,
                    "finding": code,
                    "change": change.name,
                    "settings": {"restarts": self.restarts},
                    "kept": True,
                    "reason": "applied in the restarts stage (more seeds, best kept)",
                }
                self.repairs.append(restarts_record)
                self.log(f"[2/5] repair {code}: {change.name} -> restarts {self.restarts}")
                rest = [c for c in repair_table.candidates(code, self.current) if c != change]
                if not rest or self.budget.left("repairs") <= 0:
                    round_no -= 1  # no population trained: it does not use up a round
                    continue
                self._repair_round(round_no, code, rest)
                if code not in _codes(self.current_findings):
                    # A kept change made the seeds agree: the extra restarts are not needed.
                    self.restarts = before_restarts
                    restarts_record["kept"] = False
                    restarts_record["reason"] = (
                        f"not needed: after a kept change `{code}` is gone from the seeds"
                    )
                continue
            if self.budget.left("repairs") <= 0:
                self.log(f"[2/5] repair {code}: skipped, the repairs' share of the budget is used")
                break
            self._repair_round(round_no, code)
        self.evaluated.clear()  # the candidates' weights: only the kept one's are still needed
        self._timed("repairs", started)

    def _repair_round(
        self, round_no: int, code: str, changes: list[repair_table.Change] | None = None
    ) -> None:
        """Try the changes for ``code`` in the table's order and keep the best that passes.

        Changes of per-member settings train together as one population (at the place of the
        first of them in the table's order), each shape change as its own. Inside a population
        the candidates compete by successive halving (the rung rule of
        :mod:`fitwell.auto.pruning`, settings ranked by their seeds' median), so the ones far
        behind stop after a few epochs. The round ends at the first population with a kept
        change: the later candidates are not trained.
        """
        if changes is None:
            changes = repair_table.candidates(code, self.current, self._evidence(code))
        if not getattr(self.executor, "prepares_inputs", False):
            # An executor that trains on data prepared once cannot try another preprocessing.
            for c in [c for c in changes if repair_table.changes_inputs(c, self.current)]:
                changes.remove(c)
                self.repairs.append(
                    {
                        "round": round_no,
                        "finding": code,
                        "change": c.name,
                        "kept": False,
                        "reason": "not tried: this executor trains on inputs prepared once",
                    }
                )
        self.log(
            f"[2/5] {_stage_line('repairs', self.budget)}: round {round_no}, `{code}`: "
            + "; ".join(c.name for c in changes)
        )
        same = [c for c in changes if c.same_shape(self.current)]
        groups: list[list[repair_table.Change]] = []
        for c in changes:
            if c not in same:
                groups.append([c])
            elif not any(c in g for g in groups):
                groups.append(same)
        rungs = rungs_for(int(self.current.get("max_epochs", 200))) if self.prune else []
        best: tuple[float, dict[str, Any], list[float], list[dict[str, Any]], Any] | None = None
        for n, group in enumerate(groups):
            settings = [self.current | c.changes(self.current) for c in group]
            # A candidate already trained from this same configuration (an earlier round's, for
            # another finding) is the same population again: its result is taken, not retrained.
            fresh = [i for i, s in enumerate(settings) if not self.evaluated.get(_key(s), _NONE)[3]]
            if fresh:
                try:
                    out = self._run(
                        [_seeded(settings[i], seed=self.seed, seeds=BASELINE_SEEDS) for i in fresh],
                        "repairs",
                        label=f"repair {code}",
                        rungs=rungs if len(fresh) > 1 else (),
                        rank_settings=True,
                    )
                except InputError as exc:  # a change the data cannot take (e.g. too many layers)
                    for c in group:
                        self.repairs.append(
                            {
                                "round": round_no,
                                "finding": code,
                                "change": c.name,
                                "kept": False,
                                "reason": f"could not train: {exc}",
                            }
                        )
                    continue
                for j, i in enumerate(fresh):
                    whole = not out.stopped_by_deadline and all(
                        m.pruned_at is None for m in out.of_setting(j)
                    )
                    self.evaluated[_key(settings[i])] = (out, j, round_no, whole)
            for i, change in enumerate(group):
                out, index, trained_in, _ = self.evaluated[_key(settings[i])]
                if i not in fresh:
                    self.log(f"      {change.name}: trained in round {trained_in}, not again")
                losses, findings = _losses(out, index), out.findings[index]
                kept, reason = repair_table.accept_repair(
                    self.current_losses, losses, code=code, codes_after=_codes(findings)
                )
                pruned = [m.pruned_at for m in out.of_setting(index) if m.pruned_at is not None]
                if pruned:
                    # Its seeds stopped early: a longer run is what the final stage would
                    # train, so its losses do not speak for the change.
                    kept, reason = (
                        False,
                        (
                            f"stopped at rung epoch {min(pruned)}: another candidate of the round "
                            "was ahead (successive halving)"
                        ),
                    )
                if out.stopped_by_deadline:
                    reason += " (training cut short by the budget)"
                record = {
                    "round": round_no,
                    "finding": code,
                    "change": change.name,
                    "settings": change.changes(self.current),
                    "val_loss_before": repair_table.median_loss(self.current_losses),
                    "val_loss_after": repair_table.median_loss(losses),
                    "spread_before": repair_table.seed_spread(self.current_losses),
                    "spread_after": repair_table.seed_spread(losses),
                    "findings_after": _codes(findings),
                    "member_epochs": 0
                    if i not in fresh
                    else sum(m.epochs_run for m in out.of_setting(index)),
                    "kept": kept,
                    "reason": reason,
                }
                self.repairs.append(record)
                self.log(f"      {change.name}: {'kept' if kept else 'not kept'} — {reason}")
                median = repair_table.median_loss(losses)
                if kept and (best is None or median < best[0]):
                    best = (median, settings[i], losses, findings, (out, index, change.name))
            if best is not None:
                # A change passed: the later (costlier, less likely) candidates are not trained.
                rest = [c for g in groups[n + 1 :] for c in g]
                for c in rest:
                    self.repairs.append(
                        {
                            "round": round_no,
                            "finding": code,
                            "change": c.name,
                            "kept": False,
                            "reason": "not tried: an earlier candidate of this round was kept",
                        }
                    )
                if rest:
                    self.log(f"      not tried: {'; '.join(c.name for c in rest)}")
                break
        if best is not None:
            _, cand, losses, findings, (out, index, name) = best
            self.trained = [(dict(cand), out, index, f"repair round {round_no} ({name})")]
            for r in self.repairs:
                if r.get("round") == round_no and r.get("settings") == {
                    k: v for k, v in cand.items() if self.current.get(k) != v
                }:
                    r["chosen"] = True
            self.current = dict(cand)
            self.current_losses, self.current_findings = losses, findings
            self.current_rows = out.rows_of(index)

    def _evidence(self, code: str) -> dict[str, Any]:
        """The evidence of the current configuration's finding ``code`` (empty when none)."""
        for f in self.current_findings:
            if f.get("code") == code and isinstance(f.get("evidence"), dict):
                return dict(f["evidence"])
        return {}

    # ------------------------------------------------------------------ stage 3
    def _ask_wave(
        self, study: Any, pending: dict[tuple, list[dict[str, Any]]], done: int
    ) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        """Ask up to ``parallel`` populations before any is told (re-queued parameters first),
        within the trials still allowed."""
        wave: list[tuple[list[Any], list[dict[str, Any]]]] = []
        remaining = None if self.trials is None else self.trials - done
        for _ in range(self.parallel):
            size = (
                self.population_size if remaining is None else min(self.population_size, remaining)
            )
            if size <= 0:
                break
            group = None
            if pending:
                shape = next(iter(pending))
                group, pending[shape] = pending[shape][:size], pending[shape][size:]
                if not pending[shape]:
                    del pending[shape]
            trials, params = search_space.ask_population(
                study,
                size,
                queued=group,
                lrs=search_space.lr_range(float(self.current.get("lr", 3e-3))),
            )
            wave.append((trials, params))
            if remaining is not None:
                remaining -= len(trials)
        return wave

    def run_search(self, study: Any, *, resume: bool) -> None:
        from optuna.trial import TrialState

        started = time.perf_counter()
        left = self._search_left()
        self.log(
            "[3/5] search"
            + ("" if math.isinf(left) else f" ({left:.0f} s, leaving the restarts what they need)")
            + f": Optuna TPE, populations of {self.population_size} trials"
            + (f", {self.parallel} at a time" if self.parallel > 1 else "")
        )
        queued = search_space.requeue_running(study) if resume else []
        pending: dict[tuple, list[dict[str, Any]]] = {}
        for p in queued:
            pending.setdefault(search_space.shape_of(p), []).append(p)
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(search_space.params_from_settings(self.current))
        base = {k: v for k, v in self.current.items()}
        rungs = rungs_for(int(base.get("max_epochs", 200))) if self.prune else []
        populations = 0
        while True:
            done = len(study.get_trials(deepcopy=False, states=counted))
            done -= len([k for k in study.user_attrs if k.startswith("requeued_")])
            if self.trials is not None and done >= self.trials:
                break
            left = self._search_left() - CONFIRM_TOP * self._confirm_estimate()
            estimate = self.seconds_per_population or 0.0
            if left <= 0 or (populations and left < 0.5 * estimate):
                break
            wave = self._ask_wave(study, pending, done)
            jobs = [
                PopulationJob(
                    settings=[
                        search_space.settings_from_params(
                            p, base, seed=self.seed + search_space.SEED_OFFSET + t.number
                        )
                        for t, p in zip(trials, params, strict=True)
                    ],
                    seconds=None if math.isinf(left) else max(left, 0.0),
                    rungs=list(rungs),
                    label="search",
                    check_capacity=False,
                )
                for trials, params in wave
            ]
            wave_started = time.perf_counter()
            outs = self.executor.run_many(jobs)
            if any(out.error is None for out in outs):
                # The next wave is expected to take as long as this one did.
                self.seconds_per_population = time.perf_counter() - wave_started
            # Told in trial-number order, whichever population finished first: the study (and
            # so TPE's next asks) is the same on any executor.
            told = sorted(
                (t.number, j, i) for j, (trials, _) in enumerate(wave) for i, t in enumerate(trials)
            )
            states: list[list[str]] = [[] for _ in wave]
            for _, j, i in told:
                t, out = wave[j][0][i], outs[j]
                t.set_user_attr("population", populations + 1 + j)
                if out.worker:
                    t.set_user_attr("worker", out.worker)
                if out.error is not None:
                    t.set_user_attr("fail_reason", out.error[:500])
                    study.tell(t, state=TrialState.FAIL)
                    self.log(f"      trial {t.number}: failed ({out.error})")
                    states[j].append("fail")
                    continue
                member_epochs = sum(max(m.epochs_run, 1) for m in out.members)
                t.set_user_attr("seconds", round(out.seconds / len(wave[j][0]), 3))
                t.set_user_attr("member_epoch_seconds", out.seconds / member_epochs)
                member = out.of_setting(i)[0]
                states[j].append(search_space.tell_member(study, t, member, report_every=5))
                if out.rows_of(i):
                    self.trial_rows[t.number] = out.rows_of(i)
            best = _best_trial(study)
            # Only the best trial's rows are kept: the fallback compares it with the start.
            self.trial_rows = {
                n: r for n, r in self.trial_rows.items() if best is not None and n == best.number
            }
            if best is not None and "member_epoch_seconds" in best.user_attrs:
                # The winner retrained: its seeds, as many epochs as it ran (early stopping
                # included), at its shape's cost per member-epoch.
                self.final_estimate = (
                    FINAL_SAFETY
                    * float(best.user_attrs["member_epoch_seconds"])
                    * max(int(best.user_attrs.get("epochs_run") or 1), 1)
                    * self._final_seeds()
                )
            for j, ((trials, params), out) in enumerate(zip(wave, outs, strict=True)):
                populations += 1
                if out.error is not None:
                    continue
                p0 = params[0]
                self.log(
                    f"      population {populations}: {len(trials)} trials "
                    f"({p0['n_layers']} x {p0['width']} {p0['activation']}, "
                    f"batch {p0['batch_size']}{', batch norm' if p0['batch_norm'] else ''}) "
                    f"in {out.seconds:.1f} s: {states[j].count('complete')} complete, "
                    f"{states[j].count('pruned')} pruned"
                    + (
                        f"; best so far trial {best.number}, val loss {best.value:.4g}"
                        if best and j == len(wave) - 1
                        else ""
                    )
                )
        if self.shared:
            self._await_peers(study)
        self.confirm(study)
        trials_all = study.get_trials(deepcopy=False)
        best = _best_trial(study)
        self.search_record = {
            "study": study.study_name,
            "populations": populations,
            "trials": len(trials_all),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials_all),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials_all),
            "failed": sum(t.state == TrialState.FAIL for t in trials_all),
            "best_trial": best.number if best else None,
            "best_val_loss": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "rungs": rungs,
            "importances": search_space.importances(study),
            "confirmed": self.confirmed,
        }
        self._timed("search", started)

    def _await_peers(self, study: Any) -> None:
        """A study shared with other drivers: wait (bounded) for their running trials, so that
        every driver confirms and chooses among the same trials."""
        from optuna.trial import TrialState

        limit = min(PEER_WAIT + 3 * (self.seconds_per_population or 0.0), self._search_left())
        started = time.perf_counter()
        said = False
        while time.perf_counter() - started < limit:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if not said:
                self.log(f"      waiting for {len(running)} trials of other processes")
                said = True
            time.sleep(0.5)
        self.log("      stopped waiting for other processes' trials (still running)")

    def confirm(self, study: Any) -> None:
        """Retrain the best distinct trials with the baseline's seeds, time permitting."""
        from optuna.trial import TrialState

        done = sorted(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
            key=lambda t: (t.value, t.number),
        )
        picks: list[Any] = []
        for t in done:
            if all(t.params != p.params for p in picks):
                picks.append(t)
            if len(picks) == CONFIRM_TOP:
                break
        # With --parallel, the picks retrain side by side (one wave); else one after another.
        batch = max(1, min(self.parallel, CONFIRM_TOP))
        for start in range(0, len(picks), batch):
            group = picks[start : start + batch]
            left = self._search_left()
            if left <= 0.5 * self._confirm_estimate():
                self.log(f"      trial {group[0].number}: not confirmed, no time left for it")
                break
            jobs = [
                PopulationJob(
                    settings=[
                        _seeded(
                            search_space.settings_from_params(
                                t.params, self.current, seed=self.seed
                            ),
                            seed=self.seed,
                            seeds=BASELINE_SEEDS,
                        )
                    ],
                    seconds=None if math.isinf(left) else max(left, 0.0),
                    label="confirm",
                    check_capacity=False,
                )
                for t in group
            ]
            outs = self.executor.run_many(jobs) if batch > 1 else [self.executor.run(jobs[0])]
            for t, out in zip(group, outs, strict=True):
                if out.error is not None:
                    self.log(f"      trial {t.number}: not confirmed ({out.error})")
                    continue
                losses = _losses(out, 0)
                self.confirmed_rows[t.number] = out.rows_of(0)
                if out.fitted is not None and not out.stopped_by_deadline:
                    # The baseline's seeds, trained whole: the final run if this trial wins.
                    chosen = search_space.settings_from_params(
                        t.params, self.current, seed=self.seed
                    )
                    self.trained.append((chosen, out, 0, f"the confirmation of trial {t.number}"))
                self.confirmed.append(
                    {
                        "trial": t.number,
                        "val_losses": losses,
                        "median_val_loss": repair_table.median_loss(losses),
                        "spread": repair_table.seed_spread(losses),
                        "cut_by_budget": out.stopped_by_deadline,
                    }
                )
                self.log(
                    f"      trial {t.number} with the baseline's {BASELINE_SEEDS} seeds: median "
                    f"val loss {repair_table.median_loss(losses):.4g} (single seed {t.value:.4g})"
                )

    def reusable(self, chosen: dict[str, Any], final: TrainConfig) -> tuple[Any, str] | None:
        """The final run made of members already trained, when ``chosen`` was trained with the
        final run's seeds and nothing set it apart (a budget cut, adaptive L1 weights that
        only the final run computes): the narrowed population and where it came from."""
        if final.l1_inputs_adaptive and final.l1_inputs_weights is None:
            return None
        seeds = final_seeds(final.seed, restarts=final.restarts, ensemble=final.ensemble)
        for settings, out, index, source in self.trained:
            if settings != chosen or out.fitted is None:
                continue
            if out.stopped_by_deadline and self.start_only is None:
                # Cut by a stage's deadline, it is not what the final run would train. In a
                # start-only run it was cut by the last deadline, as the final run would be.
                continue
            members = reusable_members(out.fitted, index, seeds)
            if members is None:
                continue
            config = out.fitted.configs[index].replace(
                restarts=final.restarts,
                ensemble=final.ensemble,
                target_score=final.target_score,
            )
            return narrow_population(out.fitted, members, config), source
        return None

    def winner(self, study: Any | None) -> tuple[dict[str, Any], str]:
        """The configuration the restarts stage trains.

        With confirmed trials: the lowest median validation loss over the same seeds, among the
        repaired configuration and the confirmed trials. Without (no search, or no time): the
        best trial when its single-seed loss beats the repaired configuration's best seed.
        Either way a trial replaces the repaired configuration only when its gain clears the
        validation set's noise (:func:`fitwell.auto.margin.paired_margin`, recorded in
        ``self.margin``).
        """
        start = self.baseline.get("start", "defaults")
        what = "start configuration" if start == "defaults" else f"{start} start"
        name = f"the repaired {what}" if self.repairs else f"the {what}"
        own_median = repair_table.median_loss(self.current_losses)
        confirmed = self.confirmed
        searched = study is not None and _best_trial(study) is not None
        if searched and self.budget.seconds is not None and self.reuses_members():
            # No time was kept to train a winner again: only a confirmation trained whole
            # may replace the start (its members are the final run).
            confirmed = [c for c in confirmed if not c["cut_by_budget"]]
            if not confirmed:
                return dict(self.current), (
                    f"{name} (no search trial was confirmed with the baseline's seeds in the "
                    "time left)"
                )
        if confirmed and study is not None:
            best = min(confirmed, key=lambda c: (c["median_val_loss"], c["trial"]))
            if best["median_val_loss"] >= own_median:
                return dict(self.current), (
                    f"{name} (median val loss {own_median:.4g}; the best confirmed trial reached "
                    f"{best['median_val_loss']:.4g})"
                )
            number = int(best["trial"])
            params = study.get_trials(deepcopy=False)[number].params
            why = (
                f"search trial {number} (median val loss over {BASELINE_SEEDS} seeds "
                f"{best['median_val_loss']:.4g} < {own_median:.4g})"
            )
            rows = self.confirmed_rows.get(number, [])
        else:
            best_trial = _best_trial(study) if study is not None else None
            own = min([v for v in self.current_losses if math.isfinite(v)], default=math.inf)
            if best_trial is None or not best_trial.value < own:
                return dict(self.current), name + (
                    f" (val loss {own:.4g})" if math.isfinite(own) else ""
                )
            number, params = best_trial.number, best_trial.params
            why = f"search trial {number} (val loss {best_trial.value:.4g} < {own:.4g})"
            rows = self.trial_rows.get(number, [])
        chosen = search_space.settings_from_params(params, self.current, seed=self.seed)
        if not (rows and self.current_rows):
            # An executor that returns no per-row losses: the medians alone decide.
            self.margin = {"trial": number, "replaced": True, "reason": "no per-row losses"}
            return chosen, why
        replaced, record = paired_margin(self.current_rows, rows, weights=self.val_weights)
        self.margin = {"trial": number, **record}
        self.log(
            f"      margin: trial {number} {'replaces' if replaced else 'does not replace'} "
            f"{name}: {record['reason']}"
        )
        if replaced:
            return chosen, f"{why}, beyond the validation noise"
        return dict(self.current), (
            f"{name}: {why} is within the validation set's noise ({record['reason']})"
        )


# Writing the run (plots, report) after the last epoch takes ~1-3 s on a CPU: leave it room.
WRITE_RESERVE = 0.05  # of the budget, at most WRITE_RESERVE_MAX seconds
WRITE_RESERVE_MAX = 5.0


def _final_deadline(budget: Budget) -> float | None:
    deadline = budget.deadline("restarts")
    if deadline is None or budget.seconds is None:
        return deadline
    return deadline - min(WRITE_RESERVE * budget.seconds, WRITE_RESERVE_MAX)


def _best_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def _prepare_folder(folder: Path, *, resume: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Create the run folder (or check a resumed one) and its ``auto_state.json``."""
    state_path = folder / AUTO_STATE_FILE
    if resume:
        if not state_path.is_file():
            raise InputError(
                f"{folder}: no {AUTO_STATE_FILE}; --resume continues a `fitwell auto` run "
                "started with the same --out."
            )
        state = runs.read_json(state_path)
        if not isinstance(state, dict) or state.get("format") != AUTO_STATE_FORMAT:
            raise InputError(f"{state_path}: not a fitwell auto state file.")
        old = state.get("settings", {})
        for key in sorted(set(old) | set(settings)):
            if key != "data" and old.get(key) != settings.get(key):
                raise InputError(
                    f"{folder}: cannot resume with changed settings: `{key}` was "
                    f"{old.get(key)!r}, now {settings.get(key)!r}."
                )
        # A final training that was interrupted is started again: its files go.
        for entry in folder.iterdir():
            if entry.name not in AUTO_FILES:
                if entry.is_dir() and not entry.is_symlink():
                    import shutil

                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        state["resumes"] = int(state.get("resumes", 0)) + 1
    else:
        runs.check_destination(folder)
        folder.mkdir(exist_ok=True)
        state = {"format": AUTO_STATE_FORMAT, "settings": settings, "resumes": 0}
    runs.write_json(state_path, state)
    return state


def _alternative_start(name: str, start: TrainConfig, prepared: Any) -> dict[str, Any]:
    """The full settings of the alternative start ``name`` on ``prepared``'s task and rows."""
    from fitwell.config import build_config

    raw = start_choice.alternative_settings(
        name, start.to_dict(), keep=sorted(start_choice.NEUTRAL_SETTINGS)
    )
    cfg = resolve_front(build_config(raw), prepared.task)
    hidden = resolve_hidden(cfg.hidden, len(prepared.y_train))
    return cfg.replace(hidden=hidden, target=prepared.target).to_dict()


def _auto_recipe(config: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """auto starts from RealMLP's front for classification (``numeric_embedding="auto"``:
    measured +4.6 points on MNIST-1D; ``benchmarks/embeddings.py``) unless the start config or
    a flag names ``numeric_embedding``. ``fitwell train`` keeps the classic default: the doctor's
    benchmark misses more under-fitting and raises more false alarms with the embedding."""
    from fitwell.config import load_toml

    if settings.get("numeric_embedding") is not None or isinstance(config, TrainConfig):
        return settings
    named = load_toml(config) if isinstance(config, (str, Path)) else dict(config or {})
    if "numeric_embedding" in named:
        return settings
    return {**settings, "numeric_embedding": "auto"}


def auto(
    data: str | Path | None = None,
    *,
    config: TrainConfig | dict | str | Path | None = None,
    time_budget: str | float | None = "10m",
    trials: int | None = None,
    repair: bool = True,
    search: bool = True,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    out: str | Path | None = None,
    progress: bool | None = False,
    log: Callable[[str], None] | None = None,
    population_size: int = POPULATION_SIZE,
    prune: bool = True,
    executor: Executor | str | None = None,
    address: str | None = None,
    parallel: int = 1,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    **settings: Any,
) -> Any:
    """Diagnose, repair and search a network for a table within a time budget; test once.

    Parameters
    ----------
    data : path, optional
        CSV, Parquet or ``.npz`` file; or ``dataset="digits"`` (a built-in).
    config : TrainConfig, dict or TOML path, optional
        The start configuration (default: fitwell's defaults); ``settings`` override it.
    time_budget : seconds or duration string, default "10m"
        Wall time for all stages (start-up excluded); ``None`` with ``trials`` for a search
        bounded by trial count alone (reproducible across machines).
    trials : int, optional
        At most this many search trials (all processes sharing the study together).
    repair, search : bool, default True
        Run the repair and search stages.
    storage : str, optional
        Optuna storage URL (``sqlite:///...``, ``postgresql+psycopg://...``) or a journal file
        path; default: ``study.journal`` in ``out`` (in memory without ``out``).
    study_name : str, optional
        Study name in the storage (default ``fitwell-auto``).
    resume : bool, default False
        Continue a killed search in ``out``: trials left RUNNING are failed and re-queued.
    out : path, optional
        Run directory (as ``fitwell train``'s, plus ``repairs.json``, ``trials.csv`` and the
        study).
    log : callable, optional
        Receives one line per stage and population (the CLI prints them to stderr).
    population_size : int, default 8
        Search trials trained together as one population (1: one trial at a time).
    prune : bool, default True
        Successive halving inside each population at the rung epochs.
    executor : Executor, "local" or "ray", optional
        Where populations train (default "local": this process). ``"ray"`` sends each
        population to a Ray cluster as one task (needs the ``ray`` extra).
    address : str, optional
        With ``executor="ray"``: the cluster's ``HOST:PORT``; default: start Ray on this
        machine for the run.
    parallel : int, default 1
        Search populations asked together and trained side by side (a wave). The trials the
        search chooses depend on the seed, ``trials`` and ``parallel``, not on the executor.
    mlflow_uri, mlflow_experiment : str, optional
        Also log the run to an MLflow tracking store, as :func:`fitwell.train` does, with
        ``trials.csv`` and ``repairs.json`` among its files.

    Returns
    -------
    Run
        As :func:`fitwell.train`; ``run.metrics["auto"]`` holds the stages, repairs and search.
    """
    from fitwell.api import load_and_prepare, make_config, resolve_device, train_population
    from fitwell.threads import configure_threads, limit_blas_threads

    seconds = parse_budget(time_budget)
    if trials is not None and (isinstance(trials, bool) or int(trials) < 0):
        raise InputError(f"`trials` must be a whole number >= 0; got {trials!r}.")
    if seconds is None and trials is None and search:
        raise InputError("give a time budget or --trials: without either the search never ends.")
    if population_size < 1:
        raise InputError(f"`population_size` must be >= 1; got {population_size}.")
    if isinstance(parallel, bool) or int(parallel) < 1:
        raise InputError(f"`parallel` must be a whole number >= 1; got {parallel!r}.")
    say = log or (lambda _msg: None)
    budget = Budget(seconds)
    cfg = make_config(
        config, data=str(data) if data is not None else None, **_auto_recipe(config, settings)
    )
    if mlflow_uri is not None or mlflow_experiment is not None:
        from functools import partial

        from fitwell.tracking import tracked

        body = partial(
            auto,
            data,
            config=config,
            time_budget=time_budget,
            trials=trials,
            repair=repair,
            search=search,
            storage=storage,
            study_name=study_name,
            resume=resume,
            out=out,
            progress=progress,
            log=log,
            population_size=population_size,
            prune=prune,
            executor=executor,
            address=address,
            parallel=parallel,
            **settings,
        )
        return tracked(
            body,
            mlflow_uri,
            experiment=mlflow_experiment,
            settings=cfg.to_dict(),
            command="auto",
            run_name=Path(out).name if out is not None else None,
        )
    folder = Path(out) if out is not None else None
    if folder is not None:
        _prepare_folder(folder, resume=resume, settings=cfg.to_dict())
    threads = configure_threads(cfg.threads)
    with limit_blas_threads(threads):
        device = resolve_device(cfg.device)
        prepared = load_and_prepare(cfg)
        start = cfg.replace(
            hidden=resolve_hidden(cfg.hidden, len(prepared.y_train)), target=prepared.target
        )
        # Start-up (imports, reading and preparing the table) is outside the budget.
        budget.started = time.perf_counter()
        owned = executor is None or isinstance(executor, str)
        inputs = PreparedInputs(start, prepared)
        runner = make_executor(
            executor,
            prepared,
            device=device,
            threads=threads,
            address=address,
            log=say,
            inputs=inputs,
        )
        job = AutoSearch(
            start,
            executor=runner,
            budget=budget,
            trials=trials,
            population_size=population_size,
            log=say,
            prune=prune,
            parallel=parallel,
            shared=storage is not None,
        )
        try:
            findings = job.run_baseline()
            codes = _codes(findings)
            refused = "no_signal" if "no_signal" in codes else None
            if "leakage" in codes:
                say(
                    "      error: leakage — test rows also occur in the training rows "
                    "(see findings)"
                )
            study = None
            if refused:
                say("      no model beats the trivial baseline on validation: no repair, no search")
            elif job.start_only is not None:
                say("[2/5] repairs, [3/5] search: skipped, the budget pays for the start alone")
            else:
                if not start_choice.user_named_start(config, settings):
                    job.run_starts(
                        [
                            (name, _alternative_start(name, start, prepared))
                            for name in start_choice.ALTERNATIVE_STARTS
                        ],
                        prepared,
                    )
                if repair:
                    job.run_repairs()
                if search and (trials is None or trials > 0):
                    study = search_space.open_study(
                        search_space.storage_for(storage, folder),
                        study_name or "fitwell-auto",
                        seed=job.seed,
                        resume=resume or storage is not None,
                    )
                    job.run_search(study, resume=resume)
        finally:
            if owned:
                runner.close()  # the final model trains here; the workers are done
        chosen, why = job.winner(study)
        final = chosen | {
            "seed": start.seed,
            "restarts": job.restarts,
            "ensemble": start.ensemble,
            "target_score": start.target_score,
        }
        final = {k: v for k, v in final.items() if v is not None}
        reused = job.reusable(chosen, make_config(final))
        job.trained = []  # the other populations' weights are no longer needed
        say(
            f"[4/5] {_stage_line('restarts', budget)}: {why}, "
            f"{max(job.restarts, start.ensemble)} seeds, ensemble of {start.ensemble}"
            + (f": the members {reused[1]} trained, not trained again" if reused else "")
        )
        started_final = time.perf_counter()
        record: dict[str, Any] = {
            "budget_seconds": seconds,
            "trials_limit": trials,
            "stages": job.stages,
            "baseline": job.baseline,
            "repairs": job.repairs,
            "search": job.search_record,
            "start_settings": _searched(start.to_dict()),
            "best_settings": _searched(final),
            "winner": why,
            # The replacement margin: the search winner's paired gain over the (repaired) start
            # on the validation rows, the noise it had to clear, and whether it replaced it.
            "margin": job.margin,
            "start_only": job.start_only,
            "refused": refused,
            # Whether the final run's members were trained again or taken from an earlier stage.
            "final": {
                "reused": reused is not None,
                "from": reused[1] if reused else None,
                "members": max(job.restarts, start.ensemble),
            },
        }
        trial_rows = search_space.trial_rows(study) if study is not None else []

        def write_files(run_folder: Path | None, metrics: dict[str, Any]) -> None:
            job._timed("restarts", started_final)
            metrics["auto"]["seconds_used"] = round(budget.elapsed(), 3)
            if run_folder is None:
                return
            runs.write_json(
                run_folder / REPAIRS_FILE,
                {
                    "baseline": job.baseline,
                    "repairs": job.repairs,
                    "restarts": job.restarts,
                },
            )
            import pandas as pd

            runs.write_atomic(
                run_folder / TRIALS_FILE,
                pd.DataFrame(trial_rows, columns=_TRIAL_COLUMNS).to_csv(index=False),
            )

        run = train_population(
            [final],
            out=folder,
            prepared=inputs(final),  # the preprocessing the winner was chosen with
            keep_files=AUTO_FILES,
            callbacks=[Deadline(_final_deadline(budget))],
            progress=progress,
            extra_metrics={"auto": record},
            before_finish=write_files,
            fitted=reused[0] if reused else None,
        )
        say(f"[5/5] test split read once: {run.metrics['metric']} {run.metrics['test_score']:.4f}")
        run.metrics["auto"] = record
        run.extra["trials"] = trial_rows
        return run


_TRIAL_COLUMNS = [
    "number",
    "state",
    *search_space.SHAPE_PARAMS,
    *search_space.MEMBER_PARAMS,
    "val_loss",
    "val_score",
    "best_epoch",
    "epochs_run",
    "seconds",
    "population",
]


def _searched(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a search can change (data, device and the like left out)."""
    return {k: v for k, v in settings.items() if k not in _NOT_SEARCHED}
