"""The run directory: data-only files (safetensors + JSON + CSV + TOML), written atomically.

A run is assembled in a hidden temporary folder beside its destination and renamed into place
when complete, so a crash or a bad input never leaves a half-written run behind. Loading reads
JSON and safetensors only: nothing on a load path can execute code.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fitwell.errors import InputError, TrainingFailed

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.toml"
RUN_STATE_FILE = "run_state.json"
MANIFEST_FILE = "manifest.json"
RUN_FORMAT = "fitwell-run"
RUN_FORMAT_VERSION = 1


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it (Linux), else the common 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def give_new_file_mode(fd: int) -> None:
    """A temporary file from ``mkstemp`` (0600) gets the mode any new file would (0644 under
    the usual umask) before it is renamed into place: run files and predictions are for
    sharing, not private to the writer."""
    os.fchmod(fd, 0o666 & ~umask())


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see either the old content or the complete new one."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        give_new_file_mode(fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None (strict JSON has neither) and NumPy values by Python ones."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    try:
        return json_safe(_json_default(value))
    except TypeError:
        return value


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, default=_json_default)
    write_atomic(path, text + "\n")


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def check_destination(out: str | Path, *, keep: Collection[str] = ()) -> Path:
    """Validate ``--out`` before any work: it must not exist yet (or be an empty folder, or hold
    only the files named in ``keep``, which the caller owns)."""
    path = Path(out)
    if path.is_symlink():
        raise InputError(
            f"output directory {str(path)!r} is a symbolic link; give a real folder path."
        )
    if path.exists() and (not path.is_dir() or any(p.name not in keep for p in path.iterdir())):
        raise InputError(
            f"output directory {str(path)!r} already exists and is not empty; "
            "choose another --out, remove it, or pass --overwrite to replace a fitwell run."
        )
    if not path.parent.exists():
        raise InputError(f"parent folder of --out {str(path.parent)!r} does not exist.")
    check_writable_folder(path.parent, "--out")
    return path


def check_writable_folder(folder: Path, flag: str) -> None:
    """Prove that files can be created in ``folder`` by creating (and removing) one.

    Permission bits say little: root ignores them, and an immutable folder, a read-only mount or
    /proc refuse writes whatever the bits say. Asking the file system itself is the only check
    that cannot disagree with the later write.
    """
    where = str(folder) or "."
    if not Path(where).is_dir():
        raise InputError(
            f"{flag}: {where!r} is not a folder; give a path inside an existing folder."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".fitwell-write-test-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{flag}: cannot create files in {where!r} ({exc.strerror or type(exc).__name__}); "
            "choose a folder you can write to."
        ) from None


def _looks_like_run(folder: Path) -> bool:
    """A fitwell run directory, finished or not (``manifest.json`` alone is a common name)."""
    return (folder / RUN_STATE_FILE).is_file() or (
        (folder / MODEL_META).is_file() and (folder / MANIFEST_FILE).is_file()
    )


def check_output_file(
    out: str | Path, *, run_dir: str | Path | None = None, what: str = "predictions"
) -> Path:
    """Validate a file a read-only command will write (``predict --out``), before any work.

    It must name a file (not a folder) in an existing, writable folder, and never lie inside a
    run directory: a read-only command must not change a run.
    """
    text = str(out)
    if text.strip() == "":
        raise InputError("--out is empty; give a file name, or leave --out out to print to stdout.")
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise InputError(f"--out {text!r} is a folder; give a file name such as predictions.csv.")
    if path.is_symlink():
        raise InputError(f"--out {text!r} is a symbolic link; give a real file path.")
    if not path.parent.exists():
        raise InputError(f"folder of --out {str(path.parent)!r} does not exist.")
    resolved = path.resolve()
    guarded = [Path(run_dir).resolve()] if run_dir is not None else []
    for folder in resolved.parents:
        if folder in guarded or _looks_like_run(folder):
            raise InputError(
                f"--out {text!r} lies inside the run directory {str(folder)!r}; {what} are "
                "written outside runs so that a run is never changed. Choose another --out."
            )
    check_writable_folder(path.parent, "--out")
    return path


# Everything a fitwell run directory holds: the final files, and the checkpoints of a run that
# has not finished. `--overwrite` replaces only a folder made of these (the user's files stay).
RUN_ENTRIES = frozenset(
    {
        MODEL_FILE,
        MODEL_META,
        METRICS_FILE,
        HISTORY_FILE,
        CURVES_FILE,
        CONFIG_FILE,
        RUN_STATE_FILE,
        MANIFEST_FILE,
        "signals.json",
        "report.html",
        # fitwell auto's search, kept beside the run it chose
        "auto_state.json",
        "repairs.json",
        "trials.csv",
        "study.journal",
    }
)
_RUN_TEMPORARY = re.compile(r"^\..+\.tmp$")  # a write_atomic temporary left by a crash
_CHECKPOINT_ENTRY = re.compile(r"^(epoch-\d{4,}|\.tmp-epoch-\d{4,}-.*)$")


def _foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that a fitwell run does not write (symbolic links count as foreign)."""
    foreign = []
    for entry in folder.iterdir():
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.name == "checkpoints" and entry.is_dir():
            foreign.extend(
                f"checkpoints/{e.name}"
                for e in entry.iterdir()
                if e.is_symlink() or not e.is_dir() or not _CHECKPOINT_ENTRY.match(e.name)
            )
        elif not entry.is_file() or not (
            entry.name in RUN_ENTRIES or _RUN_TEMPORARY.match(entry.name)
        ):
            foreign.append(entry.name)
    return sorted(foreign)


