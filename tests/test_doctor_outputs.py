"""The doctor's output probe on a user's own loop: a softmax fed to a loss that expects logits is
named; logits, and a softmax whose log goes to NLLLoss, stay quiet."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import fitwell
from fitwell.diagnosis.rules import cross_entropy_floor


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:600] / 16.0, dtype=torch.float32), torch.tensor(y[:600])


def train(head: list[nn.Module], loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), *head)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with fitwell.Doctor(model, optimizer) as doc:
        for _ in range(3):
            model.train()
            for i in range(0, 600, 64):
                optimizer.zero_grad()
                loss_of(model(x[i : i + 64]), y[i : i + 64]).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                doc.end_epoch(train_loss=float(loss_of(model(x), y)))
    return doc


def codes(doc: fitwell.Doctor) -> set[str]:
    return {f["code"] for f in doc.findings() if f["severity"] != "info"}


def test_softmax_before_cross_entropy_is_named() -> None:
    doc = train([nn.Softmax(dim=1)], nn.CrossEntropyLoss())
    found = [f for f in doc.findings() if f["code"] == "probabilities_as_logits"]
    assert len(found) == 1 and found[0]["epoch"] == 1
    evidence = found[0]["evidence"]
    assert evidence["classes"] == 10
    assert evidence["loss_floor"] == pytest.approx(cross_entropy_floor(10), abs=1e-4)
    # The harm the evidence names: the loss never gets below the floor.
    assert min(r["train_loss"] for r in doc.records) >= cross_entropy_floor(10) - 1e-4
    assert "nn.Softmax" in found[0]["advice"]


@pytest.mark.parametrize(
    ("head", "loss"),
    [
        ([], nn.CrossEntropyLoss()),  # logits: the intended use
        ([nn.LogSoftmax(dim=1)], nn.NLLLoss()),
        ([nn.Softmax(dim=1)], lambda out, y: nn.functional.nll_loss(torch.log(out), y)),
    ],
    ids=["logits+cross_entropy", "log_softmax+nll", "softmax+log+nll"],
)
def test_correct_heads_stay_quiet(head: list[nn.Module], loss: Callable) -> None:
    assert "probabilities_as_logits" not in codes(train(head, loss))


def test_floor_formula() -> None:
    # Probability rows (1, 0, ..., 0) with the true class first: the best cross-entropy can do.
    for k in (2, 3, 10):
        best = torch.zeros(1, k)
        best[0, 0] = 1.0
        loss = nn.functional.cross_entropy(best, torch.tensor([0]))
        assert float(loss) == pytest.approx(cross_entropy_floor(k), rel=1e-6)


def test_labels_that_do_not_match_their_inputs_are_no_signal_even_when_overfitting() -> None:
    """Shuffled labels: a wide network memorizes its rows (overfitting fires) while validation
    never beats the majority class; no_signal must still be reported."""
    torch.manual_seed(0)
    x, y = digits()
    y = y[torch.randperm(len(y))]
    x_train, y_train, x_val, y_val = x[:400], y[:400], x[400:], y[400:]
    majority = float((y_val == torch.bincount(y_train).argmax()).float().mean())
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    with fitwell.Doctor(model, optimizer, baseline_val_score=majority, n_val=len(y_val)) as doc:
        for _ in range(40):
            model.train()
            for i in range(0, 400, 32):
                optimizer.zero_grad()
                loss_fn(model(x_train[i : i + 32]), y_train[i : i + 32]).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_out = model(x_val)
                doc.end_epoch(
                    train_loss=float(loss_fn(model(x_train), y_train)),
                    val_loss=float(loss_fn(val_out, y_val)),
                    val_score=float((val_out.argmax(1) == y_val).float().mean()),
                )
    assert {"overfitting", "no_signal"} <= codes(doc)


def test_raw_pixels_are_unscaled_inputs_and_lead_the_divergence_advice() -> None:
    """Digits as raw 0-255 grey levels (x16): the worst columns are named, and the faults that
    large inputs cause advise scaling first; the same pixels divided by 255 stay quiet."""
    x, y = digits()

    def run(scale: float, lr: float) -> fitwell.Doctor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        inputs = x * scale
        with fitwell.Doctor(model, optimizer) as doc:
            for _ in range(3):
                for i in range(0, 600, 64):
                    optimizer.zero_grad()
                    loss_fn(model(inputs[i : i + 64]), y[i : i + 64]).backward()
                    optimizer.step()
                with torch.no_grad():
                    doc.end_epoch(train_loss=float(loss_fn(model(inputs), y)))
        return doc

    raw = run(255.0, 1.0)
    found = {f["code"]: f for f in raw.findings()}
    unscaled = found["unscaled_inputs"]
    assert unscaled["severity"] == "warning"
    rms = raw.records[0]["input_rms"]
    assert unscaled["evidence"]["columns"][0] == max(range(64), key=lambda i: rms[i])
    assert max(unscaled["evidence"]["column_rms"]) > 10
    caused = [f for f in raw.findings() if f["code"] in ("divergence", "dead_relu")]
    assert caused and all(f["advice"].startswith("standardize the inputs") for f in caused)
    assert all(f["evidence"]["inputs_unscaled"] for f in caused)
    assert "unscaled_inputs" not in codes(run(1.0, 0.1))
    assert "unscaled_inputs" not in codes(run(1.0, 1.0))


def loop_with_steps(order: str, *, give_labels: bool = True) -> fitwell.Doctor:
    x, y = digits()
    torch.manual_seed(0)
    if order == "sorted":
        index = torch.argsort(y, stable=True)
        x, y = x[index], y[index]
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    with fitwell.Doctor(model, optimizer) as doc:
        for _ in range(2):
            rows = torch.randperm(600) if order == "shuffled" else torch.arange(600)
            for i in range(0, 600, 32):
                batch = rows[i : i + 32]
                optimizer.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
                doc.step(loss, y[batch] if give_labels else None)
            with torch.no_grad():
                doc.end_epoch(train_loss=float(loss_fn(model(x), y)))
    return doc


def test_batches_in_label_order_are_named() -> None:
    doc = loop_with_steps("sorted")
    found = [f for f in doc.findings() if f["code"] == "unshuffled_batches"]
    assert len(found) == 1 and found[0]["epoch"] == 1
    assert found[0]["evidence"]["single_class_batches"] >= 0.5
    assert found[0]["evidence"]["chance_if_shuffled"] < 1e-6
    assert "shuffle" in found[0]["advice"]
    # Step losses reach the records the rules read.
    assert doc.records[0]["batch_loss_max"] >= doc.records[0]["batch_loss_mean"] > 0


def test_shuffled_batches_and_loops_without_labels_stay_quiet() -> None:
    assert "unshuffled_batches" not in codes(loop_with_steps("shuffled"))
    assert "unshuffled_batches" not in codes(loop_with_steps("sorted", give_labels=False))


def test_single_class_chance_accounts_for_imbalance() -> None:
    from fitwell.diagnosis.rules import single_class_chance

    assert single_class_chance([50, 50], 8) == pytest.approx(2 * 0.5**8)
    # 95 / 5 with batches of 8: two thirds of shuffled batches hold one class anyway.
    assert single_class_chance([95, 5], 8) == pytest.approx(0.95**8 + 0.05**8)
    assert single_class_chance([95, 5], 8) > 0.05


@pytest.mark.parametrize(("scale", "expected"), [(1e4, True), (1.0, False)])
def test_regression_target_scale(scale: float, expected: bool) -> None:
    """y = x^3 * scale: a target in the tens of thousands is named, a unit-scale one is not."""
    torch.manual_seed(0)
    x = torch.rand(512, 1) * 2 - 1
    y = (x[:, 0] ** 3) * scale
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with fitwell.Doctor(model, optimizer, task="regression") as doc:
        for _ in range(2):
            for i in range(0, 512, 64):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x[i : i + 64])[:, 0], y[i : i + 64])
                loss.backward()
                optimizer.step()
                doc.step(loss, y[i : i + 64])
            with torch.no_grad():
                doc.end_epoch(train_loss=float(nn.functional.mse_loss(model(x)[:, 0], y)))
    found = [f for f in doc.findings() if f["code"] == "unscaled_target"]
    assert bool(found) is expected
    if expected:
        # Read on the sampled steps' labels (half of the first epoch's rows here): an estimate.
        assert found[0]["evidence"]["target_std"] == pytest.approx(float(y.std()), rel=0.2)
