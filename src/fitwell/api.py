"""The Python face of fitwell: ``train`` and ``train_population``, built from reusable stages.

Data flows one way: config -> data (``load_and_prepare``: load, split, preprocess on train rows)
-> population training and diagnosis (``fit_prepared``) -> choice of members on validation and
one read of the sealed test split (:mod:`fitwell.finish`) -> run directory. ``fitwell auto``
prepares the data once and calls ``fit_prepared`` for many populations before one final
``train_population(prepared=...)``; ``Run`` and ``load_run`` live in :mod:`fitwell.predictor`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitwell import category_embeddings, runs
from fitwell.config import (
    PER_MEMBER_FIELDS,
    TrainConfig,
    build_config,
    load_toml,
    resolve_front,
    resolve_hidden,
)
from fitwell.data import PreparedData, Preprocessor, Table, load_table, prepare
from fitwell.diagnosis.context import (
    diagnose_fit,
    needs_capacity_reference,
    with_capacity_reference,
)
from fitwell.diagnosis.probes import SignalProbe
from fitwell.embeddings import first_layer_sources
from fitwell.errors import FitwellError, InputError
from fitwell.finish import finish_run, l1_zeroed_features, numeric_inputs
from fitwell.models import Architecture
from fitwell.predictor import Run, load_run, model_from_state
from fitwell.scoring import member_metric_values, rank_members, resolve_metric
from fitwell.threads import configure_threads, limit_blas_threads
from fitwell.training import (
    Callback,
    FitResult,
    LoopSettings,
    MemberSettings,
    ProgressBar,
    Trainer,
)
from fitwell.training.capacity import capacity_reference
from fitwell.training.optim import adaptive_group_weights, input_count_scales

__all__ = [
    "PopulationFit",
    "Run",
    "adaptive_weights",
    "member_weights",
    "fit_prepared",
    "l1_zeroed_features",
    "load_and_prepare",
    "load_run",
    "make_config",
    "model_from_state",
    "resolve_device",
    "train",
    "train_population",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("`device` is 'cuda' but no CUDA GPU is available; use --device cpu.")
    return torch.device(name)


def make_config(
    config: TrainConfig | dict | str | Path | None = None, **settings: Any
) -> TrainConfig:
    """Merge a config (object, dict or TOML path) with keyword settings; validate once."""
    if isinstance(config, TrainConfig):
        base = config.to_dict()
    elif isinstance(config, (str, Path)):
        base = load_toml(config)
    else:
        base = dict(config or {})
    return build_config(base | {k: v for k, v in settings.items() if v is not None})


def _member_settings(cfg: TrainConfig, seed: int) -> MemberSettings:
    return MemberSettings(
        seed=seed,
        lr=cfg.lr,
        l1=cfg.l1,
        l2=cfg.l2,
        dropout=cfg.dropout_per_layer(),
        l1_inputs=cfg.l1_inputs,
        lr_schedule=cfg.lr_schedule,
        warmup_epochs=cfg.warmup_epochs,
        weight_decay=cfg.weight_decay,
        dropout_schedule=cfg.dropout_schedule,
        wd_schedule=cfg.wd_schedule,
    )


def input_groups(pre: Preprocessor) -> list[int]:
    """Group id (original column) of each encoded input: one-hot levels share their column's."""
    groups = [0] * len(pre.encoded_names)
    for g, idx in enumerate(pre.encoded_groups().values()):
        for i in idx:
            groups[i] = g
    return groups


def architecture(cfg: TrainConfig, prepared: PreparedData, hidden: tuple[int, ...]) -> Architecture:
    """The members' shape: ``cfg``'s layers and front on ``prepared``'s encoded inputs, with the
    numeric columns' inputs embedded when ``cfg.numeric_embedding`` asks for it and a learned
    embedding per high-cardinality text column (its code input, from the preprocessing)."""
    cfg = resolve_front(cfg, prepared.task)
    embed = cfg.numeric_embedding != "none"
    codes = prepared.preprocessor.embedded_inputs()
    return Architecture(
        n_inputs=prepared.n_features,
        hidden=hidden,
        n_outputs=prepared.target_encoder.n_outputs,
        activation=cfg.activation,
        batch_norm=cfg.batch_norm,
        numeric_embedding=cfg.numeric_embedding,
        embedded=tuple(numeric_inputs(prepared.preprocessor)) if embed else (),
        embedding_frequencies=cfg.embedding_frequencies,
        embedding_dim=cfg.embedding_dim,
        front_scale=cfg.front_scale is True,
        categorical=tuple(i for i, _ in codes),
        category_sizes=tuple(n for _, n in codes),
        category_dims=tuple(category_embeddings.embedding_dim(n) for _, n in codes),
        learnable_activation=cfg.learnable_activation,
        parametrization=cfg.parametrization,
    )


