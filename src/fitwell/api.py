"""The Python face of fitwell: ``train``, ``train_population``, ``load_run`` and ``Run.predict``.

Data flows one way: config -> data (load, split, preprocess on train rows) -> population training
-> choice of member on validation -> one read of the sealed test split -> run directory.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fitwell import runs
from fitwell.config import (
    PER_MEMBER_FIELDS,
    TrainConfig,
    build_config,
    load_toml,
    resolve_hidden,
    to_toml,
)
from fitwell.data import PreparedData, Preprocessor, load_table, prepare
from fitwell.data.preparation import TargetEncoder
from fitwell.diagnosis.context import SIGNALS_FILE, diagnose_fit
from fitwell.diagnosis.probes import SignalProbe
from fitwell.ensemble import ensemble_members, split_metrics
from fitwell.errors import FitwellError, InputError, TrainingFailed
from fitwell.metrics import regression_report, score_name
from fitwell.models import Architecture, PopulationMLP, ensemble_outputs, stack_member_states
from fitwell.threads import configure_threads, limit_blas_threads
from fitwell.training import Callback, FitResult, LoopSettings, MemberSettings, ProgressBar, Trainer


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
        seed=seed, lr=cfg.lr, l1=cfg.l1, l2=cfg.l2, dropout=cfg.dropout_per_layer()
    )


def _loop_settings(cfg: TrainConfig) -> LoopSettings:
    return LoopSettings(
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        batch_size=cfg.batch_size,
        max_epochs=cfg.max_epochs,
        init=cfg.init,
        init_scale=cfg.init_scale,
        bias_init=cfg.bias_init,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        restore_best=cfg.restore_best,
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
class Run:
    """A finished run: its directory, metrics, and a model ready to predict."""

    run_dir: Path | None
    metrics: dict[str, Any]
    history: pd.DataFrame
    model: PopulationMLP
    preprocessor: Preprocessor
    target_encoder: TargetEncoder
    target: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.target_encoder.task

    def _inputs(self, data: pd.DataFrame | np.ndarray | str | Path) -> pd.DataFrame:
        if isinstance(data, (str, Path)):
            from fitwell.data.loading import read_file

            frame, _ = read_file(data)
            return frame
        if isinstance(data, np.ndarray):
            if data.ndim != 2 or data.shape[1] != len(self.preprocessor.input_columns):
                raise InputError(
                    f"expected a 2-D array with {len(self.preprocessor.input_columns)} columns; "
                    f"got shape {data.shape}."
                )
            return pd.DataFrame(data, columns=self.preprocessor.input_columns)
        return data

    @torch.no_grad()
    def _outputs(
        self, data: pd.DataFrame | np.ndarray | str | Path, source: str | None = None
    ) -> np.ndarray:
        frame = self._inputs(data)
        if source is None:
            source = str(data) if isinstance(data, (str, Path)) else "data"
        x = torch.as_tensor(self.preprocessor.transform(frame, source=source))
        device = next(self.model.parameters()).device
        self.model.eval()
        outputs = self.model.predict_chunks(x.to(device))
        return ensemble_outputs(outputs, self.task).cpu().numpy()

    def predict(
        self, data: pd.DataFrame | np.ndarray | str | Path, *, source: str | None = None
    ) -> np.ndarray:
        """Predicted labels (classification) or values in the target's units (regression).

        ``source`` names the data in error messages (default: the path, or "data").
        """
        out = self._outputs(data, source)
        if self.task == "classification":
            return self.target_encoder.decode(out.argmax(axis=1))
        return self.target_encoder.decode(out[:, 0])

    def predict_proba(
        self, data: pd.DataFrame | np.ndarray | str | Path, *, source: str | None = None
    ) -> np.ndarray:
        """Class probabilities, columns in ``target_encoder.classes`` order."""
        if self.task != "classification":
            raise InputError("predict_proba needs a classification run.")
        out = torch.as_tensor(self._outputs(data, source))
        return torch.softmax(out, dim=1).numpy()


def _model_from_state(arch: Architecture, state: dict[str, torch.Tensor]) -> PopulationMLP:
    """The saved model: one member, or an ensemble of K stacked members (``weights.0 [K, ...]``)."""
    weights = state.get("weights.0")
    n_members = int(weights.shape[0]) if weights is not None and weights.dim() == 3 else 1
    model = PopulationMLP(arch, n_members)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"model weights do not match the architecture ({first}).") from None
    return model


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory written by :func:`train` (JSON + safetensors; nothing unpickled)."""
    saved = runs.load_model_files(run_dir)
    folder = Path(run_dir)
    try:
        arch = Architecture.from_json(saved.meta["architecture"])
        pre = Preprocessor.from_json(saved.meta["preprocessing"])
        enc = TargetEncoder.from_json(saved.meta["target_encoder"])
        target = str(saved.meta["target"])
    except KeyError as exc:
        raise InputError(f"{folder / runs.MODEL_META}: missing field {exc}.") from None
    model = _model_from_state(arch, saved.state)
    for name, tensor in saved.state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{folder / runs.MODEL_FILE}: tensor {name!r} holds non-finite values."
            )
    metrics_path = folder / runs.METRICS_FILE
    metrics = runs.read_json(metrics_path) if metrics_path.exists() else {}
    history_path = folder / runs.HISTORY_FILE
    history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
    return Run(folder, metrics, history, model, pre, enc, target)


