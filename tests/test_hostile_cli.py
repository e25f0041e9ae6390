"""The CLI used carelessly or with hostile intent: one test per defect class found that way.

Every refusal is exit 2 with exactly one ``error:`` line that names the path (and, for data, the
column and row); nothing here may exit 4 (an internal error) or 0 with a wrong answer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fitwell import runs
from fitwell.cli import main
from fitwell.training import Callback

TINY = ["--max-epochs", "2", "--hidden", "4", "--quiet", "--ensemble", "1"]


def _table(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "colour": rng.choice(["red", "green"], size=n),
            "label": np.where(x1 + x2 > 0, "yes", "no"),
        }
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny finished run (and its data), trained once for the module; tests copy it."""
    root = tmp_path_factory.mktemp("hostile")
    data = _table(root / "data.csv")
    assert main(["train", str(data), "--target", "label", "--out", str(root / "run"), *TINY]) == 0
    return root / "run", data


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


@pytest.fixture
def data(trained: tuple[Path, Path]) -> Path:
    return trained[1]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def refused(result: tuple[int, str, str], *words: str) -> str:
    rc, _, err = result
    assert rc == 2, err
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    for w in words:
        assert w in err, (w, err)
    return err


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e308", "-1e300", "1e16", "inf", "-inf", "nan"])
def test_predict_refuses_values_train_refuses(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    frame = pd.read_csv(data)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[7, "x1"] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    rc, out, err = cli(capsys, "predict", run, path)
    if value == "nan":  # a missing value is imputed, as in training
        assert rc == 0 and "nan" not in out.lower()
        return
    refused((rc, out, err), "bad.csv", "'x1'", "data row 7")
    assert out == "" and "RuntimeWarning" not in err


def test_predict_never_prints_a_nan_probability(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fitwell.api

    real = fitwell.api.Run.encoded_outputs

    def overflowing(self: Any, x: Any) -> np.ndarray:
        outputs = real(self, x)
        outputs[3] = np.nan  # what an overflowing network gives
        return outputs

    monkeypatch.setattr(fitwell.api.Run, "encoded_outputs", overflowing)
    refused(cli(capsys, "predict", run, data), "data row 3", "non-finite")


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target", ["model.json", "model.safetensors", "manifest.json", "new.csv", "../run/x.csv"]
)
def test_predict_never_writes_into_a_run(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    before = snapshot(run)
    refused(cli(capsys, "predict", run, data, "--out", run / target), "run directory")
    assert snapshot(run) == before


def test_predict_never_writes_into_another_run(
    run: Path, trained: tuple[Path, Path], data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = trained[0]
    before = snapshot(other)
    refused(cli(capsys, "predict", run, data, "--out", other / "p.csv"), "run directory")
    assert snapshot(other) == before


# 3 ------------------------------------------------------------------------------------------
class _Interrupt(Callback):
    def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.epoch == 1:
            raise KeyboardInterrupt


def test_empty_hidden_trains_the_promised_linear_model(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "linear"
    rc, _, err = cli(capsys, "train", data, "--target", "label", "--out", out, "--hidden", "",
                     "--max-epochs", "3", "--quiet")  # fmt: skip
    assert rc == 0, err
    meta = json.loads((out / runs.MODEL_META).read_text())
    assert meta["architecture"]["hidden"] == []
    signals = json.loads((out / "signals.json").read_text())
    assert signals["layers"] == ["output"]
    assert all(r["dead_fraction"] == [] for r in signals["records"])
    for command in ("doctor", "report"):
        assert cli(capsys, command, out)[0] == 0
    rc, text, _ = cli(capsys, "predict", out, data)
    assert rc == 0 and len(text.splitlines()) == 61


def test_empty_hidden_resumes(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fitwell import api

    out = tmp_path / "linear"
    with pytest.raises(KeyboardInterrupt):
        api.train(data, target="label", hidden="", max_epochs=4, out=out, callbacks=[_Interrupt()])
    assert (out / runs.RUN_STATE_FILE).exists()
    rc, _, err = cli(capsys, "resume", out, "--quiet")
    assert rc == 0, err
    assert cli(capsys, "predict", out, data)[0] == 0


# 4 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete manifest", "extra file", "delete history", "old"])
def test_a_run_is_trusted_only_whole(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    if damage == "delete manifest":
        (run / runs.MANIFEST_FILE).unlink()
        word = "manifest.json: not found"
    elif damage == "extra file":
        (run / "evil.safetensors").write_bytes(b"x")
        word = "evil.safetensors: not listed"
    elif damage == "delete history":
        (run / runs.HISTORY_FILE).unlink()
        word = "history.csv: listed in manifest.json but missing"
    else:  # the two-file manifest of earlier versions cannot vouch for history.csv
        sums = {n: runs.sha256_file(run / n) for n in (runs.MODEL_FILE, runs.MODEL_META)}
        (run / runs.MANIFEST_FILE).write_text(json.dumps({"format": "fitwell-run", "sha256": sums}))
        word = "does not cover"
    before = snapshot(run)
    for command in (["predict", run, data], ["doctor", run], ["report", run]):
        refused(cli(capsys, *command), word)
    assert snapshot(run) == before


# 5 ------------------------------------------------------------------------------------------
def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = runs.write_atomic

    def write_atomic(path: Path, data: Any) -> None:
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(runs, "write_atomic", write_atomic)


def test_full_disk_mid_run_says_how_to_resume(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    _fail_on(monkeypatch, runs.HISTORY_FILE)
    err = refused(
        cli(capsys, "train", data, "--target", "label", "--out", out, *TINY),
        "history.csv",
        "No space left on device",
        f"fitwell resume {out}",
    )
    assert "internal" not in err
    monkeypatch.undo()
    assert cli(capsys, "resume", out, "--quiet")[0] == 0
    assert cli(capsys, "predict", out, data)[0] == 0


def test_full_disk_before_anything_was_kept_leaves_nothing(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    _fail_on(monkeypatch, runs.RUN_STATE_FILE)
    refused(
        cli(capsys, "train", data, "--target", "label", "--out", out, *TINY),
        "run_state.json",
        "nothing was kept",
    )
    assert not out.exists()


def test_file_size_limit_is_exit_2_in_a_real_process(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))

    def limit() -> None:  # 50 blocks, as `ulimit -f 50`: checkpoints outgrow it
        resource.setrlimit(resource.RLIMIT_FSIZE, (50 * 512, 50 * 512))

    res = subprocess.run(
        [sys.executable, "-m", "fitwell.cli", "train", str(data), "--target", "label",
         "--out", str(out), "--quiet", "--max-epochs", "2", "--hidden", "256,256"],
        capture_output=True, text=True, env=env, preexec_fn=limit, timeout=600,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert re.fullmatch(r"error: [^\n]+\n", res.stderr), res.stderr
    assert "File too large" in res.stderr
    assert f"fitwell resume {out}" in res.stderr or "nothing was kept" in res.stderr


# 6 ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_output_that_cannot_be_made(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(cli(capsys, "train", data, "--target", "label", "--out", "/proc/fw"), "'/proc'")
    refused(cli(capsys, "predict", run, data, "--out", "/proc/p.csv"), "'/proc'")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    refused(cli(capsys, "train", data, "--target", "label", "--out", a_file / "r"))
    refused(cli(capsys, "predict", run, data, "--out", a_file / "p.csv"))


def test_immutable_output_folder(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(locked)]).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("cannot make a folder immutable here, and root ignores permissions")
        locked.chmod(0o500)
    try:
        refused(cli(capsys, "train", data, "--target", "label", "--out", locked / "r"), "locked")
    finally:
        if chattr is not None:
            subprocess.run([chattr, "-i", str(locked)])
        locked.chmod(0o700)


# 7 ------------------------------------------------------------------------------------------
def test_seed_beyond_32_bits(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(cli(capsys, "train", data, "--target", "label", "--seed", 2**32), "seed", "4294967295")
    config = tmp_path / "c.toml"
    config.write_text(f"seed = {2**40}\n")
    refused(cli(capsys, "train", data, "--target", "label", "--config", config), "seed")
    rc, _, err = cli(capsys, "train", data, "--target", "label", "--seed", 2**32 - 1,
                     "--out", tmp_path / "r", *TINY)  # fmt: skip
    assert rc == 0, err


# 8 ------------------------------------------------------------------------------------------
def test_predict_out_an_existing_folder(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(cli(capsys, "predict", run, data, "--out", tmp_path), "is a folder")
    refused(cli(capsys, "predict", run, data, "--out", f"{tmp_path / 'new'}/"), "is a folder")


# 9 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reseal", [False, True])
@pytest.mark.parametrize(
    "text",
    ["epoc,member,train_loss\n1,0,0.5\n", "", "epoch,member\n1,0,7\n", "epoch,member\nx,0\n"],
)
def test_damaged_history(
    run: Path, capsys: pytest.CaptureFixture[str], text: str, reseal: bool
) -> None:
    (run / runs.HISTORY_FILE).write_text(text)
    if reseal:
        runs.seal_run(run)
    for command in ("report", "doctor"):
        refused(cli(capsys, command, run), "history.csv")


def test_truncated_history_is_caught_by_the_manifest(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run / runs.HISTORY_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # still a valid CSV: only the checksum can tell
    refused(cli(capsys, "report", run), "history.csv", "checksum")


# 10 -----------------------------------------------------------------------------------------
def test_huge_model_is_refused_from_its_shape(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "huge"
    err = refused(
        cli(capsys, "train", data, "--target", "label", "--hidden", "1000000000", "--out", out),
        "GiB",
        "free GPU memory" if torch.cuda.is_available() else "available memory",
    )
    assert re.search(r"needs about [\d,.]+ GiB but only [\d,.]+ [GM]iB", err), err
    assert not out.exists()


def test_memory_estimate_against_what_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from fitwell import resources
    from fitwell.errors import InputError
    from fitwell.models import Architecture, check_model_memory, model_bytes

    arch = Architecture(n_inputs=10, hidden=(100,), n_outputs=2)
    assert model_bytes(arch, 1) == 4 * (10 * 100 + 100 + 100 * 2 + 2)
    monkeypatch.setattr(resources, "available_memory", lambda d: (4000, "available memory"))
    with pytest.raises(InputError, match=r"needs about .* but only 0\.0 MiB"):
        check_model_memory(arch, 1, torch.device("cpu"))
    monkeypatch.setattr(resources, "available_memory", lambda d: (10**9, "available memory"))
    check_model_memory(arch, 3, torch.device("cpu"), training=True, batch_size=64)


def test_tampered_architecture_is_checked_against_the_weights_before_allocating(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open

    with safe_open(str(run / runs.MODEL_FILE), framework="pt") as f:
        shape = list(f.get_slice("weights.0").get_shape())
    meta = json.loads((run / runs.MODEL_META).read_text())
    meta["architecture"]["hidden"] = [1_000_000_000]
    (run / runs.MODEL_META).write_text(json.dumps(meta))
    runs.seal_run(run)
    refused(cli(capsys, "predict", run, data), "'weights.0'", str(shape), "1000000000")


def test_tampered_weights_name_the_tensor_and_both_shapes(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load, save

    state = load((run / runs.MODEL_FILE).read_bytes())
    state["biases.1"] = state["biases.1"][:, :, :1].contiguous()
    (run / runs.MODEL_FILE).write_bytes(save(state))
    runs.seal_run(run)
    err = refused(cli(capsys, "predict", run, data), "'biases.1'", "[1, 1, 1]", "[1, 1, 2]")
    assert err.rstrip().endswith("run.")  # the whole sentence, not cut at the first line


# smaller ------------------------------------------------------------------------------------
def test_one_class_error_names_the_label_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.csv"
    pd.DataFrame({"a": np.arange(20.0), "y": [1] * 20}).to_csv(path, index=False)
    err = refused(cli(capsys, "train", path, "--target", "y"), "single class 1;")
    assert "np." not in err


@pytest.mark.parametrize("hidden", ["64,,64", "64,", ",64"])
def test_empty_list_items_are_refused(
    data: Path, capsys: pytest.CaptureFixture[str], hidden: str
) -> None:
    refused(cli(capsys, "train", data, "--target", "label", "--hidden", hidden), "empty item")


@pytest.mark.parametrize("value", ["1e3", "64.0", "true", "'64x'"])
def test_integer_settings_in_toml(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"batch_size = {value}\n")
    refused(cli(capsys, "train", data, "--target", "label", "--config", config),
            "`batch_size` must be an integer")  # fmt: skip


@pytest.mark.parametrize("flag", ["--out", "--tensorboard"])
def test_empty_out_is_not_the_default(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    refused(cli(capsys, "train", data, "--target", "label", flag, ""), f"{flag} is empty")
    if flag == "--out":
        refused(cli(capsys, "predict", run, data, "--out", " "), "--out is empty")


def test_huge_cell_names_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _table(tmp_path / "cell.csv")
    frame = pd.read_csv(path)
    frame.loc[4, "colour"] = "x" * 10_000_000
    frame.to_csv(path, index=False)
    refused(cli(capsys, "train", path, "--target", "label"), "row 6", "'colour'", "10,000,000")
    parquet = tmp_path / "cell.parquet"
    frame.to_parquet(parquet)
    refused(cli(capsys, "train", parquet, "--target", "label"), "data row 4", "'colour'")


def test_restarts_and_threads_are_bounded(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(cli(capsys, "train", data, "--target", "label", "--restarts", 10000), "restarts")
    cores = os.cpu_count() or 1
    refused(
        cli(capsys, "train", data, "--target", "label", "--threads", cores + 1),
        f"{cores} CPU core(s)",
    )


def test_tensorboard_inside_the_run_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    refused(
        cli(capsys, "train", data, "--target", "label", "--out", out, "--tensorboard", out / "tb"),
        "--tensorboard",
    )
    assert not out.exists()


def test_report_on_a_resealed_truncated_model(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by the property test: the report's feature chart read the weights unguarded.
    path = run / runs.MODEL_FILE
    path.write_bytes(path.read_bytes()[:5])
    runs.seal_run(run)
    refused(cli(capsys, "report", run), "model.safetensors", "not a valid safetensors file")
