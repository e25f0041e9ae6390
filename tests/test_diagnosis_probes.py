"""The training-loop probe: recorded gradient norms against torch.autograd, per member."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fitwell.diagnosis.probes import GRADIENT_NORM_SAMPLES, SignalProbe
from fitwell.metrics import member_losses
from fitwell.models import Architecture
from fitwell.training import LoopSettings, MemberSettings, Trainer
from fitwell.training.loop import member_seeds


def _trainer(k: int, probe: SignalProbe) -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    arch = Architecture(n_inputs=5, hidden=(6, 4), n_outputs=2, activation="relu")
    members = [MemberSettings(seed=s, lr=0.0) for s in range(k)]
    loop = LoopSettings(optimizer="sgd", momentum=0.0, batch_size=40, max_epochs=1, patience=0)
    return Trainer(
        arch,
        members,
        loop,
        task="classification",
        x_train=x,
        y_train=y,
        x_val=x,
        y_val=y,
        device=torch.device("cpu"),
        callbacks=[probe],
    )


def test_gradient_norms_match_autograd_for_every_member() -> None:
    probe = SignalProbe()
    trainer = _trainer(3, probe)
    model = trainer.model
    # One full-batch step with lr 0: the weights at the end are the weights the gradient saw.
    trainer.fit()
    out = model(trainer.x_train)
    losses = member_losses("classification", out, trainer.y_train)
    grads = torch.autograd.grad(losses.sum(), list(model.weights))
    for record in probe.records:
        m = record["member"]
        expected = [float(g[m].norm()) for g in grads]
        np.testing.assert_allclose(record["grad_norm"], expected, rtol=1e-4)
        assert record["update_ratio"] == [0.0, 0.0, 0.0]
        assert record["nonfinite_steps"] == 0
    assert sorted(r["member"] for r in probe.records) == [0, 1, 2]


def test_single_member_uses_the_same_definition() -> None:
    probe = SignalProbe()
    trainer = _trainer(1, probe)
    trainer.fit()
    out = trainer.model(trainer.x_train)
    loss = member_losses("classification", out, trainer.y_train).sum()
    grads = torch.autograd.grad(loss, list(trainer.model.weights))
    np.testing.assert_allclose(
        probe.records[0]["grad_norm"], [float(g.norm()) for g in grads], rtol=1e-4
    )
    assert len(probe.records[0]["dead_fraction"]) == 2


def test_gradient_norms_are_the_mean_over_evenly_spaced_steps() -> None:
    # 40 rows in batches of 4: 10 steps, every 2nd one read (GRADIENT_NORM_SAMPLES = 5).
    probe = SignalProbe()
    trainer = _trainer(1, probe)
    trainer.loop = replace(trainer.loop, batch_size=4)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(member_seeds(0)[0]))
    trainer.fit()
    weights = list(trainer.model.weights)
    per_step = []
    for step in range(10):
        rows = perm[step * 4 : (step + 1) * 4]
        out = trainer.model(trainer.x_train[rows].unsqueeze(0))
        loss = member_losses("classification", out, trainer.y_train[rows]).sum()
        per_step.append([float(g.norm()) for g in torch.autograd.grad(loss, weights)])
    sampled = np.mean([per_step[s] for s in range(0, 10, 10 // GRADIENT_NORM_SAMPLES)], axis=0)
    np.testing.assert_allclose(probe.records[0]["grad_norm"], sampled, rtol=1e-4)
    assert probe.records[0]["steps"] == 10


def test_dead_fraction_counts_units_firing_on_under_one_percent_of_rows() -> None:
    probe = SignalProbe()
    trainer = _trainer(2, probe)
    with torch.no_grad():  # kill half of the first layer's units in member 1 only
        trainer.model.biases[0][1, 0, :3] = -100.0
    trainer.fit()
    pre = torch.baddbmm(
        trainer.model.biases[0], trainer.x_train.expand(2, -1, -1), trainer.model.weights[0]
    )
    fires = (pre > 0).double().mean(dim=1)
    expected = (fires < 0.01).double().mean(dim=1).tolist()
    by_member = {r["member"]: r["dead_fraction"][0] for r in probe.records}
    assert by_member == {0: expected[0], 1: expected[1]}
    assert by_member[1] >= 0.5