def group_weights(cfg: TrainConfig, pre: Preprocessor) -> list[float] | None:
    """``cfg.l1_inputs_weights`` in the order of the column groups, or None when not set."""
    if cfg.l1_inputs_weights is None:
        return None
    columns = list(pre.encoded_groups())
    missing = [c for c in columns if c not in cfg.l1_inputs_weights]
    unknown = [c for c in cfg.l1_inputs_weights if c not in columns]
    if missing or unknown:
        raise InputError(
            f"`l1_inputs_weights` must name each input column once; missing {missing}, "
            f"unknown {unknown}. Drop the table to have the adaptive pilot measure them again."
        )
    return [cfg.l1_inputs_weights[c] for c in columns]


def penalty_weights(cfg: TrainConfig, prepared: PreparedData) -> list[float] | None:
    """What multiplies each column's ``sqrt(rows_g)`` in the ``l1_inputs`` group step: its
    ``l1_inputs_weights`` (default 1) times :func:`fitwell.training.optim.input_count_scales`,
    so the penalty is ``l1_inputs * sqrt(p_g) * w_g * ||W1_g||`` with ``p_g`` the column's rows
    without the numeric embedding (1 for a numeric column), under either front."""
    weights = group_weights(cfg, prepared.preprocessor)
    scales = input_count_scales(
        first_layer_groups(cfg, prepared),
        first_layer_groups(cfg.replace(numeric_embedding="none"), prepared),
    )
    if scales is None:
        return weights
    if weights is None:
        return scales
    return [w * s for w, s in zip(weights, scales, strict=True)]


# Members of the adaptive pilot, averaged (more seeds: steadier weights).
PILOT_MEMBERS = 3


def first_layer_groups(cfg: TrainConfig, prepared: PreparedData) -> list[int]:
    """Group id (original column) of each first-layer row: an embedding's rows belong to the
    column they embed (:func:`fitwell.embeddings.first_layer_sources`), so a text column with a
    learned embedding is one group of its embedding's rows for the group lasso and the adaptive
    weights, as a one-hot column is one group of its levels' rows."""
    pre = prepared.preprocessor
    cfg = resolve_front(cfg, prepared.task)
    groups = input_groups(pre)
    codes = pre.embedded_inputs()
    sources = first_layer_sources(
        len(groups),
        numeric_inputs(pre) if cfg.numeric_embedding != "none" else (),
        cfg.embedding_dim,
        categorical=[i for i, _ in codes],
        category_dims=[category_embeddings.embedding_dim(n) for _, n in codes],
    )
    return [groups[i] for i in sources]


def member_weights(
    states: Sequence[dict[str, torch.Tensor]], pre: Preprocessor, row_groups: Sequence[int]
) -> dict[str, float]:
    """Adaptive weights per column from trained members' first-layer column norms.

    ``states`` are members' tensors (``weights.0`` is ``[1, first-layer rows, width]``, each row
    in group ``row_groups[i]``); their norms go through
    :func:`fitwell.training.optim.adaptive_group_weights`.
    """
    groups = torch.as_tensor(list(row_groups), dtype=torch.long)
    columns = list(pre.encoded_groups())
    norms = []
    for state in states:
        w = state["weights.0"][0].detach().to("cpu", torch.float64)
        sq = torch.zeros(len(columns), dtype=torch.float64).index_add_(0, groups, (w * w).sum(1))
        norms.append(sq.sqrt())
    weights = adaptive_group_weights(torch.stack(norms)).tolist()
    return dict(zip(columns, (float(w) for w in weights), strict=True))


