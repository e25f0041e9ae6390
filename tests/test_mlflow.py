"""--mlflow: a fitwell run read back from an MLflow tracking store equals the run directory."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

import fitwell
from fitwell import tracking
from fitwell.cli import main
from fitwell.errors import InputError
from fitwell.runs import read_history, verify_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

mlflow = pytest.importorskip("mlflow", reason="optional extra: pip install 'fitwell[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

TINY = ["--hidden", "8", "--max-epochs", "4", "--batch-size", "32", "--quiet"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # MLflow's defaults (./mlruns, ./mlartifacts) must never land in the checkout.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes a second); tests use their own
    experiment names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def only_run(client: MlflowClient, experiment: str, *, deleted: bool = False) -> Any:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    found = client.search_runs([exp.experiment_id], run_view_type=view)
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]  # auto's trials
    assert len(found) == 1, found
    return found[0]


def param_text(value: Any) -> str:
    """The documented form of a config value as a parameter: strings as-is, the rest JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def test_train_run_reads_back_equal_to_the_run_directory(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "first"
    rc, stdout, err = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--restarts", "2", "--ensemble", "2",
        "--seed", "2", "--out", out, "--mlflow", store, "--json",
    )  # fmt: skip
    assert rc == 0, err
    summary = json.loads(stdout)
    client = MlflowClient(tracking_uri=store)
    got = only_run(client, "iris")  # default experiment: the dataset's name
    run_id = got.info.run_id
    assert summary["mlflow"] == {"tracking_uri": store, "experiment": "iris", "run_id": run_id}
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "first"
    assert got.data.tags["fitwell.command"] == "train"
    assert got.data.tags["fitwell.run_dir"] == str(out.resolve())

    config = tomllib.loads((out / "config.toml").read_text())
    assert got.data.params == {k: param_text(v) for k, v in config.items()}

    metrics = json.loads((out / "metrics.json").read_text())
    history = read_history(out / "history.csv")
    chosen = metrics["restarts"]["best"]
    assert len({row["member"] for row in history}) == 2
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
        logged = sorted((p.step, p.value) for p in client.get_metric_history(run_id, key))
        # one point per epoch, step = epoch: the chosen member's curve, not the other's
        assert logged == [(r["epoch"], r[key]) for r in history if r["member"] == chosen]
        other = [(r["epoch"], r[key]) for r in history if r["member"] != chosen]
        assert key == "lr" or logged != other
    assert not any(k.startswith("member") for k in got.data.metrics)  # in history.csv only

    final = got.data.metrics
    assert final["final_val_loss"] == metrics["val"]["loss"]
    assert final["final_train_accuracy"] == metrics["train"]["accuracy"]
    assert final["ensemble_val_loss"] == metrics["ensemble"]["val"]["loss"]
    for name, value in metrics["test"].items():
        if value is not None:
            assert final[f"test_{name}"] == value
    assert final["best_epoch"] == metrics["best_epoch"]

    codes = [f["code"] for f in metrics["findings"]]
    assert codes, "the tiny network should draw at least one finding"
    assert set(got.data.tags["fitwell.findings"].split(",")) == set(codes)
    for f in metrics["findings"]:
        assert got.data.tags[f"fitwell.finding.{f['code']}"] in ("info", "warning", "error")
    logged_findings = json.loads(
        Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="findings.json", tracking_uri=store,
            dst_path=str(tmp_path / "dl"),
        )).read_text()
    )  # fmt: skip
    assert logged_findings == metrics["findings"]

    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {p.name for p in out.iterdir()} <= listed
    assert "findings.json" in listed
    # Files land beside the database, not under whatever folder fitwell ran in.
    assert got.info.artifact_uri.startswith((Path(store[len("sqlite:///") :]).parent).as_uri())
    verify_run(out)  # the run directory itself is untouched


@pytest.mark.parametrize("form", ["path", "file_uri"])
def test_folder_store_and_named_experiment(
    tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mlruns"
    monkeypatch.chdir(tmp_path)
    uri = "mlruns" if form == "path" else "file:mlruns"
    rc, _, err = cli(
        capsys, "train", "--dataset", "wine", *TINY, "--ensemble", "1", "--out", tmp_path / "r",
        "--mlflow", uri, "--mlflow-experiment", "my tables",
    )  # fmt: skip
    assert rc == 0, err
    assert err == ""  # no MLflow notes or deprecation warnings reach the user
    # fitwell opted in to MLflow 3's folder store for its own calls only.
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=folder.as_uri())
    got = only_run(client, "my tables")
    history = read_history(tmp_path / "r" / "history.csv")
    assert [p.value for p in client.get_metric_history(got.info.run_id, "val_loss")] == [
        r["val_loss"] for r in history
    ]


