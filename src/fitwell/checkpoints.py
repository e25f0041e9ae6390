"""Checkpoints of a run in progress: written atomically, verified by checksums, read without pickle.

Layout inside a run directory::

    checkpoints/epoch-000N/tensors.safetensors   every tensor of the trainer state
    checkpoints/epoch-000N/state.json            the rest, tensors replaced by references
    checkpoints/epoch-000N/manifest.json         sha256 and size of the two files above

A checkpoint is assembled in ``checkpoints/.tmp-epoch-000N-*``, each file fsynced, then renamed
into place in one step, so a kill at any moment leaves either the complete checkpoint or a
temporary that the next writer removes. The newest ``keep`` checkpoints are kept. Reading checks
the manifest first; a corrupt or truncated newest checkpoint falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fitwell.errors import InputError
from fitwell.runs import fsync_dir
from fitwell.training.callbacks import Callback

if TYPE_CHECKING:
    from fitwell.training.loop import Trainer

CHECKPOINT_DIR = "checkpoints"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = "fitwell-checkpoint"
_NAME = re.compile(r"^epoch-(\d{4,})$")
_TMP = re.compile(r"^\.tmp-epoch-(\d{4,})-")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used and an older one was taken instead."""


# ------------------------------------------------------------------------------ (de)serialize
def split_tensors(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}``; return both parts."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if torch.is_tensor(value):
            key = path or "root"
            tensors[key] = value.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"state keys must be strings or ints; got {k!r} at {path!r}")
                key = str(k)  # JSON semantics: int keys come back as strings
                out[key] = walk(v, f"{path}/{key}" if path else key)
            return out
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(value)), path)
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise TypeError(
                f"cannot checkpoint a {type(value).__name__} at {path!r}: state must be "
                "tensors, arrays or JSON values"
            )
        return value

    return walk(state, ""), tensors


def join_tensors(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(data, dict):
        if set(data) == {"__tensor__"}:
            return tensors[data["__tensor__"]]
        if set(data) == {"__float__"}:
            return float(data["__float__"])
        return {k: join_tensors(v, tensors) for k, v in data.items()}
    if isinstance(data, list):
        return [join_tensors(v, tensors) for v in data]
    return data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_synced(path: Path, payload: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------- writing
def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete (renamed-into-place) checkpoints, newest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and not child.is_symlink():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def clean_temporaries(run_dir: Path) -> int:
    """Remove checkpoint temporaries a killed writer left behind; returns how many."""
    root = Path(run_dir) / CHECKPOINT_DIR
    removed = 0
    if root.is_dir():
        for child in root.iterdir():
            if _TMP.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
    for child in Path(run_dir).iterdir():  # per-file temporaries of runs.write_atomic
        if child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
            child.unlink(missing_ok=True)
            removed += 1
    return removed


def write_checkpoint(run_dir: Path, epoch: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write one checkpoint atomically and keep only the newest ``keep``."""
    from safetensors.torch import save

    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(exist_ok=True)
    clean_temporaries(run_dir)
    final = root / checkpoint_name(epoch)
    data, tensors = split_tensors(state)
    for key, t in tensors.items():
        if t.is_floating_point() and key.startswith("model/") and not bool(t.isfinite().all()):
            raise RuntimeError(f"refusing to checkpoint non-finite weights ({key})")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{checkpoint_name(epoch)}-", dir=root))
    try:
        _write_synced(tmp / TENSORS_FILE, save(tensors, metadata={"format": CHECKPOINT_FORMAT}))
        text = json.dumps(data, allow_nan=False)
        _write_synced(tmp / STATE_FILE, text.encode("utf-8"))
        files = {
            name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in (TENSORS_FILE, STATE_FILE)
        }
        manifest = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "files": files}
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------- reading
def read_checkpoint(folder: Path) -> dict[str, Any]:
    """Verify the manifest and load one checkpoint; raises :class:`InputError` if unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: manifest missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{folder / MANIFEST_FILE}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{folder / MANIFEST_FILE}: not a fitwell checkpoint manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {TENSORS_FILE, STATE_FILE}:
        raise InputError(f"{folder / MANIFEST_FILE}: lists unexpected files")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: missing")
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("bytes"):
            raise InputError(f"{path}: truncated or resized (size differs from the manifest)")
        if _sha256(path) != entry.get("sha256"):
            raise InputError(f"{path}: checksum mismatch (corrupt)")
    try:
        tensors = load((folder / TENSORS_FILE).read_bytes())
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return join_tensors(data, tensors)
    except (SafetensorError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"{folder}: unreadable checkpoint ({exc})") from None


def load_latest(
    run_dir: Path, *, warn: Callable[[str], None] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """The newest usable checkpoint as ``(epoch, state)``, falling back past corrupt ones.

    Returns ``None`` when the run has no checkpoint at all (killed before its first one). When
    checkpoints exist but none is usable, raises :class:`InputError`.
    """
    say = warn or (lambda msg: warnings.warn(msg, CheckpointWarning, stacklevel=3))
    found = list_checkpoints(run_dir)
    problems: list[str] = []
    for i, (epoch, folder) in enumerate(found):
        try:
            return epoch, read_checkpoint(folder)
        except InputError as exc:
            problems.append(str(exc))
            nxt = found[i + 1][1].name if i + 1 < len(found) else None
            if nxt is not None:
                say(f"checkpoint {folder.name} is unusable ({exc}); falling back to {nxt}")
    if problems:
        raise InputError(
            f"{Path(run_dir) / CHECKPOINT_DIR}: no usable checkpoint left "
            f"({'; '.join(problems)}); the run cannot be resumed, train it again."
        )
    return None


class Checkpointer(Callback):
    """Writes a trainer checkpoint at the start of every ``every``-th epoch boundary.

    Registered first among the trainer's callbacks, so at ``on_epoch_begin`` the previous epoch
    is complete (history written, stopped members removed) and no other callback has moved yet.
    """

    def __init__(self, run_dir: Path, *, every: int = 1, keep: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.every = every
        self.keep = keep
        self.written: list[int] = []

    def on_epoch_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        epoch = trainer.epoch
        if self.every <= 0 or epoch % self.every:
            return
        if (self.run_dir / CHECKPOINT_DIR / checkpoint_name(epoch)).is_dir():
            return  # resumed from this very checkpoint
        write_checkpoint(self.run_dir, epoch, trainer.state_dict(), keep=self.keep)
        self.written.append(epoch)
