"""Build ``report.html`` from a finished run directory's files, and nothing else.

The report reads what the run wrote (metrics, history, model, config and, when the doctor ran,
``signals.json`` and ``metrics["findings"]``), so ``fitwell report RUN_DIR`` rebuilds exactly the
page the run wrote. Sections whose data was not recorded say so instead of failing. The page is
one self-contained file: charts are embedded ``data:`` images, there is no script and no external
URL, and every user string goes through Jinja2's autoescaping.
"""

from __future__ import annotations

import csv
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from fitwell import runs
from fitwell.errors import InputError
from fitwell.report import charts

REPORT_FILE = "report.html"
SIGNALS_FILE = "signals.json"
SEVERITIES = ("error", "warning", "info")


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return runs.read_history(path)  # damage is an InputError naming the file and line


def _first_layer_magnitudes(folder: Path) -> tuple[list[str], list[float]] | None:
    """Sum of |first-layer weights| per input column (one-hot groups summed), from the model."""
    meta_path, weights_path = folder / runs.MODEL_META, folder / runs.MODEL_FILE
    if not (meta_path.is_file() and weights_path.is_file()):
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load

    from fitwell.data.preprocessing import Preprocessor

    meta = runs.read_json(meta_path)
    try:
        state = load(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{weights_path}: not a valid safetensors file ({first_line}); retrain or restore "
            "the run."
        ) from None
    try:
        first = state["weights.0"]
        pre = Preprocessor.from_json(meta["preprocessing"])
    except (KeyError, TypeError, ValueError):
        return None
    # Stacked members [K, in, out] (an ensemble) or one [in, out]: sum over members and units.
    per_feature = abs(first).sum(axis=(0, 2)) if first.ndim == 3 else abs(first).sum(axis=1)
    n_inputs = len(pre.encoded_names)
    arch = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else {}
    if len(per_feature) != n_inputs or arch.get("categorical"):
        # The first layer reads the raw inputs but text columns' codes, then ``embedding_dim``
        # rows per numerically embedded input, then each text column's learned embedding
        # (fitwell.embeddings.first_layer_sources): each row counts for its input.
        try:
            dim = int(arch["embedding_dim"])
            codes = [int(i) for i in arch.get("categorical", [])]
            code_dims = [int(d) for d in arch.get("category_dims", [])]
            sources = [
                *(i for i in range(n_inputs) if i not in set(codes)),
                *(int(i) for i in arch["embedded"] for _ in range(dim)),
                *(i for i, d in zip(codes, code_dims, strict=True) for _ in range(d)),
            ]
        except (KeyError, TypeError, ValueError):
            return None
        if len(sources) != len(per_feature):
            return None
        folded = [0.0] * n_inputs
        for i, value in zip(sources, per_feature, strict=True):
            folded[i] += float(value)
        per_feature = folded
    names, values = [], []
    for column, idx in pre.encoded_groups().items():
        names.append(str(column))
        values.append(float(sum(per_feature[i] for i in idx)))
    return names, values


def _l1_strengths(folder: Path, metrics: dict[str, Any]) -> list[float] | None:
    """The distinct L1 and group-L1 (``l1_inputs``) strengths the run's members trained with;
    None when not recorded. Either can switch input columns off."""
    values: list[Any] = [
        p.get(key, 0.0)
        for p in metrics.get("population") or []
        if isinstance(p, dict)
        for key in ("l1", "l1_inputs")
    ]
    if not values:
        path = folder / runs.CONFIG_FILE
        if not path.is_file():
            return None
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib
        try:
            saved = tomllib.loads(path.read_text(encoding="utf-8"))
            values = [saved.get("l1", 0.0), saved.get("l1_inputs", 0.0)]
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sorted(set(numbers)) if len(numbers) == len(values) else None


def _signals(folder: Path) -> dict[str, Any] | None:
    path = folder / SIGNALS_FILE
    if not path.is_file():
        return None
    data = runs.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise InputError(f"{path}: expected an object with a `records` list.")
    return data


def _findings(metrics: dict[str, Any]) -> list[dict[str, Any]] | None:
    found = metrics.get("findings")
    if found is None:
        return None
    order = {s: i for i, s in enumerate(SEVERITIES)}
    items = [f for f in found if isinstance(f, dict)]
    return sorted(
        items,
        key=lambda f: (
            order.get(str(f.get("severity")), 9),
            f.get("epoch") if isinstance(f.get("epoch"), int) else 0,
        ),
    )


