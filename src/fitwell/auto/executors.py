"""Where auto's populations train: an interface, and this process as its implementation.

A job is plain data (settings dicts, a time limit, rung epochs) and its outcome is a weights-free
summary (per member: curve, best loss, score, how it ended; per setting: the doctor's findings),
so an executor on other machines can return it as it is. The final model is always trained where
the driver runs. ``run_many`` takes several jobs at once (the search's waves); an executor with
more than one worker trains them side by side and returns the outcomes in the jobs' order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fitwell.auto.budget import Deadline
from fitwell.auto.margin import setting_row_losses, val_weights
from fitwell.auto.pruning import RungPruner
from fitwell.auto.reuse import narrow_signals
from fitwell.config import TrainConfig, build_config
from fitwell.data import PreparedData
from fitwell.errors import InputError


@dataclass
class PopulationJob:
    """One population: settings that share a shape, each trained with ``restarts`` seeds."""

    settings: list[dict[str, Any]]
    seconds: float | None = None  # time limit from the start of training (None: none)
    rungs: list[int] = field(default_factory=list)  # successive-halving epochs (empty: none)
    label: str = ""
    # Let the doctor train a wider reference network for the underfitting rule (baseline and
    # repairs need it; search trials are only ranked by loss, so they skip its cost).
    check_capacity: bool = True
    # At the rungs, rank settings (the median of their seeds) instead of members: the repair
    # candidates of one round compete as settings, each trained with the same seeds.
    rank_settings: bool = False
    # Give up after this many epochs when their pace would not finish by ``seconds`` (the
    # outcome then says ``stopped_by_deadline``): for a run that is only worth it whole.
    project_after: int | None = None


@dataclass
class MemberOutcome:
    """How one member (one seed of one setting) ended."""

    member: int
    setting: int
    seed: int
    val_loss: float
    val_score: float
    train_loss: float
    best_epoch: int
    epochs_run: int
    stop_reason: str
    pruned_at: int | None
    val_curve: list[float]


@dataclass
class PopulationOutcome:
    """A job's weights-free result."""

    members: list[MemberOutcome]
    findings: list[list[dict[str, Any]]]  # per setting: findings of its best seed
    seconds: float
    epochs: int
    stopped_by_deadline: bool
    # Why the job could not train (a setting the data cannot take, a worker that kept dying);
    # None when it trained. A failed outcome has no members.
    error: str | None = None
    worker: str = ""  # where it trained, when not in this process (e.g. Ray node / pid)
    # The trained population itself (weights included) when it trained in this process; None
    # from other machines. The final stage finishes the winner's members from it instead of
    # training them again (:mod:`fitwell.auto.reuse`).
    fitted: Any = field(default=None, repr=False, compare=False)
    # Per setting: each validation row's loss of its members' averaged prediction, and the
    # rows' weights (None: alike). The replacement margin compares configurations row by row
    # (:mod:`fitwell.auto.margin`). Empty when unknown.
    val_rows: list[list[float]] = field(default_factory=list, repr=False)
    val_weights: list[float] | None = field(default=None, repr=False)

    @classmethod
    def failed(cls, reason: str) -> PopulationOutcome:
        return cls(
            members=[], findings=[], seconds=0.0, epochs=0, stopped_by_deadline=False, error=reason
        )

    def of_setting(self, index: int) -> list[MemberOutcome]:
        return [m for m in self.members if m.setting == index]

    def rows_of(self, index: int) -> list[float]:
        """Setting ``index``'s per-row validation losses (empty when unknown)."""
        return self.val_rows[index] if index < len(self.val_rows) else []


# Work per training step that is not the network's arithmetic (Python, the optimizer's loop,
# kernel launches), in multiply-adds: about what a CPU core does in the 0.1 ms such a step costs.
STEP_OVERHEAD_MACS = 200_000


