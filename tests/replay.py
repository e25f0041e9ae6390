"""Comparing a trained run's predictions with those of the same run loaded from its files."""

from __future__ import annotations

import numpy as np
import torch


def assert_same_predictions(loaded: object, trained: object) -> None:
    """Bit for bit on a CPU-only machine. Where CUDA is present the run in memory predicts on the
    GPU it trained on and the loaded run on the CPU, so the two agree to float32 rounding only."""
    if torch.cuda.is_available():
        np.testing.assert_allclose(
            np.asarray(loaded, dtype=float), np.asarray(trained, dtype=float), rtol=1e-5, atol=1e-6
        )
    else:
        np.testing.assert_array_equal(loaded, trained)
