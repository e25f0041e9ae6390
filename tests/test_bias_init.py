"""RealMLP's he+5 biases: every unit's kink starts inside the data, reproducibly per member."""

from __future__ import annotations

import pytest
import torch

from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.models import Architecture, PopulationMLP

ARCH = Architecture(n_inputs=5, hidden=(32, 16), n_outputs=3, activation="selu")


def _model(seeds: list[int], arch: Architecture = ARCH) -> PopulationMLP:
    model = PopulationMLP(arch, len(seeds))
    model.initialize(seeds, init="auto", init_scale=1.0, bias_init=0.0)
    return model


def _rows() -> torch.Tensor:
    # Far from zero: with zero biases no first-layer unit would change sign over these rows.
    return torch.randn(200, 5, generator=torch.Generator().manual_seed(0)) + 6.0


@pytest.mark.parametrize("parametrization", ["standard", "ntk"])
def test_every_first_layer_unit_changes_sign_over_the_rows(parametrization: str) -> None:
    arch = Architecture(5, ARCH.hidden, 3, activation="selu", parametrization=parametrization)
    x = _rows()
    model = _model([1, 2], arch)
    w = model._layer_pairs()[0][0]
    before = x @ w[0] + model.biases[0][0]
    assert ((before.min(0).values > 0) | (before.max(0).values < 0)).float().mean() > 0.5
    model.initialize_biases(x, [1, 2], rows=len(x))
    for k in range(2):
        z = x @ w[k] + model.biases[0][k]
        assert bool((z.min(0).values <= 0).all() and (z.max(0).values >= 0).all())
    assert bool((model.biases[1] != 0).all() and (model.biases[2] != 0).all())


def test_a_member_gets_the_same_biases_alone_as_in_a_population() -> None:
    x = _rows()
    together, alone = _model([3, 7]), _model([7])
    together.initialize_biases(x, [3, 7], rows=64)
    alone.initialize_biases(x, [7], rows=64)
    for layer in range(together.n_layers):
        torch.testing.assert_close(together.biases[layer][1], alone.biases[layer][0])
        assert not torch.equal(together.biases[layer][0], together.biases[layer][1])


def test_unknown_modes_are_refused_in_one_line() -> None:
    with pytest.raises(InputError, match="bias_init_mode"):
        build_config({"dataset": "iris", "bias_init_mode": "he5"})
    with pytest.raises(InputError, match="best_epoch_by"):
        build_config({"dataset": "iris", "best_epoch_by": "accuracy"})


def _preactivations(model: PopulationMLP, x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Member ``k``'s pre-activation at every layer (output layer too) for rows ``x``."""
    h, out = x, []
    pairs = model._layer_pairs()
    for layer, (w, b) in enumerate(pairs):
        z = h @ w[k] + b[k]
        out.append(z)
        if layer < len(pairs) - 1:
            h = model.act(z)
    return out


@pytest.mark.parametrize("parametrization", ["standard", "ntk"])
def test_data_init_gives_every_unit_the_asked_spread_over_the_batch(parametrization: str) -> None:
    arch = Architecture(5, ARCH.hidden, 3, activation="mish", parametrization=parametrization)
    x = _rows() * 40.0  # inputs far from unit scale: the rule's std alone would not give 1
    model = PopulationMLP(arch, 2)
    model.initialize([1, 2], init="data", init_scale=0.5, bias_init=0.1)
    assert _preactivations(model, x, 0)[0].std(dim=0, correction=0).min() > 5.0
    model.initialize_biases(x, [1, 2], rows=len(x), unit_std=0.5, biases=False)
    for k in range(2):
        for z in _preactivations(model, x, k):
            torch.testing.assert_close(
                z.std(dim=0, correction=0), torch.full((z.shape[1],), 0.5), rtol=1e-4, atol=1e-5
            )
    assert bool((model.biases[0] == 0.1).all())  # biases=False keeps the constant


def test_data_init_rescales_the_drawn_weights_from_the_training_rows() -> None:
    from fitwell.api import train

    # One epoch at a negligible rate: the weights are (to 1e-9) the initial ones.
    settings = {"dataset": "wine", "max_epochs": 1, "lr": 1e-12, "hidden": (16,), "ensemble": 1}
    drawn = train(**settings, scale=False)  # unscaled wine: pre-activations in the hundreds
    data = train(**settings, scale=False, init="data")
    w_drawn, w_data = drawn.model.weights[0][0], data.model.weights[0][0]
    assert not torch.equal(w_drawn, w_data)
    # Same draw, each column rescaled by a positive factor: the directions are kept.
    ratio = w_data / w_drawn
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-4, atol=0.0)
    assert bool((ratio[0] < 0.5).all())  # wine's unscaled columns: the units are scaled down
