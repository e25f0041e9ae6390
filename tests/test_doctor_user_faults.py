"""Faults of a user's own loop that the doctor names from exact signatures: probabilities fed to
NLLLoss or to a loss that applies its own sigmoid, weights initialized far too large, gradients
never cleared; and the validation score that ``no_signal`` judges. Probes are checked on
made-up outputs and gradients first, then on small real loops (broken and fixed)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

import fitwell
from fitwell.diagnosis.doctor import nll_on_probabilities, sigmoid_applied_by_loss
from fitwell.diagnosis.rules import (
    INIT_GAIN_PRODUCT,
    STALE_GRAD_MIN_STEPS,
    init_scale_findings,
    missing_zero_grad_findings,
    no_signal_score,
    sigmoid_bce_floor,
)


def grad_of(loss_of: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    leaf = out.clone().requires_grad_(True)
    loss_of(leaf).backward()
    assert leaf.grad is not None
    return leaf.grad


# ------------------------------------------------------------------ made-up outputs: NLL
def made_up_rows(n: int = 16, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.softmax(torch.randn(n, k, generator=g), dim=1)
    return rows, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("weighted", [False, True])
def test_nll_on_probability_rows_is_recognised(weighted: bool) -> None:
    rows, y = made_up_rows()
    weight = torch.linspace(0.5, 2.0, rows.shape[1]) if weighted else None
    grad = grad_of(lambda p: nn.functional.nll_loss(p, y, weight=weight), rows)
    assert nll_on_probabilities(rows, grad)


@pytest.mark.parametrize(
    "loss_of",
    [
        lambda p, y: nn.functional.nll_loss(torch.log(p), y),  # softmax + log + NLLLoss: correct
        lambda p, y: nn.functional.cross_entropy(p, y),  # the other fault: zero-sum rows
        lambda p, y: ((p - nn.functional.one_hot(y, p.shape[1])) ** 2).mean(),
    ],
    ids=["log+nll", "cross_entropy", "mse"],
)
def test_other_losses_on_probability_rows_are_not_nll(loss_of: Callable) -> None:
    rows, y = made_up_rows()
    assert not nll_on_probabilities(rows, grad_of(lambda p: loss_of(p, y), rows))


def test_equal_probabilities_cannot_tell_nll_from_log_nll() -> None:
    rows = torch.full((8, 4), 0.25)
    y = torch.arange(8) % 4
    grad = grad_of(lambda p: nn.functional.nll_loss(torch.log(p), y), rows)
    assert not nll_on_probabilities(rows, grad)


# -------------------------------------------------------------- made-up outputs: sigmoid
def made_up_column(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, generator=g), torch.randint(0, 2, (n, 1), generator=g).float()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_with_logits_on_probabilities_is_recognised(reduction: str) -> None:
    p, y = made_up_column()
    loss = nn.BCEWithLogitsLoss(reduction=reduction)
    assert sigmoid_applied_by_loss(p, grad_of(lambda z: loss(z, y), p))


@pytest.mark.parametrize(
    "loss",
    [nn.BCELoss(), nn.MSELoss(), nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]))],
    ids=["bce", "mse", "bce_with_logits_pos_weight"],
)
def test_losses_that_take_probabilities_are_not_a_sigmoid_loss(loss: nn.Module) -> None:
    p, y = made_up_column()
    assert not sigmoid_applied_by_loss(p, grad_of(lambda z: loss(z, y), p))


def test_soft_labels_are_not_claimed() -> None:
    p, _ = made_up_column()
    soft = torch.full_like(p, 0.3)
    assert not sigmoid_applied_by_loss(p, grad_of(lambda z: nn.BCEWithLogitsLoss()(z, soft), p))


def test_sigmoid_floor_is_the_loss_at_the_best_probability() -> None:
    positive, negative = sigmoid_bce_floor()
    loss = nn.BCEWithLogitsLoss(reduction="none")
    best = loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert best.tolist() == pytest.approx([positive, negative], rel=1e-6)


# ---------------------------------------------------------------- real loops: both heads
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:600] / 16.0, dtype=torch.float32), torch.tensor(y[:600])


def cancer() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x[:400], dtype=torch.float32), torch.tensor(y[:400], dtype=torch.float32)


def fit(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int = 3,
    lr: float = 1e-2,
    zero_grad: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> fitwell.Doctor:
    x, y = data
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    with fitwell.Doctor(model, optimizer) as doc:
        for _ in range(epochs):
            model.train()
            for i in range(0, len(x), 32):
                if zero_grad:
                    optimizer.zero_grad()
                loss = loss_of(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                optimizer.step()
                doc.step(loss)
            model.eval()
            with torch.no_grad():
                doc.end_epoch(train_loss=float(loss_of(model(x), y)))
    return doc


def codes(doc: fitwell.Doctor) -> dict[str, dict]:
    return {f["code"]: f for f in doc.findings() if f["severity"] != "info"}


def classifier(*head: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), *head)


def binary(*head: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1), *head)


def squeeze(loss: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda out, y: loss(out.squeeze(-1), y)


def test_softmax_into_nll_loss_is_named_and_its_loss_is_in_minus_one_to_zero() -> None:
    doc = fit(classifier(nn.Softmax(dim=1)), digits(), nn.NLLLoss())
    found = codes(doc)["probabilities_as_logits"]
    assert "LogSoftmax" in found["advice"] and found["evidence"]["nll_gradient_batches"] >= 0.9
    assert all(-1.0 <= r["train_loss"] <= 0.0 for r in doc.records)


def test_sigmoid_into_bce_with_logits_is_named_and_stays_above_its_floor() -> None:
    doc = fit(binary(nn.Sigmoid()), cancer(), squeeze(nn.BCEWithLogitsLoss()))
    found = codes(doc)["probabilities_as_logits"]
    assert "nn.Sigmoid" in found["advice"] and found["epoch"] == 2
    assert min(r["train_loss"] for r in doc.records) >= sigmoid_bce_floor()[0]


@pytest.mark.parametrize(
    ("model", "data", "loss"),
    [
        (binary(), cancer(), squeeze(nn.BCEWithLogitsLoss())),
        (binary(nn.Sigmoid()), cancer(), squeeze(nn.BCELoss())),
        (classifier(nn.LogSoftmax(dim=1)), digits(), nn.NLLLoss()),
        (
            classifier(nn.Softmax(dim=1)),
            digits(),
            lambda p, y: nn.functional.nll_loss(torch.log(p), y),
        ),
    ],
    ids=["logit+bce_with_logits", "sigmoid+bce", "log_softmax+nll", "softmax+log+nll"],
)
def test_matching_heads_and_losses_stay_quiet(
    model: nn.Module, data: tuple, loss: Callable
) -> None:
    assert codes(fit(model, data, loss)) == {}


def test_a_dead_logit_network_is_not_a_double_sigmoid() -> None:
    """Every unit dead: the logit is the output bias, one constant, possibly in [0, 1]."""
    model = binary()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
        model[2].bias.fill_(0.5)
    assert "probabilities_as_logits" not in codes(
        fit(model, cancer(), squeeze(nn.BCEWithLogitsLoss()))
    )


# ------------------------------------------------------------------------- init scale
def test_init_scale_rule_on_made_up_gains() -> None:
    kaiming = [math.sqrt(2.0)] * 8
    assert init_scale_findings(kaiming, [str(i) for i in range(8)]) == []
    assert init_scale_findings([0.58] * 20, [str(i) for i in range(20)]) == []  # PyTorch default
    big = [8.0, 11.3, 11.3, 11.3, 11.3, 11.3]
    found = init_scale_findings(big, ["a", "b", "c", "d", "e", "f"])
    assert len(found) == 1 and found[0]["code"] == "exploding_gradients"
    assert found[0]["evidence"]["init_gain_product"] > INIT_GAIN_PRODUCT
    assert found[0]["layer"] == "b" and "kaiming" in found[0]["advice"]


def deep(init: Callable[[torch.Tensor], object] | None, *, norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = 64
    for _ in range(5):
        layers += [nn.Linear(width, 128), *([nn.BatchNorm1d(128)] if norm else []), nn.ReLU()]
        width = 128
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    if init is not None:
        for m in model:
            if isinstance(m, nn.Linear):
                init(m.weight)
    return model


def test_normal_init_is_named_even_when_training_diverges() -> None:
    model = deep(lambda w: nn.init.normal_(w, 0.0, 1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    found = codes(fit(model, digits(), nn.CrossEntropyLoss(), epochs=1, optimizer=opt))
    assert "exploding_gradients" in found
    assert found["exploding_gradients"]["evidence"]["init_gain"][1] == pytest.approx(11.3, rel=0.05)
    if "divergence" in found:  # the blow-up it causes points at the init first
        assert found["divergence"]["evidence"]["caused_by"] == "exploding_gradients"


@pytest.mark.parametrize(
    ("init", "norm"),
    [
        (None, False),
        (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), False),
        (lambda w: nn.init.normal_(w, 0.0, 1.0), True),
    ],
    ids=["default", "kaiming", "normal+batchnorm"],
)
def test_sound_or_normalized_inits_stay_quiet(init: Callable | None, norm: bool) -> None:
    model = deep(init, norm=norm)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    doc = fit(model, digits(), nn.CrossEntropyLoss(), epochs=1, optimizer=opt)
    assert doc.normalized == norm
    assert "exploding_gradients" not in codes(doc)


# ---------------------------------------------------------------------- zero_grad
def test_missing_zero_grad_rule_on_made_up_records() -> None:
    rec = {"epoch": 1, "member": 0, "stale_grad_checks": 10, "stale_grad_steps": 9}
    assert missing_zero_grad_findings([rec])[0]["code"] == "missing_zero_grad"
    assert missing_zero_grad_findings([{**rec, "stale_grad_steps": 5}]) == []
    assert (
        missing_zero_grad_findings([{**rec, "stale_grad_checks": 3, "stale_grad_steps": 3}]) == []
    )


def test_gradients_never_cleared_are_named() -> None:
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    found = codes(fit(model, digits(), nn.CrossEntropyLoss(), zero_grad=False, optimizer=opt))
    assert found["missing_zero_grad"]["evidence"]["stale_grad_steps"] >= 0.9
    assert "zero_grad" in found["missing_zero_grad"]["advice"]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_cleared_gradients_and_micro_batch_accumulation_stay_quiet(set_to_none: bool) -> None:
    x, y = digits()
    model = classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    with fitwell.Doctor(model, opt) as doc:
        for _ in range(2):
            for i in range(0, 600, 64):  # two micro-batches per step, cleared after the step
                loss_fn(model(x[i : i + 32]), y[i : i + 32]).backward()
                loss_fn(model(x[i + 32 : i + 64]), y[i + 32 : i + 64]).backward()
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)
            doc.end_epoch(train_loss=1.0)
    assert "missing_zero_grad" not in codes(doc)
    # Checked on the sampled steps, pooled over epochs: enough checks for the rule to apply.
    assert sum(r["stale_grad_checks"] for r in doc.records) >= STALE_GRAD_MIN_STEPS


# ---------------------------------------------------------------------- no_signal score
def test_no_signal_score_ignores_one_lucky_epoch_but_keeps_late_learning() -> None:
    flat = [0.1] * 29
    assert no_signal_score(flat[:5] + [0.3] + flat[5:]) == pytest.approx(0.1)
    late = [0.1] * 20 + [0.8] * 10
    assert no_signal_score(late) == pytest.approx(0.8)
    overfit = [0.5, 0.9, 0.92, 0.9] + [0.85] * 20
    assert no_signal_score(overfit) >= 0.85
    assert no_signal_score([]) is None and no_signal_score([0.4]) == pytest.approx(0.4)


# ------------------------------------------------------------------ underfitting plateau
def history(train: list[float], val: list[float]) -> list[dict]:
    return [
        {"epoch": e + 1, "member": 0, "train_r2": t, "val_r2": v}
        for e, (t, v) in enumerate(zip(train, val, strict=True))
    ]


def test_plateau_without_a_train_validation_gap_is_underfitting() -> None:
    from fitwell.diagnosis.rules import RunContext, plateau_underfitting_findings

    ctx = RunContext(task="regression")
    flat = [0.3, 0.45, 0.5, 0.55] + [0.56] * 8
    found = plateau_underfitting_findings(history(flat, [v - 0.01 for v in flat]), ctx, "r2")
    assert found and found[0]["code"] == "underfitting" and found[0]["epoch"] == 12
    # Still improving, or fitting its own rows better than unseen ones, or already near 1:
    rising = [0.1 * i for i in range(1, 13)]
    assert plateau_underfitting_findings(history(rising, rising), ctx, "r2") == []
    assert plateau_underfitting_findings(history(flat, [v - 0.2 for v in flat]), ctx, "r2") == []
    high = [0.97] * 12
    assert plateau_underfitting_findings(history(high, high), ctx, "r2") == []
    assert plateau_underfitting_findings(history(flat[:8], flat[:8]), ctx, "r2") == []