def _evidence_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_evidence_text(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    return "—" if value is None else str(value)


def _fmt(value: Any) -> str:
    """Numbers for people: 4 significant digits; missing values as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def report_context(run_dir: str | Path, *, name: str | None = None) -> dict[str, Any]:
    """Everything the template shows, read from the run directory (charts rendered here).

    ``name`` is the run's name when the folder is still a staging folder (default: its name).
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: run directory does not exist.")
    metrics = runs.read_json(folder / runs.METRICS_FILE)
    if not isinstance(metrics, dict) or "task" not in metrics:
        raise InputError(
            f"{folder / runs.METRICS_FILE}: not the metrics of a finished fitwell run."
        )
    score = str(metrics.get("score_name", "accuracy"))
    restarts = metrics.get("restarts") or {}
    best_member = int(restarts.get("best", 0) or 0)
    history = _read_history(folder / runs.HISTORY_FILE)
    ctx: dict[str, Any] = {
        "run_name": name or folder.resolve().name,
        "m": metrics,
        "score": score,
        # The headline metric (runs saved before ``metric`` existed: their score).
        "metric": str(metrics.get("metric") or score),
        "best_member": best_member,
        "fmt": _fmt,
        "evidence_text": _evidence_text,
    }
    # The dashed line marks the epoch whose weights were kept (restored best) or, when the last
    # weights were kept, the best validation epoch for comparison.
    ctx["curves"] = (
        charts.learning_curves(
            history,
            member=best_member,
            best_epoch=int(metrics.get("best_epoch") or 0),
            score=score,
            restored=bool(metrics.get("restored_best_weights")),
        )
        if history
        else None
    )
    last = [r for r in history if r["member"] == best_member]
    ctx["final_gap"] = float(last[-1]["val_loss"] - last[-1]["train_loss"]) if last else None

    signals = _signals(folder)
    ctx["signals"] = signals
    if signals is not None:
        layers = [str(x) for x in signals.get("layers", [])]
        ctx["gradient_chart"] = charts.gradient_flow(signals["records"], layers, member=best_member)
        ctx["units_chart"] = charts.unit_fractions(signals["records"], layers, member=best_member)
        ctx["nonfinite_steps"] = sum(
            int(r.get("nonfinite_steps") or 0)
            for r in signals["records"]
            if int(r.get("member", -1)) == best_member
        )

    scores = list(restarts.get("val_scores") or [])
    # One member has no spread to show: the template states its score instead.
    ctx["restarts_chart"] = (
        charts.restarts(scores, best=best_member, score=score) if len(scores) > 1 else None
    )
    ctx["population"] = metrics.get("population") or []

    zeroed = [str(c) for c in metrics.get("l1_zeroed_features") or []]
    ctx["zeroed"] = zeroed
    # With L1 off nothing can be switched off: one line says so instead of a chart of every input.
    ctx["l1_off"] = _l1_strengths(folder, metrics) == [0.0]
    # Read either way: a damaged weights file is refused even when no chart needs it.
    magnitudes = _first_layer_magnitudes(folder)
    ctx["weights_chart"] = (
        charts.feature_weights(magnitudes[0], magnitudes[1], set(zeroed))
        if magnitudes and not ctx["l1_off"]
        else None
    )

    ctx["findings"] = _findings(metrics)
    counts = {s: 0 for s in SEVERITIES}
    for f in ctx["findings"] or []:
        counts[str(f.get("severity"))] = counts.get(str(f.get("severity")), 0) + 1
    ctx["finding_counts"] = counts

    detail = metrics.get("test_detail") or {}
    ctx["confusion_chart"] = (
        charts.confusion_matrix(detail["confusion_matrix"], list(detail.get("labels") or []))
        if detail.get("confusion_matrix")
        else None
    )
    ctx["scatter_chart"] = (
        charts.predicted_vs_true(detail["y_true"], detail["y_pred"])
        if detail.get("y_true") and detail.get("y_pred")
        else None
    )
    bins = detail.get("reliability")
    ctx["reliability_chart"] = (
        charts.reliability_diagram(bins, (metrics.get("test") or {}).get("ece"))
        if isinstance(bins, list) and bins and all(isinstance(b, dict) for b in bins)
        else None
    )
    labels = list(detail.get("labels") or [])
    per_class = detail.get("per_class")
    ctx["per_class"] = (
        [{"label": str(label), **row} for label, row in zip(labels, per_class, strict=False)]
        if isinstance(per_class, list) and all(isinstance(r, dict) for r in per_class)
        else []
    )
    ctx.update(_auto_context(folder, metrics))
    config_path = folder / runs.CONFIG_FILE
    ctx["config_text"] = _config_text(config_path) if config_path.is_file() else None
    return ctx


TRIALS_FILE = "trials.csv"


def _auto_context(folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The Repairs and Search sections of a ``fitwell auto`` run (absent for ``train``)."""
    record = metrics.get("auto")
    if not isinstance(record, dict):
        return {"auto": None}
    rows: list[dict[str, Any]] = []
    path = folder / TRIALS_FILE
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    start = record.get("start_settings") or {}
    best = record.get("best_settings") or {}
    keys = [k for k in best if k in start or k in best]
    return {
        "auto": record,
        "auto_repairs": [r for r in record.get("repairs") or [] if isinstance(r, dict)],
        "search_chart": charts.search_scores(rows) if rows else None,
        "importances": sorted(
            (
                (str(k), float(v))
                for k, v in (record.get("search") or {}).get("importances", {}).items()
            ),
            key=lambda kv: -kv[1],
        ),
        "settings_diff": [
            (k, start.get(k), best.get(k), start.get(k) != best.get(k)) for k in keys
        ],
    }


def _config_text(path: Path) -> str:
    """The run's ``config.toml``, checked to be TOML before it is shown."""
    from fitwell.config import tomllib

    try:
        text = path.read_text(encoding="utf-8")
        tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc}); restore the run or retrain.") from None
    return text


def render(ctx: dict[str, Any]) -> str:
    """Fill the template; autoescaping turns every user string into text, never markup."""
    import jinja2

    template = resources.files("fitwell.report").joinpath("template.html").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(template).render(**ctx)


def build_report(run_dir: str | Path, *, name: str | None = None) -> str:
    """The HTML of a finished run's report."""
    return render(report_context(run_dir, name=name))


def write_report(run_dir: str | Path, *, name: str | None = None) -> Path:
    """(Re)write ``RUN_DIR/report.html`` atomically and return its path."""
    path = Path(run_dir) / REPORT_FILE
    runs.write_atomic(path, build_report(run_dir, name=name))
    return path
