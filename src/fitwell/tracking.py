"""MLflow tracking: one MLflow run per fitwell run (``--mlflow URI``, ``mlflow_uri=``).

An optional extra (``pip install 'fitwell[mlflow]'``, which brings ``mlflow-skinny``). The
tracking store is opened and the MLflow run created *before* training, so a bad URI or an
unreachable server costs one line and no training. Everything else is logged once the run has
ended, from the finished :class:`~fitwell.predictor.Run` and its run directory: the logged curves
are the saved ones, and the files are uploaded only after they are complete. Like the report,
this module reads a finished run; the training loop never calls it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from fitwell.errors import FitwellError, InputError, TrainingFailed

if TYPE_CHECKING:
    from fitwell.predictor import Run

INSTALL_HINT = "pip install 'fitwell[mlflow]'"
# Seconds and retries for the up-front check of an HTTP tracking server: MLflow's own defaults
# (120 s, 7 retries with backoff) would let a wrong URL hold the command for minutes.
CHECK_TIMEOUT_S = 10
# MLflow refuses longer parameter values (it would truncate them with a warning).
MAX_PARAM_CHARS = 6000
# History columns that are bookkeeping, not curves.
_NOT_CURVES = ("epoch", "member", "nonfinite_retries")
_TRIAL_METRICS = ("val_loss", "val_score", "best_epoch", "epochs_run", "seconds")
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def tracking_uri(uri: str) -> str:
    """The MLflow tracking URI for ``--mlflow``: a URI as given, or a local path made absolute.

    A path ending in ``.db`` is a SQLite store (``sqlite:///ABS/PATH.db``); any other path, and
    ``file:`` URIs, are MLflow's folder ("file") store. Relative paths are resolved against the
    working folder now, so the store does not depend on where MLflow later resolves them.
    """
    text = uri.strip()
    if not text:
        raise InputError("--mlflow is empty; give a tracking URI such as sqlite:///mlflow.db.")
    if text == "databricks":  # MLflow's name for the configured Databricks workspace
        return text
    is_drive = re.match(r"^[A-Za-z]:[\\/]", text) is not None  # C:\runs is a path, not a scheme
    if _SCHEME.match(text) and not is_drive:
        if text.startswith("file:"):
            return Path(_file_path(text)).resolve().as_uri()
        if text.startswith("sqlite:"):
            _check_sqlite_folder(text)
        return text
    path = Path(text).expanduser().resolve()
    if path.suffix == ".db":
        uri = f"sqlite:///{path}"
        _check_sqlite_folder(uri)
        return uri
    return path.as_uri()


def _file_path(uri: str) -> str:
    """The local path of a ``file:`` URI (``file:relative``, ``file:/abs``, ``file:///abs``)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise InputError(
            f"--mlflow {uri!r} names a remote host; a file: store must be a local folder."
        )
    return unquote(parsed.path) or "."


def _check_sqlite_folder(uri: str) -> None:
    """SQLite creates the database file but not its folder: say so before MLflow fails."""
    name = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    path = Path(name.split("?", 1)[0])
    if str(path) in ("", ".", ":memory:"):
        raise InputError(
            f"--mlflow {uri!r} has no database file; an in-memory store forgets the run when "
            "fitwell exits. Give a path such as sqlite:///mlflow.db."
        )
    if not path.parent.is_dir():
        raise InputError(
            f"--mlflow {uri!r}: folder {str(path.parent)!r} does not exist; create it first."
        )


def default_experiment(settings: Mapping[str, Any]) -> str:
    """The experiment's default name: the built-in dataset's name or the data file's stem (runs on
    one table are compared with each other), else ``fitwell``."""
    if settings.get("dataset"):
        return str(settings["dataset"])
    if settings.get("data"):
        return Path(str(settings["data"])).stem or "fitwell"
    return "fitwell"


def _import_client() -> Any:
    try:
        with _quiet():
            from mlflow.tracking import MlflowClient
    except ImportError:
        raise InputError(
            f"--mlflow (mlflow_uri) needs MLflow; install it with `{INSTALL_HINT}`."
        ) from None
    return MlflowClient


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's INFO lines (creating tables, alembic migrations) and its dependencies'
    deprecation warnings (SQLAlchemy 2.1 on MLflow's queries) are not the user's business, and
    anything MLflow prints goes to stderr: stdout is ``--json``'s."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings(), redirect_stdout(sys.stderr):
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for a block (MLflow reads its settings from the environment)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reason(exc: BaseException) -> str:
    """One short line from an MLflow, SQLAlchemy or HTTP error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno and "Max retries exceeded" in text:
        return f"cannot connect ({errno.group(1).strip()})"
    if "Max retries exceeded" in text and "timed out" in text:
        return "the server did not answer in time (timed out)"
    # SQLAlchemy appends the failing statement and a link; neither helps the user.
    text = re.sub(r"\s*\[SQL: .*?\]|\s*\(Background on this error at: [^)]*\)", "", text)
    if "database schema" in text:  # MLflow's advice ('mlflow db upgrade') is wrong for a newer db
        text = text.split(". ", 1)[0] + (
            f" (this is MLflow {_mlflow_version()}: a database written by a newer MLflow needs "
            "that version; an older one, `mlflow db upgrade URI`)"
        )
    text = text if len(text) <= 400 else text[:399] + "…"
    return text.rstrip(".") or type(exc).__name__


def _mlflow_version() -> str:
    import mlflow

    return str(mlflow.__version__)


def _param(value: Any) -> str:
    """A config value as an MLflow parameter: strings as they are, the rest as JSON (``true``,
    ``[256, 256]``), as in the run's config.toml."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) > MAX_PARAM_CHARS:
        return f"({len(text)} characters; see config.toml)"
    return text


class MlflowRun:
    """An MLflow run opened before training and filled in once the fitwell run has ended.

    Use :meth:`start`, then exactly one of :meth:`finish` (a finished run) or :meth:`fail`.
    """

    def __init__(self, client: Any, run: Any, uri: str, experiment: str, env: Mapping[str, str]):
        self.client = client
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.uri = uri
        self.experiment = experiment
        self.env = dict(env)

    @contextmanager
    def _session(self) -> Iterator[None]:
        with _quiet(), _env(self.env):
            yield

    @classmethod
    def start(
        cls,
        uri: str,
        *,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MlflowRun:
        """Open the store, find or create ``experiment`` and create a RUNNING run in it.

        Raises :class:`InputError` (one line) when MLflow is missing or the store cannot be
        used; nothing has been trained then.
        """
        if not experiment.strip():
            raise InputError("--mlflow-experiment is empty; give a name or leave it out.")
        client_class = _import_client()
        resolved = tracking_uri(uri)
        # fitwell's summary gives the run's address; MLflow would print its own on stdout.
        env = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        if resolved.startswith("file:"):
            # MLflow 3 keeps the folder store only on request; asking for a folder is one.
            env["MLFLOW_ALLOW_FILE_STORE"] = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "true")
        check = env | {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S),
        }
        try:
            with _quiet(), _env(check):
                client = client_class(tracking_uri=resolved)
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    experiment_id = client.create_experiment(
                        experiment, artifact_location=_artifact_root(resolved)
                    )
                elif found.lifecycle_stage == "deleted":
                    raise InputError(
                        f"MLflow experiment {experiment!r} in {resolved} is deleted; restore it "
                        "(`mlflow experiments restore`) or choose another --mlflow-experiment."
                    )
                else:
                    experiment_id = found.experiment_id
                created = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        except FitwellError:
            raise
        except Exception as exc:  # MLflow, SQLAlchemy, HTTP and OS errors alike: one line
            raise InputError(
                f"MLflow tracking store {uri!r} cannot be used: {_reason(exc)}. Nothing was "
                "trained; fix the URI or start the server, or leave out --mlflow."
            ) from None
        return cls(client, created, resolved, experiment, env)

    def finish(self, run: Run) -> None:
        """Log the finished run: parameters, curves, final metrics, findings and its files.

        Raises :class:`InputError` naming the saved run directory if the store fails now.
        """
        try:
            with self._session():
                self._log_run(run)
                self.client.set_terminated(self.run_id, status="FINISHED")
        except Exception as exc:
            where = f"the run is saved in {run.run_dir}, but " if run.run_dir else ""
            self._terminate("FAILED")
            raise InputError(
                f"{where}logging it to MLflow ({self.uri}, run {self.run_id}) failed: "
                f"{_reason(exc)}."
            ) from None

    def fail(self, error: BaseException, config: Mapping[str, Any] | None = None) -> None:
        """Record a run that ended without a model: the error, the doctor's findings of a
        diverged run, and the configuration it started from. Best effort: a failure here is a
        warning, so it never hides the error the user has to fix."""
        try:
            with self._session():
                tags = {"fitwell.error": _reason(error)[:5000]}
                findings = getattr(error, "findings", None)
                if isinstance(error, TrainingFailed):
                    tags |= _finding_tags(findings or [])
                    self._log_text(
                        json.dumps(_json_safe(findings or []), indent=2), "findings.json"
                    )
                params = {k: _param(v) for k, v in (config or {}).items() if v is not None}
                self._batch(params=params, tags=tags)
        except Exception as exc:
            warnings.warn(
                f"could not record the failure in MLflow run {self.run_id}: {_reason(exc)}",
                RuntimeWarning,
                stacklevel=2,
            )
        self._terminate("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def discard(self) -> None:
        """Delete the run (MLflow's soft delete): the input was refused, nothing was trained."""
        try:
            with self._session():
                self.client.delete_run(self.run_id)
        except Exception:
            self._terminate("FAILED")

    def _terminate(self, status: str) -> None:
        try:
            with self._session():
                self.client.set_terminated(self.run_id, status=status)
        except Exception:  # the store is gone; the run stays RUNNING there, nothing else to do
            pass

    def _batch(
        self,
        *,
        metrics: list[Any] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Param, RunTag

        self.client.log_batch(
            self.run_id,
            metrics=metrics or [],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def _log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def _log_run(self, run: Run) -> None:
        m = run.metrics
        config = run.extra.get("config")
        params = {k: _param(v) for k, v in (config.to_dict() if config else {}).items()}
        findings = m.get("findings") or []
        tags = _finding_tags(findings) | {
            "fitwell.task": str(m.get("task")),
            "fitwell.stop_reason": str(m.get("stop_reason")),
            "fitwell.chosen_member": str(m["restarts"]["best"]),
        }
        if run.run_dir is not None:
            tags["fitwell.run_dir"] = str(Path(run.run_dir).resolve())
        record = m.get("auto")
        if isinstance(record, dict):
            tags["fitwell.auto.winner"] = str(record.get("winner"))[:5000]
        self._batch(metrics=curve_metrics(run) + final_metrics(m), params=params, tags=tags)
        self._log_text(json.dumps(_json_safe(findings), indent=2), "findings.json")
        trials = run.extra.get("trials") or []
        if run.run_dir is not None:
            self.client.log_artifacts(self.run_id, str(run.run_dir))
        elif trials:
            import pandas as pd

            self._log_text(pd.DataFrame(trials).to_csv(index=False), "trials.csv")
        for row in trials:
            self._log_trial(row)

    def _log_trial(self, row: Mapping[str, Any]) -> None:
        """One ``fitwell auto`` search trial as a child run (MLflow nests it under the run and
        can compare trials in its parallel-coordinates chart): its settings as parameters, its
        validation loss and score, epochs and seconds as metrics."""
        from mlflow.entities import Metric, Param

        state = str(row.get("state"))
        child = self.client.create_run(
            self.experiment_id,
            run_name=f"trial {row.get('number')}",
            tags={"mlflow.parentRunId": self.run_id, "fitwell.trial_state": state},
        )
        now = int(time.time() * 1000)
        values = {k: row.get(k) for k in _TRIAL_METRICS}
        self.client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)],
            params=[
                Param(k, _param(v))
                for k, v in row.items()
                if k not in _TRIAL_METRICS and k not in ("state", "population") and v is not None
            ],
        )
        status = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "FAILED"}
        self.client.set_terminated(child.info.run_id, status=status.get(state, "KILLED"))


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment in a SQLite store keeps its files: ``mlartifacts`` beside the
    database, not MLflow's default ``./mlruns`` under whatever folder fitwell ran in."""
    if not uri.startswith("sqlite:///"):
        return None  # a folder store keeps them inside; a server decides for itself
    db = Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return (db.parent / "mlartifacts").as_uri()