def estimated_cost(job: PopulationJob, n_features: int, n_rows: int) -> float:
    """A population's training work in multiply-adds per epoch, for ordering jobs, not timing them.

    Its members' weights times the rows they see, plus a fixed cost per step: populations of
    one wave differ in shape (a 1x128 network and a 3x512 one can differ tenfold), and a
    cluster that starts the longest first finishes the wave sooner (longest-processing-time
    order: at most 4/3 of the best schedule).
    """
    total = 0.0
    for s in job.settings:
        widths = [n_features, *[int(w) for w in s.get("hidden", [])], 1]
        weights = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        steps = math.ceil(n_rows / max(int(s.get("batch_size", 64)), 1))
        seeds = max(int(s.get("restarts", 1)), 1)
        total += seeds * (weights * n_rows + steps * STEP_OVERHEAD_MACS)
    return total


def longest_first(costs: Sequence[float]) -> list[int]:
    """Job indices in the order to start them: the costliest first, ties in job order."""
    return sorted(range(len(costs)), key=lambda i: (-costs[i], i))


class Executor(Protocol):
    """Runs populations on the prepared data.

    ``run`` blocks until the job is done and raises :class:`fitwell.errors.InputError` for a
    setting the data cannot take. ``run_many`` blocks until every job is done and never raises
    for one job's failure: that job's outcome carries the reason in ``error``.
    """

    def run(self, job: PopulationJob) -> PopulationOutcome: ...

    def run_many(self, jobs: Sequence[PopulationJob]) -> list[PopulationOutcome]: ...

    def close(self) -> None: ...


def setting_findings(
    signals: dict[str, Any], fit: Any, members: list[int], events: Any
) -> list[dict]:
    """The doctor's findings for one setting of a population: its best seed, judged on its own
    seeds only (records, history, divergences and non-finite events narrowed to them)."""
    results = [fit.members[m] for m in members]
    finite = [r for r in results if math.isfinite(r.val_loss)]
    best = min(finite, key=lambda r: r.val_loss) if finite else results[0]
    chosen = set(members)
    doc = narrow_signals(
        signals,
        {m: m for m in members},
        best=best,
        history=[row for row in fit.history if row["member"] in chosen],
        events=[e for e in events if e.get("member") in chosen],
    )
    return list(doc["findings"])


