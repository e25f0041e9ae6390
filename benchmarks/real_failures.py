"""Real training failures from public threads, rebuilt small, with fitwell.Doctor in the loop.

Each case is a failure somebody posted (PyTorch forum, Stack Exchange, GitHub, blogs), rebuilt as
a small PyTorch loop of the poster's kind on offline data (scikit-learn's bundled datasets or
generated arrays; nothing is downloaded), next to its "fixed twin": the same loop with the
thread's accepted fix applied. The Doctor watches both (``doc.step(loss, y)`` every step,
``doc.end_epoch(...)`` every epoch with eval-mode train/validation losses and scores).

``expected`` lists, per case and fixed before any run, the codes whose advice leads to the
thread's fix. A case counts as "named with helpful advice" when one of them is found at
warning or error level on the broken loop; any warning or error on the fixed twin is a false
alarm. An empty ``expected`` means fitwell has no rule whose advice names that fix, so the case
is a miss by construction.

    python benchmarks/real_failures.py     # prints the table, writes
                                           # benchmarks/results/real_failures.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from torch import nn

import fitwell

RESULTS = Path(__file__).parent / "results" / "real_failures.json"
SEED = 0


# ----------------------------------------------------------------------------- data
def _split(x: np.ndarray, y: np.ndarray, n_train: int, seed: int = SEED) -> tuple:
    order = np.random.default_rng(seed).permutation(len(x))
    tr, va = order[:n_train], order[n_train:]
    return x[tr], y[tr], x[va], y[va]


def digits(scale: float = 1 / 16) -> tuple:
    d = load_digits()
    return _split(d.data * scale, d.target, 1200)


def breast_cancer(kind: str = "standard") -> tuple:
    d = load_breast_cancer()
    x_tr, y_tr, x_va, y_va = _split(d.data, d.target, 400)
    if kind == "standard":
        mean, std = x_tr.mean(0), x_tr.std(0) + 1e-12
    elif kind == "minmax":
        mean, std = x_tr.min(0), x_tr.max(0) - x_tr.min(0) + 1e-12
    else:
        mean, std = 0.0, 1.0
    return (x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va


def diabetes_standard_x() -> tuple:
    d = load_diabetes()
    x_tr, y_tr, x_va, y_va = _split(d.data, d.target, 330)
    mean, std = x_tr.mean(0), x_tr.std(0)
    return (x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va


def standardize_target(data: tuple) -> tuple:
    x_tr, y_tr, x_va, y_va = data
    mean, std = y_tr.mean(), y_tr.std()
    return x_tr, (y_tr - mean) / std, x_va, (y_va - mean) / std


def standardize_inputs(data: tuple) -> tuple:
    x_tr, y_tr, x_va, y_va = data
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-12
    return (x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va


# ----------------------------------------------------------------------------- the loop
@dataclass
class Loop:
    """One user's loop: what differs between cases is spelled out here."""

    data: tuple
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    task: str = "classification"
    epochs: int = 15
    batch: int = 64
    shuffle: bool = True
    zero_grad: bool = True
    binary: bool = False  # one output column, float 0/1 targets
    output_is_probability: bool = False  # for the accuracy threshold of a binary output
    early_stopping: int | None = None  # patience, restoring the best weights
    sort_by_label: bool = False


def _score(loop: Loop, out: torch.Tensor, y: torch.Tensor) -> float:
    if loop.task == "regression":
        resid = ((out.squeeze(-1) - y) ** 2).sum()
        total = ((y - y.mean()) ** 2).sum()
        return float(1 - resid / total)
    if loop.binary:
        threshold = 0.5 if loop.output_is_probability else 0.0
        return float(((out.squeeze(-1) > threshold).float() == y).float().mean())
    return float((out.argmax(1) == y).float().mean())


