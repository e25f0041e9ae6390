"""The report's charts: matplotlib figures rendered to SVG, embedded later as ``data:`` images.

Text in the SVG is drawn as paths (matplotlib's default ``svg.fonttype``), and the images are
shown through ``<img>``, so a column name or class label can never become markup or script.
User strings still pass through :func:`plain` so that a ``$`` is not read as mathtext.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

_MAX_LABEL = 40


def plain(text: Any, limit: int = _MAX_LABEL) -> str:
    """A user string safe for a matplotlib label: ``$`` escaped (no mathtext), long ones cut."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("$", r"\$")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_data_uri(fig: Any) -> str:
    """Lay out and render a figure as a base64 SVG ``data:`` URI, then close it."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # A column name in a script the font lacks draws as boxes; that is no reason to
            # lose the report, so matplotlib's missing-glyph warning is not passed on.
            warnings.filterwarnings("ignore", message=r".*[Gg]lyph .* missing from")
            fig.tight_layout()
            # A fixed hash salt and no date keep the SVG identical for identical inputs.
            with plt.rc_context({"svg.hashsalt": "fitwell"}):
                fig.savefig(buf, format="svg", metadata={"Date": None})
    finally:
        plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def learning_curves(
    rows: list[dict[str, Any]], *, member: int, best_epoch: int, score: str, restored: bool = True
) -> str:
    """Train vs. validation loss and score of the chosen member; the gap shaded, best epoch marked.

    Other members' validation losses are drawn faint, so the restart spread is visible too.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    members = sorted({int(r["member"]) for r in rows})
    for ax, key in ((axes[0], "loss"), (axes[1], score)):
        for m in members:
            if m == member:
                continue
            own = [r for r in rows if int(r["member"]) == m]
            ax.plot(
                [r["epoch"] for r in own],
                _finite([r.get(f"val_{key}") for r in own]),
                color="0.82",
                lw=0.8,
            )
        own = [r for r in rows if int(r["member"]) == member]
        epochs = [r["epoch"] for r in own]
        train = _finite([r.get(f"train_{key}") for r in own])
        val = _finite([r.get(f"val_{key}") for r in own])
        ax.plot(epochs, train, color="C0", label=f"train {key}")
        ax.plot(epochs, val, color="C1", label=f"validation {key}")
        ax.fill_between(epochs, train, val, color="C1", alpha=0.12, label="generalisation gap")
        if best_epoch > 0:
            label = f"kept: epoch {best_epoch}" if restored else f"best val: epoch {best_epoch}"
            ax.axvline(best_epoch, color="C3", ls="--", lw=1.2, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(members) > 1:
        axes[0].set_title("grey: validation loss of the other restarts", fontsize=8)
    return to_data_uri(fig)


def gradient_flow(records: list[dict[str, Any]], layers: list[str], *, member: int) -> str | None:
    """Per-layer weight-gradient norm per epoch (log scale): the vanishing-gradient picture."""
    own = sorted(
        (r for r in records if int(r.get("member", -1)) == member), key=lambda r: int(r["epoch"])
    )
    if not own:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.4))
    epochs = [int(r["epoch"]) for r in own]
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(layers):
        values = _finite([(r.get("grad_norm") or [None] * len(layers))[i] for r in own])
        positive = [v if v > 0 else math.nan for v in values]
        ax.plot(epochs, positive, color=cmap(i / max(len(layers) - 1, 1)), label=plain(name))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient L2 norm (mean over steps)")
    ax.grid(alpha=0.3, which="both")
    # Outside the axes: with many layers an inside legend hides the curves it explains.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_data_uri(fig)


