"""RealMLP's recipe ingredients: mish, the learnable activation shape, the NTK parametrization,
decoupled weight decay, the flat_cos dropout / weight-decay schedules and the coslog4 rate.

Formulas against their definitions, populations against members trained alone, resume bitwise
equal, saved runs replayed at predict, and the configuration errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import fitwell
from fitwell import api, runs
from fitwell.cli import main
from fitwell.config import build_config
from fitwell.diagnosis.probes import SignalProbe
from fitwell.errors import InputError
from fitwell.models import (
    FRONT_SCALE_LR_FACTOR,
    NTK_UNSCALED_LR_FACTOR,
    Architecture,
    PopulationMLP,
    state_shapes,
)
from fitwell.resume import resume
from fitwell.training import Callback, LoopSettings, MemberSettings, Trainer
from fitwell.training.optim import PopulationOptimizer
from fitwell.training.schedules import coslog_factor, lr_factor, regularization_factor
from tests.replay import assert_same_predictions
from tests.test_population import MEMBERS, _assert_same_member, _data
from tests.test_resume import SETTINGS, _interrupted, assert_same_run

RECIPE: dict[str, Any] = {
    "activation": "mish",
    "learnable_activation": True,
    "parametrization": "ntk",
    "lr": 0.04,
    "dropout": 0.15,
    "dropout_schedule": "flat_cos",
    "weight_decay": 0.02,
    "wd_schedule": "flat_cos",
    "lr_schedule": "coslog4",
}


def _model(k: int = 2, **arch: Any) -> PopulationMLP:
    model = PopulationMLP(Architecture(5, (8, 6), 3, **arch), k)
    model.initialize(list(range(k)), init="auto", init_scale=1.0, bias_init=0.0)
    return model


# ------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1.0), (49, 1.0), (50, 1.0), (75, 0.5), (60, 0.5 * (1 + math.cos(math.pi * 0.2)))],
)
def test_flat_cos_is_flat_then_a_cosine_to_zero(epoch: int, expected: float) -> None:
    assert regularization_factor(epoch, "flat_cos", 100) == pytest.approx(expected, abs=1e-12)
    assert regularization_factor(epoch, "constant", 100) == 1.0
    assert regularization_factor(100, "flat_cos", 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("epoch", [0, 1, 17, 50, 99])
def test_coslog4_is_the_log_time_cosine_at_epoch_midpoints(epoch: int) -> None:
    t = (epoch + 0.5) / 100
    expected = 0.5 * (1 - math.cos(2 * math.pi * math.log2(1 + 15 * t)))
    assert lr_factor(epoch, "coslog4", 0, 100) == pytest.approx(expected, rel=1e-12)
    assert coslog_factor(epoch, 100) == lr_factor(epoch, "coslog4", 0, 100)


def test_coslog4_has_four_cycles_that_get_longer_and_never_a_zero_rate() -> None:
    values = np.array([lr_factor(e, "coslog4", 0, 1000) for e in range(1000)])
    assert values.min() > 0 and values.max() <= 1.0
    peaks = [e for e in range(1, 999) if values[e - 1] < values[e] >= values[e + 1]]
    assert len(peaks) == 4
    # Peaks where log2(1 + 15 t) = c + 1/2: t = (2 ** (c + 0.5) - 1) / 15.
    for c, peak in enumerate(peaks):
        assert abs(peak + 0.5 - 1000 * (2 ** (c + 0.5) - 1) / 15) <= 1.0
    assert np.all(np.diff(peaks) > 0) and np.all(np.diff(np.diff(peaks)) > 0)


# --------------------------------------------------------------------------- activations
def test_mish_is_x_tanh_softplus_in_training_and_in_place_evaluation() -> None:
    model = _model(activation="mish")
    x = torch.randn(2, 7, 5)
    trained = model(x)  # autograd path, out of place
    with torch.no_grad():
        evaluated = model(x)  # in-place path
        shared = model.predict_chunks(x[0])
    torch.testing.assert_close(trained.detach(), evaluated)
    torch.testing.assert_close(shared[0], evaluated[0])
    h = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(F.mish(h), h * torch.tanh(F.softplus(h)))


@pytest.mark.parametrize("activation", ["relu", "selu", "mish", "tanh"])
def test_learnable_activation_starts_as_the_plain_activation(activation: str) -> None:
    plain = _model(activation=activation)
    shaped = _model(activation=activation, learnable_activation=True)
    x = torch.randn(2, 11, 5)
    # alpha = 1 is exactly act(x): torch.lerp computes end - (end - start) * (1 - w) for w >= 0.5
    assert torch.equal(plain(x), shaped(x))
    with torch.no_grad():
        assert torch.equal(plain.predict_chunks(x[0]), shaped.predict_chunks(x[0]))


def test_learnable_activation_mixes_act_and_identity_per_unit() -> None:
    model = _model(k=1, activation="relu", learnable_activation=True)
    with torch.no_grad():
        model.act_alphas[0].fill_(0.25)
        model.act_alphas[1][0, 0, :3] = 0.0  # three units of the second layer: identity
    h = torch.randn(1, 4, 8)
    got = model._activate(0, h, torch.relu)
    torch.testing.assert_close(got, h + 0.25 * (torch.relu(h) - h))
    model(torch.randn(1, 4, 5)).sum().backward()
    assert all(a.grad is not None and float(a.grad.abs().sum()) > 0 for a in model.act_alphas)


def test_batched_equals_member_by_member_and_keep_members_slices_alpha() -> None:
    model = _model(k=3, activation="mish", learnable_activation=True, parametrization="ntk")
    with torch.no_grad():
        for a in model.act_alphas:
            a.uniform_(0.0, 2.0)
        x = torch.randn(10, 5)
        batched = model.predict_chunks(x)
        alone = torch.stack([model._member_forward(x, m) for m in range(3)])
        torch.testing.assert_close(batched, alone)
        model.keep_members(torch.tensor([2, 0]))
        torch.testing.assert_close(model.predict_chunks(x), batched[[2, 0]])
    assert model.act_alphas[0].shape == (2, 1, 8)


# ----------------------------------------------------------------------- parametrization
def test_ntk_forward_equals_standard_forward_with_rescaled_weights() -> None:
    standard = _model(activation="selu")
    ntk = _model(activation="selu", parametrization="ntk")
    fans = [i for i, _ in standard.arch.layer_sizes]
    # The same seeds draw the same effective weights: the initial function is unchanged.
    for w_std, w_ntk, fan in zip(standard.weights, ntk.weights, fans, strict=True):
        torch.testing.assert_close(w_ntk / math.sqrt(fan), w_std)
    # Any weights: ntk with w * sqrt(fan_in) computes what standard computes with w.
    with torch.no_grad():
        for w_std, w_ntk, b_std, b_ntk, fan in zip(
            standard.weights, ntk.weights, standard.biases, ntk.biases, fans, strict=True
        ):
            w_std.normal_()
            b_std.normal_()
            w_ntk.copy_(w_std * math.sqrt(fan))
            b_ntk.copy_(b_std)
    x = torch.randn(2, 9, 5)
    torch.testing.assert_close(ntk(x), standard(x))
    with torch.no_grad():
        torch.testing.assert_close(ntk.predict_chunks(x[0]), standard.predict_chunks(x[0]))


def test_selu_ntk_weights_are_standard_normal() -> None:
    model = PopulationMLP(Architecture(64, (256,), 2, "selu", parametrization="ntk"), 1)
    model.initialize([0], init="auto", init_scale=1.0, bias_init=0.0)
    assert float(model.weights[0].detach().std()) == pytest.approx(1.0, abs=0.02)


def test_ntk_trains_biases_and_shapes_at_a_tenth_of_the_rate() -> None:
    model = _model(k=1, learnable_activation=True, parametrization="ntk")
    params = list(model.parameters())
    opt = PopulationOptimizer(
        params,
        model.penalized_weights(),
        kind="adam",
        lrs=torch.tensor([0.04]),
        l1s=torch.zeros(1),
        lr_factors=model.lr_factors(),
    )
    rate = {id(p): g["lr"] for g in opt.optimizer.param_groups for p in g["params"]}
    for w in model.weights:
        assert rate[id(w)] == pytest.approx(0.04)
    for p in [*model.biases, *model.act_alphas]:
        assert rate[id(p)] == pytest.approx(0.04 * NTK_UNSCALED_LR_FACTOR)
    opt.set_lrs(torch.tensor([0.02]))
    rate = {id(p): g["lr"] for g in opt.optimizer.param_groups for p in g["params"]}
    assert rate[id(model.biases[0])] == pytest.approx(0.02 * NTK_UNSCALED_LR_FACTOR)
    # Standard parametrization: every tensor at the member's rate, in one group as before.
    assert set(_model(k=1, learnable_activation=True).lr_factors()) == {1.0}


def test_ntk_front_scale_learns_faster_and_embeddings_slower() -> None:
    """RealMLP's factors: the front scale at 6x the member's rate, the numeric embedding at 0.1x;
    without NTK both stay at 1x, so runs outside the recipe train as before."""
    arch = {"numeric_embedding": "pbld", "embedded": (0, 1), "front_scale": True}
    model = _model(k=2, parametrization="ntk", **arch)
    factor = {id(p): f for p, f in zip(model.parameters(), model.lr_factors(), strict=True)}
    assert factor[id(model.front_scales)] == FRONT_SCALE_LR_FACTOR == 6.0
    for name in ("embed_frequencies", "embed_phases", "embed_weights", "embed_biases"):
        assert factor[id(getattr(model, name))] == NTK_UNSCALED_LR_FACTOR
    assert all(factor[id(w)] == 1.0 for w in model.weights)
    assert set(_model(k=2, **arch).lr_factors()) == {1.0}


def test_ntk_probes_report_the_effective_network() -> None:
    """With a negligible rate both runs stay at the same function: the probe's gradient and
    weight norms must agree although the stored ntk weights are sqrt(fan_in) times larger."""
    records = {}
    for param in ("standard", "ntk"):
        probe = SignalProbe()
        arch = Architecture(6, (16, 16), 3, "relu", parametrization=param)
        trainer = Trainer(
            arch,
            [MemberSettings(seed=1, lr=1e-9, dropout=(0.0, 0.0))],
            LoopSettings(batch_size=32, max_epochs=2, patience=0),
            task="classification",
            device=torch.device("cpu"),
            callbacks=[probe],
            **_data(),
        )
        trainer.fit()
        records[param] = probe.records[-1]
    for key in ("grad_norm", "weight_norm"):
        np.testing.assert_allclose(records["ntk"][key], records["standard"][key], rtol=1e-3)


# --------------------------------------------------------------- weight decay and dropout
def test_decoupled_weight_decay_shrinks_weights_by_lr_times_wd() -> None:
    w = torch.nn.Parameter(torch.ones(2, 3, 4))
    b = torch.nn.Parameter(torch.ones(2, 1, 4))
    opt = PopulationOptimizer(
        [w, b],
        [w],
        kind="sgd",
        lrs=torch.tensor([0.1, 0.2]),
        l1s=torch.zeros(2),
        momentum=0.0,
        weight_decays=torch.tensor([0.5, 0.0]),
    )
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    torch.testing.assert_close(w[0], torch.full((3, 4), 1 - 0.1 * 0.5))
    torch.testing.assert_close(w[1], torch.ones(3, 4))
    torch.testing.assert_close(b.detach(), torch.ones(2, 1, 4))  # biases are not decayed
    opt.set_weight_decays(torch.tensor([0.0, 1.0]))
    opt.step()
    torch.testing.assert_close(w[1], torch.full((3, 4), 1 - 0.2))


def _trainer(members: list[MemberSettings], epochs: int = 6, **arch: Any) -> Trainer:
    return Trainer(
        Architecture(6, (16, 8), 3, **arch),
        members,
        LoopSettings(batch_size=32, max_epochs=epochs, patience=0),
        task="classification",
        device=torch.device("cpu"),
        **_data(),
    )


def test_dropout_schedule_scales_the_rates_each_epoch() -> None:
    member = replace(MEMBERS[2], dropout_schedule="flat_cos")
    trainer = _trainer([member, MEMBERS[3]], epochs=4)
    seen = []

    class Spy(Callback):
        def on_epoch_begin(self, trainer: Any, **kwargs: Any) -> None:
            _, rates, _, _ = trainer._dropout_layout()
            seen.append(rates[:, 0, [0, 16]].tolist())

    trainer.callbacks.append(Spy())
    trainer.fit()
    for epoch, rates in enumerate(seen):
        f = regularization_factor(epoch, "flat_cos", 4)
        assert rates[0] == pytest.approx([0.1 * f, 0.3 * f])
        assert rates[1] == pytest.approx([0.0, 0.5])  # its own schedule: constant


def test_scheduled_members_in_a_population_match_themselves_alone() -> None:
    members = [
        replace(MEMBERS[0], weight_decay=0.05, wd_schedule="flat_cos", lr_schedule="coslog4"),
        replace(MEMBERS[2], dropout_schedule="flat_cos"),
        replace(MEMBERS[3], weight_decay=0.02),
    ]
    arch = {"activation": "mish", "learnable_activation": True, "parametrization": "ntk"}
    together = _trainer(members, **arch).fit()
    for member, settings in enumerate(members):
        alone = _trainer([settings], **arch).fit()
        _assert_same_member(together.members[member], alone.members[0])
    # The options acted: decay and shapes moved the member away from its undecayed self.
    plain = _trainer([replace(members[0], weight_decay=0.0)], **arch).fit().members[0]
    assert not torch.allclose(plain.state["weights.0"], together.members[0].state["weights.0"])
    assert not torch.equal(
        together.members[0].state["act_alphas.0"], torch.ones_like(plain.state["act_alphas.0"])
    )


# ----------------------------------------------------------------- runs: resume, predict
def test_resume_with_the_recipe_is_bitwise_equal(tmp_path: Path, mixed_csv: Path) -> None:
    settings = {"data": mixed_csv, "target": "label", **SETTINGS, **RECIPE, "restarts": 2}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 4, **settings)
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_saved_recipe_run_replays_at_predict(tmp_path: Path, mixed_csv: Path) -> None:
    run = fitwell.train(
        mixed_csv, target="label", out=tmp_path / "r", hidden=(8,), max_epochs=4, **RECIPE
    )
    meta = json.loads((tmp_path / "r" / runs.MODEL_META).read_text())
    assert meta["architecture"]["learnable_activation"] is True
    assert meta["architecture"]["parametrization"] == "ntk"
    assert meta["architecture"]["activation"] == "mish"
    frame = pd.read_csv(mixed_csv).drop(columns="label")
    loaded = fitwell.load_run(tmp_path / "r")
    assert loaded.model.arch.learnable_activation and loaded.model.weight_scales is not None
    assert_same_predictions(loaded.predict_proba(frame), run.predict_proba(frame))
    population = json.loads((tmp_path / "r" / runs.METRICS_FILE).read_text())["population"]
    assert {m["dropout_schedule"] for m in population} == {"flat_cos"}


def test_state_shapes_name_the_shapes_and_old_architectures_load() -> None:
    arch = Architecture(5, (8, 6), 3, learnable_activation=True)
    shapes = state_shapes(arch, 4)
    assert shapes["act_alphas.0"] == (4, 1, 8) and shapes["act_alphas.1"] == (4, 1, 6)
    assert set(shapes) == set(PopulationMLP(arch, 4).state_dict())
    old = {"n_inputs": 5, "hidden": [8], "n_outputs": 2, "activation": "relu", "batch_norm": False}
    loaded = Architecture.from_json(old)
    assert not loaded.learnable_activation and loaded.parametrization == "standard"
    with pytest.raises(InputError, match="unknown parametrization 'ntx'.*ntk"):
        Architecture.from_json(old | {"parametrization": "ntx"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"parametrization": "ntx"}, "`parametrization` must be one of standard, ntk"),
        ({"dropout_schedule": "flat"}, "`dropout_schedule` must be one of constant, flat_cos"),
        ({"wd_schedule": "cos"}, "`wd_schedule` must be one of constant, flat_cos"),
        ({"weight_decay": -0.1}, "`weight_decay` must be >= 0"),
        ({"weight_decay": "a lot"}, "`weight_decay` must be a number"),
        ({"learnable_activation": "yes"}, "`learnable_activation` must be true or false"),
        ({"activation": "mesh"}, "did you mean `mish`"),
        ({"lr_schedule": "coslog"}, "`lr_schedule` must be one of"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_config({"dataset": "iris", **values})


def test_population_members_may_differ_in_regularization_schedules() -> None:
    configs = [
        {"dataset": "iris", "max_epochs": 3, "dropout_schedule": s, "weight_decay": wd}
        for s, wd in (("constant", 0.0), ("flat_cos", 0.02))
    ]
    run = api.train_population(configs, progress=False)
    got = {(m["dropout_schedule"], m["weight_decay"]) for m in run.metrics["population"]}
    assert got == {("constant", 0.0), ("flat_cos", 0.02)}


def test_cli_flags_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    flags = [
        "--activation", "mish", "--learnable-activation", "--parametrization", "ntk",
        "--lr", "0.04", "--dropout-schedule", "flat_cos", "--weight-decay", "0.02",
        "--wd-schedule", "flat_cos", "--lr-schedule", "coslog4",
    ]  # fmt: skip
    base = ["train", "--dataset", "iris", "--max-epochs", "3", "--quiet", "--out", str(out)]
    assert main([*base, *flags]) == 0
    config = (out / runs.CONFIG_FILE).read_text()
    assert 'parametrization = "ntk"' in config and "learnable_activation = true" in config
    assert 'wd_schedule = "flat_cos"' in config and "weight_decay = 0.02" in config
    capsys.readouterr()
    assert main([*base, "--parametrization", "mup"]) == 2
    assert "`parametrization` must be one of" in capsys.readouterr().err
