"""The end of a fit: choose the members, read the sealed test split once, write the run.

Every choice (which members, how many) is made on validation data before the test split is
opened; ``finish_run`` is the only code that opens it.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fitwell import runs
from fitwell.category_embeddings import embedding_dim
from fitwell.config import TrainConfig, to_toml
from fitwell.data import PreparedData, Preprocessor
from fitwell.diagnosis.context import SIGNALS_FILE
from fitwell.embeddings import first_layer_sources, per_input
from fitwell.ensemble import ensemble_members, model_outputs, split_metrics
from fitwell.errors import TrainingFailed
from fitwell.metrics import classification_report, regression_report, score_name
from fitwell.models import PopulationMLP, ensemble_outputs, stack_member_states
from fitwell.predictor import Run, model_from_state
from fitwell.scoring import higher_is_better, meets_target, metric_value, resolve_metric
from fitwell.training import FitResult

if TYPE_CHECKING:
    from fitwell.api import PopulationFit


def numeric_inputs(pre: Preprocessor) -> list[int]:
    """Encoded-input indices of the numeric columns (the ones a numeric embedding embeds)."""
    groups = pre.encoded_groups()
    return [i for c in pre.columns if c.kind == "numeric" for i in groups[c.name]]


def l1_zeroed_features(first_layer: torch.Tensor, pre: Preprocessor) -> tuple[list[str], list[str]]:
    """Input columns (and encoded features) whose every first-layer weight is exactly zero.

    With a numeric embedding the first layer has more rows than encoded inputs: each numeric
    input's embedding rows follow the raw inputs (:func:`fitwell.embeddings.first_layer_sources`),
    and an input is off only when its raw row and its embedding rows all are. A text column with
    a learned embedding has no raw row: it is off when its embedding's rows all are."""
    # Stacked members ``[K, in, out]``: a column is off only when every member switched it off.
    w = first_layer.detach().abs()
    rows = w.sum(dim=(0, 2)) if w.dim() == 3 else w.sum(dim=1)
    n_inputs = len(pre.encoded_names)
    codes = pre.embedded_inputs()
    if len(rows) != n_inputs or codes:
        categorical = [i for i, _ in codes]
        category_dims = [embedding_dim(n) for _, n in codes]
        embedded = numeric_inputs(pre)
        periodic = len(rows) - (n_inputs - len(codes)) - sum(category_dims)
        dim = periodic // max(len(embedded), 1)
        sources = first_layer_sources(
            n_inputs,
            embedded if periodic else (),
            dim,
            categorical=categorical,
            category_dims=category_dims,
        )
        rows = per_input(rows, sources, n_inputs)
    norms = rows.cpu().numpy()
    encoded = [name for name, n in zip(pre.encoded_names, norms, strict=True) if n == 0.0]
    columns = [
        col
        for col, idx in pre.encoded_groups().items()
        if idx and all(norms[i] == 0.0 for i in idx)
    ]
    return columns, encoded


