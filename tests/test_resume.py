"""Resume: checkpoints are atomic and verified, and a resumed run equals the uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fitwell import api, runs
from fitwell.checkpoints import (
    CHECKPOINT_DIR,
    CheckpointWarning,
    join_tensors,
    list_checkpoints,
    split_tensors,
)
from fitwell.cli import main
from fitwell.errors import InputError
from fitwell.resume import resume
from fitwell.training import Callback
from tests.conftest import run_cli as _run_cli

SETTINGS: dict[str, Any] = dict(hidden=(8, 8), max_epochs=6, patience=3, seed=3, batch_size=32)


class Interrupt(Callback):
    """Simulates Ctrl-C after a given epoch (in-process stand-in for a kill)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.epoch == self.at:
            raise KeyboardInterrupt


def _comparable_metrics(run: Path) -> dict[str, Any]:
    m = json.loads((run / runs.METRICS_FILE).read_text())
    for key in ("train_seconds", "finished_at", "run_dir"):
        m.pop(key, None)
    return m


def assert_same_run(a: Path, b: Path) -> None:
    for name in (runs.MODEL_FILE, runs.HISTORY_FILE, runs.MODEL_META, runs.CONFIG_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _comparable_metrics(a) == _comparable_metrics(b)


def _interrupted(out: Path, at: int, **settings: Any) -> None:
    with pytest.raises(KeyboardInterrupt):
        api.train(out=out, callbacks=[Interrupt(at)], **settings)
    state = json.loads((out / runs.RUN_STATE_FILE).read_text())
    assert state["status"] == "running"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "restarts": 3,
            "dropout": 0.3,
            "lr": 0.01,
        },  # a population; members stop at different epochs
        {"batch_norm": True, "optimizer": "sgd", "l1": 1e-3, "l2": 1e-3},
    ],
    ids=["single", "population-dropout", "batchnorm-sgd-l1-l2"],
)
def test_resume_is_bitwise_equal(tmp_path: Path, mixed_csv: Path, extra: dict[str, Any]) -> None:
    settings = {"data": mixed_csv, "target": "label", **SETTINGS, **extra}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 4, **settings)
    # Checkpoints are written at epoch starts: epoch 4 was in flight, 3 and 2 are the newest two.
    assert [e for e, _ in list_checkpoints(tmp_path / "b")] == [3, 2]
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")
    state = json.loads((tmp_path / "b" / runs.RUN_STATE_FILE).read_text())
    assert state["status"] == "finished" and state["resumes"][0]["from_epoch"] == 3
    assert not (tmp_path / "b" / CHECKPOINT_DIR).exists()


def test_trainer_state_round_trips_through_json_and_safetensors() -> None:
    state = {"a": torch.arange(3.0), "b": [1, {"c": torch.ones(2, 2)}, float("nan")], "d": "x"}
    data, tensors = split_tensors(state)
    text = json.dumps(data, allow_nan=False)
    back = join_tensors(json.loads(text), tensors)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][1]["c"], torch.ones(2, 2))
    assert back["b"][0] == 1 and back["b"][2] != back["b"][2] and back["d"] == "x"


def test_callback_state_with_numpy_values_and_int_keys_is_checkpointable() -> None:
    import numpy as np

    data, tensors = split_tensors({"cb": {3: np.float32(1.5), "arr": np.arange(4)}})
    back = join_tensors(json.loads(json.dumps(data)), tensors)
    assert back["cb"]["3"] == 1.5 and back["cb"]["arr"].tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="cb/x"):
        split_tensors({"cb": {"x": object()}})


def _corrupt(folder: Path, how: str) -> None:
    target = folder / "tensors.safetensors"
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        target.write_bytes(data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:])
    else:
        (folder / "manifest.json").unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "no-manifest"])
def test_corrupt_newest_checkpoint_falls_back_with_one_warning(
    tmp_path: Path, mixed_csv: Path, how: str
) -> None:
    settings = {"data": mixed_csv, "target": "label", **SETTINGS}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 4, **settings)
    _corrupt(tmp_path / "b" / CHECKPOINT_DIR / "epoch-0003", how)
    with pytest.warns(
        CheckpointWarning, match="epoch-0003 is unusable.*falling back to epoch-0002"
    ):
        resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")
    state = json.loads((tmp_path / "b" / runs.RUN_STATE_FILE).read_text())
    assert state["resumes"][0]["from_epoch"] == 2


def test_no_usable_checkpoint_exits_2(
    tmp_path: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _interrupted(tmp_path / "b", 4, data=mixed_csv, target="label", **SETTINGS)
    for _, folder in list_checkpoints(tmp_path / "b"):
        _corrupt(folder, "truncate")
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1
    assert "no usable checkpoint" in err[-1]
    assert sum(line.startswith("warning:") for line in err) == 1  # 0003 -> 0002, then none


@pytest.mark.parametrize(
    "change, field",
    [({"lr": 0.5}, "`lr`"), ({"max_epochs": 9}, "`max_epochs`"), ({"hidden": "4"}, "`hidden`")],
)
def test_resume_with_changed_settings_is_refused(
    tmp_path: Path, mixed_csv: Path, change: dict[str, Any], field: str
) -> None:
    _interrupted(tmp_path / "b", 2, data=mixed_csv, target="label", **SETTINGS)
    before = sorted(p.name for p in (tmp_path / "b").rglob("*"))
    with pytest.raises(InputError, match=field):
        resume(tmp_path / "b", **change)
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == before


def test_resume_with_changed_data_is_refused(tmp_path: Path, mixed_csv: Path) -> None:
    _interrupted(tmp_path / "b", 2, data=mixed_csv, target="label", **SETTINGS)
    lines = mixed_csv.read_text().splitlines()
    lines[5] = lines[5].replace("yes", "no") if "yes" in lines[5] else lines[5].replace("no", "yes")
    mixed_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="changed data: field `data`"):
        resume(tmp_path / "b")


