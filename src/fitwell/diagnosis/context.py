"""What the rules compare a run against: trivial and linear references, restart groups, leakage.

Built once after training from the in-memory data (``context_from_fit``), stored in
``signals.json["context"]`` so ``fitwell doctor RUN_DIR`` re-derives the same findings from the
run's files alone (``findings_from_files``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fitwell.diagnosis.findings import diagnose
from fitwell.diagnosis.rules import RunContext, capacity_check_needed

SIGNALS_FILE = "signals.json"
# Ridge strength of the linear reference, on standardized features (scikit-learn Ridge's default).
LINEAR_RIDGE = 1.0
# Above this many features the closed-form reference is skipped (it would cost more than training).
LINEAR_MAX_FEATURES = 2048
# Rows per block when summing the ridge fit (float64 work memory: this many rows at a time).
LINEAR_BLOCK_ROWS = 65_536


def baseline_val_score(
    task: str,
    y_train: np.ndarray,
    y_val: np.ndarray,
    w_train: np.ndarray | None = None,
    w_val: np.ndarray | None = None,
) -> float:
    """Validation score of the trivial predictor: majority training class, or training mean
    (by weight, and scored with the weights, when the rows have sample weights)."""
    if len(y_val) == 0:
        return math.nan
    if task == "classification":
        majority = int(np.bincount(np.asarray(y_train, dtype=np.int64), weights=w_train).argmax())
        return float(np.average(np.asarray(y_val) == majority, weights=w_val))
    y_val = np.asarray(y_val, dtype=float)
    w = np.ones(len(y_val)) if w_val is None else np.asarray(w_val, dtype=float)
    mean_val = float(np.average(y_val, weights=w))
    ss_tot = float((w * (y_val - mean_val) ** 2).sum())
    ss_res = float((w * (y_val - float(np.average(y_train, weights=w_train))) ** 2).sum())
    return 1.0 - ss_res / max(ss_tot, 1e-12)


def _one_hot_codes(block: np.ndarray, codes: Sequence[tuple[int, int]]) -> np.ndarray:
    """``block`` (float64 rows) with each integer-code column ``(index, n_codes)`` replaced by its
    one-hot encoding, after the other columns."""
    if not codes:
        return block
    code_columns = {i for i, _ in codes}
    parts = [block[:, [i for i in range(block.shape[1]) if i not in code_columns]]]
    for i, n in codes:
        one_hot = np.zeros((len(block), n))
        one_hot[np.arange(len(block)), block[:, i].astype(np.int64)] = 1.0
        parts.append(one_hot)
    return np.hstack(parts)


def metric_baseline(
    metric: str,
    task: str,
    y_train: np.ndarray,
    y_val: np.ndarray,
    *,
    n_classes: int,
    w_train: np.ndarray | None = None,
    w_val: np.ndarray | None = None,
    scale: float = 1.0,
) -> tuple[float, float]:
    """``(value, standard error)`` of the trivial model's validation ``metric``.

    The trivial model predicts the training rows' class frequencies (so its class is the
    majority's) or their mean. Standard errors use the validation rows' effective count
    ``n = (sum w)^2 / sum w^2``: a binomial ``sqrt(p (1 - p) / n)`` at the baseline's value for
    scores in [0, 1], ``sqrt(2 / n)`` for R^2 (as for the default score), and for the losses
    the spread of the baseline's per-row loss over ``sqrt(n)`` (for RMSE through its square).
    """
    from fitwell.scoring import baseline_outputs, metric_value

    y_val = np.asarray(y_val)
    w = np.ones(len(y_val)) if w_val is None else np.asarray(w_val, dtype=np.float64)
    n = max(float(w.sum()) ** 2 / max(float((w * w).sum()), 1e-300), 1.0)
    outputs = baseline_outputs(task, y_train, len(y_val), n_classes=n_classes, weights=w_train)
    value = metric_value(metric, y_val, outputs, n_classes=n_classes, weights=w_val, scale=scale)
    if metric == "r2":
        return value, math.sqrt(2.0 / n)
    if metric in ("rmse", "mae", "log_loss"):
        if metric == "log_loss":
            per_row = -outputs[np.arange(len(y_val)), np.asarray(y_val, dtype=np.int64)]
        else:
            per_row = np.abs(outputs - np.asarray(y_val, dtype=np.float64)) * scale
            per_row = per_row**2 if metric == "rmse" else per_row
        mean = float(np.average(per_row, weights=w))
        sd = math.sqrt(float(np.average((per_row - mean) ** 2, weights=w)))
        se = sd / math.sqrt(n)
        if metric == "rmse":  # delta method: d sqrt(m) = dm / (2 sqrt(m))
            se = se / (2.0 * max(math.sqrt(mean), 1e-12))
        return value, se
    p = min(max(value, 1.0 / n), 1.0 - 1.0 / n) if math.isfinite(value) else 0.5
    return value, math.sqrt(p * (1.0 - p) / n)


def linear_reference(
    task: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    codes: Sequence[tuple[int, int]] = (),
) -> tuple[float | None, float | None]:
    """Train and validation score of a closed-form ridge model (one-hot targets for classes).

    A network that scores below this on both splits cannot even match a linear fit: underfitting.
    ``codes``: ``(column, n_codes)`` of inputs holding a text column's integer code (a learned
    embedding's input); the reference reads them one-hot, as a number a code means nothing.
    """
    n, d = x_train.shape
    d += sum(c for _, c in codes) - len(codes)
    if n == 0 or len(y_val) == 0 or d > LINEAR_MAX_FEATURES:
        return None, None
    classes = int(max(np.max(y_train), np.max(y_val))) + 1 if task == "classification" else 0

    def targets(ys: np.ndarray) -> np.ndarray:
        if task == "classification":
            return np.eye(classes)[np.asarray(ys, dtype=np.int64)]
        return np.asarray(ys, dtype=np.float64)[:, None]

    def block_of(xs: np.ndarray, start: int) -> np.ndarray:
        block = np.asarray(xs[start : start + LINEAR_BLOCK_ROWS], dtype=np.float64)
        return _one_hot_codes(block, codes)

    # Sums over row blocks in float64: memory stays one block, not a float64 copy of the table.
    if codes:
        mean = sum(block_of(x_train, s).sum(axis=0) for s in range(0, n, LINEAR_BLOCK_ROWS)) / n
    else:
        mean = np.asarray(x_train.mean(axis=0, dtype=np.float64))
    t_mean = np.zeros(max(classes, 1))
    gram = LINEAR_RIDGE * np.eye(d)
    cross = np.zeros((d, len(t_mean)))
    centered_sum = np.zeros(d)
    for start in range(0, n, LINEAR_BLOCK_ROWS):
        xc = block_of(x_train, start) - mean
        t = targets(y_train[start : start + LINEAR_BLOCK_ROWS])
        gram += xc.T @ xc
        cross += xc.T @ t
        centered_sum += xc.sum(axis=0)
        t_mean += t.sum(axis=0)
    t_mean /= n
    coef = np.linalg.solve(gram, cross - np.outer(centered_sum, t_mean))

    def score(xs: np.ndarray, ys: np.ndarray) -> float:
        hits, ss_res = 0, 0.0
        ys_mean = float(np.mean(ys, dtype=np.float64))
        ss_tot = 0.0
        for start in range(0, len(ys), LINEAR_BLOCK_ROWS):
            block = slice(start, start + LINEAR_BLOCK_ROWS)
            pred = (block_of(xs, start) - mean) @ coef + t_mean
            if task == "classification":
                hits += int((pred.argmax(axis=1) == np.asarray(ys[block])).sum())
            else:
                y = np.asarray(ys[block], dtype=np.float64)
                ss_res += float(((y - pred[:, 0]) ** 2).sum())
                ss_tot += float(((y - ys_mean) ** 2).sum())
        if task == "classification":
            return hits / len(ys)
        return 1.0 - ss_res / max(ss_tot, 1e-12)

    return score(x_train, y_train), score(x_val, y_val)


def restart_groups(members: Sequence[dict[str, Any]], score: str) -> list[list[tuple[int, float]]]:
    """Members that differ only in seed, grouped: ``[(member, val_score), ...]`` per group."""
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for m in members:
        key = (
            m["lr"],
            m["l1"],
            m["l2"],
            tuple(m["dropout"]),
            m.get("lr_schedule", "constant"),
            m.get("warmup_epochs", 0),
            m.get("weight_decay", 0.0),
            m.get("dropout_schedule", "constant"),
            m.get("wd_schedule", "constant"),
        )
        value = m.get(f"val_{score}")
        groups.setdefault(key, []).append(
            (int(m["member"]), float(value) if value is not None else math.nan)
        )
    return [g for g in groups.values() if len(g) >= 2]


def build_context(doc: dict[str, Any]) -> RunContext:
    """A :class:`RunContext` from the JSON-able ``signals.json["context"]`` document."""
    return RunContext(
        task=doc["task"],
        member=int(doc.get("member", 0)),
        model_epoch=doc.get("model_epoch"),
        restored_best=bool(doc.get("restored_best", False)),
        best_epoch_by=str(doc.get("best_epoch_by", "loss")),
        lr=doc.get("lr"),
        l2=doc.get("l2"),
        dropout=None if doc.get("dropout") is None else tuple(float(p) for p in doc["dropout"]),
        n_val=int(doc.get("n_val", 0)),
        baseline_val_score=doc.get("baseline_val_score"),
        linear_train_score=doc.get("linear_train_score"),
        linear_val_score=doc.get("linear_val_score"),
        capacity_train_score=(doc.get("capacity") or {}).get("train_score"),
        capacity_val_score=(doc.get("capacity") or {}).get("val_score"),
        capacity_hidden=tuple((doc.get("capacity") or {}).get("hidden") or ()) or None,
        restart_groups=[
            [(int(m), float("nan") if s is None else float(s)) for m, s in g]
            for g in doc.get("restart_groups", [])
        ],
        n_train=int(doc.get("n_train", 0)),
        test_duplicates=int(doc.get("test_duplicates", 0)),
        n_test=int(doc.get("n_test", 0)),
        divergence={int(k): dict(v) for k, v in doc.get("divergence", {}).items()},
        all_members=[int(m) for m in doc.get("all_members", [])],
        events=list(doc.get("events", [])),
        metric=str(doc.get("metric") or ("accuracy" if doc["task"] == "classification" else "r2")),
        metric_val_score=doc.get("metric_val_score"),
        metric_baseline=doc.get("metric_baseline"),
        metric_standard_error=doc.get("metric_standard_error"),
        minority_share=doc.get("minority_share"),
        n_classes=int(doc.get("n_classes", 0)),
        class_weight=str(doc.get("class_weight", "none")),
    )


def findings_from_signals(signals: dict[str, Any], history: Sequence[dict[str, Any]]) -> list:
    """Findings from a ``signals.json`` document (with its ``context``) and history rows."""
    ctx = build_context(signals["context"])
    return diagnose(
        signals.get("records", []),
        history,
        ctx,
        layers=signals.get("layers", []),
        activation=str(signals.get("activation", "relu")),
    )


def findings_from_files(run_dir: str | Path) -> list[dict[str, Any]]:
    """Re-derive the findings of a finished run from its ``signals.json`` and ``history.csv``."""
    from fitwell.errors import InputError
    from fitwell.runs import HISTORY_FILE, read_history, read_json

    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: run directory does not exist.")
    signals = read_json(folder / SIGNALS_FILE)
    if not isinstance(signals, dict) or "context" not in signals:
        raise InputError(f"{folder / SIGNALS_FILE}: not a fitwell signals file (no `context`).")
    history_path = folder / HISTORY_FILE
    rows: list[dict[str, Any]] = []
    if history_path.exists():
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in read_history(history_path)
        ]
    try:
        return findings_from_signals(signals, rows)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # The manifest vouches for the bytes; this catches a hand-made or older signals file.
        raise InputError(
            f"{folder / SIGNALS_FILE}: does not have the expected fields ({exc!r}); "
            "retrain or restore the run."
        ) from None


def diagnose_fit(
    fit: Any,
    prepared: Any,
    probe: Any,
    *,
    lr: float,
    restored_best: bool,
    best_epoch_by: str = "loss",
    events: Sequence[dict[str, Any]] = (),
    metric: str = "auto",
    class_weight: str = "none",
) -> dict[str, Any]:
    """The ``signals.json`` document of a finished fit, with its context and findings.

    ``fit`` is a ``FitResult``, ``prepared`` the ``PreparedData`` and ``probe`` the
    ``SignalProbe`` that watched training. The sealed test split is not opened: leakage is judged
    from the duplicate count ``prepare`` computed (exact row matches).
    """
    best = fit.best_member
    task = prepared.task
    score = "accuracy" if task == "classification" else "r2"
    lin_train, lin_val = linear_reference(
        task,
        prepared.x_train,
        prepared.y_train,
        prepared.x_val,
        prepared.y_val,
        codes=prepared.preprocessor.embedded_inputs(),
    )
    members = [
        {
            "member": m.member,
            "lr": m.settings.lr,
            "l1": m.settings.l1,
            "l2": m.settings.l2,
            "dropout": list(m.settings.dropout),
            "lr_schedule": m.settings.lr_schedule,
            "warmup_epochs": m.settings.warmup_epochs,
            "weight_decay": m.settings.weight_decay,
            "dropout_schedule": m.settings.dropout_schedule,
            "wd_schedule": m.settings.wd_schedule,
            f"val_{score}": m.val_score if math.isfinite(m.val_score) else None,
        }
        for m in fit.members
    ]
    model_epoch = best.best_epoch if restored_best and best.best_epoch > 0 else best.epochs_run
    context = {
        "task": task,
        "member": best.member,
        "model_epoch": model_epoch,
        "restored_best": restored_best,
        "best_epoch_by": best_epoch_by,
        "lr": lr,
        "l2": best.settings.l2,
        "dropout": list(best.settings.dropout),
        "n_val": int(len(prepared.y_val)),
        "baseline_val_score": baseline_val_score(
            task, prepared.y_train, prepared.y_val, prepared.w_train, prepared.w_val
        ),
        "linear_train_score": lin_train,
        "linear_val_score": lin_val,
        "restart_groups": restart_groups(members, score),
        "n_train": int(len(prepared.y_train)),
        "test_duplicates": int(prepared.train_test_duplicates),
        "n_test": int(prepared.test.n_rows),
        "divergence": {str(m): d for m, d in probe.divergence.items()},
        "all_members": [m.member for m in fit.members],
        "events": [dict(e) for e in events],
        "metric": score if metric == "auto" else metric,
        "class_weight": class_weight,
    }
    if task == "classification":
        counts = np.bincount(prepared.y_train, minlength=len(prepared.target_encoder.classes))
        context["minority_share"] = float(counts.min() / max(counts.sum(), 1))
        context["n_classes"] = len(counts)
    if metric != "auto" and math.isfinite(best.val_metric):
        base, se = metric_baseline(
            metric,
            task,
            prepared.y_train,
            prepared.y_val,
            n_classes=len(prepared.target_encoder.classes),
            w_train=prepared.w_train,
            w_val=prepared.w_val,
            scale=prepared.target_encoder.std if task == "regression" else 1.0,
        )
        context["metric_val_score"] = float(best.val_metric)
        context["metric_baseline"] = base if math.isfinite(base) else None
        context["metric_standard_error"] = se
    doc = probe.signals()
    doc["context"] = context
    doc["findings"] = findings_from_signals(doc, fit.history)
    return doc


def needs_capacity_reference(signals: dict[str, Any], history: Sequence[dict[str, Any]]) -> bool:
    """Whether the finished run leaves room for underfitting that only a wider network can show
    (:func:`fitwell.diagnosis.rules.capacity_check_needed`, on the run's own findings)."""
    ctx = build_context(signals["context"])
    score = "accuracy" if ctx.task == "classification" else "r2"
    codes = {f["code"] for f in signals.get("findings", []) if f["severity"] != "info"}
    return capacity_check_needed(history, ctx, score, codes)


def with_capacity_reference(
    signals: dict[str, Any], history: Sequence[dict[str, Any]], reference: dict[str, Any]
) -> dict[str, Any]:
    """The signals document with the wider network's result in its context, findings redone."""
    doc = dict(signals)
    doc["context"] = {**signals["context"], "capacity": dict(reference)}
    doc["findings"] = findings_from_signals(doc, history)
    return doc