def _tensors(loop: Loop) -> tuple[torch.Tensor, ...]:
    x_tr, y_tr, x_va, y_va = loop.data
    as_float = loop.task == "regression" or loop.binary
    ydt = torch.float32 if as_float else torch.int64
    return (
        torch.tensor(x_tr, dtype=torch.float32),
        torch.tensor(y_tr, dtype=ydt),
        torch.tensor(x_va, dtype=torch.float32),
        torch.tensor(y_va, dtype=ydt),
    )


def _loss(loop: Loop, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loop.task == "regression" or loop.binary:
        out = out.squeeze(-1)
    return loop.loss_fn(out, y)


def baseline(loop: Loop) -> float:
    """Validation score of the trivial predictor: the training majority class, or the training
    mean (R^2 on validation rows)."""
    _, y_tr, _, y_va = loop.data
    if loop.task == "regression":
        return float(1 - ((y_va - y_tr.mean()) ** 2).sum() / ((y_va - y_va.mean()) ** 2).sum())
    values, counts = np.unique(y_tr, return_counts=True)
    return float((y_va == values[counts.argmax()]).mean())


def run(loop: Loop) -> dict[str, Any]:
    x_tr, y_tr, x_va, y_va = _tensors(loop)
    if loop.sort_by_label:
        order = torch.argsort(y_tr, stable=True)
        x_tr, y_tr = x_tr[order], y_tr[order]
    gen = torch.Generator().manual_seed(SEED)
    model, opt = loop.model, loop.optimizer
    best = (float("inf"), None, 0)
    val_scores: list[float] = []
    halves: list[list[float]] = []  # validation loss on even and odd validation rows
    epochs_run = 0
    nonfinite = False
    started = time.perf_counter()
    with fitwell.Doctor(
        model,
        opt,
        task=loop.task,
        baseline_val_score=baseline(loop),
        n_val=len(y_va),
    ) as doc:
        for epoch in range(loop.epochs):
            model.train()
            order = torch.randperm(len(x_tr), generator=gen) if loop.shuffle else None
            for i in range(0, len(x_tr), loop.batch):
                idx = order[i : i + loop.batch] if order is not None else slice(i, i + loop.batch)
                xb, yb = x_tr[idx], y_tr[idx]
                if loop.zero_grad:
                    opt.zero_grad()
                loss = _loss(loop, model(xb), yb)
                loss.backward()
                opt.step()
                doc.step(loss, yb)
            model.eval()
            with torch.no_grad():
                out_tr, out_va = model(x_tr), model(x_va)
                train_loss = float(_loss(loop, out_tr, y_tr))
                val_loss = float(_loss(loop, out_va, y_va))
                train_score, val_score = _score(loop, out_tr, y_tr), _score(loop, out_va, y_va)
                halves.append([float(_loss(loop, out_va[h::2], y_va[h::2])) for h in (0, 1)])
            doc.end_epoch(
                train_loss=train_loss,
                val_loss=val_loss,
                train_score=train_score,
                val_score=val_score,
            )
            epochs_run = epoch + 1
            val_scores.append(val_score)
            if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
                nonfinite = True
                break  # what a user does when the loss prints nan
            if loop.early_stopping is not None:
                if val_loss < best[0]:
                    state = {k: v.clone() for k, v in model.state_dict().items()}
                    best = (val_loss, state, epoch)
                elif epoch - best[2] >= loop.early_stopping:
                    model.load_state_dict(best[1])
                    break
    findings = doc.findings()
    return {
        "epochs": epochs_run,
        "seconds": round(time.perf_counter() - started, 2),
        "final_train_loss": train_loss,
        "final_val_loss": val_loss,
        "final_val_score": val_score,
        "best_val_score": max(val_scores),
        "baseline_val_score": baseline(loop),
        "nonfinite_loss": nonfinite,
        "val_loss_halves": halves,
        "alarms": sorted({f["code"] for f in findings if f["severity"] in ("warning", "error")}),
        "info": sorted({f["code"] for f in findings if f["severity"] == "info"}),
        "findings": [
            {k: f.get(k) for k in ("code", "severity", "epoch", "layer", "advice", "evidence")}
            for f in findings
        ],
    }


# ----------------------------------------------------------------------------- models
def mlp(n_in: int, n_out: int, hidden: tuple[int, ...] = (64, 64), act=nn.ReLU, tail=()):
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, n_out))
    layers += list(tail)
    return nn.Sequential(*layers)


