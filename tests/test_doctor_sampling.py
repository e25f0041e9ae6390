"""The doctor reads per-step signals on a sample of steps, and its overfitting verdict in a user's
loop clears the validation loss's own jitter."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import fitwell
from fitwell.diagnosis import doctor as doctor_module
from fitwell.diagnosis.rules import (
    RunContext,
    missing_zero_grad_findings,
    overfitting_findings,
    unshuffled_batches_findings,
    validation_noise_limit,
)

ROWS, BATCH = 640, 16  # 40 steps per epoch


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:ROWS] / 16.0, dtype=torch.float32), torch.tensor(y[:ROWS])


def user_loop(
    *,
    epochs: int = 3,
    order: str = "shuffled",
    zero_grad: bool = True,
    dead: bool = False,
    every_step: bool = False,
    spy: list[tuple[int, int, bool]] | None = None,
) -> fitwell.Doctor:
    """A small hand-written loop. ``every_step`` reads every step (the doctor before sampling);
    ``spy`` collects ``(epoch, step, hooks registered on the activation before its forward)``."""
    torch.manual_seed(0)
    x, y = digits()
    if order == "sorted":
        index = torch.argsort(y, stable=True)
        x, y = x[index], y[index]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if dead:
        nn.init.constant_(model[0].bias, -20.0)  # every unit starts (and stays) off
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    doc = fitwell.Doctor(model, optimizer)
    if every_step:
        doc._sampled = lambda k, base=2: True  # type: ignore[method-assign]
    with doc:
        for epoch in range(epochs):
            rows = torch.randperm(ROWS) if order == "shuffled" else torch.arange(ROWS)
            for step, i in enumerate(range(0, ROWS, BATCH)):
                batch = rows[i : i + BATCH]
                if zero_grad:
                    optimizer.zero_grad()
                if spy is not None:
                    spy.append((epoch, step, bool(model[1]._forward_hooks)))
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
                doc.step(loss, y[batch])
            with torch.no_grad():
                doc.end_epoch(train_loss=float(loss_fn(model(x), y)))
    return doc


def codes(doc: fitwell.Doctor) -> set[str]:
    return {f["code"] for f in doc.findings() if f["severity"] in ("warning", "error")}


def test_only_sampled_steps_carry_hooks_and_read_gradients(monkeypatch: Any) -> None:
    reads: list[int] = []
    original = doctor_module.Doctor._read_gradients

    def counted(self: fitwell.Doctor) -> None:
        reads.append(self._steps - 1)  # the step being taken
        original(self)

    monkeypatch.setattr(doctor_module.Doctor, "_read_gradients", counted)
    spy: list[tuple[int, int, bool]] = []
    doc = user_loop(spy=spy)
    steps = ROWS // BATCH
    stride = max(steps // doctor_module.STEP_SAMPLES, doctor_module.SAMPLE_SPACING)
    base = doctor_module.FIRST_EPOCH_BASE
    first = {0} | {base**j for j in range(1, 8) if base**j < steps}
    expected = [(0, s) for s in sorted(first)] + [
        (e, s) for e in (1, 2) for s in range(0, steps, stride)
    ]
    hooked = [(e, s) for e, s, on in spy if on]
    assert hooked == expected  # forward hooks exist on the sampled steps only
    per_epoch = [r["sampled_steps"] for r in doc.records]
    assert per_epoch == [len(first), len(range(0, steps, stride)), len(range(0, steps, stride))]
    # The cheap checks also run on the powers of CHECK_BASE in the first epoch (step 0 has no
    # earlier step whose gradient could be stale).
    checked = {0} | {doctor_module.CHECK_BASE**j for j in range(1, 8)}
    checked = {k for k in checked if k < steps}
    assert doc.records[0]["stale_grad_checks"] == len(checked) - 1
    assert doc.records[0]["label_batches"] == len(checked)
    assert doc.records[1]["stale_grad_checks"] == doc.records[1]["label_batches"] == per_epoch[1]
    assert len(reads) == sum(per_epoch) < 3 * steps
    assert all(r["steps"] == steps for r in doc.records)
    # Every step's loss is kept, not only the sampled ones.
    assert len(doc._loss_values) == 0 and doc.records[0]["batch_loss_max"] > 0


@pytest.mark.parametrize(
    "fault",
    [{}, {"order": "sorted"}, {"zero_grad": False}, {"dead": True}],
    ids=["healthy", "sorted", "no_zero_grad", "dead_relu"],
)
def test_sampling_names_the_same_faults_as_reading_every_step(fault: dict[str, Any]) -> None:
    sampled, every = user_loop(**fault), user_loop(**fault, every_step=True)
    assert codes(sampled) == codes(every)
    expected = {
        "order": "unshuffled_batches",
        "zero_grad": "missing_zero_grad",
        "dead": "dead_relu",
    }
    for key, code in expected.items():
        assert (code in codes(sampled)) is (key in fault)
    # Gradient norms from the sample are the every-step means' order of magnitude.
    a, b = sampled.records[-1]["grad_norm"], every.records[-1]["grad_norm"]
    if not fault:
        assert all(0.3 < x / y < 3 for x, y in zip(a, b, strict=True))


def test_step_rejects_a_per_row_loss() -> None:
    model = nn.Linear(3, 1)
    doc = fitwell.Doctor(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one number"):
        doc.step(torch.ones(4))


# ---------------------------------------------------------------------- pooled step checks
def test_zero_grad_and_label_order_checks_pool_over_epochs() -> None:
    """Two sampled checks an epoch: neither epoch alone is enough, the two together are."""
    stale = [
        {"epoch": e, "member": 0, "stale_grad_checks": 2, "stale_grad_steps": 2} for e in (1, 2)
    ]
    assert missing_zero_grad_findings(stale[:1]) == []
    assert missing_zero_grad_findings(stale)[0]["epoch"] == 2
    labels = [
        {
            "epoch": e,
            "member": 0,
            "label_batches": 2,
            "single_class_batches": 2,
            "single_class_chance": 1e-9,
        }
        for e in (1, 2)
    ]
    assert unshuffled_batches_findings(labels[:1]) == []
    assert unshuffled_batches_findings(labels)[0]["epoch"] == 2


# ---------------------------------------------------------------------- overfitting vs noise
def history(train: list[float], val: list[float]) -> list[dict[str, Any]]:
    return [
        {"epoch": e, "member": 0, "train_loss": t, "val_loss": v}
        for e, (t, v) in enumerate(zip(train, val, strict=True), start=1)
    ]


TRAIN = [1.0, 0.5, 0.4, 0.35, 0.32, 0.30, 0.29, 0.28, 0.27, 0.26, 0.255, 0.25]
# A minimum that is the luck of one epoch: the curve jitters by ~0.02 around ~0.26.
NOISY_BUMP = [1.0, 0.30, 0.26, 0.29, 0.25, 0.23, 0.26, 0.25, 0.255, 0.26, 0.25, 0.26]
# A rise that keeps going, well past the jitter.
SUSTAINED = [1.0, 0.30, 0.26, 0.25, 0.24, 0.245, 0.26, 0.28, 0.30, 0.32, 0.34, 0.36]


def overfit(train: list[float], val: list[float], noise_aware: bool) -> list[dict]:
    ctx = RunContext(task="classification", model_epoch=len(val))
    return overfitting_findings(history(train, val), ctx, noise_aware=noise_aware)


def test_a_noisy_bump_stays_quiet_in_a_user_loop() -> None:
    # 13% above the minimum: the fixed 5% rule alone calls it overfitting.
    assert overfit(TRAIN, NOISY_BUMP, noise_aware=False)[0]["severity"] == "warning"
    assert overfit(TRAIN, NOISY_BUMP, noise_aware=True) == []


def test_a_sustained_rise_fires_in_a_user_loop() -> None:
    found = overfit(TRAIN, SUSTAINED, noise_aware=True)
    assert found[0]["severity"] == "warning"
    evidence = found[0]["evidence"]
    assert evidence["last_val_loss"] - evidence["best_val_loss"] > evidence["noise_limit"] > 0


def test_memorizing_fires_whatever_the_jitter() -> None:
    """Training loss down to a tenth while validation never improves on its lucky minimum."""
    train = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.008]
    found = overfit(train, NOISY_BUMP, noise_aware=True)
    assert found and found[0]["severity"] == "warning"


def test_validation_noise_limit() -> None:
    sigma, limit = validation_noise_limit(NOISY_BUMP)
    assert 0.01 < sigma < 0.03 and limit > 2 * sigma
    # Too few settled epochs to estimate the jitter: no margin.
    assert validation_noise_limit([1.0, 0.5, 0.4]) == (0.0, 0.0)
    # A flat curve has no jitter.
    assert validation_noise_limit([1.0, 0.2, 0.2, 0.2, 0.2, 0.2]) == (0.0, 0.0)


def test_losses_buffered_on_the_device_reach_the_epoch_summary() -> None:
    """The accelerator path (no host read per step), exercised with CPU tensors: more losses than
    one buffer holds, flushed at epoch end into the same mean and maximum."""
    model = nn.Linear(3, 1)
    doc = fitwell.Doctor(model, torch.optim.SGD(model.parameters(), lr=0.1))
    losses = [float(i % 7) for i in range(600)]
    for value in losses:
        doc._buffer_loss(torch.tensor(value))
    doc.end_epoch(train_loss=1.0)
    assert doc.records[0]["batch_loss_mean"] == pytest.approx(sum(losses) / len(losses))
    assert doc.records[0]["batch_loss_max"] == 6.0
    assert doc._loss_rows == 0 and doc._loss_values == []


@pytest.mark.parametrize(("best_epoch_by", "severity"), [("loss", "warning"), ("score", "info")])
def test_a_kept_epoch_chosen_by_score_is_not_called_overfitted(
    best_epoch_by: str, severity: str
) -> None:
    """RealMLP's rule keeps the epoch with the best validation accuracy, here epoch 11, long
    after the validation-loss minimum: by the user's own rule it is not over-fitted, and the
    finding (kept, as info) says its probabilities are the less calibrated ones."""
    ctx = RunContext(
        task="classification", model_epoch=11, restored_best=True, best_epoch_by=best_epoch_by
    )
    found = overfitting_findings(history(TRAIN, SUSTAINED), ctx)
    assert [f["severity"] for f in found] == [severity]
    assert found[0]["evidence"]["model_epoch"] == 11
    if best_epoch_by == "score":
        assert "less calibrated" in found[0]["advice"]
