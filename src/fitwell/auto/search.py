"""Optuna (TPE) search where trials of one shape train together as one population.

Ask-and-tell: the first trial of a population samples the shape (depth, width, activation,
batch size, batch norm); the others are queued with that shape and TPE samples their per-member
settings (lr, L1, L2, dropout). Each trial is one member, its seed derived from the trial number,
so the same study replays the same members wherever they train. Pruning is the population's own
rung rule (:mod:`fitwell.auto.pruning`), recorded in the study as PRUNED.

The search space (ranges from Gorishniy et al. 2021 and Kadra et al. 2021, trimmed to what a CPU
budget trains):

============ ====================================== =====================================
name         values                                 shared by a population
============ ====================================== =====================================
n_layers     1 .. 4                                 yes
width        64, 128, 256, 512                      yes
activation   relu, gelu, selu, leaky_relu           yes
batch_size   32, 64, 128, 256                       yes
batch_norm   false, true                            yes
lr           start's ÷ 30 .. × 10, log (*)         no
l2           1e-8 .. 1e-2, log (1e-8 is "off")      no
l1           1e-8 .. 1e-3, log (1e-8 is "off")      no
dropout      0 .. 0.5                               no
============ ====================================== =====================================

(*) around the learning rate of the configuration the search starts from: 1e-4 .. 3e-2 for
fitwell's default 3e-3; a start under the NTK parametrization (RealMLP's recipe, lr 0.04) trains
at rates ten times higher, where a fixed range would spend most trials at rates that do not move.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SHAPE_PARAMS = ("n_layers", "width", "activation", "batch_size", "batch_norm")
MEMBER_PARAMS = ("lr", "l2", "l1", "dropout")
WIDTHS = (64, 128, 256, 512)
ACTIVATIONS = ("relu", "gelu", "selu", "leaky_relu")
BATCH_SIZES = (32, 64, 128, 256)
LR_RANGE = (1e-4, 3e-2)  # for the default lr 3e-3: see lr_range
LR_BELOW, LR_ABOVE = 30.0, 10.0


def lr_range(start_lr: float) -> tuple[float, float]:
    """The searched learning rates around the start's: ÷ 30 .. × 10."""
    lr = float(start_lr) if start_lr and float(start_lr) > 0 else 3e-3
    return (lr / LR_BELOW, lr * LR_ABOVE)


L2_RANGE = (1e-8, 1e-2)
L1_RANGE = (1e-8, 1e-3)
DROPOUT_RANGE = (0.0, 0.5)
OFF = 1e-8  # the low end of the L1/L2 ranges: a penalty this small changes nothing measurable
SEED_OFFSET = 1000  # member seeds: seed + SEED_OFFSET + trial number
STUDY_FILE = "study.journal"


def suggest(trial: Any, lrs: tuple[float, float] = LR_RANGE) -> dict[str, Any]:
    """Sample (or read back, for a queued trial) one trial's settings from the space."""
    return {
        "n_layers": trial.suggest_int("n_layers", 1, 4),
        "width": trial.suggest_categorical("width", list(WIDTHS)),
        "activation": trial.suggest_categorical("activation", list(ACTIVATIONS)),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
        "batch_norm": trial.suggest_categorical("batch_norm", [False, True]),
        "lr": trial.suggest_float("lr", *lrs, log=True),
        "l2": trial.suggest_float("l2", *L2_RANGE, log=True),
        "l1": trial.suggest_float("l1", *L1_RANGE, log=True),
        "dropout": trial.suggest_float("dropout", *DROPOUT_RANGE),
    }


def _clip(value: float, low: float, high: float) -> float:
    return float(min(high, max(low, value)))


def _nearest(value: Any, choices: tuple) -> Any:
    if value in choices:
        return value
    return min(choices, key=lambda c: abs(math.log(c) - math.log(max(float(value), 1e-12))))


def params_from_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A fitwell configuration mapped into the space (to enqueue it as a trial): values outside a
    range are clipped, widths snap to the nearest choice, an unknown activation becomes relu."""
    hidden = list(settings.get("hidden") or [64])
    drop = settings.get("dropout", 0.0)
    drop = float(drop if isinstance(drop, (int, float)) else (max(drop) if drop else 0.0))
    activation = settings.get("activation", "relu")
    return {
        "n_layers": int(min(4, max(1, len(hidden)))),
        "width": _nearest(max(hidden), WIDTHS),
        "activation": activation if activation in ACTIVATIONS else "relu",
        "batch_size": _nearest(int(settings.get("batch_size", 64)), BATCH_SIZES),
        "batch_norm": bool(settings.get("batch_norm", False)),
        "lr": float(settings.get("lr", 3e-3)),
        "l2": _clip(float(settings.get("l2", 0.0)), *L2_RANGE),
        "l1": _clip(float(settings.get("l1", 0.0)), *L1_RANGE),
        "dropout": _clip(drop, *DROPOUT_RANGE),
    }


def settings_from_params(
    params: Mapping[str, Any], base: Mapping[str, Any], *, seed: int
) -> dict[str, Any]:
    """A trial's parameters applied to the start configuration: one member, one seed."""
    n_layers, width = int(params["n_layers"]), int(params["width"])
    return dict(base) | {
        "hidden": [width] * n_layers,
        "activation": params["activation"],
        "batch_size": int(params["batch_size"]),
        "batch_norm": bool(params["batch_norm"]),
        "lr": float(params["lr"]),
        "l2": float(params["l2"]) if params["l2"] > OFF else 0.0,
        "l1": float(params["l1"]) if params["l1"] > OFF else 0.0,
        "dropout": float(params["dropout"]),
        "init": "auto",
        "seed": seed,
        "restarts": 1,
        "ensemble": 1,
    }


