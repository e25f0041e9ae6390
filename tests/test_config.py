"""Configuration: defaults, TOML round trip, one message listing every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitwell.api import make_config, resolve_device
from fitwell.config import TrainConfig, build_config, load_toml, resolve_hidden, to_toml
from fitwell.errors import InputError


def test_every_problem_is_reported_at_once():
    with pytest.raises(InputError) as err:
        build_config({"dropout": 1.5, "lr": -1, "optimizer": "adma", "hiden": "3"})
    text = str(err.value)
    assert "`dropout` must be in [0, 1); got 1.5" in text
    assert "`lr` must be a positive number" in text
    assert "did you mean `adam`" in text.lower()
    assert "unknown setting `hiden`" in text and "did you mean `hidden`" in text.lower()


def test_toml_round_trip(tmp_path: Path):
    cfg = build_config({"dataset": "wine", "hidden": "32,16", "dropout": "0.1,0.3", "l2": 1e-4})
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    again = build_config(load_toml(path))
    assert again == cfg
    assert again.dropout_per_layer() == (0.1, 0.3)


def test_flags_override_the_file(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('dataset = "iris"\nlr = 0.5\n')
    cfg = make_config(str(path), lr=0.01)
    assert cfg.lr == 0.01 and cfg.dataset == "iris"
    assert cfg.hidden == TrainConfig().hidden


def test_bad_toml_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("lr = = 3\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_toml(path)


def test_cuda_without_gpu_is_an_error_and_auto_falls_to_cpu():
    import torch

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_auto_width_grows_with_training_rows_and_stays_in_range():
    widths = [resolve_hidden("auto", n)[0] for n in (0, 3, 105, 309, 513, 1257, 100_000)]
    assert widths == sorted(widths)
    assert widths[0] == 64 and widths[-1] == 256
    assert resolve_hidden("auto", 1257) == (256, 256)  # digits, MNIST-1D: the published width
    assert resolve_hidden("auto", 105) == (64, 64)  # iris
    assert resolve_hidden((7, 3), 10) == (7, 3)  # explicit widths are kept


def test_hidden_auto_or_widths_only():
    assert build_config({"hidden": "auto"}).hidden == "auto"
    assert build_config({"hidden": "auto", "dropout": [0.1, 0.2]}).dropout_per_layer() == (0.1, 0.2)
    with pytest.raises(InputError, match="hidden"):
        build_config({"hidden": "wide"})


def test_run_records_the_widths_auto_chose(tmp_path: Path):
    from fitwell import api

    run = api.train(dataset="iris", max_epochs=2, out=tmp_path / "run")
    saved = load_toml(tmp_path / "run" / "config.toml")
    assert tuple(saved["hidden"]) == resolve_hidden("auto", 105) == (64, 64)
    assert [w.shape[-1] for w in run.model.weights][:2] == [64, 64]
