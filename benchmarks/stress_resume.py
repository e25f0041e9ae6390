"""Kill `fitwell train` with SIGKILL at random moments, resume, compare with an unkilled run.

Prints how many kills resumed to a bitwise-equal run (weights, history, metrics without the wall
times) and how many epochs had to be redone. Each kill picks a random epoch, waits for that
epoch's checkpoint to appear, then waits a random 0-1.2 epoch-lengths more (measured on the
reference run), so kills land in training steps, evaluation, checkpoint writes and the final file
writes alike, whatever the machine's load does to startup time.

    python benchmarks/stress_resume.py            # 20 kills
    python benchmarks/stress_resume.py --quick    # 3 kills on a smaller run, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING_FIELDS = ("train_seconds", "finished_at", "run_dir")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fitwell.cli", *args]


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    for key in TIMING_FIELDS:
        m.pop(key, None)
    return m


def differing(a: Path, b: Path) -> list[str]:
    """Names of the files (or ``metrics``) that differ between two finished runs."""
    files = ("model.safetensors", "history.csv", "model.json", "config.toml")
    out = [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    if _metrics(a) != _metrics(b):
        out.append("metrics.json")
    return out


def _epochs_on_disk(run: Path) -> tuple[int, bool]:
    """Newest epoch with a checkpoint on disk (complete or being written), and whether a write
    was in flight."""
    folder = run / "checkpoints"
    newest, writing = -1, False
    if folder.is_dir():
        for child in folder.iterdir():
            m = re.match(r"^(?:\.tmp-)?epoch-(\d+)", child.name)
            if m:
                newest = max(newest, int(m.group(1)))
                writing = writing or child.name.startswith(".tmp-")
    return newest, writing


def reference(work: Path, args: list[str]) -> tuple[float, float]:
    """Run once uninterrupted; return (seconds until the run directory exists, total seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        _cli("train", *args, "--out", "reference"),
        cwd=work,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    appeared = None
    while proc.poll() is None:
        if appeared is None and (work / "reference" / "run_state.json").exists():
            appeared = time.monotonic() - start
        time.sleep(0.002)
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed: {proc.stderr.read() if proc.stderr else ''}")
    return (appeared if appeared is not None else 0.0), total


def trial(work: Path, args: list[str], name: str, anchor: int, delay: float) -> dict:
    """Start a run, wait until checkpoint ``anchor`` exists, wait ``delay`` more, SIGKILL it."""
    proc = subprocess.Popen(
        _cli("train", *args, "--out", name),
        cwd=work,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Startup time swings with machine load, so kills are timed from an epoch's checkpoint.
    marker = work / name / "checkpoints" / f"epoch-{anchor:04d}"
    while proc.poll() is None and not marker.exists():
        time.sleep(0.0005)
    seen = time.monotonic()
    while proc.poll() is None and time.monotonic() - seen < delay:
        time.sleep(0.0005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = work / name
    on_disk, writing = _epochs_on_disk(run)
    result = {
        "kill_at": f"epoch {anchor} + {delay:.2f} s",
        "killed": killed,
        "during_checkpoint_write": writing,
    }
    if not (run / "run_state.json").exists():
        result.update(outcome="killed before the run directory existed", equal=False, redone=0)
        return result
    state = json.loads((run / "run_state.json").read_text())
    if state["status"] != "finished":
        res = subprocess.run(
            _cli("resume", name, "--quiet"), cwd=work, env=_env(), capture_output=True, text=True
        )
        if res.returncode != 0:
            result.update(outcome=f"resume failed: {res.stderr.strip()}", equal=False, redone=0)
            return result
        state = json.loads((run / "run_state.json").read_text())
        resumed_from = state["resumes"][-1]["from_epoch"]
        result["resumed_from"] = resumed_from
        result["redone"] = max(0, on_disk - resumed_from)
        result["outcome"] = f"resumed from epoch {resumed_from}"
    else:
        result.update(outcome="finished before the kill", redone=0)
    result["differs"] = differing(work / "reference", run)
    result["equal"] = not result["differs"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 kills on a smaller run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    opts = parser.parse_args()
    trials = 3 if opts.quick else opts.trials
    epochs = "6" if opts.quick else "15"
    args = [
        "--dataset",
        "digits",
        "--hidden",
        "64,64",
        "--max-epochs",
        epochs,
        "--patience",
        "5",
        "--dropout",
        "0.1",
        "--batch-size",
        "32",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    work = Path(tempfile.mkdtemp(prefix="fitwell-stress-"))
    rng = random.Random(opts.seed)
    try:
        t_dir, t_total = reference(work, args)
        ref_epochs = json.loads((work / "reference" / "metrics.json").read_text())["epochs_run"]
        per_epoch = (t_total - t_dir) / max(ref_epochs, 1)
        print(
            f"reference run: directory after {t_dir:.2f} s, finished after {t_total:.2f} s, "
            f"{ref_epochs} epochs (~{per_epoch:.2f} s each incl. startup share)"
        )
        results = []
        for i in range(trials):
            # A random epoch, then a random moment within about one epoch after its checkpoint:
            # training steps, evaluation, checkpoint writes and the final writes all get hit.
            anchor = rng.randrange(0, ref_epochs)
            delay = rng.uniform(0.0, 1.2 * per_epoch)
            r = trial(work, args, f"trial-{i:02d}", anchor, delay)
            results.append(r)
            print(
                f"  kill {i + 1:2d} at {r['kill_at']}: {r['outcome']}, "
                f"bitwise equal {r['equal']}, epochs redone {r['redone']}"
                + (f" (differs: {', '.join(r['differs'])})" if r.get("differs") else "")
                + (" (during a checkpoint write)" if r["during_checkpoint_write"] else ""),
                flush=True,
            )
        resumed = [r for r in results if r["outcome"].startswith("resumed")]
        equal = sum(r["equal"] for r in results)
        redone = [r["redone"] for r in resumed]
        print()
        print(
            f"command: python benchmarks/stress_resume.py --trials {trials}"
            + (" --quick" if opts.quick else "")
            + f" --seed {opts.seed}"
        )
        print(
            f"kills: {trials}; resumed: {len(resumed)}; bitwise equal to the uninterrupted run: "
            f"{equal}/{trials}"
        )
        print(
            f"kills during a checkpoint write: {sum(r['during_checkpoint_write'] for r in results)}"
        )
        if redone:
            print(
                f"epochs redone: max {max(redone)}, total {sum(redone)} over {len(redone)} "
                f"resumes (a partly trained in-flight epoch is always retrained, not counted)"
            )
    finally:
        if opts.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