def _test_metrics(
    model: PopulationMLP, prepared: PreparedData, device: torch.device
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Open the sealed test split (once) and score the chosen model on it."""
    x_test, y_test = prepared.test.open()
    w_test = prepared.w_test
    model.eval()
    with torch.no_grad():
        outputs = model.predict_chunks(torch.as_tensor(x_test, device=device))
        out = ensemble_outputs(outputs, prepared.task).cpu()
    enc = prepared.target_encoder
    if prepared.task == "classification":
        y = torch.as_tensor(y_test)
        if w_test is None:
            loss = float(torch.nn.functional.cross_entropy(out, y))
        else:
            per_row = torch.nn.functional.cross_entropy(out, y, reduction="none").double()
            loss = float(np.average(per_row.numpy(), weights=w_test))
        pred = out.argmax(dim=1).numpy()
        labels = list(range(len(enc.classes)))
        from sklearn.metrics import confusion_matrix

        proba = torch.softmax(out.double(), dim=1).numpy()
        scores, extra = classification_report(np.asarray(y_test), proba, len(labels), w_test)
        cm = confusion_matrix(y_test, pred, labels=labels).tolist()
        return {**scores, "loss": loss}, {
            "confusion_matrix": cm,
            "labels": enc.classes,
            **extra,
        }
    pred_std = out[:, 0].numpy()
    y_true = enc.decode(np.asarray(y_test, dtype=float))
    y_pred = enc.decode(pred_std)
    metrics: dict[str, float | None] = {**regression_report(y_true, y_pred, w_test)}
    metrics["loss"] = float(np.average((pred_std - y_test) ** 2, weights=w_test))
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


def finish_run(
    pop: PopulationFit,
    prepared: PreparedData,
    *,
    device: torch.device,
    threads: int,
    started: float,
    session: Any = None,
    extra_metrics: dict[str, Any] | None = None,
    before_finish: Callable[[Path | None, dict[str, Any]], None] | None = None,
) -> Run:
    """Choose the members, open the test split once and write the run's final files.

    ``extra_metrics`` join ``metrics.json`` (``fitwell auto`` adds its search and repair
    records); ``before_finish(folder, metrics)`` runs once the test is scored and before any file is
    written (``folder`` is ``None`` when nothing is written): it may add to ``metrics`` and write
    further files into the run.
    """
    cfg, cfgs, origin, fit, arch = pop.configs[0], pop.configs, pop.origin, pop.fit, pop.arch
    trainer, probe, signals = pop.trainer, pop.probe, pop.signals
    out = session.folder if session is not None else None
    train_seconds = time.perf_counter() - started
    best = fit.best_member
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
    model = model_from_state(arch, {k: v.to(device) for k, v in state.items()})
    model.to(device)
    ensemble_val = split_metrics(
        model, prepared.x_val, prepared.y_val, prepared.task, device, weights=prepared.w_val
    )
    metric = resolve_metric(cfg.metric, prepared.task)
    if cfg.metric != "auto":
        ensemble_val[metric] = metric_value(
            metric,
            prepared.y_val,
            model_outputs(model, prepared.x_val, prepared.task, device),
            n_classes=len(prepared.target_encoder.classes),
            weights=prepared.w_val,
            scale=prepared.target_encoder.std if prepared.task == "regression" else 1.0,
        )
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
    metrics.update(extra_metrics or {})
    if before_finish is not None:
        before_finish(Path(out) if out is not None else None, metrics)
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
        extra={"fit": fit, "prepared": prepared, "signals": signals, "config": cfg},
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
    test: dict[str, float | None],
    test_detail: dict[str, Any],
    zeroed_cols: list[str],
    zeroed_encoded: list[str],
    device: torch.device,
    threads: int,
    seconds: float,
) -> dict[str, Any]:
    best = fit.best_member
    score = score_name(prepared.task)
    metric = resolve_metric(cfg.metric, prepared.task)
    value = test.get(metric)
    primary = float("nan") if value is None else float(value)  # None: ROC-AUC undefined
    val_scores = [m.val_score for m in fit.members]
    finite_scores = [s for s in val_scores if math.isfinite(s)]
    chosen = cfg.metric != "auto"
    return {
        "task": prepared.task,
        "score_name": score,
        "metric": metric,
        "metric_higher_is_better": higher_is_better(metric),
        # What chose the kept member and the ensemble on validation rows.
        "chosen_by": f"val_{metric}" if chosen else "val_loss",
        "weight_column": cfg.weight_column,
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
            **({f"val_{metric}": [m.val_metric for m in fit.members]} if chosen else {}),
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
                "l1_inputs": m.settings.l1_inputs,
                "l2": m.settings.l2,
                "dropout": list(m.settings.dropout),
                "lr_schedule": m.settings.lr_schedule,
                "warmup_epochs": m.settings.warmup_epochs,
                "weight_decay": m.settings.weight_decay,
                "dropout_schedule": m.settings.dropout_schedule,
                "wd_schedule": m.settings.wd_schedule,
                "best_epoch": m.best_epoch,
                "epochs_run": m.epochs_run,
                "stop_reason": m.stop_reason,
                "val_loss": m.val_loss,
                f"val_{score}": m.val_score,
                **({f"val_{metric}": m.val_metric} if chosen else {}),
            }
            for m in fit.members
        ]
        if len(cfgs) > 1 or len(fit.members) > 1
        else [],
        "l1_zeroed_features": zeroed_cols,
        "l1_zeroed_encoded_features": zeroed_encoded,
        "target_score": cfg.target_score,
        "target_met": None
        if cfg.target_score is None
        else meets_target(primary, cfg.target_score, metric),
        "findings": [],
        "data": prepared.summary(),
        "environment": _environment(device, threads),
        "train_seconds": round(seconds, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