def _has_run_marker(folder: Path) -> bool:
    """True when the run's state file or model description says it was written by fitwell."""
    for name, fmt in ((RUN_STATE_FILE, "fitwell-run-state"), (MODEL_META, RUN_FORMAT)):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == fmt:
            return True
    return False


def check_replaceable(out: str | Path) -> Path:
    """Check that ``out`` is a fitwell run directory that ``--overwrite`` may replace."""
    path = Path(out)
    if path.is_symlink():
        raise InputError(
            f"output directory {str(path)!r} is a symbolic link; give a real folder path."
        )
    if not path.is_dir():
        raise InputError(
            f"output {str(path)!r} is not a folder; --overwrite replaces only a fitwell run "
            "directory. Choose another --out."
        )
    if path.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise InputError(
            f"output directory {str(path)!r} is the working folder or holds it; run fitwell "
            "from outside the run directory to replace it."
        )
    foreign = _foreign_entries(path)
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise InputError(
            f"output directory {str(path)!r} holds files that are not part of a fitwell run "
            f"({shown}); --overwrite replaces only a fitwell run directory. Choose another "
            "--out or move those files."
        )
    if not _has_run_marker(path):
        raise InputError(
            f"output directory {str(path)!r} is not a fitwell run (no valid {RUN_STATE_FILE} "
            f"or {MODEL_META}); --overwrite replaces only a fitwell run directory."
        )
    return path


@contextmanager
def replacing_run(out: str | Path) -> Iterator[None]:
    """Let a new run be written at ``out`` in place of the fitwell run already there.

    The old run is moved aside (one rename, beside it) before the new one starts and deleted only
    when the body succeeds. If the body fails or is interrupted, whatever the new run left at
    ``out`` is removed and the old run is moved back, so a bad input never costs the old run. A
    missing ``out`` or an empty folder has nothing to replace. After a hard kill the old run is
    still on disk as the hidden folder ``.NAME.replaced-*`` beside ``out``.
    """
    path = Path(out)
    if not path.is_symlink() and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
        yield
        return
    check_replaceable(path)
    check_not_running(path)
    aside = path.parent / f".{path.name}.replaced-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise InputError(
            f"cannot move the run {str(out)!r} aside to replace it ({exc.strerror}); "
            "choose another --out."
        ) from None
    fsync_dir(path.parent)
    try:
        yield
    except BaseException:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # only the new run can be there now
        os.rename(aside, path)
        fsync_dir(path.parent)
        raise
    shutil.rmtree(aside)


@contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out`` in one rename."""
    final = check_destination(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
        fsync_dir(staging)
        if final.exists():
            final.rmdir()  # an empty folder is allowed as a destination
        os.replace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_model(folder: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Weights as safetensors, architecture and preprocessing as JSON."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    for name, tensor in tensors.items():
        # A model is a promise that it predicts; a NaN or inf weight would break it silently.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingFailed(
                f"refusing to save a model whose tensor {name!r} holds non-finite values."
            )
    write_atomic(folder / MODEL_FILE, save(tensors, metadata={"format": RUN_FORMAT}))
    write_json(
        folder / MODEL_META,
        {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, **meta},
    )
    write_json(
        folder / MANIFEST_FILE,
        {"format": RUN_FORMAT, "sha256": {n: sha256_file(folder / n) for n in _SEALED_FILES}},
    )


_SEALED_FILES = (MODEL_FILE, MODEL_META)


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Files of a finished run that the manifest does not seal: the manifest itself, the state marker
# (written after it) and the report, which ``fitwell report`` rebuilds from the sealed files.
UNSEALED_FILES = (MANIFEST_FILE, RUN_STATE_FILE, "report.html")
# What every finished run holds; a manifest that does not cover them all cannot vouch for the run.
REQUIRED_FILES = (MODEL_FILE, MODEL_META, METRICS_FILE, HISTORY_FILE, CONFIG_FILE, "signals.json")
MANIFEST_VERSION = 2


def seal_run(folder: Path) -> None:
    """Write ``manifest.json``: the sha256 of every file of the finished run (last step but one)."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in UNSEALED_FILES)
    write_json(
        folder / MANIFEST_FILE,
        {
            "format": RUN_FORMAT,
            "version": MANIFEST_VERSION,
            "sha256": {n: sha256_file(folder / n) for n in names},
        },
    )


def verify_manifest(folder: Path) -> None:
    """Trust a run only whole: every file listed, present and matching its checksum.

    A missing manifest, a manifest that misses a run file, a file it does not list and a changed
    byte are all refused: deleting or editing the manifest cannot switch the check off.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise InputError(
            f"{path}: not found; a run is trusted only with its checksums. Is {str(folder)!r} a "
            "finished fitwell run? Retrain or restore the run."
        )
    manifest = read_json(path)
    sums = manifest.get("sha256") if isinstance(manifest, dict) else None
    if (
        not isinstance(sums, dict)
        or manifest.get("format") != RUN_FORMAT
        or not all(isinstance(v, str) for v in sums.values())
        or any(Path(n).name != n or n in ("", ".", "..") for n in sums)
    ):
        raise InputError(f"{path}: not a fitwell checksum manifest; retrain or restore the run.")
    uncovered = [n for n in REQUIRED_FILES if n not in sums]
    if uncovered:
        raise InputError(
            f"{path}: does not cover {', '.join(uncovered)} (written by an older fitwell, or "
            "edited), so those files cannot be verified; retrain or restore the run."
        )
    present = {p.name: p for p in folder.iterdir()}
    for name in sorted(set(present) - set(sums) - set(UNSEALED_FILES)):
        raise InputError(
            f"{folder / name}: not listed in {MANIFEST_FILE}; a run directory is trusted only "
            "whole. Remove it or restore the run."
        )
    for name in sorted(sums):
        target = folder / name
        if not target.is_file():
            raise InputError(
                f"{target}: listed in {MANIFEST_FILE} but missing or not a file; restore the run."
            )
        if sha256_file(target) != sums[name]:
            raise InputError(
                f"{target}: checksum does not match {MANIFEST_FILE}; the file is corrupt or was "
                "modified. Retrain or restore the run."
            )


def verify_run(run_dir: str | Path) -> Path:
    """A finished, whole run directory (see :func:`verify_manifest`), else :class:`InputError`."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: run directory does not exist.")
    check_finished(folder)
    verify_manifest(folder)
    return folder


def read_history(path: Path) -> list[dict[str, Any]]:
    """Rows of ``history.csv``: ``epoch`` and ``member`` as ints, the rest as floats (NaN blank).

    Damage (no header, a missing column, a text value) is refused naming the file and line.
    """
    import csv
    import math

    path = Path(path)
    rows: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            missing = [c for c in ("epoch", "member") if c not in fields]
            if missing or len(set(fields)) != len(fields):
                raise InputError(
                    f"{path}: damaged header (missing {', '.join(missing) or 'nothing'}, got "
                    f"{len(fields)} column(s)); restore the run or retrain."
                )
            for raw in reader:
                line = reader.line_num
                row: dict[str, Any] = {}
                for key, value in raw.items():
                    if key is None or value is None:
                        raise InputError(
                            f"{path}: line {line} has a different number of fields than the "
                            "header; restore the run or retrain."
                        )
                    try:
                        row[key] = float(value) if value != "" else math.nan
                    except ValueError:
                        raise InputError(
                            f"{path}: line {line}, column {key!r} holds {value[:40]!r}, not a "
                            "number; restore the run or retrain."
                        ) from None
                for key in ("epoch", "member"):
                    v = row[key]
                    if not (math.isfinite(v) and v.is_integer() and v >= 0):
                        raise InputError(
                            f"{path}: line {line}, column {key!r} holds {v!r}, not a count; "
                            "restore the run or retrain."
                        )
                    row[key] = int(v)
                rows.append(row)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; is this a fitwell run directory?") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc}).") from None
    return rows