def adam(model: nn.Module, lr: float = 1e-3, **kw: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, **kw)


def sgd(model: nn.Module, lr: float, **kw: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, **kw)


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    name: str
    url: str
    symptom: str
    fix: str
    expected: tuple[str, ...]
    build: Callable[[bool], Loop]  # build(broken) -> the loop


def softmax_before_ce(broken: bool) -> Loop:
    """A final nn.Softmax fed to nn.CrossEntropyLoss: loss stuck near 2.30 on 10 classes.
    Fix from the thread: pass raw logits to CrossEntropyLoss."""
    model = mlp(64, 10, tail=[nn.Softmax(dim=1)] if broken else [])
    return Loop(digits(), model, sgd(model, 0.05), nn.CrossEntropyLoss(), epochs=10)


def softmax_then_nll(broken: bool) -> Loop:
    """nn.Softmax + nn.NLLLoss (probabilities where log-probabilities are expected).
    Fix: LogSoftmax + NLLLoss."""
    model = mlp(64, 10, tail=[nn.Softmax(dim=1) if broken else nn.LogSoftmax(dim=1)])
    return Loop(digits(), model, adam(model), nn.NLLLoss(), epochs=10)


def double_sigmoid_bce(broken: bool) -> Loop:
    """nn.Sigmoid on the output and BCEWithLogitsLoss, which applies a sigmoid again:
    "otherwise loss does not converge". Fix: drop the model's Sigmoid."""
    model = mlp(30, 1, hidden=(32,), tail=[nn.Sigmoid()] if broken else [])
    return Loop(
        breast_cancer(),
        model,
        adam(model),
        nn.BCEWithLogitsLoss(),
        binary=True,
        output_is_probability=broken,
        epochs=15,
        batch=32,
    )


def raw_pixels(broken: bool) -> Loop:
    """Images fed as 0-255 values: "This causes large gradient updates and stops the learning
    process". Fix: divide by 255."""
    model = mlp(64, 10, hidden=(64,))
    data = digits(255 / 16) if broken else digits(1 / 16)
    return Loop(data, model, sgd(model, 0.01, momentum=0.9), nn.CrossEntropyLoss(), epochs=10)


def price_target(broken: bool) -> Loop:
    """Regression on prices around 150,000 (house-price question): after thousands of epochs the
    network is "still working the outputs slowly up from zero towards the mean". Fix: normalize
    the target."""
    data = diabetes_standard_x()
    data = (data[0], data[1] * 1000, data[2], data[3] * 1000)
    model = mlp(10, 1, hidden=(64,))
    return Loop(
        data if broken else standardize_target(data),
        model,
        adam(model),
        nn.MSELoss(),
        task="regression",
        epochs=20,
        batch=32,
    )


def cubic_target(broken: bool) -> Loop:
    """x in 1..4000, target x**3, Linear(1,50)-ReLU-Linear(50,1), Adam 1e-3: the network
    "could not learn". Fix (accepted answer): normalize input and target."""
    x = np.linspace(1, 4000, 1000)[:, None]
    data = _split(x, x[:, 0] ** 3, 800)
    if not broken:
        data = standardize_target(standardize_inputs(data))
    model = mlp(1, 1, hidden=(50,))
    return Loop(data, model, adam(model), nn.MSELoss(), task="regression", epochs=20)


