"""Property test: generated hostile inputs thrown at ``train``, ``predict``, ``report``, ``doctor``
and ``resume``, in-process through ``fitwell.cli.main``.

Whatever the input: the exit code is 0, 1, 2 or 3 (never 4, an internal error); exit 2 prints
exactly one ``error:`` line; nothing prints a traceback or a raw warning; no output holds a NaN;
and ``predict`` and ``doctor`` leave the run directory byte for byte as it was.

One tiny run is trained once for the module; each example copies it when it damages it.
``FITWELL_HYPOTHESIS_EXAMPLES`` sets the examples per property (default 25, for CI; the nightly
run uses more). ``FITWELL_HYPOTHESIS_REPORT=path.json`` writes the exit codes seen.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitwell import runs
from fitwell.cli import main

EXAMPLES = int(os.environ.get("FITWELL_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FITWELL_HYPOTHESIS_EXAMPLES") is None,  # CI: reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEEN: collections.Counter[tuple[str, int]] = collections.Counter()
COLUMNS = ["x1", "x2", "colour", "label"]


@pytest.fixture(scope="module", autouse=True)
def _report_exit_codes() -> Iterator[None]:
    yield
    target = os.environ.get("FITWELL_HYPOTHESIS_REPORT")
    if target:
        counts = [{"command": c, "exit": e, "cases": n} for (c, e), n in sorted(SEEN.items())]
        Path(target).write_text(json.dumps(counts, indent=1) + "\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(1)
    n = 60
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "colour": rng.choice(["red", "green"], size=n),
            "label": np.where(x1 - x2 > 0, "yes", "no"),
        }
    )
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    args = ["train", str(data), "--target", "label", "--out", str(root / "run")]
    assert main([*args, "--max-epochs", "2", "--hidden", "3", "--ensemble", "1", "--quiet"]) == 0
    return root / "run", data


def snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).digest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


NAN = re.compile(r"(?<![A-Za-z])(nan|NaN|inf)(?![A-Za-z])")


def run_main(command: str, args: list[str], cwd: Path) -> tuple[int, str, str]:
    """``fitwell COMMAND ARGS`` in-process; checks the properties every command shares."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([command, *args])
            except SystemExit as exc:  # argparse usage errors
                rc = int(exc.code or 0)
    finally:
        os.chdir(old)
    stdout, stderr = out.getvalue(), err.getvalue()
    SEEN[(command, rc)] += 1
    assert rc in (0, 1, 2, 3), (command, args, rc, stderr)
    assert "Traceback" not in stderr and "Warning:" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if rc == 2:
        assert len(errors) == 1 and stderr.endswith("\n"), stderr
        assert stderr.splitlines()[-1].startswith("error:"), stderr
    if rc == 0:
        assert errors == [], stderr
        if command in ("predict", "doctor"):
            assert not NAN.search(stdout), stdout[:2000]
    return rc, stdout, stderr


# ------------------------------------------------------------------------------ hostile CSVs
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e308", "-1e308", "1e15", "1e16", "-1e300", "3.4e38", "1e-320", "0x10"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["inf", "-inf", "NaN", "nan", "Infinity", "", " ", "true", "False"]),
)
TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["red", "green", "blue", '"quoted, comma"', "a\nb", "\x00", "é", "🙂"]),
    st.integers(min_value=131_000, max_value=140_000).map(lambda n: "z" * n),
)
CELL = st.one_of(NUMBERS, TEXT)


@st.composite
def hostile_csv(draw: st.DrawFn) -> bytes:
    header = draw(
        st.one_of(
            st.just(COLUMNS),
            st.permutations(COLUMNS).map(list),
            st.lists(st.sampled_from([*COLUMNS, "extra", "", "x1 "]), min_size=0, max_size=6),
        )
    )
    n_rows = draw(st.integers(min_value=0, max_value=6))
    rows = []
    for _ in range(n_rows):
        width = draw(st.sampled_from([len(header), len(header), max(len(header) - 1, 0), 7]))
        rows.append([draw(CELL) for _ in range(width)])
    lines = [",".join(header)] + [",".join(r) for r in rows]
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1"]))
    return text.encode(encoding, errors="replace")


def valid_row_csv(draw: st.DrawFn) -> bytes:
    """Right columns, one hostile cell: what reaches the model's own checks."""
    rows = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        rows.append(["0.5", "-1.0", "red", "yes"])
    r, c = draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from([0, 1, 2]))
    rows[r][c] = draw(CELL).replace(",", " ").replace("\n", " ")
    return ("\n".join([",".join(COLUMNS)] + [",".join(x) for x in rows]) + "\n").encode()


