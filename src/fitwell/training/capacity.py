"""A capacity reference: what a larger network reaches on the same rows, for the underfitting rule.

A ridge model is a yardstick only where a linear fit is good; on MNIST-1D it is not, and a network
far too small for the problem (``--hidden 8,8``: 41% test against the defaults' 73%) still beats
it. The reference here needs no such assumption: one short run of a wide, unregularized network
(fitwell's default recipe; four times the run's widest layer, at least 256 and at most 512 units
unless the run is wider; at least two layers) on a sample of the training rows, early-stopped on
the same validation rows. It runs only when the run's own curves leave room for underfitting
(see :func:`fitwell.diagnosis.rules.capacity_check_needed`), so a run that fits its training rows
pays nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from fitwell.models import Architecture
from fitwell.training.loop import LoopSettings, MemberSettings, Trainer

# The reference is a probe, not a second training: few rows, few epochs, a short patience.
REFERENCE_MAX_ROWS = 4096
REFERENCE_MAX_EPOCHS = 100
REFERENCE_PATIENCE = 10
REFERENCE_MIN_WIDTH = 256
REFERENCE_WIDTH_FACTOR = 4
# A 1024-wide reference of a 256-wide run would cost 16x its steps; beyond 512 units the
# reference keeps the run's width and only drops its regularization.
REFERENCE_MAX_WIDTH = 512
REFERENCE_LR = 3e-3


def reference_architecture(arch: Architecture) -> Architecture:
    """Wider (x4, at least 256, at most 512 unless the run is wider) and at least two layers
    deep; ReLU, no batch norm. Text columns keep their learned embeddings: their inputs are
    integer codes that mean nothing read as numbers."""
    widest = max(arch.hidden, default=0)
    width = max(
        REFERENCE_MIN_WIDTH, min(REFERENCE_WIDTH_FACTOR * widest, REFERENCE_MAX_WIDTH), widest
    )
    depth = max(2, len(arch.hidden))
    return Architecture(
        n_inputs=arch.n_inputs,
        hidden=(width,) * depth,
        n_outputs=arch.n_outputs,
        activation="relu",
        batch_norm=False,
        categorical=arch.categorical,
        category_sizes=arch.category_sizes,
        category_dims=arch.category_dims,
    )


def capacity_reference(
    arch: Architecture,
    *,
    task: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    batch_size: int,
    max_epochs: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Train the reference once; its train and validation score at its best validation epoch.

    Train score is measured on the sampled rows it trained on (at most ``REFERENCE_MAX_ROWS``);
    validation on every validation row, like the run's own.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = len(y_train)
    if rows > REFERENCE_MAX_ROWS:
        pick = np.sort(rng.choice(rows, size=REFERENCE_MAX_ROWS, replace=False))
        x_train, y_train = x_train[pick], y_train[pick]
    ref = reference_architecture(arch)
    member = MemberSettings(
        seed=seed, lr=REFERENCE_LR, l1=0.0, l2=0.0, dropout=(0.0,) * len(ref.hidden)
    )
    trainer = Trainer(
        ref,
        [member],
        LoopSettings(
            optimizer="adam",
            batch_size=batch_size,
            max_epochs=max(1, min(max_epochs, REFERENCE_MAX_EPOCHS)),
            patience=REFERENCE_PATIENCE,
            restore_best=True,
        ),
        task=task,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        device=device,
    )
    best = trainer.fit().best_member
    return {
        "hidden": list(ref.hidden),
        "rows": int(len(y_train)),
        "epochs": int(best.epochs_run),
        "best_epoch": int(best.best_epoch),
        "train_score": _finite_or_none(best.train_score),
        "val_score": _finite_or_none(best.val_score),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