def polynomial_nan(broken: bool) -> Loop:
    """nn.Linear(1, 1) on X in [-1000, 1000], y = 2x^3 + 7x^2 - 8x + 120, MSELoss: the loss is
    NaN. Fix (from the question and answer): scale X and y."""
    x = np.random.default_rng(SEED).uniform(-1000, 1000, size=(100, 1))
    y = 2 * x[:, 0] ** 3 + 7 * x[:, 0] ** 2 - 8 * x[:, 0] + 120
    data = _split(x, y, 80)
    if not broken:
        data = standardize_target(standardize_inputs(data))
    model = nn.Sequential(nn.Linear(1, 1))
    return Loop(data, model, sgd(model, 0.01), nn.MSELoss(), task="regression", batch=16)


def sorted_labels(broken: bool) -> Loop:
    """Rows ordered by label and fed in that order: "the model receiving a label-ordered dataset
    fails to converge". Fix: shuffle."""
    model = mlp(64, 10)
    return Loop(
        digits(),
        model,
        adam(model),
        nn.CrossEntropyLoss(),
        epochs=10,
        batch=32,
        shuffle=not broken,
        sort_by_label=broken,
    )


def missing_zero_grad(broken: bool) -> Loop:
    """optimizer.zero_grad() missing: gradients accumulate across batches, "updates quickly
    become wrong". Fix: call zero_grad every step."""
    model = mlp(64, 10)
    return Loop(
        digits(),
        model,
        sgd(model, 0.01, momentum=0.9),
        nn.CrossEntropyLoss(),
        epochs=10,
        zero_grad=not broken,
    )


def lr_too_high(broken: bool) -> Loop:
    """The loss explodes at a higher learning rate, NaN after the first iteration. Fix from
    the thread: a smaller learning rate (or a warm-up)."""
    model = mlp(64, 10)
    return Loop(digits(), model, adam(model, 1.0 if broken else 1e-3), nn.CrossEntropyLoss())


def lr_too_low(broken: bool) -> Loop:
    """Too small a learning rate: "the model barely moves (loss barely changes, looks flat)".
    Fix: raise it to a working value."""
    model = mlp(30, 2, hidden=(32, 32))
    return Loop(
        breast_cancer(),
        model,
        sgd(model, 1e-6 if broken else 0.05, momentum=0.9),
        nn.CrossEntropyLoss(),
        epochs=10,
        batch=32,
    )


def deep_sigmoid(broken: bool) -> Loop:
    """A deep stack of sigmoid layers: gradients vanish before they reach the first layers.
    Fix: ReLU in the hidden layers."""
    model = mlp(64, 10, hidden=(32,) * 8, act=nn.Sigmoid if broken else nn.ReLU)
    return Loop(digits(), model, adam(model), nn.CrossEntropyLoss(), epochs=10)


def dead_relu_positive_inputs(broken: bool) -> Loop:
    """All features positive and hidden ReLU weights initialized negative: the units output 0
    for every row and never recover. Fix from the answer: standardize the data so features take
    both signs (leaky ReLU also named)."""
    torch.manual_seed(SEED)
    model = mlp(30, 1, hidden=(16,))
    with torch.no_grad():
        model[0].weight.uniform_(-0.05, 0.0)
        model[0].bias.zero_()
    return Loop(
        breast_cancer("minmax" if broken else "standard"),
        model,
        adam(model),
        nn.BCEWithLogitsLoss(),
        binary=True,
        batch=32,
    )


def exploding_init(broken: bool) -> Loop:
    """A deep MLP whose weights are drawn from N(0, 1): activations and gradients grow layer by
    layer until they overflow. Fix: Kaiming (He) initialization."""
    torch.manual_seed(SEED)
    model = mlp(64, 10, hidden=(128,) * 6)
    for m in model:
        if isinstance(m, nn.Linear):
            if broken:
                nn.init.normal_(m.weight, 0.0, 1.0)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return Loop(digits(), model, sgd(model, 0.01), nn.CrossEntropyLoss(), epochs=10)


