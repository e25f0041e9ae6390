"""End-to-end runs through the CLI, as a user would type them, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from fitwell import runs
from tests.conftest import run_cli

FAST = ["--hidden", "16", "--max-epochs", "8", "--patience", "3", "--lr", "0.01", "--quiet"]


def test_train_json_and_run_directory(mixed_csv: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = run_cli("train", str(mixed_csv), "--target", "label", "--out", str(out), "--json", *FAST)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["run_dir"] == str(out)
    assert summary["task"] == "classification"
    assert 0.5 < summary["test"]["accuracy"] <= 1.0 and "loss" in summary["test"]
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 8
    assert summary["stop_reason"]
    # Default ensemble of 3: three seeds trained, all averaged, the best listed first.
    assert len(summary["restarts"]["val_scores"]) == 3
    assert sorted(summary["ensemble"]) == [0, 1, 2]
    assert summary["ensemble"][0] == summary["restarts"]["best"]
    assert summary["l1_zeroed_features"] == []
    for finding in summary["findings"]:  # the doctor's verdicts, in the documented shape
        assert {"code", "severity", "epoch", "layer", "evidence", "advice"} <= set(finding)
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "model.json",
        "history.csv",
        "curves.png",
        "metrics.json",
        "config.toml",
    } <= names
    assert not any(n.startswith(".") for n in names)  # no temporaries left behind
    history = pd.read_csv(out / "history.csv")
    assert {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(history)
    best = history[history["member"] == summary["restarts"]["best"]]
    assert len(best) == summary["epochs_run"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "model.json").read_text())
    assert [c["name"] for c in meta["preprocessing"]["columns"]] == ["x1", "x2", "colour"]


def test_config_toml_reproduces_the_run(mixed_csv: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_cli(
        "train", str(mixed_csv), "--target", "label", "--out", str(a), *FAST, "--seed", "3"
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("train", "--config", str(a / "config.toml"), "--out", str(b), "--quiet")
    assert res.returncode == 0, res.stderr
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key])
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]


def test_predict_new_rows(mixed_csv: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert (
        run_cli("train", str(mixed_csv), "--target", "label", "--out", str(out), *FAST).returncode
        == 0
    )
    new = pd.read_csv(mixed_csv).drop(columns="label").head(20)
    new["colour"] = new["colour"].replace({"red": "purple"})  # unseen category
    new = new[["colour", "x2", "x1"]]  # reordered
    new["comment"] = "extra column"
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    pred_path = tmp_path / "pred.csv"
    res = run_cli("predict", str(out), str(path), "--out", str(pred_path))
    assert res.returncode == 0, res.stderr
    assert "ignoring 1 extra column" in res.stderr and "'comment'" in res.stderr
    assert "unseen in training" in res.stderr
    pred = pd.read_csv(pred_path)
    assert len(pred) == 20
    assert set(pred["prediction"]) <= {"yes", "no"}
    np.testing.assert_allclose(pred[["proba_no", "proba_yes"]].sum(axis=1), 1.0, rtol=1e-5)
    # Written through a private temporary file, yet given the mode of any new file (umask 022
    # in the test runner): others can read the run and the predictions.
    mode = 0o666 & ~runs.umask()
    assert pred_path.stat().st_mode & 0o777 == mode
    assert {f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()} == {mode}

    missing = new.drop(columns="x2")
    missing.to_csv(path, index=False)
    res = run_cli("predict", str(out), str(path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "missing column(s) 'x2'" in res.stderr


def _bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    good = pd.DataFrame({"a": np.arange(30.0), "b": np.arange(30.0) % 7, "y": [0, 1, 2] * 10})
    cases: list[tuple[str, list[str], str]] = [
        ("missing file", [str(tmp / "nope.csv"), "--target", "y"], "does not exist")
    ]
    good.to_csv(tmp / "good.csv", index=False)
    cases.append(("missing target", [str(tmp / "good.csv"), "--target", "yy"], "'yy' not found"))
    (tmp / "empty.csv").write_text("")
    cases.append(("empty table", [str(tmp / "empty.csv"), "--target", "y"], "empty"))
    (tmp / "header.csv").write_text("a,b,y\n")
    cases.append(("header only", [str(tmp / "header.csv"), "--target", "y"], "no data rows"))
    bad = good.astype({"a": object})
    bad.loc[17, "a"] = "twelve"
    bad.to_csv(tmp / "nonnum.csv", index=False)
    cases.append(("non-numeric", [str(tmp / "nonnum.csv"), "--target", "y"], "'twelve'"))
    one = good.assign(y=1)
    one.to_csv(tmp / "oneclass.csv", index=False)
    cases.append(("one class", [str(tmp / "oneclass.csv"), "--target", "y"], "single class"))
    nan = good.astype({"y": float})
    nan.loc[4, "y"] = np.nan
    nan.to_csv(tmp / "nantarget.csv", index=False)
    cases.append(("NaN target", [str(tmp / "nantarget.csv"), "--target", "y"], "missing a value"))
    cases.append(
        (
            "bad setting",
            [str(tmp / "good.csv"), "--target", "y", "--activation", "rleu"],
            "did you mean `relu`",
        )
    )
    return cases


def test_bad_inputs_give_one_line_and_exit_2(tmp_path: Path):
    for label, args, needle in _bad_inputs(tmp_path):
        out = tmp_path / f"out-{label.replace(' ', '-')}"
        res = run_cli("train", *args, "--out", str(out), *FAST)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (label, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:"), (label, res.stderr)
        assert needle.lower() in lines[0].lower(), (label, lines[0])
        assert "Traceback" not in res.stderr
        assert not out.exists(), label  # no run directory left behind
    assert (
        "good.csv"
        in run_cli("train", str(tmp_path / "good.csv"), "--target", "yy", "--quiet").stderr
    )  # the message names the file


def test_target_score_exit_code(mixed_csv: Path, tmp_path: Path):
    res = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        "--out",
        str(tmp_path / "r"),
        "--target-score",
        "1.01",
        "--json",
        *FAST,
    )
    assert res.returncode == 1
    assert json.loads(res.stdout)["target_met"] is False
    res = run_cli(
        "train",
        str(mixed_csv),
        "--target",
        "label",
        "--out",
        str(tmp_path / "s"),
        "--target-score",
        "0.1",
        "--json",
        *FAST,
    )
    assert res.returncode == 0 and json.loads(res.stdout)["target_met"] is True


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, fitwell.cli as c; c.build_parser().format_help(); "
        "print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr


@pytest.mark.parametrize("suffix", ["parquet", "npz"])
def test_parquet_and_npz_inputs(tmp_path: Path, suffix: str):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] > 0).astype(int)
    path = tmp_path / f"data.{suffix}"
    if suffix == "parquet":
        pd.DataFrame(x, columns=list("abcd")).assign(t=y).to_parquet(path)
        target = ["--target", "t"]
    else:
        np.savez(path, X=x, y=y)
        target = []
    res = run_cli("train", str(path), *target, "--out", str(tmp_path / "r"), "--json", *FAST)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["test"]["accuracy"] > 0.7