def adaptive_weights(
    cfg: TrainConfig, prepared: PreparedData, *, device: torch.device
) -> dict[str, float]:
    """Adaptive ``l1_inputs`` weights per column from a plain group-lasso pilot population.

    ``PILOT_MEMBERS`` members (seeds ``cfg.seed, cfg.seed + 1, ...``) train with ``cfg``'s own
    ``l1_inputs`` and every column weighing 1, with early stopping on validation; their restored
    first-layer column norms become the weights (:func:`member_weights`). Why a penalised pilot
    rather than an unpenalised one: without a penalty the first-layer norms stay near their
    random initial values (noise and signal columns within a few percent of each other on the
    feature-selection benchmark), so they cannot tell the columns apart. Reads no test row.
    """
    pilot = cfg.replace(
        l1_inputs_adaptive=False, l1_inputs_weights=None, restarts=1, ensemble=PILOT_MEMBERS
    )
    pop = fit_prepared([pilot], prepared, device=device, check_capacity=False)
    states = [m.state for m in pop.fit.members if m.finite and m.state]
    if not states:
        raise InputError("the adaptive pilot diverged in every member; lower `lr` or `l1_inputs`.")
    return member_weights(states, prepared.preprocessor, first_layer_groups(cfg, prepared))


def with_adaptive_weights(
    cfgs: Sequence[TrainConfig], prepared: PreparedData, *, device: torch.device
) -> list[TrainConfig]:
    """Fill in ``l1_inputs_weights`` when ``l1_inputs_adaptive`` asks for them (one pilot).

    The flag and the weights are shared by a population's members, so one pilot serves all.
    It runs only when some member has a penalty (``l1_inputs > 0``) and no weights are given;
    a resumed run has its weights in the stored config, so the pilot never runs twice.
    """
    first = cfgs[0]
    if not first.l1_inputs_adaptive or first.l1_inputs_weights is not None:
        return list(cfgs)
    if not any(c.l1_inputs > 0 for c in cfgs):
        return list(cfgs)
    weights = adaptive_weights(first, prepared, device=device)
    return [c.replace(l1_inputs_weights=weights) for c in cfgs]


def class_weights(cfg: TrainConfig, prepared: PreparedData) -> tuple[float, ...] | None:
    """``balanced``: ``n / (C * n_c)`` per class from the training rows (scikit-learn's rule),
    so every class carries the same total weight and the mean weight per row is 1. A table
    ``{label: factor}``: those factors by class label (unlisted classes weigh 1)."""
    if prepared.task != "classification" or cfg.class_weight == "none":
        return None
    labels = prepared.target_encoder.classes
    if isinstance(cfg.class_weight, dict):
        return class_weight_table(cfg.class_weight, labels)
    classes = len(labels)
    counts = np.bincount(prepared.y_train, minlength=classes).astype(float)
    n = float(counts.sum())
    return tuple(n / (classes * c) if c > 0 else 0.0 for c in counts)


def class_weight_table(table: dict[str, float], labels: Sequence[Any]) -> tuple[float, ...]:
    """Factors in class order from a ``{label: factor}`` table; labels match as text (TOML keys
    are strings), and a label the data does not have is an error naming the classes."""
    names = [str(c) for c in labels]
    unknown = [k for k in table if k not in names]
    if unknown:
        from fitwell.errors import did_you_mean

        hint = did_you_mean(unknown[0], names).strip().replace("Did", "did")
        raise InputError(
            f"`class_weight` names class {unknown[0]!r}, which the target does not have; "
            f"classes are {', '.join(repr(n) for n in names)}"
            + (f" ({hint})" if hint else "")
            + "."
        )
    return tuple(float(table.get(n, 1.0)) for n in names)


def _loop_settings(cfg: TrainConfig, weights: tuple[float, ...] | None = None) -> LoopSettings:
    return LoopSettings(
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        batch_size=cfg.batch_size,
        max_epochs=cfg.max_epochs,
        init=cfg.init,
        init_scale=cfg.init_scale,
        bias_init=cfg.bias_init,
        bias_init_mode=cfg.bias_init_mode,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        restore_best=cfg.restore_best,
        best_epoch_by=cfg.best_epoch_by,
        adam_beta2=cfg.adam_beta2,
        label_smoothing=cfg.label_smoothing,
        class_weights=weights,
    )


def _check_population(configs: Sequence[TrainConfig]) -> None:
    """Members may differ only in per-member settings; everything else must match."""
    first = configs[0].to_dict()
    for i, cfg in enumerate(configs[1:], start=1):
        for key, value in cfg.to_dict().items():
            if key in PER_MEMBER_FIELDS or key in ("restarts", "target_score"):
                continue
            if first.get(key) != value:
                raise InputError(
                    f"population member {i} differs in `{key}` ({value!r} vs {first.get(key)!r}); "
                    f"members may differ only in {', '.join(PER_MEMBER_FIELDS)}."
                )


