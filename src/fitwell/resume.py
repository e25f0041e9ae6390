"""A run directory that exists while training: its state marker, checkpoints, and resuming it.

``run_state.json`` says whether the run is ``running`` or ``finished`` and holds what resuming
needs: the configurations and a fingerprint of the data and settings. ``fitwell resume RUN_DIR``
rebuilds the same run, refuses when data or settings changed (naming the field), loads the newest
usable checkpoint and continues; the result is bitwise equal to an uninterrupted run on CPU.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fitwell import runs
from fitwell.checkpoints import Checkpointer, clean_temporaries, load_latest
from fitwell.config import TrainConfig, build_config
from fitwell.errors import InputError

if TYPE_CHECKING:
    from fitwell.api import Run
    from fitwell.data import PreparedData
    from fitwell.training import Callback, Trainer

RUN_STATE_FORMAT = "fitwell-run-state"


def _file_sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return runs.sha256_file(Path(path))


def arrays_sha256(prepared: PreparedData) -> str:
    """Digest of the model-ready train/validation arrays: what training actually sees."""
    h = hashlib.sha256()
    for arr in (prepared.x_train, prepared.y_train, prepared.x_val, prepared.y_val):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(cfgs: Sequence[TrainConfig], prepared: PreparedData) -> dict[str, Any]:
    return {
        "data_file_sha256": _file_sha256(cfgs[0].data),
        "arrays_sha256": arrays_sha256(prepared),
        "test_rows": int(prepared.test.n_rows),
    }


def differing_field(
    stored: list[dict[str, Any]], given: Sequence[TrainConfig]
) -> tuple[str, Any, Any] | None:
    """The first setting that differs between the stored and the given configurations."""
    if len(stored) != len(given):
        return "population size", len(stored), len(given)
    for old, new in zip(stored, given, strict=True):
        new_d = new.to_dict()
        for key in sorted(set(old) | set(new_d)):
            if key == "data":
                continue  # a moved file is fine; its content is compared by checksum
            if old.get(key) != new_d.get(key):
                return key, old.get(key), new_d.get(key)
    return None


@dataclass
class RunSession:
    """The run directory of one training, from creation to the finished marker."""

    folder: Path
    configs: list[dict[str, Any]]
    resumed: bool = False
    created: bool = False
    existed_empty: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None

    @classmethod
    def open(
        cls,
        out: str | Path,
        cfgs: Sequence[TrainConfig],
        prepared: PreparedData,
        *,
        resume: bool,
    ) -> RunSession:
        """Create ``out`` (all input validated by now), or check a resumed one still matches."""
        folder = Path(out)
        stored = [c.to_dict() for c in cfgs]
        fp = fingerprint(cfgs, prepared)
        if resume:
            state = read_run_state(folder)
            diff = differing_field(state["configs"], cfgs)
            if diff is not None:
                name, old, new = diff
                raise InputError(
                    f"{folder}: cannot resume with changed settings: `{name}` was {old!r}, "
                    f"now {new!r}. Resume with the original settings or start a new run."
                )
            old_fp = state.get("fingerprint", {})
            for key, label in (
                ("data_file_sha256", "data"),
                ("arrays_sha256", "data"),
                ("test_rows", "data"),
            ):
                if old_fp.get(key) != fp[key]:
                    source = cfgs[0].data or cfgs[0].dataset
                    raise InputError(
                        f"{folder}: cannot resume with changed data: field `{label}` "
                        f"({source}) differs from the run's ({key} changed). Resume with the "
                        "original data or start a new run."
                    )
            session = cls(folder, stored, resumed=True, state=state)
            clean_temporaries(folder)
            return session
        existed = folder.is_dir()
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:  # checked before any work; a race or an odd file system remains
            raise InputError(
                f"--out: cannot create {str(folder)!r} ({exc.strerror or type(exc).__name__}); "
                "choose a folder you can write to."
            ) from None
        state = {
            "format": RUN_STATE_FORMAT,
            "status": "running",
            "configs": stored,
            "data_path": str(Path(cfgs[0].data).resolve()) if cfgs[0].data else None,
            "fingerprint": fp,
            "started_at": _now(),
            "resumes": [],
        }
        runs.write_json(folder / runs.RUN_STATE_FILE, state)
        runs.fsync_dir(folder.parent)
        return cls(folder, stored, created=True, existed_empty=existed, state=state)

    def attach(
        self, trainer: Trainer, *, every: int, warn: Callable[[str], None] | None = None
    ) -> None:
        """Load the newest usable checkpoint (when resuming) and start checkpointing."""
        if self.resumed:
            found = load_latest(self.folder, warn=warn)
            if found is None:
                msg = f"{self.folder}: no checkpoint was written yet; starting from epoch 0"
                if warn is not None:
                    warn(msg)
                self.resumed_from = 0
            else:
                epoch, state = found
                trainer.load_state_dict(state)
                self.resumed_from = epoch
            self.state.setdefault("resumes", []).append(
                {"from_epoch": self.resumed_from, "at": _now()}
            )
            runs.write_json(self.folder / runs.RUN_STATE_FILE, self.state)
        trainer.callbacks.insert(0, Checkpointer(self.folder, every=every))

    def finish(self) -> None:
        """Seal every final file in the manifest, mark the run finished, drop its checkpoints."""
        runs.seal_run(self.folder)
        self.state["status"] = "finished"
        self.state["finished_at"] = _now()
        runs.write_json(self.folder / runs.RUN_STATE_FILE, self.state)
        shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)

    def abandon(self) -> None:
        """Training failed for a reason resuming cannot fix: remove what this run created."""
        if not self.created:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.existed_empty:
            self.folder.mkdir(exist_ok=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_run_state(folder: Path) -> dict[str, Any]:
    """Read and check ``run_state.json`` of a run directory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: run directory does not exist.")
    path = folder / runs.RUN_STATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; {folder} is not a resumable fitwell run.")
    state = runs.read_json(path)
    if (
        not isinstance(state, dict)
        or state.get("format") != RUN_STATE_FORMAT
        or not isinstance(state.get("configs"), list)
        or not state["configs"]
    ):
        raise InputError(f"{path}: not a fitwell run state file.")
    return state


def resume(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = False,
    warn: Callable[[str], None] | None = None,
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
            f"{folder / runs.RUN_STATE_FILE}: stored settings are invalid ({exc})"
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
    return train_population(
        cfgs, out=folder, callbacks=callbacks, progress=progress, resume=True, warn=warn
    )