@given(data=st.data())
@SETTINGS
def test_predict_on_hostile_files(base: tuple[Path, Path], data: st.DataObject) -> None:
    run, _ = base
    payload = data.draw(st.one_of(hostile_csv(), st.composite(valid_row_csv)()))
    suffix = data.draw(st.sampled_from([".csv", ".csv", ".tsv", ".parquet", ".npz", ""]))
    before = snapshot(run)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(payload)
        out_choice = data.draw(
            st.sampled_from(["none", "file", "run-file", "run-new", "folder", "empty", "proc"])
        )
        out = {
            "none": None,
            "file": str(Path(tmp) / "p.csv"),
            "run-file": str(run / runs.MODEL_META),
            "run-new": str(run / "p.csv"),
            "folder": tmp,
            "empty": "",
            "proc": "/proc/p.csv",
        }[out_choice]
        args = [str(run), str(path)] + ([] if out is None else ["--out", out])
        rc, stdout, _ = run_main("predict", args, Path(tmp))
        if rc == 0 and out_choice == "file":
            text = Path(out or "").read_text()
            assert not NAN.search(text), text[:2000]
            frame = pd.read_csv(io.StringIO(text))
            probs = frame.filter(like="proba_").to_numpy(dtype=float)
            assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        if out_choice in ("run-file", "run-new", "folder", "empty"):
            assert rc == 2
    assert snapshot(run) == before


# ------------------------------------------------------------------------------ damaged runs
DAMAGES = [
    "delete",
    "truncate",
    "flip",
    "append",
    "empty",
    "junk-json",
    "extra-file",
    "subfolder",
    "history-header",
    "unfinished",
]


def damage(run: Path, kind: str, name: str, reseal: bool, rnd: random.Random) -> None:
    path = run / name
    if kind == "delete" and path.exists():
        path.unlink()
    elif kind == "truncate" and path.exists():
        data = path.read_bytes()
        path.write_bytes(data[: rnd.randrange(len(data) + 1)])
    elif kind == "flip" and path.exists() and path.stat().st_size:
        data = bytearray(path.read_bytes())
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(data))
    elif kind == "append":
        with path.open("ab") as fh:
            fh.write(b"\n,,,\x00junk")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "junk-json":
        path.write_text(
            rnd.choice(["[]", "{}", "null", '{"format": 1}', '{"records": 3}', "1e999", '"x"'])
        )
    elif kind == "extra-file":
        (run / rnd.choice(["x.pt", ".hidden", "model.pkl"])).write_bytes(b"\x80\x04")
    elif kind == "subfolder":
        (run / "checkpoints").mkdir(exist_ok=True)
    elif kind == "history-header":
        text = (run / runs.HISTORY_FILE).read_text()
        head, _, rest = text.partition("\n")
        cols = head.split(",")
        cols[rnd.randrange(len(cols))] = rnd.choice(["", "epoc", "member", "x"])
        (run / runs.HISTORY_FILE).write_text(",".join(cols) + "\n" + rest)
    elif kind == "unfinished":
        state = json.loads((run / runs.RUN_STATE_FILE).read_text())
        state["status"] = rnd.choice(["running", None, 3])
        (run / runs.RUN_STATE_FILE).write_text(json.dumps(state))
    if reseal and (run / runs.MANIFEST_FILE).exists():
        runs.seal_run(run)  # an attacker who recomputes the checksums


RUN_FILES = [
    runs.MODEL_FILE,
    runs.MODEL_META,
    runs.MANIFEST_FILE,
    runs.METRICS_FILE,
    runs.HISTORY_FILE,
    runs.CONFIG_FILE,
    runs.RUN_STATE_FILE,
    "signals.json",
    "report.html",
    "curves.png",
]


