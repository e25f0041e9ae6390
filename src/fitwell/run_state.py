"""A run directory that exists while training: its state marker, fingerprint and checkpoints.

``run_state.json`` says whether the run is ``running`` or ``finished`` and holds what resuming
needs: the configurations and a fingerprint of the data and settings (see
:mod:`fitwell.resume`, which continues an interrupted run from here).
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
from fitwell.config import TrainConfig
from fitwell.errors import InputError

if TYPE_CHECKING:
    from fitwell.data import PreparedData
    from fitwell.training import Trainer

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
    kept: tuple[str, ...] = ()
    lock: runs.RunLock | None = None

    @classmethod
    def open(
        cls,
        out: str | Path,
        cfgs: Sequence[TrainConfig],
        prepared: PreparedData,
        *,
        resume: bool,
        keep: Sequence[str] = (),
    ) -> RunSession:
        """Create ``out`` (all input validated by now), or check a resumed one still matches.

        ``keep`` names files already in ``out`` that belong to the caller (``fitwell auto``'s
        study): they stay there, also when a failed run is abandoned.
        """
        folder = Path(out)
        stored = [c.to_dict() for c in cfgs]
        fp = fingerprint(cfgs, prepared)
        if resume:
            state = read_run_state(folder)
            # One live process per run: taken before anything in the folder is touched (a
            # second `resume` would otherwise clean the first one's checkpoint temporaries).
            lock = runs.RunLock(folder)
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
            session = cls(folder, stored, resumed=True, state=state, lock=lock)
            state["owner"] = runs.owner()
            runs.write_json(folder / runs.RUN_STATE_FILE, state)
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
        kept = tuple(n for n in keep if (folder / n).exists())
        lock = runs.RunLock(folder)
        state = {
            "format": RUN_STATE_FORMAT,
            "status": "running",
            "configs": stored,
            "data_path": str(Path(cfgs[0].data).resolve()) if cfgs[0].data else None,
            "fingerprint": fp,
            "started_at": _now(),
            "resumes": [],
            "owner": runs.owner(),
        }
        runs.write_json(folder / runs.RUN_STATE_FILE, state)
        runs.fsync_dir(folder.parent)
        return cls(
            folder, stored, created=True, existed_empty=existed, state=state, kept=kept, lock=lock
        )

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
        self.release()

    def release(self) -> None:
        """Let other processes at the run directory (it is finished or abandoned)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def abandon(self) -> None:
        """Training failed for a reason resuming cannot fix: remove what this run created."""
        try:
            self._remove_created()
        finally:
            self.release()

    def _remove_created(self) -> None:
        if not self.created:
            return
        if self.kept:  # the caller's files stay; only what this run wrote goes
            for entry in self.folder.iterdir():
                if entry.name not in self.kept:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
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
