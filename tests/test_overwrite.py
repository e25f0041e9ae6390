"""`fitwell train --overwrite`: replaces a fitwell run, never a folder holding anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fitwell
from fitwell import runs
from fitwell.errors import InputError
from tests.conftest import run_cli

FAST = ["--dataset", "iris", "--hidden", "8", "--max-epochs", "3", "--ensemble", "1", "--quiet"]


def _old_run(folder: Path) -> Path:
    fitwell.train(dataset="iris", out=folder, hidden=(8,), max_epochs=3, ensemble=1, seed=5)
    return folder


def _seed(folder: Path) -> int:
    return int(json.loads((folder / runs.RUN_STATE_FILE).read_text())["configs"][0]["seed"])


def test_without_overwrite_the_error_names_the_flag(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    result = run_cli("train", *FAST, "--out", str(out))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "already exists and is not empty" in result.stderr and "--overwrite" in result.stderr
    assert _seed(out) == 5


def test_overwrite_replaces_a_run(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    result = run_cli("train", *FAST, "--seed", "7", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert _seed(out) == 7
    fitwell.load_run(out)  # a complete, loadable run
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old run is gone, not hidden


def test_overwrite_into_a_new_folder_just_trains(tmp_path: Path) -> None:
    result = run_cli("train", *FAST, "--out", str(tmp_path / "fresh"), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fresh" / runs.MODEL_FILE).is_file()


def test_overwrite_refuses_a_folder_with_a_user_file(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = sorted(p.name for p in out.iterdir())
    result = run_cli("train", *FAST, "--out", str(out), "--overwrite")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "'notes.txt'" in result.stderr and "not part of a fitwell run" in result.stderr
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in out.iterdir()) == before
    assert _seed(out) == 5


def test_overwrite_keeps_the_old_run_when_the_new_input_is_bad(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    weights = (out / runs.MODEL_FILE).read_bytes()
    result = run_cli("train", *FAST, "--target", "no_such_column", "--out", str(out), "--overwrite")
    assert result.returncode == 2
    assert "no_such_column" in result.stderr
    assert (out / runs.MODEL_FILE).read_bytes() == weights
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing left aside


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (d / "history.csv").write_text("epoch\n1\n"),  # run-like name, no marker
        lambda d: (d / runs.RUN_STATE_FILE).write_text('{"format": "something-else"}'),
        lambda d: (d / "data.csv").write_text("a\n1\n"),
    ],
)
def test_folders_that_are_not_runs_are_refused(tmp_path: Path, make) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    make(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InputError, match="--overwrite replaces only a fitwell run"):
        with runs.replacing_run(folder):
            pytest.fail("the body must not run")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_user_file_among_the_checkpoints_is_refused(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "keep.me").write_text("x")
    with pytest.raises(InputError, match="checkpoints/keep.me"):
        runs.check_replaceable(out)


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link"):
        runs.check_replaceable(link)


def test_an_interrupted_replacement_puts_the_old_run_back(tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        with runs.replacing_run(out):
            assert not out.exists()  # moved aside while the new run is made
            out.mkdir()
            (out / runs.RUN_STATE_FILE).write_text("{}")  # a half-made new run
            raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_the_working_folder_is_not_replaced(tmp_path: Path, monkeypatch) -> None:
    out = _old_run(tmp_path / "run")
    monkeypatch.chdir(out)
    with pytest.raises(InputError, match="working folder"):
        with runs.replacing_run("."):
            pytest.fail("the body must not run")
    assert (out / runs.MODEL_FILE).is_file()


def test_python_train_overwrite(tmp_path: Path) -> None:
    """The same loop in Python: without ``overwrite`` the second run is refused, with it the
    run is replaced; a folder with a user's file is refused either way."""
    out = _old_run(tmp_path / "run")
    with pytest.raises(InputError, match="already exists"):
        fitwell.train(dataset="iris", out=out, hidden=(8,), max_epochs=3, ensemble=1, seed=6)
    assert _seed(out) == 5
    fitwell.train(
        dataset="iris", out=out, hidden=(8,), max_epochs=3, ensemble=1, seed=6, overwrite=True
    )
    assert _seed(out) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        fitwell.train(dataset="iris", out=out, hidden=(8,), max_epochs=3, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
