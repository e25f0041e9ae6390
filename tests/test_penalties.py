"""L1 / L2 penalties against their NumPy formulas."""

from __future__ import annotations

import numpy as np
import torch

from fitwell.models import Architecture
from fitwell.training.loop import LoopSettings, MemberSettings, Trainer
from fitwell.training.optim import PopulationOptimizer


def _trainer(members: list[MemberSettings], optimizer: str = "sgd") -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return Trainer(
        Architecture(5, (4,), 2),
        members,
        LoopSettings(optimizer=optimizer, momentum=0.0, batch_size=8, max_epochs=1),
        task="classification",
        x_train=x,
        y_train=y,
        x_val=x,
        y_val=y,
        device=torch.device("cpu"),
    )


def test_l2_penalty_matches_numpy_formula():
    members = [MemberSettings(seed=1, lr=0.1, l2=0.01), MemberSettings(seed=2, lr=0.1, l2=0.3)]
    trainer = _trainer(members)
    penalty = trainer._l2_penalty()
    assert penalty is not None
    expected = 0.0
    for k, lam in enumerate([0.01, 0.3]):
        for w in trainer.model.weights:
            expected += lam * np.sum(w[k].detach().numpy().astype(np.float64) ** 2)
    np.testing.assert_allclose(float(penalty.detach()), expected, rtol=1e-5)


def test_l2_gradient_is_two_lambda_w():
    trainer = _trainer([MemberSettings(seed=3, lr=0.1, l2=0.05)])
    penalty = trainer._l2_penalty()
    assert penalty is not None
    penalty.backward()
    for w in trainer.model.weights:
        np.testing.assert_allclose(w.grad.numpy(), 2 * 0.05 * w.detach().numpy(), rtol=1e-6)


def test_l1_proximal_step_is_soft_threshold_for_sgd():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 3, 4))
    grad = torch.randn(2, 3, 4)
    lrs, l1s = torch.tensor([0.1, 0.5]), torch.tensor([0.2, 1.0])
    opt = PopulationOptimizer([w], [w], kind="sgd", lrs=lrs, l1s=l1s, momentum=0.0)
    before = w.detach().numpy().copy()
    w.grad = grad.clone()
    opt.step()
    for k in range(2):
        lr, lam = float(lrs[k]), float(l1s[k])
        z = before[k] - lr * grad[k].numpy()
        expected = np.sign(z) * np.maximum(np.abs(z) - lr * lam, 0.0)
        np.testing.assert_allclose(w[k].detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert (w.detach() == 0).any()  # soft-thresholding produces exact zeros


def test_per_member_learning_rates_scale_each_members_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2, 2))
    grad = torch.randn(3, 2, 2)
    lrs = torch.tensor([0.1, 0.01, 0.001])
    opt = PopulationOptimizer([w], [w], kind="sgd", lrs=lrs, l1s=torch.zeros(3), momentum=0.0)
    before = w.detach().clone()
    w.grad = grad.clone()
    opt.step()
    for k in range(3):
        expected = before[k] - lrs[k] * grad[k]
        torch.testing.assert_close(w[k].detach(), expected, rtol=1e-5, atol=1e-7)