def test_python_api_without_a_run_directory(store: str) -> None:
    run = fitwell.train(
        dataset="iris", hidden=(4,), max_epochs=3, ensemble=1, mlflow_uri=store,
        mlflow_experiment="api",
    )  # fmt: skip
    client = MlflowClient(tracking_uri=store)
    got = only_run(client, "api")
    assert got.data.params["hidden"] == "[4]"
    assert got.data.params["max_epochs"] == "3"
    assert len(client.get_metric_history(got.info.run_id, "train_loss")) == len(run.history)
    assert "fitwell.run_dir" not in got.data.tags
    assert run.metrics["mlflow"]["run_id"] == got.info.run_id


def test_auto_logs_its_trials(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auto"
    rc, _, err = cli(
        capsys, "auto", "--dataset", "iris", "--hidden", "8", "--max-epochs", "6",
        "--time-budget", "none", "--trials", "2", "--population-size", "2", "--no-repair",
        "--out", out, "--mlflow", store, "--mlflow-experiment", "auto", "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    client = MlflowClient(tracking_uri=store)
    got = only_run(client, "auto")
    assert got.info.status == "FINISHED"
    assert got.data.tags["fitwell.command"] == "auto"
    assert got.data.tags["fitwell.auto.winner"]
    listed = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert {"trials.csv", "repairs.json", "metrics.json", "model.safetensors"} <= listed
    config = tomllib.loads((out / "config.toml").read_text())
    assert got.data.params == {k: param_text(v) for k, v in config.items()}

    # Each search trial is a child run with its settings and validation result.
    trials = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert len(trials) == 2
    children = client.search_runs(
        [got.info.experiment_id], f"tags.mlflow.parentRunId = '{got.info.run_id}'"
    )
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == sorted(f"trial {t['number']}" for t in trials)
    for t in trials:
        child = by_name[f"trial {t['number']}"]
        assert child.data.tags["fitwell.trial_state"] == t["state"]
        assert child.data.metrics["val_loss"] == float(t["val_loss"])
        assert float(child.data.params["lr"]) == float(t["lr"])
        assert child.data.params["width"] == t["width"]


class _Interrupt(fitwell.Callback):
    def on_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.epoch == 2:
            raise KeyboardInterrupt


def test_interrupted_run_is_killed_and_its_resume_logged(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    settings: dict[str, Any] = {"dataset": "iris", "hidden": (8,), "max_epochs": 4}
    with pytest.raises(KeyboardInterrupt):
        fitwell.train(
            out=out, callbacks=[_Interrupt()], mlflow_uri=store, mlflow_experiment="resumed",
            **settings,
        )  # fmt: skip
    client = MlflowClient(tracking_uri=store)
    assert only_run(client, "resumed").info.status == "KILLED"
    rc, _, err = cli(
        capsys, "resume", out, "--quiet", "--mlflow", store, "--mlflow-experiment", "resumed"
    )
    assert rc == 0, err
    exp = client.get_experiment_by_name("resumed")
    assert exp is not None
    finished = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    assert len(finished) == 1
    assert finished[0].data.tags["fitwell.command"] == "resume"
    history = read_history(out / "history.csv")
    chosen = json.loads((out / "metrics.json").read_text())["restarts"]["best"]
    logged = client.get_metric_history(finished[0].info.run_id, "val_loss")
    assert sorted((p.step, p.value) for p in logged) == [
        (r["epoch"], r["val_loss"]) for r in history if r["member"] == chosen
    ]
    assert len(logged) == 4  # the whole run, not only the epochs after the resume


def _refused(result: tuple[int, str, str], *words: str) -> str:
    rc, _, err = result
    assert rc == 2, err
    assert re.fullmatch(r"error: [^\n]+\n", err), err
    for w in words:
        assert w in err, (w, err)
    return err


def test_without_mlflow_installed_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    out = tmp_path / "run"
    result = cli(capsys, "train", "--dataset", "iris", *TINY, "--out", out, "--mlflow", "x.db")
    _refused(result, "pip install 'fitwell[mlflow]'")
    assert not out.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        (
            lambda tmp: f"http://127.0.0.1:{_closed_port()}",
            ["cannot connect", "Nothing was trained"],
        ),
        (lambda tmp: f"sqlite:///{tmp / 'missing' / 'm.db'}", ["does not exist"]),
        (lambda tmp: str(tmp / "missing" / "m.db"), ["does not exist"]),
        (lambda tmp: "sqlite://", ["in-memory"]),
        (lambda tmp: "  ", ["--mlflow is empty"]),
        (lambda tmp: "nosuchscheme://x", ["cannot be used"]),
    ],
)
def test_an_unusable_store_is_refused_before_training(
    tmp_path: Path, uri: Any, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    result = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--out", out, "--mlflow", uri(tmp_path)
    )
    _refused(result, *words)
    assert not out.exists()


def test_a_database_fitwell_cannot_read_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    result = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--out", tmp_path / "a", "--mlflow", junk
    )
    err = _refused(result, "file is not a database")
    assert "[SQL:" not in err and "sqlalche.me" not in err
    # A database whose schema this MLflow does not know (one written by a newer MLflow).
    newer = tmp_path / "newer.db"
    monkeypatch.chdir(tmp_path)  # MLflow caches a store by its URI: this one differs from fitwell's
    MlflowClient(tracking_uri="sqlite:///newer.db").search_experiments()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeed0000'")
    result = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--out", tmp_path / "b", "--mlflow", newer
    )
    _refused(result, "f00dfeed0000", f"this is MLflow {mlflow.__version__}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_experiment_flag_needs_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("train", "auto"):
        result = cli(
            capsys, command, "--dataset", "iris", *TINY, "--out", tmp_path / command,
            "--mlflow-experiment", "x",
        )  # fmt: skip
        _refused(result, "needs --mlflow")
        assert not (tmp_path / command).exists()


def test_a_deleted_experiment_is_refused(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(tracking_uri=store)
    client.delete_experiment(client.create_experiment("gone"))
    result = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--out", tmp_path / "run",
        "--mlflow", store, "--mlflow-experiment", "gone",
    )  # fmt: skip
    _refused(result, "'gone'", "is deleted", "restore")


def test_a_store_failing_at_the_end_keeps_the_run_directory(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    assert cli(capsys, "train", "--dataset", "iris", *TINY, "--out", out)[0] == 0
    old_model = (out / "model.safetensors").read_bytes()

    def broken(self: tracking.MlflowRun, run: Any) -> None:
        raise OSError("database is locked")

    monkeypatch.setattr(tracking.MlflowRun, "_log_run", broken)
    result = cli(
        capsys, "train", "--dataset", "iris", *TINY, "--seed", "1", "--out", out, "--overwrite",
        "--mlflow", store, "--mlflow-experiment", "broken",
    )  # fmt: skip
    _refused(result, f"the run is saved in {out}", "database is locked")
    verify_run(out)  # the new run, complete: --overwrite did not roll it back
    assert (out / "model.safetensors").read_bytes() != old_model
    assert only_run(MlflowClient(tracking_uri=store), "broken").info.status == "FAILED"


def test_a_diverged_run_is_failed_with_its_findings(
    tmp_path: Path, mixed_csv: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(
        capsys, "train", mixed_csv, "--target", "label", "--optimizer", "sgd", "--lr", "1e6",
        "--init-scale", "30", "--hidden", "16,16", "--max-epochs", "6", "--quiet",
        "--out", tmp_path / "out", "--mlflow", store,
    )  # fmt: skip
    assert rc == 3, err
    got = only_run(MlflowClient(tracking_uri=store), "mixed")  # default: the file's stem
    assert got.info.status == "FAILED"
    assert got.data.tags["fitwell.error"].startswith("training diverged")
    assert got.data.tags["fitwell.findings"] != "none"
    assert got.data.params["lr"] == "1000000.0"


def test_bad_input_leaves_no_run_in_the_experiment(
    tmp_path: Path, mixed_csv: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli(
        capsys, "train", mixed_csv, "--target", "nope", *TINY, "--out", tmp_path / "r",
        "--mlflow", store, "--mlflow-experiment", "typo",
    )  # fmt: skip
    _refused(result, "nope")
    client = MlflowClient(tracking_uri=store)
    assert only_run(client, "typo", deleted=True).info.lifecycle_stage == "deleted"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("runs.db", "sqlite:///{cwd}/runs.db"),
        ("mlruns", "file://{cwd}/mlruns"),
        ("file:mlruns", "file://{cwd}/mlruns"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("databricks", "databricks"),
        ("./databricks", "file://{cwd}/databricks"),
        ("sqlite:///{cwd}/x.db", "sqlite:///{cwd}/x.db"),
    ],
)
def test_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    cwd = str(tmp_path.resolve())
    assert tracking.tracking_uri(given.format(cwd=cwd)) == expected.format(cwd=cwd)


def test_remote_file_uri_is_refused() -> None:
    with pytest.raises(InputError, match="remote host"):
        tracking.tracking_uri("file://otherhost/mlruns")
