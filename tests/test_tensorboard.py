"""--tensorboard: curves, per-layer gradient norms and findings land in TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fitwell
from fitwell.training.tensorboard import TensorBoardLogger
from tests.conftest import run_cli

pytest.importorskip("tensorboard", reason="optional extra: pip install 'fitwell[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_logger_writes_curves_gradients_and_findings(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    run = fitwell.train(
        dataset="iris", hidden=(8, 8), max_epochs=4, restarts=2, lr=0.01, callbacks=[logger]
    )
    findings = [
        {
            "code": "dead_relu",
            "severity": "warning",
            "epoch": 2,
            "layer": "hidden1",
            "member": 0,
            "evidence": {"dead_fraction": 0.8},
            "advice": "Lower | the lr",
        }
    ]
    logger.log_findings(findings)
    logger.close()
    acc = _events(tmp_path / "tb")
    scalars = set(acc.Tags()["scalars"])
    for member in (0, 1):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert f"member_{member}/{key}" in scalars
        for layer in ("hidden1", "hidden2", "output"):
            assert f"member_{member}/grad_norm/{layer}" in scalars
    val = [e.value for e in acc.Scalars("member_0/val_loss")]
    history = run.history[run.history["member"] == 0]["val_loss"].tolist()
    assert val == pytest.approx(history, rel=1e-6)
    grads = [e.value for e in acc.Scalars("member_1/grad_norm/hidden1")]
    assert len(grads) == 4 and all(g > 0 for g in grads)
    assert [e.value for e in acc.Scalars("findings/warning")] == [1.0]
    text = acc.Tensors("findings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "dead_relu" in text and "Lower \\| the lr" in text


def test_gradient_norm_matches_autograd(tmp_path: Path) -> None:
    """Oracle: one step's logged norm equals torch.linalg.norm of that member's weight grad."""
    seen: list[torch.Tensor] = []

    class Probe(TensorBoardLogger):
        def on_after_backward(self, trainer, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(trainer.model.weights[0].grad[0].detach().clone())
            super().on_after_backward(trainer, **kwargs)

    probe = Probe(tmp_path / "tb")
    # One batch per epoch, so the epoch mean is that single step's norm.
    fitwell.train(dataset="iris", hidden=(4,), max_epochs=2, batch_size=1000, callbacks=[probe])
    probe.close()
    logged = [e.value for e in _events(tmp_path / "tb").Scalars("member_0/grad_norm/hidden1")]
    expected = [float(torch.linalg.norm(g)) for g in seen]
    assert logged == pytest.approx(expected, rel=1e-5)


def test_cli_flag_writes_event_files(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        "--dataset",
        "iris",
        "--hidden",
        "4",
        "--max-epochs",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--tensorboard",
        str(tmp_path / "tb"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    acc = _events(tmp_path / "tb")
    assert "member_0/val_loss" in acc.Tags()["scalars"]
    assert "findings/error" in acc.Tags()["scalars"]
