"""Label smoothing: PyTorch's definition in training, plain cross-entropy everywhere it is read."""

from __future__ import annotations

import math

import pytest
import torch

import fitwell
from fitwell.config import build_config
from fitwell.errors import FitwellError
from fitwell.metrics import training_objective


@pytest.mark.parametrize("members", [1, 3])
def test_smoothed_objective_is_the_mixture_of_class_and_uniform_targets(members: int) -> None:
    torch.manual_seed(0)
    outputs = torch.randn(members, 8, 4)
    targets = torch.randint(0, 4, (8,))
    eps = 0.1
    objective, losses = training_objective("classification", outputs, targets, eps)
    logp = torch.log_softmax(outputs, dim=-1)
    nll = -logp.gather(-1, targets.expand(members, 8).unsqueeze(-1)).squeeze(-1)
    uniform = -logp.mean(dim=-1)
    expected = ((1 - eps) * nll + eps * uniform).mean(dim=1)
    torch.testing.assert_close(losses, expected)
    assert objective.item() == pytest.approx(float(expected.sum()), rel=1e-5)
    plain, _ = training_objective("classification", outputs, targets, 0.0)
    assert not math.isclose(plain.item(), objective.item())


def test_out_of_range_smoothing_is_refused() -> None:
    with pytest.raises(FitwellError, match="label_smoothing"):
        build_config({"label_smoothing": 1.0})


def test_smoothing_reaches_the_population_loop() -> None:
    plain = fitwell.train(dataset="iris", max_epochs=5, ensemble=3, progress=False)
    smooth = fitwell.train(
        dataset="iris", max_epochs=5, ensemble=3, label_smoothing=0.2, progress=False
    )
    a, b = plain.history, smooth.history
    # Same seeds and data order: only the smoothed objective (which leaves the fused kernel for
    # the general path) can make the curves differ.
    assert not a["train_loss"].equals(b["train_loss"])