def test_moved_data_file_with_same_content_resumes(tmp_path: Path, mixed_csv: Path) -> None:
    settings = {"data": mixed_csv, "target": "label", **SETTINGS}
    api.train(out=tmp_path / "a", **settings)
    _interrupted(tmp_path / "b", 3, **settings)
    moved = tmp_path / "moved.csv"
    mixed_csv.rename(moved)
    resume(tmp_path / "b", data=moved)
    assert (tmp_path / "a" / runs.MODEL_FILE).read_bytes() == (
        tmp_path / "b" / runs.MODEL_FILE
    ).read_bytes()


def test_unfinished_run_cannot_be_loaded_and_finished_cannot_be_resumed(
    tmp_path: Path, mixed_csv: Path
) -> None:
    _interrupted(tmp_path / "b", 2, data=mixed_csv, target="label", **SETTINGS)
    with pytest.raises(InputError, match="fitwell resume"):
        api.load_run(tmp_path / "b")
    resume(tmp_path / "b")
    api.load_run(tmp_path / "b")
    with pytest.raises(InputError, match="already finished"):
        resume(tmp_path / "b")


def test_stale_temporaries_are_cleaned(tmp_path: Path, mixed_csv: Path) -> None:
    settings = {"data": mixed_csv, "target": "label", **SETTINGS}
    _interrupted(tmp_path / "b", 3, **settings)
    stale = tmp_path / "b" / CHECKPOINT_DIR / ".tmp-epoch-0004-abc"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"half")
    (tmp_path / "b" / ".metrics.json.x1.tmp").write_text("{")
    resume(tmp_path / "b")
    assert not stale.exists()
    assert not (tmp_path / "b" / ".metrics.json.x1.tmp").exists()


def test_bad_input_still_leaves_no_directory(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,x\n")
    with pytest.raises(InputError):
        api.train(bad, target="label", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- real SIGKILLs
def _spawn(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "fitwell.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finish(args: list[str], cwd: Path) -> None:
    proc = _run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


_TMP_CHECKPOINT = re.compile(r"^\.tmp-epoch-(\d{4,})-")
KILL_ARGS = [
    "--hidden",
    "32,32",
    "--max-epochs",
    "12",
    "--patience",
    "0",
    "--batch-size",
    "16",
    "--dropout",
    "0.1",
    "--seed",
    "5",
    "--quiet",
]


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One uninterrupted reference run that every kill trial is compared with."""
    import numpy as np
    import pandas as pd

    folder = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    frame["label"] = np.where(x[:, 0] + x[:, 1] * x[:, 2] > 0, "a", "b")
    frame.to_csv(folder / "data.csv", index=False)
    args = ["data.csv", "--target", "label", *KILL_ARGS]
    _finish(["train", *args, "--out", "reference"], folder)
    return folder, args


@pytest.mark.parametrize("moment", ["after-epoch-3", "while-writing"])
def test_sigkill_then_resume_is_bitwise_equal(
    kill_setup: tuple[Path, list[str]], moment: str
) -> None:
    folder, args = kill_setup
    # A checkpoint temporary lives for milliseconds: on a busy machine the poll can miss it, so
    # any epoch's write from the second on counts (ten chances a run), and a trial that missed
    # every one is run again (fresh directory), at most five times.
    for attempt in range(5):
        name = f"{moment}-{attempt}"
        out = folder / name
        proc = _spawn(["train", *args, "--out", name], folder)
        ckpt = out / CHECKPOINT_DIR

        def ready(ckpt: Path = ckpt) -> bool:
            if moment == "after-epoch-3":
                return (ckpt / "epoch-0003").is_dir()
            # A moment a checkpoint temporary exists: a kill in the middle of a write, with at
            # least one complete checkpoint before it.
            return ckpt.is_dir() and any(
                (m := _TMP_CHECKPOINT.match(p.name)) is not None and int(m.group(1)) >= 2
                for p in ckpt.iterdir()
            )

        reached = _wait_for(ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if reached:
            break
    assert reached, f"the run ended before the kill moment {moment}, five times"
    _finish(["resume", name, "--quiet"], folder)
    assert_same_run(folder / "reference", out)
    state = json.loads((out / runs.RUN_STATE_FILE).read_text())
    assert state["resumes"][0]["from_epoch"] >= (3 if moment == "after-epoch-3" else 1)


@pytest.mark.parametrize("call", [2, 4, 6, 8, 9])
def test_kill_during_final_writes_resumes_bitwise_equal(
    tmp_path: Path, mixed_csv: Path, monkeypatch: pytest.MonkeyPatch, call: int
) -> None:
    """Interrupt the n-th atomic write (1: run state; 2-8: final files; 9: the finished marker)."""
    settings = {"data": mixed_csv, "target": "label", **SETTINGS}
    api.train(out=tmp_path / "a", **settings)
    real = runs.write_atomic
    calls = {"n": 0}

    def flaky(path: Path, data: bytes | str) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(runs, "write_atomic", flaky)
    with pytest.raises(KeyboardInterrupt):
        api.train(out=tmp_path / "b", **settings)
    monkeypatch.setattr(runs, "write_atomic", real)
    with pytest.raises(InputError):
        api.load_run(tmp_path / "b")  # not finished: never loadable half-written
    resume(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")