def overfit_small(broken: bool) -> Loop:
    """A small image set trained for many epochs: training loss falls while validation loss
    keeps increasing. Fix: stop at the validation optimum (early stopping, best weights kept)
    with weight decay."""
    x_tr, y_tr, x_va, y_va = digits()
    data = (x_tr[:100], y_tr[:100], x_va, y_va)
    model = mlp(64, 10, hidden=(512, 512))
    opt = adam(model) if broken else adam(model, weight_decay=1e-3)
    return Loop(
        data,
        model,
        opt,
        nn.CrossEntropyLoss(),
        epochs=60,
        batch=32,
        early_stopping=None if broken else 5,
    )


def labels_shuffled_apart(broken: bool) -> Loop:
    """The training images were shuffled after their labels had been taken, so rows and labels no
    longer match. Fix: shuffle inputs and labels together."""
    x_tr, y_tr, x_va, y_va = digits()
    if broken:
        x_tr = x_tr[np.random.default_rng(SEED + 1).permutation(len(x_tr))]
    model = mlp(64, 10, hidden=(256, 256))
    return Loop((x_tr, y_tr, x_va, y_va), model, adam(model), nn.CrossEntropyLoss(), epochs=30)


def friedman_like() -> tuple:
    """5 features in [-1, 1], a smooth non-linear target with an interaction and a square, a
    little noise; inputs and target standardized (what the posters had done)."""
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1, 1, size=(1500, 5))
    y = (
        np.sin(np.pi * x[:, 0] * x[:, 1])
        + 2 * x[:, 2] ** 2
        + x[:, 3]
        + 0.5 * x[:, 4]
        + rng.normal(0, 0.1, 1500)
    )
    return standardize_target(standardize_inputs(_split(x, y, 1000)))


def too_narrow(broken: bool) -> Loop:
    """A regression net too small for its data: training and validation loss both "high and
    stuck". Fix from the answer: widen (add neurons first, then layers)."""
    model = mlp(5, 1, hidden=(2,) if broken else (64, 64))
    return Loop(
        friedman_like(),
        model,
        adam(model, 1e-2),
        nn.MSELoss(),
        task="regression",
        epochs=30,
        batch=32,
    )


def deep_sigmoid_regression(broken: bool) -> Loop:
    """Four hidden layers of 500 sigmoid units mapping inputs to a real value: "unable to
    learn, high loss even on the training data". Answer: the sigmoid's derivative (at most
    0.25) shrinks the error signal at every layer: vanishing gradients; use ReLU."""
    model = mlp(5, 1, hidden=(500,) * 4, act=nn.Sigmoid if broken else nn.ReLU)
    return Loop(
        friedman_like(), model, adam(model), nn.MSELoss(), task="regression", epochs=20, batch=32
    )


