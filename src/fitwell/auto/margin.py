"""When a searched configuration may replace the start: a margin sized by the validation set.

The search tries hundreds of configurations and keeps the one with the lowest validation loss,
then confirms it on the same validation rows. On a small validation set that loss is mostly
luck (the winner's curse): the best of many noisy estimates is optimistic, and confirming on
the same rows keeps the luck. So the winner replaces the start configuration only when its
advantage clears the noise of the validation set: a paired comparison, row by row, of the two
configurations' member-averaged predictions. With ``d_i`` the start's loss minus the winner's
on row ``i``, the winner replaces the start when ``mean(d) > Z * se(d)``, ``se`` the standard
error of the mean of the paired differences. A few rows cannot make a small gain significant;
thousands of rows can.

Nothing here trains or reads the test split: the losses are the validation rows'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# One-sided: about 2.3% of equal configurations would pass on noise alone. Stricter than the
# usual 1.64, because the winner was itself chosen on these rows among many trials.
Z = 2.0


def setting_row_losses(pop: Any) -> list[list[float]]:
    """Per setting of a fitted population: each validation row's loss of its members' averaged
    prediction (class probabilities averaged, as the final ensemble does; regression outputs
    averaged, squared error in the target's scaled units). Empty for a setting without a
    finite member. One forward pass over the validation rows, members in chunks."""
    from fitwell.models import ensemble_outputs, stack_member_states
    from fitwell.predictor import model_from_state
    from fitwell.scoring import RANK_CHUNK_MEMBERS

    fit, trainer = pop.fit, pop.trainer
    x, y = trainer.x_val, trainer.y_val
    outputs: dict[int, torch.Tensor] = {}
    scorable = [m for m in fit.members if m.finite and m.state and math.isfinite(m.val_loss)]
    for start in range(0, len(scorable), RANK_CHUNK_MEMBERS):
        group = scorable[start : start + RANK_CHUNK_MEMBERS]
        state = stack_member_states([m.state for m in group])
        model = model_from_state(pop.arch, {k: v.to(x.device) for k, v in state.items()})
        model.to(x.device).eval()
        with torch.no_grad():
            out = model.predict_chunks(x)
        for i, m in enumerate(group):
            outputs[m.member] = out[i : i + 1]
    rows: list[list[float]] = []
    for s in range(len(pop.configs)):
        mine = [outputs[m] for m in sorted(outputs) if pop.origin[m] == s]
        if not mine:
            rows.append([])
            continue
        with torch.no_grad():
            avg = ensemble_outputs(torch.cat(mine), fit.task)
            if fit.task == "classification":
                loss = torch.nn.functional.cross_entropy(avg, y, reduction="none")
            else:
                loss = (avg[:, 0] - y) ** 2
        rows.append(loss.double().cpu().tolist())
    return rows


def val_weights(pop: Any) -> list[float] | None:
    """The validation rows' weights (``weight_column``), or ``None`` when rows weigh alike."""
    w = pop.trainer.w_val
    return None if w is None else w.double().cpu().tolist()


def paired_margin(
    start: Sequence[float],
    candidate: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    z: float = Z,
) -> tuple[bool, dict[str, Any]]:
    """Whether ``candidate``'s per-row validation losses beat ``start``'s by more than ``z``
    standard errors of the paired differences; and the record of why.

    Weighted rows count by their weights (the standard error uses the effective number of
    rows, ``sum(w)^2 / sum(w^2)``). Rows where either loss is not finite make the candidate lose.
    """
    a = np.asarray(start, dtype=float)
    b = np.asarray(candidate, dtype=float)
    record: dict[str, Any] = {"z": z, "rows": int(a.size)}
    if a.size == 0 or a.shape != b.shape:
        record |= {"replaced": False, "reason": "no per-row validation losses to compare"}
        return False, record
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        record |= {"replaced": False, "reason": "non-finite validation losses"}
        return False, record
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=float)
    d = a - b
    mean = float(np.average(d, weights=w))
    n_eff = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    var = float(np.average((d - mean) ** 2, weights=w))
    # Unbiased: n/(n-1) of the plain variance; one row alone has no spread to measure.
    se = math.sqrt(var / (n_eff - 1.0)) if n_eff > 1.0 else math.inf
    threshold = z * se
    replaced = mean > 0.0 and mean > threshold
    record |= {
        "improvement": mean,
        "standard_error": se,
        "margin": threshold,
        "replaced": replaced,
        "reason": (
            f"mean per-row validation loss gain {mean:.4g} "
            + ("> " if replaced else "<= ")
            + f"{z:g} x standard error {se:.3g} over {a.size} rows"
        ),
    }
    return replaced, record