def check_finished(folder: Path) -> None:
    """Refuse a run directory whose training has not finished (it holds no final model yet)."""
    path = folder / RUN_STATE_FILE
    if not path.exists():
        return
    state = read_json(path)
    status = state.get("status") if isinstance(state, dict) else None
    if status != "finished":
        raise InputError(
            f"{folder}: the run has not finished (status {status!r}); continue it with "
            f"`fitwell resume {folder}`."
        )


@dataclass
class SavedModel:
    """What ``fitwell predict`` needs from a run directory."""

    meta: dict[str, Any]
    state: dict[str, Any]


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; is this a fitwell run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}).") from None


def load_model_files(run_dir: str | Path) -> SavedModel:
    """Read and check a run's model files (data only: JSON + safetensors)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: run directory does not exist.")
    verify_run(folder)
    meta = read_json(folder / MODEL_META)
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise InputError(f"{folder / MODEL_META}: not a fitwell model description.")
    if meta.get("version") != RUN_FORMAT_VERSION:
        raise InputError(
            f"{folder / MODEL_META}: format version {meta.get('version')!r} is not supported "
            f"(expected {RUN_FORMAT_VERSION})."
        )
    path = folder / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{path}: model weights not found.")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a valid safetensors file ({first}).") from None
    check_state_shapes(meta, state, path)
    return SavedModel(meta=meta, state=state)


# ------------------------------------------------------------------------- one owner per run
OWNER_FILE = "run_state.json"  # where the owning process's pid and host are recorded


class RunLock:
    """An exclusive ``flock`` on the run directory itself, held while a process trains into it.

    The kernel drops it when the process dies (a SIGKILLed run is resumable at once), and no
    file is added to the run. Other processes (``resume``, ``train --overwrite``, ``report``)
    test it with :func:`check_not_running` and refuse, naming the owner's pid and host.
    """

    def __init__(self, folder: Path) -> None:
        import fcntl

        self.folder = Path(folder)
        self.fd: int | None = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise InputError(_running_message(self.folder)) from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def owner() -> dict[str, Any]:
    """This process, as recorded in the run state: pid and host."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _running_message(folder: Path) -> str:
    who = "another process"
    try:
        state = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        o = state.get("owner") or {}
        if o.get("pid") is not None:
            who = f"process {o.get('pid')} on host {o.get('host', '?')}"
    except (OSError, ValueError, AttributeError):
        pass
    return (
        f"{folder}: a run is in progress there ({who}); wait for it to finish, or stop it "
        "before resuming, replacing or reporting on it."
    )


def check_not_running(folder: str | Path) -> None:
    """Refuse a run directory that a live process is training into (see :class:`RunLock`)."""
    path = Path(folder)
    if not path.is_dir() or path.is_symlink():
        return
    RunLock(path).release()


def check_state_shapes(meta: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    """Every tensor the architecture needs, with its shape, from the safetensors file alone.

    Done before any model is built: a tampered ``model.json`` (``hidden`` of 10**9) would
    otherwise allocate its model first and fail, or exhaust memory, afterwards.
    """
    from fitwell.models import Architecture, state_shapes

    arch_doc = meta.get("architecture")
    if not isinstance(arch_doc, dict):
        raise InputError(f"{path.parent / MODEL_META}: missing field 'architecture'.")
    arch = Architecture.from_json(arch_doc)
    first = state.get("weights.0")
    if first is None or first.dim() != 3:
        raise InputError(
            f"{path}: tensor 'weights.0' is missing or not [members, inputs, outputs]; "
            "retrain or restore the run."
        )
    expected = state_shapes(arch, int(first.shape[0]))
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise InputError(
            f"{path}: tensors do not match {MODEL_META}'s architecture (missing "
            f"{', '.join(missing) or 'none'}; unexpected {', '.join(extra) or 'none'}); the "
            "files do not belong together. Retrain or restore the run."
        )
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if got != shape:
            raise InputError(
                f"{path}: tensor {name!r} has shape {list(got)} but {MODEL_META}'s architecture "
                f"needs {list(shape)}; the files do not belong together. Retrain or restore the "
                "run."
            )