def unit_fractions(records: list[dict[str, Any]], layers: list[str], *, member: int) -> str | None:
    """Dead and saturated unit fractions per hidden layer per epoch, where they were recorded."""
    own = sorted(
        (r for r in records if int(r.get("member", -1)) == member), key=lambda r: int(r["epoch"])
    )
    kinds = [k for k in ("dead_fraction", "saturated_fraction") if any(r.get(k) for r in own)]
    if not kinds:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.2), squeeze=False)
    epochs = [int(r["epoch"]) for r in own]
    for ax, kind in zip(axes[0], kinds, strict=True):
        width = max(len(r.get(kind) or []) for r in own)
        for i in range(width):
            values = _finite([(r.get(kind) or [None] * width)[i] for r in own])
            ax.plot(epochs, values, label=plain(layers[i] if i < len(layers) else f"hidden{i + 1}"))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(kind.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def restarts(scores: Sequence[Any], *, best: int, score: str) -> str:
    """Every member's validation score as a dot, the chosen one marked; diverged ones flagged.

    Dots on an axis fitted to the scores (not bars from zero), so a spread of a few points,
    the thing restarts are about, is visible.
    """
    plt = _pyplot()
    values = _finite(scores)
    fig, ax = plt.subplots(figsize=(max(4.5, min(10.0, 0.45 * len(values) + 2.5)), 3.0))
    xs = list(range(len(values)))
    finite = [v for v in values if not math.isnan(v)]
    others = [x for x in xs if x != best and not math.isnan(values[x])]
    ax.scatter(
        others,
        [values[x] for x in others],
        color="C0",
        s=36,
        label="restart",
    )
    if 0 <= best < len(values):
        ax.scatter(
            [best],
            [values[best]],
            color="C3",
            s=90,
            marker="*",
            zorder=3,
            label=f"chosen (member {best})",
        )
    low = min(finite) if finite else 0.0
    for x, v in zip(xs, values, strict=True):
        if math.isnan(v):
            ax.annotate("diverged", (x, low), ha="center", va="bottom", fontsize=7, rotation=90)
    if finite:
        pad = max(0.02 * abs(max(finite)), 0.1 * (max(finite) - min(finite)), 1e-3)
        ax.set_ylim(min(finite) - pad, max(finite) + pad)
    ax.set_xticks(xs)
    ax.set_xlabel("member")
    ax.set_ylabel(f"validation {score}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return to_data_uri(fig)


def feature_weights(
    names: list[str], magnitudes: list[float], zeroed: set[str], *, limit: int = 40
) -> str:
    """First-layer weight magnitude per input column (largest first); L1-zeroed ones in red."""
    plt = _pyplot()
    order = sorted(range(len(names)), key=lambda i: -magnitudes[i])
    shown = order[:limit]
    # Switched-off features are the point of the chart: keep them even past the limit.
    shown += [i for i in order[limit:] if names[i] in zeroed][: max(0, limit // 2)]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(shown) + 1.2))
    ys = list(range(len(shown)))[::-1]
    ax.barh(
        ys,
        [magnitudes[i] for i in shown],
        color=["C3" if names[i] in zeroed else "C0" for i in shown],
    )
    ax.set_yticks(ys)
    ax.set_yticklabels([plain(names[i]) for i in shown], fontsize=7)
    for tick, i in zip(ax.get_yticklabels(), shown, strict=True):
        if names[i] in zeroed:
            tick.set_color("C3")
    ax.set_xlabel("sum of |first-layer weights| per input column (red: switched off by L1)")
    ax.grid(alpha=0.3, axis="x")
    return to_data_uri(fig)


def confusion_matrix(matrix: list[list[int]], labels: list[Any]) -> str:
    """Counts of true (rows) vs. predicted (columns) classes on the test split."""
    plt = _pyplot()
    n = len(matrix)
    size = min(9.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix if row), default=0)
    if n <= 25:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if count > top / 2 else "black",
                )
    names = [plain(label, 18) for label in labels]
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return to_data_uri(fig)


def reliability_diagram(bins: Sequence[dict[str, Any]], ece: Any) -> str:
    """Accuracy against mean top-class probability per confidence bin on the test split: a
    calibrated classifier's bars sit on the diagonal; each bar's width is its bin, its shade
    the share of rows in it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#888", linestyle="--", linewidth=1, label="calibrated")
    top = max((float(b["share"]) for b in bins), default=1.0) or 1.0
    for b in bins:
        width = float(b["high"]) - float(b["low"])
        ax.bar(
            float(b["low"]),
            float(b["accuracy"]),
            width=width,
            align="edge",
            color="#2563eb",
            alpha=0.25 + 0.75 * float(b["share"]) / top,
            edgecolor="#1e3a8a",
            linewidth=0.5,
        )
        ax.plot(float(b["confidence"]), float(b["accuracy"]), "o", color="#dc2626", markersize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-class probability (bin; dot: its mean)")
    ax.set_ylabel("accuracy in the bin")
    title = "reliability on the test split"
    if isinstance(ece, (int, float)):
        title += f" (ECE {float(ece):.3f})"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return to_data_uri(fig)


def predicted_vs_true(y_true: Sequence[float], y_pred: Sequence[float]) -> str:
    """Test predictions against true values, with the identity line a perfect model would hit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    true, pred = _finite(y_true), _finite(y_pred)
    ax.scatter(true, pred, s=9, alpha=0.6)
    both = [v for v in true + pred if not math.isnan(v)]
    if both:
        lo, hi = min(both), max(both)
        ax.plot([lo, hi], [lo, hi], color="C3", lw=1, label="perfect prediction")
        ax.legend(fontsize=8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def search_scores(rows: Sequence[dict[str, Any]]) -> str | None:
    """Validation loss of every search trial by number (complete dots, pruned crosses at their
    last reported loss) and the best-so-far line over complete trials."""
    points = [
        (int(r["number"]), float(r["val_loss"]), str(r.get("state")))
        for r in rows
        if r.get("val_loss") not in (None, "") and math.isfinite(float(r["val_loss"]))
    ]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    done = [(n, v) for n, v, s in points if s == "complete"]
    pruned = [(n, v) for n, v, s in points if s == "pruned"]
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), marker="x", color="0.6", s=18, label="pruned")
    if done:
        ax.scatter(*zip(*done, strict=True), color="C0", s=24, label="complete")
        best, xs, ys = math.inf, [], []
        for n, v in sorted(done):
            best = min(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    finite = sorted(v for _, v, _ in points)
    top = finite[min(len(finite) - 1, int(0.9 * len(finite)))]  # a few blow-ups off the chart
    ax.set_ylim(finite[0] - 0.05 * (top - finite[0] + 1e-9), top + 0.1 * (top - finite[0] + 1e-9))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_data_uri(fig)
