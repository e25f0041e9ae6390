"""One live process per run directory: a second `resume`, `train --overwrite` or `report` is
refused while the first trains, and a SIGKILLed run is resumable at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitwell import runs
from fitwell.errors import InputError


def _fitwell(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fitwell.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        **kw,
    )


def _wait_for_checkpoint(run: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError("the training process wrote no checkpoint")


def test_a_run_in_progress_is_refused_and_a_killed_one_resumes(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fitwell.cli",
            "train",
            "--dataset",
            "digits",
            "--hidden",
            "32",
            "--max-epochs",
            "400",
            "--patience",
            "0",
            "--ensemble",
            "1",
            "--out",
            str(run),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_checkpoint(run)
        state = json.loads((run / "run_state.json").read_text())
        assert state["owner"] == {"pid": first.pid, "host": socket.gethostname()}
        for args in (
            ["resume", str(run)],
            ["report", str(run)],
            ["train", "--dataset", "digits", "--out", str(run), "--overwrite"],
        ):
            proc = _fitwell(*args)
            assert proc.returncode == 2, (args, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and f"process {first.pid}" in lines[0], lines
            assert "in progress" in lines[0]
        assert first.poll() is None, "the refused commands must not disturb the training"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    proc = _fitwell("resume", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"


def test_the_lock_is_released_when_a_run_finishes_or_fails(tmp_path):
    import fitwell

    out = tmp_path / "done"
    fitwell.train(dataset="iris", hidden=(8,), max_epochs=3, ensemble=1, out=out)
    runs.check_not_running(out)  # finished: nobody holds it
    lock = runs.RunLock(out)
    with pytest.raises(InputError, match=f"process {os.getpid()}"):
        runs.check_not_running(out)
    lock.release()
    runs.check_not_running(out)