def l1_zeroed_features(first_layer: torch.Tensor, pre: Preprocessor) -> tuple[list[str], list[str]]:
    """Input columns (and encoded features) whose every first-layer weight is exactly zero."""
    # Stacked members ``[K, in, out]``: a column is off only when every member switched it off.
    w = first_layer.detach().abs()
    norms = (w.sum(dim=(0, 2)) if w.dim() == 3 else w.sum(dim=1)).cpu().numpy()
    encoded = [name for name, n in zip(pre.encoded_names, norms, strict=True) if n == 0.0]
    columns = [
        col
        for col, idx in pre.encoded_groups().items()
        if idx and all(norms[i] == 0.0 for i in idx)
    ]
    return columns, encoded


def _test_metrics(
    model: PopulationMLP, prepared: PreparedData, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    """Open the sealed test split (once) and score the chosen model on it."""
    x_test, y_test = prepared.test.open()
    model.eval()
    with torch.no_grad():
        outputs = model.predict_chunks(torch.as_tensor(x_test, device=device))
        out = ensemble_outputs(outputs, prepared.task).cpu()
    enc = prepared.target_encoder
    if prepared.task == "classification":
        y = torch.as_tensor(y_test)
        loss = float(torch.nn.functional.cross_entropy(out, y))
        pred = out.argmax(dim=1).numpy()
        acc = float((pred == y_test).mean())
        labels = list(range(len(enc.classes)))
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(y_test, pred, labels=labels).tolist()
        return {"accuracy": acc, "loss": loss}, {"confusion_matrix": cm, "labels": enc.classes}
    pred_std = out[:, 0].numpy()
    y_true = enc.decode(np.asarray(y_test, dtype=float))
    y_pred = enc.decode(pred_std)
    metrics = regression_report(y_true, y_pred)
    metrics["loss"] = float(np.mean((pred_std - y_test) ** 2))
    idx = np.linspace(0, len(y_true) - 1, num=min(len(y_true), 500)).astype(int)
    return metrics, {"y_true": y_true[idx].tolist(), "y_pred": y_pred[idx].tolist()}


def _environment(device: torch.device, threads: int) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "threads": threads,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def train(
    data: str | Path | None = None,
    *,
    config: TrainConfig | dict | str | Path | None = None,
    out: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
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
        Run directory to create (must not exist). ``None`` writes nothing.
    callbacks : sequence of Callback
        Extra callbacks for the training loop.
    progress : bool or None, default False
        Show a progress bar; ``None`` shows it when stderr is a terminal.
    """
    cfg = make_config(config, data=str(data) if data is not None else None, **settings)
    return train_population([cfg], out=out, callbacks=callbacks, progress=progress)


def train_population(
    configs: Sequence[TrainConfig | dict],
    *,
    out: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    resume: bool = False,
    warn: Callable[[str], None] | None = None,
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
        runs.check_destination(out)
    table = load_table(cfg.data, dataset=cfg.dataset, target=cfg.target)
    threads = configure_threads(cfg.threads)
    # NumPy's BLAS (the doctor's linear reference, preprocessing) gets the same thread budget.
    with limit_blas_threads(threads):
        device = resolve_device(cfg.device)
        prepared = prepare(table, task=cfg.task, split=cfg.split, seed=cfg.seed, scale=cfg.scale)
        if len(cfgs) == 1 and cfg.target is None:
            cfg = cfg.replace(target=prepared.target)
        hidden = resolve_hidden(cfg.hidden, len(prepared.y_train))
        if isinstance(cfg.hidden, str):  # "auto": fixed now, so the saved config.toml records it
            cfg = cfg.replace(hidden=hidden)
            cfgs = [c.replace(hidden=hidden) for c in cfgs]
        arch = Architecture(
            n_inputs=prepared.n_features,
            hidden=hidden,
            n_outputs=prepared.target_encoder.n_outputs,
            activation=cfg.activation,
            batch_norm=cfg.batch_norm,
        )
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
        probe = SignalProbe()
        all_callbacks = [probe, *callbacks]
        if progress is None or progress:
            all_callbacks.append(ProgressBar(enabled=None if progress is None else True))
        torch.manual_seed(cfg.seed)  # nothing should draw from the global RNG; pin it anyway
        trainer = Trainer(
            arch,
            members,
            _loop_settings(cfg),
            task=prepared.task,
            x_train=prepared.x_train,
            y_train=prepared.y_train,
            x_val=prepared.x_val,
            y_val=prepared.y_val,
            device=device,
            callbacks=all_callbacks,
        )
        session = None
        if out is not None:
            from fitwell.resume import RunSession

            session = RunSession.open(out, cfgs, prepared, resume=resume)
            session.attach(trainer, every=cfg.checkpoint_every, warn=warn)
        try:
            return _finish(
                cfg, cfgs, origin, trainer, prepared, arch, device, threads, started, session, probe
            )
        except FitwellError:
            if session is not None:
                session.abandon()
            raise


def _finish(
    cfg: TrainConfig,
    cfgs: Sequence[TrainConfig],
    origin: list[int],
    trainer: Trainer,
    prepared: PreparedData,
    arch: Architecture,
    device: torch.device,
    threads: int,
    started: float,
    session: Any,
    probe: SignalProbe,
) -> Run:
    """Train, choose the member, open the test split once and write the run's final files."""
    out = session.folder if session is not None else None
    fit = trainer.fit()
    train_seconds = time.perf_counter() - started
    best = fit.best_member
    restored = bool(cfg.restore_best and cfg.patience > 0)
    signals = diagnose_fit(
        fit,
        prepared,
        probe,
        lr=cfg.lr,
        restored_best=restored,
        events=getattr(trainer, "events", []),
    )
    diverged = set(probe.stopped) | set(trainer.failed_members)
    if not best.finite or len(diverged) == len(fit.members):
        failed = TrainingFailed(
            "training diverged: no member has finite weights and validation loss "
            f"({best.stop_reason or 'non-finite values'}). Lower the learning rate."
        )
        failed.findings = signals["findings"]  # the CLI prints them with the error
        raise failed
    chosen = ensemble_members(fit, cfg.ensemble, excluded=diverged)
    state = stack_member_states([m.state for m in chosen])
    model = _model_from_state(arch, {k: v.to(device) for k, v in state.items()})
    model.to(device)
    ensemble_val = split_metrics(model, prepared.x_val, prepared.y_val, prepared.task, device)
    # Every choice is made: read the sealed test split, once.
    test, test_detail = _test_metrics(model, prepared, device)
    zeroed_cols, zeroed_encoded = l1_zeroed_features(model.weights[0], prepared.preprocessor)
    metrics = _metrics(
        cfg,
        cfgs,
        origin,
        fit,
        prepared,
        test,
        test_detail,
        zeroed_cols,
        zeroed_encoded,
        device,
        threads,
        train_seconds,
    )
    metrics["ensemble"] = {
        "members": [m.member for m in chosen],
        "seeds": [m.settings.seed for m in chosen],
        "val": ensemble_val,
    }
    metrics["findings"] = signals["findings"]
    # Rollbacks of the non-finite guard (kind, epoch, step, member, action, lr), for the record.
    metrics["nonfinite_events"] = list(trainer.events)
    history = pd.DataFrame(fit.history)
    meta = {
        "architecture": arch.to_json(),
        "preprocessing": prepared.preprocessor.to_json(),
        "target": prepared.target,
        "target_encoder": prepared.target_encoder.to_json(),
    }
    run_dir = Path(out) if out is not None else None
    if run_dir is not None:
        # Each file is written atomically into the run directory; the run is complete (and
        # loadable) only once ``session.finish`` marks it so, after the last file.
        folder = run_dir
        runs.save_model(folder, state, meta)
        runs.write_atomic(folder / runs.HISTORY_FILE, history.to_csv(index=False))
        runs.write_json(folder / runs.METRICS_FILE, metrics)
        runs.write_json(folder / SIGNALS_FILE, signals)
        runs.write_atomic(folder / runs.CONFIG_FILE, to_toml(cfg))
        from fitwell.plots import curves_png

        runs.write_atomic(
            folder / runs.CURVES_FILE,
            curves_png(
                fit.history,
                member=best.member,
                best_epoch=best.best_epoch if cfg.patience > 0 else 0,
                score=score_name(prepared.task),
                title=f"{prepared.source}: learning curves (member {best.member})",
            ),
        )
        _write_report(folder, run_dir.name)
        session.finish()
        metrics["run_dir"] = str(run_dir)
    return Run(
        run_dir,
        metrics,
        history,
        model,
        prepared.preprocessor,
        prepared.target_encoder,
        prepared.target,
        extra={"fit": fit, "prepared": prepared, "signals": signals},
    )


def _write_report(folder: Path, name: str) -> None:
    """Write report.html last, from the files just written (the loop never calls the report).

    A report that fails to render must not cost the user a trained model: warn and go on;
    ``fitwell report RUN_DIR`` rebuilds it.
    """
    from fitwell.report import write_report

    try:
        write_report(folder, name=name)
    except Exception as exc:  # any rendering fault; the trained run itself is fine
        import warnings

        warnings.warn(
            f"report.html could not be written ({type(exc).__name__}: {exc}); "
            "rebuild it with `fitwell report RUN_DIR`.",
            RuntimeWarning,
            stacklevel=2,
        )


def _metrics(
    cfg: TrainConfig,
    cfgs: Sequence[TrainConfig],
    origin: list[int],
    fit: FitResult,
    prepared: PreparedData,
    test: dict[str, float],
    test_detail: dict[str, Any],
    zeroed_cols: list[str],
    zeroed_encoded: list[str],
    device: torch.device,
    threads: int,
    seconds: float,
) -> dict[str, Any]:
    best = fit.best_member
    score = score_name(prepared.task)
    primary = test["accuracy"] if prepared.task == "classification" else test["r2"]
    val_scores = [m.val_score for m in fit.members]
    finite_scores = [s for s in val_scores if math.isfinite(s)]
    return {
        "task": prepared.task,
        "score_name": score,
        "test": test,
        "test_score": primary,
        "test_detail": test_detail,
        "train": {"loss": best.train_loss, score: best.train_score},
        "val": {"loss": best.val_loss, score: best.val_score},
        "best_epoch": best.best_epoch,
        "epochs_run": best.epochs_run,
        "stop_reason": best.stop_reason,
        "restored_best_weights": bool(cfg.restore_best and cfg.patience > 0),
        "restarts": {
            "val_scores": val_scores,
            "val_losses": [m.val_loss for m in fit.members],
            "seeds": [m.settings.seed for m in fit.members],
            "best": best.member,
            "spread": (max(finite_scores) - min(finite_scores)) if finite_scores else None,
        },
        "population": [
            {
                "member": m.member,
                "config_index": origin[m.member],
                "seed": m.settings.seed,
                "lr": m.settings.lr,
                "l1": m.settings.l1,
                "l2": m.settings.l2,
                "dropout": list(m.settings.dropout),
                "best_epoch": m.best_epoch,
                "epochs_run": m.epochs_run,
                "stop_reason": m.stop_reason,
                "val_loss": m.val_loss,
                f"val_{score}": m.val_score,
            }
            for m in fit.members
        ]
        if len(cfgs) > 1 or len(fit.members) > 1
        else [],
        "l1_zeroed_features": zeroed_cols,
        "l1_zeroed_encoded_features": zeroed_encoded,
        "target_score": cfg.target_score,
        "target_met": None if cfg.target_score is None else bool(primary >= cfg.target_score),
        "findings": [],
        "data": prepared.summary(),
        "environment": _environment(device, threads),
        "train_seconds": round(seconds, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
