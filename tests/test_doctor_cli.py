"""The doctor through the CLI: findings in the summary, in --json, in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import run_cli

TINY = ["--hidden", "16", "--max-epochs", "6", "--batch-size", "32"]


def test_train_writes_signals_and_doctor_rederives_the_findings(
    mixed_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # Units that never fire: bias -5 under ReLU. The doctor must say so, with evidence.
    res = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        *TINY,
        "--bias-init",
        "-5",
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    dead = [f for f in summary["findings"] if f["code"] == "dead_relu"]
    assert dead and dead[0]["layer"] == "hidden1" and dead[0]["evidence"]["dead_fraction"] >= 0.7
    signals = json.loads((out / "signals.json").read_text())
    assert signals["version"] == 1 and signals["layers"] == ["hidden1", "output"]
    first = signals["records"][0]
    assert {
        "epoch",
        "member",
        "grad_norm",
        "weight_norm",
        "update_ratio",
        "dead_fraction",
        "saturated_fraction",
        "nonfinite_steps",
    } <= set(first)
    assert len(first["grad_norm"]) == 2 and len(first["dead_fraction"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["findings"] == summary["findings"]

    again = run_cli("doctor", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["findings"] == summary["findings"]
    text = run_cli("doctor", str(out))
    assert "dead_relu" in text.stdout and "bias_init" in text.stdout


def test_divergence_exits_3_with_the_finding_and_saves_nothing(
    mixed_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        *TINY,
        "--optimizer",
        "sgd",
        "--lr",
        "1e6",
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["findings"][0]["code"] == "divergence"
    assert doc["findings"][0]["severity"] == "error"
    assert doc["findings"][0]["epoch"] == 1
    assert res.stderr.startswith("error: training diverged")
    assert not out.exists()  # no run directory, so no non-finite weights on disk
    plain = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        *TINY,
        "--optimizer",
        "sgd",
        "--lr",
        "1e6",
        "--out",
        str(tmp_path / "run2"),
    )
    assert plain.returncode == 3 and "divergence" in plain.stderr


def test_leaky_split_and_shuffled_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    frame = pd.DataFrame(x, columns=list("abcd"))
    frame["y"] = rng.integers(0, 2, size=150)  # labels independent of the features
    leaky = pd.concat([frame, frame.iloc[:75]], ignore_index=True)
    path = tmp_path / "leaky.csv"
    leaky.to_csv(path, index=False)
    res = run_cli(
        "train", str(path), "--target", "y", *TINY, "--out", str(tmp_path / "r"), "--json"
    )
    assert res.returncode == 0, res.stderr
    found = {f["code"]: f for f in json.loads(res.stdout)["findings"]}
    assert found["leakage"]["severity"] == "warning"
    assert found["leakage"]["evidence"]["duplicated_test_rows"] > 0


def test_doctor_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    res = run_cli("doctor", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.startswith("error:") and "manifest.json" in res.stderr