def _finite(value: Any) -> TypeGuard[float]:
    """A number MLflow should record: not None, not a bool, not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    from fitwell.runs import json_safe

    return json_safe(value)


def _finding_tags(findings: list[dict[str, Any]]) -> dict[str, str]:
    """``fitwell.findings``: the codes, worst first (``none`` when healthy), and one
    ``fitwell.finding.<code>`` tag with its worst severity, to filter runs by in MLflow."""
    worst: dict[str, str] = {}
    for f in findings:
        code, severity = str(f.get("code")), str(f.get("severity", "info"))
        if _SEVERITY_RANK.get(severity, 0) >= _SEVERITY_RANK.get(worst.get(code, ""), -1):
            worst[code] = severity
    order = sorted(worst, key=lambda c: -_SEVERITY_RANK.get(worst[c], 0))
    tags = {"fitwell.findings": ",".join(order) or "none"}
    tags |= {f"fitwell.finding.{code}": worst[code] for code in order}
    return tags


def curve_metrics(run: Run) -> list[Any]:
    """The chosen member's per-epoch curves (``train_loss``, ``val_accuracy``, ``lr``, ...) with
    ``step`` = epoch, under the same keys in every run, so MLflow's charts overlay runs.

    Why not every member's: MLflow's run page shows each ``prefix/`` group of metrics as its own
    section *above* the run's own, so the default 3-member ensemble would open every run on 15
    member charts. The chosen member is the one ``final_*`` and metrics.json's ``train`` and
    ``val`` describe; every member's curves are in the ``history.csv`` artifact.
    """
    from mlflow.entities import Metric

    history = run.history
    if history.empty:
        return []
    keys = [c for c in history.columns if c not in _NOT_CURVES]
    rows = history[history["member"] == int(run.metrics["restarts"]["best"])]
    now = int(time.time() * 1000)
    return [
        Metric(key, float(row[key]), now, int(row["epoch"]))
        for row in rows.to_dict("records")
        for key in keys
    ]


def final_metrics(metrics: Mapping[str, Any]) -> list[Any]:
    """The run's results as single values.

    ``final_{train,val}_*``: the chosen member at its restored epoch (metrics.json's ``train`` and
    ``val``); ``ensemble_val_*``: the averaged members, when there are several; ``test_*``: the
    delivered model on the sealed test split; ``best_epoch``, ``epochs_run``, ``train_seconds``.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values: dict[str, Any] = {}
    for split in ("train", "val"):
        for name, value in (metrics.get(split) or {}).items():
            values[f"final_{split}_{name}"] = value
    ensemble = metrics.get("ensemble") or {}
    if len(ensemble.get("members") or []) > 1:
        for name, value in (ensemble.get("val") or {}).items():
            values[f"ensemble_val_{name}"] = value
    for name, value in (metrics.get("test") or {}).items():
        values[f"test_{name}"] = value
    for name in ("best_epoch", "epochs_run", "train_seconds"):
        values[name] = metrics.get(name)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]


