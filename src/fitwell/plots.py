"""Learning-curve picture: train vs. validation loss and score, the early-stopping epoch marked."""

from __future__ import annotations

import io
from typing import Any


def curves_png(
    history: list[dict[str, Any]],
    *,
    member: int,
    best_epoch: int,
    score: str,
    title: str,
) -> bytes:
    """Render the chosen member's curves (other restarts faint) to PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    members = sorted({int(r["member"]) for r in history})
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], score, score)):
        for m in members:
            rows = [r for r in history if r["member"] == m]
            epochs = [r["epoch"] for r in rows]
            if m != member:
                ax.plot(epochs, [r[f"val_{key}"] for r in rows], color="0.8", lw=0.8)
        rows = [r for r in history if r["member"] == member]
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], label=f"train {label}", color="C0")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], label=f"validation {label}", color="C1")
        if best_epoch > 0:
            ax.axvline(best_epoch, color="C3", ls="--", lw=1.2, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(members) > 1:
        axes[0].set_title("grey: validation loss of the other restarts", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
