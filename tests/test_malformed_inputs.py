"""Every malformed input in the corpus: exit code 2, one ``error:`` line naming the file, no
traceback, and the output directory untouched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fitwell.cli import main
from tests.conftest import run_cli
from tests.malformed_corpus import Case, materialize, predict_cases, train_cases

TRAIN = train_cases()
PREDICT = predict_cases()


def test_corpus_is_large_enough() -> None:
    assert len(TRAIN) + len(PREDICT) >= 40
    assert len({c.filename for c in TRAIN + PREDICT}) == len(TRAIN) + len(PREDICT)


def _check(case: Case, rc: int, stderr: str, path: Path) -> None:
    lines = stderr.splitlines()
    assert rc == 2, (case.name, rc, stderr)
    assert len(lines) == 1, (case.name, stderr)
    line = lines[0]
    assert line.startswith("error: "), (case.name, line)
    assert "Traceback" not in stderr and "internal error" not in line, (case.name, line)
    assert case.filename in line, (case.name, line)
    for word in case.expect:
        assert word.lower() in line.lower(), (case.name, word, line)


def _args(case: Case, path: Path, run: Path | None = None) -> list[str]:
    return [a.format(f=path, run=run) for a in case.args]


@pytest.mark.parametrize("case", TRAIN, ids=[c.name for c in TRAIN])
def test_train_refuses_malformed_input(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = materialize(case, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            *_args(case, path),
            "--out",
            str(out),
            "--max-epochs",
            "2",
            "--hidden",
            "4",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    _check(case, rc, captured.err, path)
    assert captured.out == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    data = folder / "train.csv"
    data.write_text(
        "a,b,label\n"
        + "".join(f"{i * 0.5},{(i * 7) % 5},{'yes' if i % 2 else 'no'}\n" for i in range(40))
    )
    run = folder / "run"
    assert (
        main(
            [
                "train",
                str(data),
                "--target",
                "label",
                "--out",
                str(run),
                "--max-epochs",
                "2",
                "--hidden",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    return run


@pytest.mark.parametrize("case", PREDICT, ids=[c.name for c in PREDICT])
def test_predict_refuses_malformed_input(
    case: Case, tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = materialize(case, tmp_path)
    capsys.readouterr()
    out = tmp_path / "pred.csv"
    rc = main(["predict", *_args(case, path, trained_run), "--out", str(out)])
    captured = capsys.readouterr()
    _check(case, rc, captured.err, path)
    assert not out.exists()


def test_predict_accepts_reordered_columns(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Columns are matched by name, so a reordered file predicts exactly the same."""
    rows = [(i * 0.25, i % 5) for i in range(12)]
    (tmp_path / "ab.csv").write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in rows))
    (tmp_path / "ba.csv").write_text("b,a\n" + "".join(f"{b},{a}\n" for a, b in rows))
    capsys.readouterr()
    assert main(["predict", str(trained_run), str(tmp_path / "ab.csv")]) == 0
    first = capsys.readouterr().out
    assert main(["predict", str(trained_run), str(tmp_path / "ba.csv")]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("name", ["ragged row, extra field", "corrupt Parquet", "3-D .npz"])
def test_subprocess_shows_no_traceback(name: str, tmp_path: Path) -> None:
    """The same contract through a real process: one stderr line, exit code 2."""
    case = next(c for c in TRAIN if c.name == name)
    path = materialize(case, tmp_path)
    out = tmp_path / "out"
    proc = run_cli("train", *_args(case, path), "--out", str(out), "--quiet")
    _check(case, proc.returncode, proc.stderr, path)
    assert re.fullmatch(r"error: [^\n]+\n", proc.stderr)
    assert not out.exists()