def _user() -> dict[str, str]:
    """MLflow's ``User`` column (its fluent API fills it the same way; the client does not)."""
    import getpass

    try:
        return {"mlflow.user": getpass.getuser()}
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return {}


def tracked(
    body: Callable[[], Run],
    uri: str | None,
    *,
    experiment: str | None,
    settings: Mapping[str, Any],
    command: str,
    run_name: str | None = None,
) -> Run:
    """``body()`` (a training that returns a :class:`Run`) logged as one MLflow run at ``uri``;
    without ``uri`` just ``body()``. ``settings`` name the data (for the default experiment name)
    and are the parameters recorded if the run fails before a model exists."""
    if uri is None:
        if experiment is not None:
            raise InputError("--mlflow-experiment (mlflow_experiment) needs --mlflow (mlflow_uri).")
        return body()
    from fitwell import __version__

    source = settings.get("dataset") or settings.get("data")
    tracker = MlflowRun.start(
        uri,
        experiment=experiment if experiment is not None else default_experiment(settings),
        run_name=run_name,
        tags={
            "fitwell.command": command,
            "fitwell.version": __version__,
            "fitwell.data": str(source),
            "mlflow.source.name": f"fitwell {command}",
            "mlflow.source.type": "LOCAL",
        }
        | _user(),
    )
    try:
        run = body()
    except InputError:
        tracker.discard()  # refused before anything was learned: no run to keep
        raise
    except BaseException as exc:
        tracker.fail(exc, settings)
        raise
    tracker.finish(run)
    # Beside ``run_dir``: where the run went, for the summary (metrics.json is already written).
    run.metrics["mlflow"] = {
        "tracking_uri": tracker.uri,
        "experiment": tracker.experiment,
        "run_id": tracker.run_id,
    }
    if tracker.uri.startswith(("http://", "https://")):
        page = f"{tracker.uri.rstrip('/')}/#/experiments/{tracker.experiment_id}"
        run.metrics["mlflow"]["url"] = f"{page}/runs/{tracker.run_id}"
    return run