@given(
    kind=st.sampled_from(DAMAGES),
    name=st.sampled_from(RUN_FILES),
    reseal=st.booleans(),
    command=st.sampled_from(["predict", "doctor", "report", "resume"]),
    seed=st.integers(0, 2**16),
)
@SETTINGS
def test_damaged_run_directories(
    base: tuple[Path, Path], kind: str, name: str, reseal: bool, command: str, seed: int
) -> None:
    src, data = base
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(src, run)
        damage(run, kind, name, reseal, random.Random(seed))
        before = snapshot(run)
        args = {
            "predict": [str(run), str(data)],
            "doctor": [str(run), "--json"],
            "report": [str(run)],
            "resume": [str(run), "--quiet"],
        }[command]
        rc, stdout, _ = run_main(command, args, Path(tmp))
        if command in ("predict", "doctor"):
            assert snapshot(run) == before
        if command == "resume" and kind != "unfinished":
            assert rc == 2  # a finished run has nothing to resume
        sealed = name not in runs.UNSEALED_FILES
        detectable = kind in ("extra-file", "subfolder") or (
            sealed and kind in ("flip", "append", "empty", "delete")
        )
        if detectable and not reseal and command != "resume":
            assert rc == 2  # the manifest notices every such change
        if command == "doctor" and rc == 0:
            json.loads(stdout)  # strict JSON: NaN would not parse as such a document


# ------------------------------------------------------------------------------ configs, flags
FLAG_VALUES: dict[str, st.SearchStrategy[str]] = {
    "--hidden": st.sampled_from(
        ["", "3", "3,,3", ",", "0", "-1", "auto", "1e3", "2.5", "9" * 12, "1000000000", "3, 3", "x"]
    ),  # fmt: skip
    "--seed": st.sampled_from(["0", "-1", str(2**32 - 1), str(2**32), str(2**64), "1.5"]),
    "--batch-size": st.sampled_from(["0", "1", "7", "-3", str(2**40), "1e3"]),
    "--lr": st.sampled_from(["0", "-1", "nan", "inf", "1e-3", "1e300", "x"]),
    "--restarts": st.sampled_from(["0", "1", "2", "10000", "-5"]),
    "--ensemble": st.sampled_from(["0", "1", "2", "5000"]),
    "--threads": st.sampled_from(["0", "1", "9999", "-1"]),
    "--split": st.sampled_from(["0.7,0.15,0.15", "1,0,0", "0.5,0.5", ",,", "nan,0.5,0.5"]),
    "--dropout": st.sampled_from(["0", "0.5", "1", "-0.1", "0.1,0.2", "nan"]),
    "--activation": st.sampled_from(["relu", "tanh", "rellu", ""]),
    "--target": st.sampled_from(["label", "x1", "nope", ""]),
    "--task": st.sampled_from(["auto", "regression", "classification", "x"]),
    "--patience": st.sampled_from(["0", "1", "-1"]),
    "--init-scale": st.sampled_from(["1", "0", "1e30", "nan"]),
    "--out": st.sampled_from(["r", "", "/proc/r", "data.csv", ".", "r/"]),
}
TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(-3, 5), max_size=3),
)
TOML_KEYS = ["seed", "batch_size", "hidden", "restarts", "max_epochs", "lr", "dropout", "split",
             "threads", "checkpoint_every", "ensemble", "hidden_size"]  # fmt: skip


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


@given(
    flags=st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(""), max_size=4).flatmap(
        lambda d: st.fixed_dictionaries({k: FLAG_VALUES[k] for k in d})
    ),
    toml=st.one_of(st.none(), st.dictionaries(st.sampled_from(TOML_KEYS), TOML_VALUES, max_size=3)),
)
@SETTINGS
def test_train_with_hostile_flags_and_configs(
    base: tuple[Path, Path], flags: dict[str, str], toml: dict[str, Any] | None
) -> None:
    _, data = base
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(data, Path(tmp) / "data.csv")
        args = ["data.csv", "--max-epochs", "1", "--quiet", "--ensemble", "1", "--hidden", "3"]
        args += ["--target", "label"] if "--target" not in flags else []
        args += ["--out", "r"] if "--out" not in flags else []
        for flag, value in flags.items():
            args += [f"{flag}={value}"]  # '=' keeps values such as '-1' from reading as flags
        if toml is not None:
            lines = [f"{k} = {toml_value(v)}" for k, v in toml.items()]
            (Path(tmp) / "c.toml").write_text("\n".join(lines) + "\n")
            args += ["--config", "c.toml"]
        rc, _, stderr = run_main("train", args, Path(tmp))
        out = flags.get("--out", "r")
        if rc == 2 and out == "r":
            assert not (Path(tmp) / "r").exists(), stderr  # a refused run leaves nothing behind
        if rc == 0 and out in ("r", "r/"):
            runs.verify_run(Path(tmp) / "r")  # a run that says it finished is whole
