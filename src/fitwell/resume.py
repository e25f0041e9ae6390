"""Continue an interrupted run: ``fitwell resume RUN_DIR``.

Rebuilds the same run from ``run_state.json``, refuses when data or settings changed (naming the
field), loads the newest usable checkpoint and continues; the result is bitwise equal to an
uninterrupted run on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitwell.config import build_config
from fitwell.errors import InputError
from fitwell.run_state import RunSession, read_run_state
from fitwell.runs import RUN_STATE_FILE

if TYPE_CHECKING:
    from fitwell.api import Run
    from fitwell.training import Callback

__all__ = ["RunSession", "read_run_state", "resume"]


def resume(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    warn: Callable[[str], None] | None = None,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    **settings: Any,
) -> Run:
    """Continue an interrupted run in place.

    Parameters
    ----------
    run_dir : path
        The run directory of the interrupted ``train``.
    data : path, optional
        The data file, if it moved; its content must be unchanged.
    callbacks : sequence of Callback
        The extra callbacks the interrupted run had (their state is restored by class name).
    progress : bool or None, default False
        Progress bar as in :func:`fitwell.api.train`.
    warn : callable, optional
        Receives one-line warnings (a corrupt checkpoint skipped); default: Python warnings.
    mlflow_uri, mlflow_experiment : str, optional
        Log the finished run to an MLflow tracking store, as :func:`fitwell.train` does (a new
        MLflow run: the interrupted one, if it was tracked, stays KILLED).
    **settings
        Settings to check against the run's: any that differ make the resume fail (exit 2).
    """
    from fitwell.api import train_population

    folder = Path(run_dir)
    state = read_run_state(folder)
    if state.get("status") == "finished":
        raise InputError(f"{folder}: the run already finished; nothing to resume.")
    try:
        cfgs = [build_config(c) for c in state["configs"]]
    except InputError as exc:
        raise InputError(
            f"{folder / RUN_STATE_FILE}: stored settings are invalid ({exc})"
        ) from None
    stored_path = cfgs[0].data
    if data is not None:
        cfgs = [c.replace(data=str(data)) for c in cfgs]
    elif stored_path is not None and not Path(stored_path).exists() and state.get("data_path"):
        cfgs = [c.replace(data=str(state["data_path"])) for c in cfgs]
    for key, value in settings.items():
        if value is None:
            continue
        for stored in state["configs"]:
            try:
                given = build_config(stored | {key: value}).to_dict().get(key)
            except InputError:
                given = value
            if stored.get(key) != given:
                raise InputError(
                    f"{folder}: cannot resume with changed settings: `{key}` was "
                    f"{stored.get(key)!r}, now {given!r}. Resume with the original settings or "
                    "start a new run."
                )
    from fitwell.tracking import tracked

    return tracked(
        lambda: train_population(
            cfgs, out=folder, callbacks=callbacks, progress=progress, resume=True, warn=warn
        ),
        mlflow_uri,
        experiment=mlflow_experiment,
        settings=cfgs[0].to_dict(),
        command="resume",
        run_name=folder.name,
    )