CASES = [
    Case(
        "softmax_before_cross_entropy",
        "https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814/16",
        "loss stuck at ~2.30 (10 classes), accuracy at chance",
        "remove the final Softmax; CrossEntropyLoss takes logits",
        ("probabilities_as_logits",),
        softmax_before_ce,
    ),
    Case(
        "softmax_then_nll_loss",
        "https://runebook.dev/en/articles/pytorch/generated/torch.nn.softmax",
        "NLLLoss on probabilities: wrong loss, poor training",
        "LogSoftmax + NLLLoss (or logits + CrossEntropyLoss)",
        ("probabilities_as_logits",),
        softmax_then_nll,
    ),
    Case(
        "sigmoid_then_bce_with_logits",
        "https://github.com/yudi-mars/daisyRec/pull/15",
        "sigmoid applied twice, loss does not converge",
        "drop the model's Sigmoid; BCEWithLogitsLoss applies it",
        ("probabilities_as_logits",),
        double_sigmoid_bce,
    ),
    Case(
        "raw_0_255_pixels",
        "http://pullrequest.ru/10248037/cnn-keras-shodyatsya-odnomu-tomu-zhe-znacheniy-nezavisimo-vvoda",
        "inputs in [0, 255]: huge updates, training stalls",
        "divide the pixels by 255",
        ("unscaled_inputs",),
        raw_pixels,
    ),
    Case(
        "house_price_target",
        "https://stats.stackexchange.com/questions/409000/should-we-normalize-target-data-as-well-as-input-data",
        "targets ~150,000: outputs crawl up from zero, huge MSE",
        "standardize the target",
        ("unscaled_target",),
        price_target,
    ),
    Case(
        "cubic_target_unscaled",
        "https://discuss.pytorch.org/t/neural-network-could-not-learn-on-this-type-of-data-why/96648/5",
        "x in 1..4000, y = x**3: the network cannot learn",
        "normalize input and target",
        ("unscaled_inputs", "unscaled_target"),
        cubic_target,
    ),
    Case(
        "polynomial_regression_nan",
        "https://qa.1r1g.com/sf/ask/4433342651",
        "X in [-1000, 1000], cubic target: MSE loss is NaN",
        "scale X (and y)",
        ("unscaled_inputs", "unscaled_target"),
        polynomial_nan,
    ),
    Case(
        "labels_sorted_not_shuffled",
        "https://dailydoseofds.beehiiv.com/p/why-is-it-important-to-shuffle-your",
        "label-ordered batches: the model fails to converge",
        "shuffle the rows",
        ("unshuffled_batches",),
        sorted_labels,
    ),
    Case(
        "missing_zero_grad",
        "https://thecodeforge.io/ml-ai/pytorch-training-loop/",
        "gradients accumulate; updates grow wrong, loss blows up",
        "call optimizer.zero_grad() every step",
        ("missing_zero_grad",),
        missing_zero_grad,
    ),
    Case(
        "learning_rate_too_high",
        "https://discuss.pytorch.org/t/tricks-for-being-able-to-use-a-higher-learning-rate/142179",
        "loss explodes, NaN after the first iterations",
        "lower the learning rate (or warm up)",
        ("lr_too_high", "divergence"),
        lr_too_high,
    ),
    Case(
        "learning_rate_too_low",
        "https://theneuralbase.com/keras/learn/beginner/loss-not-decreasing-learning-rate/",
        "loss barely changes, looks flat",
        "raise the learning rate",
        ("slow_convergence",),
        lr_too_low,
    ),
    Case(
        "deep_sigmoid_vanishing",
        "https://paudelanil9.com.np/posts/whysigmoidfails",
        "deep sigmoid net: early layers get ~no gradient",
        "ReLU in the hidden layers",
        ("vanishing_gradients", "saturated_activations"),
        deep_sigmoid,
    ),
    Case(
        "dead_relu_positive_inputs",
        "https://stats.stackexchange.com/questions/450100/understanding-relu-does-this-unlucky-intialized-network-assign-all-instances",
        "positive features, negative init: ReLU units dead",
        "standardize the features (or leaky ReLU)",
        ("dead_relu",),
        dead_relu_positive_inputs,
    ),
    Case(
        "exploding_from_init",
        "https://blog.csdn.net/qq_24739717/article/details/102896678",
        "N(0,1) weights in a deep MLP: outputs/gradients explode",
        "Kaiming / Xavier initialization",
        ("exploding_gradients",),
        exploding_init,
    ),
    Case(
        "overfitting_small_dataset",
        "https://discuss.pytorch.org/t/why-is-the-validation-loss-increasing/68683",
        "training loss falls, validation loss keeps rising",
        "early stopping at the optimum, weight decay",
        ("overfitting",),
        overfit_small,
    ),
    Case(
        "images_shuffled_apart_from_labels",
        "https://github.com/Borda/kaggle_image-classify/pull/12",
        "inputs shuffled after the labels were taken: labels do not match",
        "shuffle inputs and labels together",
        ("no_signal",),
        labels_shuffled_apart,
    ),
    Case(
        "regression_net_too_narrow",
        "https://theneuralbase.com/tensorflow/learn/beginner/model-not-improving-architecture/",
        "train and validation loss both high and flat",
        "widen the network (more neurons, then layers)",
        ("underfitting",),
        too_narrow,
    ),
    Case(
        "deep_sigmoid_regression",
        "https://ai.stackexchange.com/questions/16557/what-could-be-the-problem-when-a-neural-network-with-four-hidden-layers-with-the",
        "4x500 sigmoid layers, real-valued target: high loss even on training rows",
        "ReLU in the hidden layers (vanishing gradients)",
        ("vanishing_gradients", "saturated_activations"),
        deep_sigmoid_regression,
    ),
]