def setting_members(settings: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Member ids of each setting in a population (``fitwell.api``'s order: each setting's
    ``restarts`` seeds in turn; the population's ``ensemble`` adds none past them)."""
    groups: list[list[int]] = []
    start = 0
    for s in settings:
        n = max(int(s.get("restarts", 1)), 1)
        groups.append(list(range(start, start + n)))
        start += n
    return groups


class PreparedInputs:
    """The prepared data for each input preprocessing a population asks for (``scale``,
    ``scaling``): the start configuration's as given, any other prepared again from the table
    on first use (same seed, so the same rows in each split) and kept.

    Why: a repair that standardizes unscaled inputs changes the data, not the network, and the
    one read of the test split must see the preprocessing its configuration was chosen with.
    """

    def __init__(self, start: TrainConfig, prepared: PreparedData) -> None:
        self.start = start
        self._cache: dict[tuple[Any, ...], PreparedData] = {self._key(start.to_dict()): prepared}

    def _key(self, settings: dict[str, Any]) -> tuple[Any, ...]:
        from fitwell.auto.repairs import PREPROCESSING_FIELDS

        return tuple(settings.get(f, getattr(self.start, f)) for f in PREPROCESSING_FIELDS)

    def __call__(self, settings: dict[str, Any]) -> PreparedData:
        key = self._key(settings)
        if key not in self._cache:
            from fitwell.api import load_and_prepare
            from fitwell.auto.repairs import PREPROCESSING_FIELDS

            cfg = self.start.replace(**dict(zip(PREPROCESSING_FIELDS, key, strict=True)))
            self._cache[key] = load_and_prepare(cfg)
        return self._cache[key]


class LocalExecutor:
    """Trains each population in this process, on data prepared once (or once per input
    preprocessing, with ``inputs``)."""

    def __init__(
        self,
        prepared: PreparedData,
        *,
        device: Any,
        threads: int | None,
        inputs: PreparedInputs | None = None,
    ) -> None:
        self.prepared = prepared
        self.device = device
        self.threads = threads
        self.inputs = inputs

    @property
    def prepares_inputs(self) -> bool:
        """Whether a population may ask for another input preprocessing than the start's."""
        return self.inputs is not None

    # Outcomes carry the trained population (``fitted``): the final run may reuse its members.
    keeps_weights = True

    def run(self, job: PopulationJob) -> PopulationOutcome:
        from fitwell.api import fit_prepared

        cfgs: list[TrainConfig] = [build_config(s) for s in job.settings]
        started = time.perf_counter()
        deadline = Deadline(
            None if job.seconds is None else started + job.seconds,
            project_after=job.project_after,
        )
        pruner = RungPruner(
            job.rungs, groups=setting_members(job.settings) if job.rank_settings else None
        )
        callbacks = [deadline, pruner] if job.rungs else [deadline]
        pop = fit_prepared(
            cfgs,
            self.prepared if self.inputs is None else self.inputs(job.settings[0]),
            device=self.device,
            callbacks=callbacks,
            # A run the clock cut looks under-fitted whatever its configuration, and the
            # reference network would train past the deadline: no reference then.
            check_capacity=lambda: job.check_capacity and not deadline.fired,
        )
        out = summarize(pop, pruner.pruned, deadline.fired, time.perf_counter() - started)
        out.fitted = pop
        return out

    def run_many(self, jobs: Sequence[PopulationJob]) -> list[PopulationOutcome]:
        """One job after another, in this process."""
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(self.run(job))
            except InputError as exc:
                outcomes.append(PopulationOutcome.failed(str(exc)))
        return outcomes

    def close(self) -> None:
        """Nothing to release: the populations trained in this process."""


def summarize(
    pop: Any, pruned: dict[int, int], stopped_by_deadline: bool, seconds: float
) -> PopulationOutcome:
    """A fitted population as a weights-free outcome."""
    fit = pop.fit
    curves: dict[int, list[float]] = {}
    for row in fit.history:
        curves.setdefault(int(row["member"]), []).append(float(row["val_loss"]))
    members = [
        MemberOutcome(
            member=r.member,
            setting=pop.origin[r.member],
            seed=r.settings.seed,
            val_loss=r.val_loss if r.finite else math.inf,
            val_score=r.val_score,
            train_loss=r.train_loss,
            best_epoch=r.best_epoch,
            epochs_run=r.epochs_run,
            stop_reason=r.stop_reason,
            pruned_at=pruned.get(r.member),
            val_curve=curves.get(r.member, []),
        )
        for r in fit.members
    ]
    findings = [
        setting_findings(
            pop.signals, fit, [m.member for m in members if m.setting == i], pop.trainer.events
        )
        for i in range(len(pop.configs))
    ]
    return PopulationOutcome(
        members=members,
        findings=findings,
        seconds=seconds,
        epochs=fit.epochs_run,
        stopped_by_deadline=stopped_by_deadline,
        val_rows=setting_row_losses(pop),
        val_weights=val_weights(pop),
    )


EXECUTORS = ("local", "ray")


def make_executor(
    executor: Executor | str | None,
    prepared: PreparedData,
    *,
    device: Any,
    threads: int | None,
    address: str | None = None,
    log: Any = None,
    inputs: PreparedInputs | None = None,
) -> Executor:
    """``executor`` as an :class:`Executor`: one given as it is, ``"local"`` (default) or
    ``"ray"`` (imported here, so the core install needs no Ray). ``inputs`` lets the local
    executor train populations with another input preprocessing than ``prepared``'s."""
    if executor is not None and not isinstance(executor, str):
        return executor
    name = executor or "local"
    if name not in EXECUTORS:
        import difflib

        close = difflib.get_close_matches(name, EXECUTORS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise InputError(f"`executor` must be one of {', '.join(EXECUTORS)}; got {name!r}.{hint}")
    if address is not None and name != "ray":
        raise InputError(f"`address` is for the ray executor; got it with executor {name!r}.")
    if name == "local":
        return LocalExecutor(prepared, device=device, threads=threads, inputs=inputs)
    from fitwell.auto.ray_executor import RayExecutor

    return RayExecutor(prepared, device=device, threads=threads, address=address, log=log)
