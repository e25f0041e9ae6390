"""Model and run files are data only: tampered or hostile files are refused before any use."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from fitwell import api, runs
from fitwell.cli import main
from fitwell.cli.commands import default_out

SRC = Path(__file__).resolve().parents[1] / "src"


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def run_dir(tmp_path: Path, mixed_csv: Path) -> Path:
    out = tmp_path / "run"
    api.train(mixed_csv, target="label", hidden=(4,), max_epochs=2, out=out)
    return out


def _predict(run: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["predict", str(run), str(data)])
    err = capsys.readouterr().err
    return rc, err


def _reseal(run: Path) -> None:
    """Recompute the checksums, as an attacker who edits the files would."""
    runs.seal_run(run)


def _one_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("reseal", [False, True])
def test_pickle_payload_as_model_is_refused_and_never_runs(
    run_dir: Path,
    mixed_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reseal: bool,
) -> None:
    marker = tmp_path / "pwned"
    (run_dir / runs.MODEL_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    if reseal:
        _reseal(run_dir)
    rc, err = _predict(run_dir, mixed_csv, capsys)
    _one_error(rc, err, runs.MODEL_FILE)
    assert not marker.exists()


def test_torch_save_archive_as_model_is_refused(
    run_dir: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    torch.save({"weights.0": torch.zeros(3)}, run_dir / runs.MODEL_FILE)
    _reseal(run_dir)
    rc, err = _predict(run_dir, mixed_csv, capsys)
    _one_error(rc, err, "not a valid safetensors file")


@pytest.mark.parametrize("name", [runs.MODEL_FILE, runs.MODEL_META])
def test_flipped_byte_is_refused(
    run_dir: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = run_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(data))
    rc, err = _predict(run_dir, mixed_csv, capsys)
    assert rc == 2
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    assert name in err


def test_unknown_architecture_name_is_refused(
    run_dir: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((run_dir / runs.MODEL_META).read_text())
    meta["architecture"]["activation"] = "__import__('os').system"
    (run_dir / runs.MODEL_META).write_text(json.dumps(meta))
    _reseal(run_dir)
    rc, err = _predict(run_dir, mixed_csv, capsys)
    _one_error(rc, err, "unknown activation")


def test_foreign_format_is_refused(
    run_dir: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((run_dir / runs.MODEL_META).read_text())
    meta["format"] = "keras"
    (run_dir / runs.MODEL_META).write_text(json.dumps(meta))
    _reseal(run_dir)
    rc, err = _predict(run_dir, mixed_csv, capsys)
    _one_error(rc, err, "not a fitwell model")


def test_untampered_run_still_predicts(
    run_dir: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _predict(run_dir, mixed_csv, capsys)
    assert rc == 0 and err == ""


UNSAFE = re.compile(
    r"\btorch\.load\s*\(|\bimport\s+(c?pickle|dill|joblib|cloudpickle)\b|"
    r"\bfrom\s+(c?pickle|dill|joblib)\b|\bpickle\.loads?\s*\(|\bjoblib\.load\s*\(|"
    r"allow_pickle\s*=\s*True|\bmarshal\.loads?\s*\(|weights_only\s*=\s*False"
)


def test_no_unpickling_anywhere_in_the_source() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if UNSAFE.search(line)
    ]
    assert offenders == []
    assert UNSAFE.search("state = torch.load(path)")  # the pattern itself bites
    assert UNSAFE.search("np.load(p, allow_pickle=True)")


@pytest.mark.parametrize(
    "data",
    [
        "../../../etc/evil.csv",
        "/tmp/../..//x/.. ..csv",
        "a/b/../../c/$(rm -rf).csv",
        "..\\..\\win.csv",
        "...csv",
    ],
)
def test_default_run_name_cannot_escape_runs_folder(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = default_out({"data": data})
    resolved = (tmp_path / out).resolve()
    assert resolved.parent == (tmp_path / "runs").resolve()
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", out.name)
    assert not out.name.startswith(".")


def test_out_that_is_a_symlink_is_refused(
    tmp_path: Path, mixed_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    rc = main(
        [
            "train",
            str(mixed_csv),
            "--target",
            "label",
            "--out",
            str(link),
            "--quiet",
            "--max-epochs",
            "1",
            "--hidden",
            "2",
        ]
    )
    err = capsys.readouterr().err
    _one_error(rc, err, "symbolic link")
    assert list(elsewhere.iterdir()) == []
