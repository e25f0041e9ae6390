"""The Doctor on a user's own PyTorch models and training loops (CNNs included)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fitwell


def _digits_images(n: int = 480) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.tensor(digits.target[:n], dtype=torch.long)
    return x, y


def _fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    doc: fitwell.Doctor,
) -> None:
    """The README example's loop: a plain PyTorch loop, plus one ``doc.end_epoch`` call."""
    x_train, y_train, x_val, y_val = x[:360], y[:360], x[360:], y[360:]
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for i in range(0, len(x_train), 32):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[i : i + 32]), y_train[i : i + 32])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            train_loss = loss_fn(model(x_train), y_train).item()
            val_loss = loss_fn(model(x_val), y_val).item()
        doc.end_epoch(train_loss=train_loss, val_loss=val_loss)


def test_small_cnn_on_digits_images_gets_no_warning() -> None:
    x, y = _digits_images()
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with fitwell.Doctor(model, optimizer) as doc:
        _fit(model, optimizer, x, y, epochs=5, doc=doc)
    assert doc.layers == ["0", "2", "5"]
    assert len(doc.records) == 5 and doc.records[0]["dead_fraction"] is not None
    assert all(g > 0 for g in doc.records[0]["grad_norm"])
    assert [f for f in doc.findings() if f["severity"] != "info"] == []
    # Hooks are gone after the with-block: training further records nothing.
    assert doc._handles == []


def test_dead_cnn_channels_are_reported() -> None:
    x, y = _digits_images()
    conv = nn.Conv2d(1, 8, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        conv.bias.fill_(-5.0)  # every channel negative on every pixel: dead from the start
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with fitwell.Doctor(model, optimizer) as doc:
        _fit(model, optimizer, x, y, epochs=3, doc=doc)
    dead = [f for f in doc.findings() if f["code"] == "dead_relu"]
    assert dead and dead[0]["layer"] == "1" and dead[0]["evidence"]["dead_fraction"] >= 0.7


def test_vanishing_gradients_in_a_deep_sigmoid_net_are_detected() -> None:
    x, y = _digits_images()
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for _ in range(8):
        layers += [nn.Linear(width, 32), nn.Sigmoid()]
        width = 32
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with fitwell.Doctor(model, optimizer) as doc:
        _fit(model, optimizer, x, y, epochs=2, doc=doc)
    codes = {f["code"]: f for f in doc.findings()}
    assert "vanishing_gradients" in codes
    found = codes["vanishing_gradients"]
    assert found["severity"] == "warning" and found["epoch"] == 1 and found["layer"] == "1"
    assert found["evidence"]["first_to_last_grad_ratio"] < 1e-3
    assert "relu" in found["advice"]


def test_divergence_is_an_error_finding() -> None:
    x, y = _digits_images()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e4)
    with fitwell.Doctor(model, optimizer) as doc:
        _fit(model, optimizer, x, y, epochs=2, doc=doc)
    first = doc.findings()[0]
    assert first["code"] == "divergence" and first["severity"] == "error"


def test_gradient_norms_match_autograd() -> None:
    """Oracle: the recorded norm is the L2 norm torch.autograd computes for the weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    xb, yb = torch.randn(16, 4), torch.randn(16, 2)
    with fitwell.Doctor(model, optimizer, task="regression") as doc:
        loss = ((model(xb) - yb) ** 2).mean()
        grads = torch.autograd.grad(loss, [model[0].weight, model[2].weight], retain_graph=True)
        loss.backward()
        optimizer.step()
        doc.end_epoch(train_loss=loss.item())
    expected = [float(g.norm()) for g in grads]
    np.testing.assert_allclose(doc.records[0]["grad_norm"], expected, rtol=1e-5)
    assert doc.records[0]["saturated_fraction"] is not None