def shape_of(params: Mapping[str, Any]) -> tuple:
    return tuple(params[k] for k in SHAPE_PARAMS)


def storage_for(storage: str | None, folder: Path | None) -> Any:
    """``--storage`` as Optuna storage: a URL as it is, else a journal file in the run folder
    (or memory when nothing is written)."""
    import optuna

    if storage is not None:
        if "://" not in storage:  # a plain path: a journal file there
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(storage))
        return storage
    if folder is None:
        return optuna.storages.InMemoryStorage()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))


CREATE_TRIES = 5


def open_study(storage: Any, name: str, *, seed: int, resume: bool) -> Any:
    """Create the study (or load it with ``resume``); TPE seeded by ``seed``.

    Processes started together on one database race to create its tables and the study: the
    loser's insert fails on a unique key (IntegrityError), and a retry loads what the winner
    made.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(CREATE_TRIES):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                sampler=optuna.samplers.TPESampler(seed=seed),
                direction="minimize",
                load_if_exists=resume,
            )
        except Exception as exc:  # sqlalchemy's IntegrityError, or the driver's own
            raced = "IntegrityError" in type(exc).__name__ or "UniqueViolation" in str(exc)
            if not (resume and raced) or attempt == CREATE_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def requeue_running(study: Any) -> list[dict[str, Any]]:
    """After a killed search: trials left RUNNING are told FAIL and their parameters returned,
    to be trained again as new trials (trial numbers are never reused)."""
    from optuna.trial import TrialState

    params: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
            study.set_user_attr(f"requeued_{t.number}", True)
        if set(t.params) >= set(SHAPE_PARAMS + MEMBER_PARAMS):
            params.append(dict(t.params))
    return params


def ask_population(
    study: Any,
    size: int,
    *,
    queued: list[dict[str, Any]] | None = None,
    lrs: tuple[float, float] = LR_RANGE,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Ask ``size`` trials that share one shape; returns the trials and their parameters.

    ``queued`` (already complete parameter sets, e.g. re-queued after a kill) are asked first.
    """
    trials: list[Any] = []
    params: list[dict[str, Any]] = []
    for p in queued or []:
        study.enqueue_trial(p, skip_if_exists=False)
        t = study.ask()
        trials.append(t)
        params.append(suggest(t, lrs))
    if trials:
        return trials, params
    first = study.ask()
    first_params = suggest(first, lrs)
    trials.append(first)
    params.append(first_params)
    shape = {k: first_params[k] for k in SHAPE_PARAMS}
    for _ in range(size - 1):
        study.enqueue_trial(shape, skip_if_exists=False)
        t = study.ask()
        trials.append(t)
        params.append(suggest(t, lrs))
    return trials, params


def tell_member(study: Any, trial: Any, outcome: Any, *, report_every: int) -> str:
    """Record one member's result in its trial: the curve (every ``report_every`` epochs and the
    last), then COMPLETE with the best validation loss, PRUNED, or FAIL when it diverged."""
    from optuna.trial import TrialState

    curve = outcome.val_curve
    for epoch in range(1, len(curve) + 1):
        if (epoch % report_every == 0 or epoch == len(curve)) and math.isfinite(curve[epoch - 1]):
            trial.report(curve[epoch - 1], epoch)
    trial.set_user_attr("val_score", _finite_or_none(outcome.val_score))
    trial.set_user_attr("best_epoch", outcome.best_epoch)
    trial.set_user_attr("epochs_run", outcome.epochs_run)
    trial.set_user_attr("stop_reason", outcome.stop_reason)
    trial.set_user_attr("seed", outcome.seed)
    if not math.isfinite(outcome.val_loss):
        study.tell(trial, state=TrialState.FAIL)
        return "fail"
    if outcome.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    study.tell(trial, outcome.val_loss)
    return "complete"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial as one row: number, state, settings, validation loss and score, epochs."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else t.user_attrs.get("last_val_loss")
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                **{k: t.params.get(k) for k in SHAPE_PARAMS + MEMBER_PARAMS},
                "val_loss": value,
                "val_score": t.user_attrs.get("val_score"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "seconds": t.user_attrs.get("seconds"),
                "population": t.user_attrs.get("population"),
            }
        )
    return rows


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances over the completed trials ({} when too few)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 4:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {
            k: float(v)
            for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
        }
    except (RuntimeError, ValueError):
        return {}