def overfitting_verified(result: dict) -> bool:
    """An overfitting alarm checked on rows that did not choose the epoch: pick the epoch of
    lowest validation loss on one half of the validation rows, and require that the other
    half's loss there is below its loss at the end (both ways round). A rise that is noise in
    one half does not repeat in the other; one that is real does."""
    halves = result.get("val_loss_halves") or []
    if len(halves) < 3 or not all(np.isfinite(v) for row in halves for v in row):
        return False
    for pick, check in ((0, 1), (1, 0)):
        best = min(range(len(halves)), key=lambda e: halves[e][pick])
        if not halves[best][check] < halves[-1][check]:
            return False
    return True


VERIFIERS: dict[str, Callable[[dict], bool]] = {"overfitting": overfitting_verified}


def false_alarms(fixed: dict) -> list[str]:
    """Warnings on the fixed twin, less those an independent check confirms (the twin has that
    fault too, beside the one the thread fixed)."""
    return [c for c in fixed["alarms"] if not (c in VERIFIERS and VERIFIERS[c](fixed))]


def verdict(expected: tuple[str, ...], broken: dict, fixed: dict) -> str:
    named = bool(set(expected) & set(broken["alarms"]))
    if not expected:
        head = "no rule for this fix"
    elif named:
        head = "named"
    elif broken["alarms"]:
        head = "missed (other codes)"
    else:
        head = "missed (silent)"
    if false_alarms(fixed):
        return head + "; false alarm on fix"
    if fixed["alarms"]:
        return head + "; verified " + ",".join(fixed["alarms"]) + " on fix"
    return head


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    for case in CASES:
        result = {}
        for label, broken in (("broken", True), ("fixed", False)):
            torch.manual_seed(SEED)
            result[label] = run(case.build(broken))
        rows.append(
            {
                "case": case.name,
                "url": case.url,
                "symptom": case.symptom,
                "fix": case.fix,
                "expected": list(case.expected),
                "broken": result["broken"],
                "fixed": result["fixed"],
                "named_with_helpful_advice": bool(
                    set(case.expected) & set(result["broken"]["alarms"])
                ),
                "false_alarm_on_fixed": bool(false_alarms(result["fixed"])),
                "verified_on_fixed": sorted(
                    set(result["fixed"]["alarms"]) - set(false_alarms(result["fixed"]))
                ),
                "verdict": verdict(case.expected, result["broken"], result["fixed"]),
            }
        )
        r = rows[-1]
        print(
            f"{case.name:36s} expected {','.join(case.expected) or '-':42s} "
            f"broken {','.join(r['broken']['alarms']) or '-':50s} "
            f"fixed {','.join(r['fixed']['alarms']) or '-':30s} {r['verdict']}",
            flush=True,
        )
    n = len(rows)
    named = sum(r["named_with_helpful_advice"] for r in rows)
    n_false = sum(r["false_alarm_on_fixed"] for r in rows)
    n_verified = sum(bool(r["verified_on_fixed"]) for r in rows)
    total = time.perf_counter() - started
    print(f"\nnamed with helpful advice: {named} of {n}")
    print(f"false alarms on fixed twins: {n_false} of {n}")
    print(f"verified findings on fixed twins (held-out check): {n_verified} of {n}")
    print(f"total {total:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "cases": rows,
                "summary": {
                    "cases": n,
                    "named_with_helpful_advice": named,
                    "false_alarms_on_fixed": n_false,
                    "verified_findings_on_fixed": n_verified,
                    "seconds": round(total, 1),
                },
                "environment": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": 1,
                    "seed": SEED,
                },
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