@dataclass
class PopulationFit:
    """One trained population, before any member is chosen and before the test split is read.

    ``origin[m]`` is the index in ``configs`` of member ``m``'s settings; ``signals`` is the
    ``signals.json`` document (probe records, context, findings of the best member).
    """

    configs: list[TrainConfig]
    origin: list[int]
    fit: FitResult
    signals: dict[str, Any]
    arch: Architecture
    trainer: Trainer
    probe: SignalProbe
    seconds: float


def load_table_of(cfg: TrainConfig) -> Table:
    """``cfg``'s table, loaded and validated (not yet split)."""
    return load_table(
        cfg.data, dataset=cfg.dataset, target=cfg.target, weight_column=cfg.weight_column
    )


def load_and_prepare(cfg: TrainConfig, table: Table | None = None) -> PreparedData:
    """The one data path: load the table (unless given), split it (seeded by ``cfg.seed``) and
    fit preprocessing on the training rows. The test split comes back sealed."""
    table = load_table_of(cfg) if table is None else table
    return prepare(
        table,
        task=cfg.task,
        split=cfg.split,
        seed=cfg.seed,
        scale=cfg.scale,
        scaling=cfg.scaling,
        embed_above=cfg.embed_categories_above,
        release=True,
    )


def _population_members(cfgs: Sequence[TrainConfig]) -> tuple[list[MemberSettings], list[int]]:
    """One member per restart of each configuration, then extra seeds up to ``ensemble``."""
    cfg = cfgs[0]
    members: list[MemberSettings] = []
    origin: list[int] = []
    for i, c in enumerate(cfgs):
        for r in range(c.restarts):
            members.append(_member_settings(c, c.seed + r))
            origin.append(i)
    # Too few members for the ensemble: more seeds, taken from the settings in turn.
    for j in range(cfg.ensemble - len(members)):
        i = j % len(cfgs)
        c = cfgs[i]
        members.append(_member_settings(c, c.seed + c.restarts + j // len(cfgs)))
        origin.append(i)
    return members, origin


def fit_prepared(
    configs: Sequence[TrainConfig],
    prepared: PreparedData,
    *,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    session: Any = None,
    warn: Callable[[str], None] | None = None,
    check_capacity: bool | Callable[[], bool] = True,
) -> PopulationFit:
    """Train ``configs`` as one batched population on prepared arrays and diagnose it.

    Reads the training and validation arrays only: the sealed test split stays closed, so any
    number of populations can be fitted and compared before :func:`fitwell.finish.finish_run`.
    ``session`` (a :class:`fitwell.resume.RunSession`) checkpoints the run into its folder.
    ``check_capacity`` lets the doctor train a wider reference network when the run fits its
    training rows poorly (``fitwell.training.capacity``); a search that only ranks losses skips it.
    """
    started = time.perf_counter()
    cfgs = list(configs)
    _check_population(cfgs)
    cfg = cfgs[0]
    hidden = resolve_hidden(cfg.hidden, len(prepared.y_train))
    if isinstance(cfg.hidden, str):  # "auto": fixed now, so the saved config.toml records it
        cfgs = [c.replace(hidden=hidden) for c in cfgs]
    # Likewise the embedding and front scale chosen by task.
    cfgs = [resolve_front(c, prepared.task) for c in cfgs]
    cfg = cfgs[0]
    arch = architecture(cfg, prepared, hidden)
    members, origin = _population_members(cfgs)
    probe = SignalProbe()
    all_callbacks = [probe, *callbacks]
    if progress is None or progress:
        all_callbacks.append(ProgressBar(enabled=None if progress is None else True))
    torch.manual_seed(cfg.seed)  # nothing should draw from the global RNG; pin it anyway
    trainer = Trainer(
        arch,
        members,
        _loop_settings(cfg, class_weights(cfg, prepared)),
        task=prepared.task,
        x_train=prepared.x_train,
        y_train=prepared.y_train,
        x_val=prepared.x_val,
        y_val=prepared.y_val,
        device=device,
        callbacks=all_callbacks,
        # The group step reads first-layer rows: an embedding's rows belong to their column.
        input_groups=first_layer_groups(cfg, prepared),
        group_weights=penalty_weights(cfg, prepared),
        w_train=prepared.w_train,
        w_val=prepared.w_val,
    )
    if session is not None:
        session.attach(trainer, every=cfg.checkpoint_every, warn=warn)
    fit = trainer.fit()
    if cfg.metric != "auto":  # the kept member and the ensemble follow the chosen metric
        metric = resolve_metric(cfg.metric, prepared.task)
        values = member_metric_values(
            fit,
            arch,
            metric,
            prepared.x_val,
            prepared.y_val,
            weights=prepared.w_val,
            scale=prepared.target_encoder.std if prepared.task == "regression" else 1.0,
            device=device,
        )
        rank_members(fit, metric, values)
    signals = diagnose_fit(
        fit,
        prepared,
        probe,
        metric=cfg.metric,
        class_weight=cfg.class_weight if isinstance(cfg.class_weight, str) else "table",
        lr=cfg.lr,
        restored_best=bool(cfg.restore_best and cfg.patience > 0),
        best_epoch_by=cfg.best_epoch_by,
        events=getattr(trainer, "events", []),
    )
    if callable(check_capacity):  # asked after training: e.g. not when the clock cut it
        check_capacity = check_capacity()
    if check_capacity and needs_capacity_reference(signals, fit.history):
        reference = capacity_reference(
            arch,
            task=prepared.task,
            x_train=prepared.x_train,
            y_train=prepared.y_train,
            x_val=prepared.x_val,
            y_val=prepared.y_val,
            batch_size=cfg.batch_size,
            max_epochs=cfg.max_epochs,
            seed=cfg.seed,
            device=device,
        )
        signals = with_capacity_reference(signals, fit.history, reference)
    return PopulationFit(
        configs=cfgs,
        origin=origin,
        fit=fit,
        signals=signals,
        arch=arch,
        trainer=trainer,
        probe=probe,
        seconds=time.perf_counter() - started,
    )


def train(
    data: str | Path | None = None,
    *,
    config: TrainConfig | dict | str | Path | None = None,
    out: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    overwrite: bool = False,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    **settings: Any,
) -> Run:
    """Train a model on a table and write a run directory.

    Parameters
    ----------
    data : path, optional
        CSV, Parquet or ``.npz`` file; or pass ``dataset="digits"`` (a built-in).
    config : TrainConfig, dict or TOML path, optional
        Base settings; keyword ``settings`` override them (see :class:`TrainConfig`).
    out : path, optional
        Run directory to create (must not exist, or be empty). ``None`` writes nothing.
    overwrite : bool, default False
        Replace the fitwell run already at ``out`` (the old one is deleted only once the new one
        has finished; a folder holding anything but a fitwell run is refused).
    callbacks : sequence of Callback
        Extra callbacks for the training loop.
    progress : bool or None, default False
        Show a progress bar; ``None`` shows it when stderr is a terminal.
    mlflow_uri : str, optional
        Also log the run to this MLflow tracking store (``sqlite:///mlflow.db``, a folder, an
        ``http://`` server; needs ``fitwell[mlflow]``): see :mod:`fitwell.tracking`. The store is
        checked before training starts.
    mlflow_experiment : str, optional
        MLflow experiment name; default: the dataset's name or the data file's stem.
    """
    from fitwell.tracking import tracked

    cfg = make_config(config, data=str(data) if data is not None else None, **settings)

    def body() -> Run:
        if overwrite and out is not None:
            with runs.replacing_run(out):
                return train_population([cfg], out=out, callbacks=callbacks, progress=progress)
        return train_population([cfg], out=out, callbacks=callbacks, progress=progress)

    return tracked(
        body,
        mlflow_uri,
        experiment=mlflow_experiment,
        settings=cfg.to_dict(),
        command="train",
        run_name=Path(out).name if out is not None else None,
    )


def train_population(
    configs: Sequence[TrainConfig | dict],
    *,
    out: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    resume: bool = False,
    warn: Callable[[str], None] | None = None,
    prepared: PreparedData | None = None,
    keep_files: Sequence[str] = (),
    extra_metrics: dict[str, Any] | None = None,
    before_finish: Callable[[Path | None, dict[str, Any]], None] | None = None,
    fitted: PopulationFit | None = None,
) -> Run:
    """Train several configurations at once as one batched population and keep the best.

    Configurations may differ in ``seed``, ``lr``, ``l1``, ``l2`` and ``dropout``; each one's
    ``restarts`` adds that many members with seeds ``seed, seed+1, ...`` (and more seeds are
    added while the population is smaller than ``ensemble``). The ``ensemble`` members with the
    lowest validation loss are averaged into the final model (the best one alone when
    ``ensemble=1``), then the sealed test split is read once to score it.
    Every member's validation result is in ``run.metrics["population"]``.

    Members train as one batched model (stacked weights), each ending where it would have ended
    alone, up to float32 rounding; a member whose early stopping fires is dropped from the batch.

    Parameters
    ----------
    configs : sequence of TrainConfig or dict
        One entry per setting; all must share data, architecture, optimizer and epochs.
    out, callbacks, progress
        As in :func:`train`.
    prepared : PreparedData, optional
        Data already loaded and split by :func:`load_and_prepare` with the same settings
        (``fitwell auto`` prepares once); its sealed test split must still be closed.
    keep_files : sequence of str
        Names of files that may already be in ``out`` and are kept (``fitwell auto``'s study).
    extra_metrics, before_finish
        Passed to :func:`fitwell.finish.finish_run`.
    fitted : PopulationFit, optional
        Members already trained on ``prepared`` with ``configs`` (``fitwell auto`` reuses the
        winner's): they are finished as they are instead of being trained again.

    Examples
    --------
    An ``lr x l2`` sweep with 3 restarts per setting: 18 members, one batched run.

    >>> configs = [
    ...     {"dataset": "digits", "lr": lr, "l2": l2, "restarts": 3}
    ...     for lr in (3e-4, 1e-3, 3e-3)
    ...     for l2 in (0.0, 1e-4)
    ... ]
    >>> run = fitwell.train_population(configs)  # doctest: +SKIP
    >>> run.metrics["population"][0]["lr"]  # doctest: +SKIP
    0.0003

    ``out`` is created once every input is validated and checkpointed while training
    (``checkpoint_every``); ``resume=True`` continues the unfinished run in ``out`` instead (see
    :func:`fitwell.resume.resume`, which also checks that data and settings are unchanged).
    """
    if not configs:
        raise InputError("train_population needs at least one configuration.")
    cfgs = [c if isinstance(c, TrainConfig) else make_config(c) for c in configs]
    _check_population(cfgs)
    cfg = cfgs[0]
    started = time.perf_counter()
    if out is not None and not resume:
        runs.check_destination(out, keep=keep_files)
    threads = configure_threads(cfg.threads)
    # NumPy's BLAS (the doctor's linear reference, preprocessing) gets the same thread budget.
    with limit_blas_threads(threads):
        device = resolve_device(cfg.device)
        if prepared is None:
            prepared = load_and_prepare(cfg)
        elif prepared.test.is_open:
            raise InputError("the prepared data's test split was already read; prepare again.")
        # Settings that depend on the data are checked before anything is written or trained.
        resolve_metric(cfg.metric, prepared.task)
        class_weights(cfg, prepared)
        if len(cfgs) == 1 and cfg.target is None:
            cfgs = [cfg.replace(target=prepared.target)]
        if isinstance(cfgs[0].hidden, str):  # "auto": fixed now, so the run state records it
            hidden = resolve_hidden(cfgs[0].hidden, len(prepared.y_train))
            cfgs = [c.replace(hidden=hidden) for c in cfgs]
        cfgs = (
            fitted.configs
            if fitted is not None
            else with_adaptive_weights(cfgs, prepared, device=device)
        )
        session = None
        if out is not None:
            from fitwell.run_state import RunSession

            session = RunSession.open(out, cfgs, prepared, resume=resume, keep=keep_files)
        try:
            pop = (
                fitted
                if fitted is not None
                else fit_prepared(
                    cfgs,
                    prepared,
                    device=device,
                    callbacks=callbacks,
                    progress=progress,
                    session=session,
                    warn=warn,
                )
            )
            return finish_run(
                pop,
                prepared,
                device=device,
                threads=threads,
                started=started,
                session=session,
                extra_metrics=extra_metrics,
                before_finish=before_finish,
            )
        except FitwellError:
            if session is not None:
                session.abandon()
            raise
        except BaseException:  # interrupted: resumable, and resumable by this process too
            if session is not None:
                session.release()
            raise
