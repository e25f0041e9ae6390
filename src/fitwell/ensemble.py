"""The final model of a population: which members are averaged, and how well they do together.

The members with the lowest validation loss (the best first) are stacked into one K-member model
whose prediction averages theirs (:func:`fitwell.models.ensemble_outputs`). Only validation rows
are read here; the sealed test split is opened once, later, by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import torch

from fitwell.models import PopulationMLP, ensemble_outputs
from fitwell.training.loop import FitResult, MemberResult


def ensemble_members(
    fit: FitResult, size: int, *, excluded: Collection[int] = ()
) -> list[MemberResult]:
    """The best member first, then the next ``size - 1`` by validation loss, or by the chosen
    metric once :func:`fitwell.scoring.rank_members` ranked them (validation loss breaks ties);
    members that diverged (``excluded``) or hold non-finite values never join."""
    from fitwell.scoring import sort_key

    best = fit.best_member
    metric = fit.metric
    others = sorted(
        (
            m
            for m in fit.members
            if m.member != best.member
            and m.finite
            and m.member not in excluded
            and math.isfinite(m.val_loss)
        ),
        key=lambda m: (0.0 if metric is None else sort_key(m.val_metric, metric), m.val_loss),
    )
    return [best, *others[: size - 1]]


@torch.no_grad()
def model_outputs(
    model: PopulationMLP, x: np.ndarray, task: str, device: torch.device
) -> np.ndarray:
    """The (averaged) model's outputs on rows ``x``: logits ``[N, C]`` or values ``[N]``."""
    model.eval()
    out = ensemble_outputs(model.predict_chunks(torch.as_tensor(x, device=device)), task)
    values = out.double().cpu().numpy()
    return values if task == "classification" else values[:, 0]


@torch.no_grad()
def split_metrics(
    model: PopulationMLP,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
    device: torch.device,
    *,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Loss and score of the (averaged) model on a non-test split (weighted by ``weights``)."""
    model.eval()
    out = ensemble_outputs(model.predict_chunks(torch.as_tensor(x, device=device)), task).cpu()
    if task == "classification":
        target = torch.as_tensor(y, dtype=torch.long)
        if weights is None:
            loss = float(torch.nn.functional.cross_entropy(out, target))
            return {"loss": loss, "accuracy": float((out.argmax(dim=1) == target).double().mean())}
        per_row = torch.nn.functional.cross_entropy(out, target, reduction="none").double()
        hits = (out.argmax(dim=1) == target).double().numpy()
        return {
            "loss": float(np.average(per_row.numpy(), weights=weights)),
            "accuracy": float(np.average(hits, weights=weights)),
        }
    pred = out[:, 0].double().numpy()
    truth = np.asarray(y, dtype=float)
    w = np.ones(len(truth)) if weights is None else np.asarray(weights, dtype=float)
    ss_tot = float((w * (truth - np.average(truth, weights=w)) ** 2).sum())
    r2 = 1.0 - float((w * (pred - truth) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"loss": float(np.average((pred - truth) ** 2, weights=w)), "r2": r2}
