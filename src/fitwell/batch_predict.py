"""Predict a file of any size in chunks of rows, streamed to the output, all or nothing.

Memory stays one chunk plus the model however many rows the file holds. The output appears only
when every row has been checked and predicted: rows go to a temporary file beside ``--out``
(renamed over it at the end) or, for standard output, to a temporary file copied out at the end;
so a bad value at row 4 million leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch

from fitwell import runs
from fitwell.data.arrow_csv import NotArrowReadable, csv_column_names, iter_csv_frames
from fitwell.data.loading import MAX_CELL_CHARS, Table, read_file, validate_table
from fitwell.errors import InputError
from fitwell.heap import trim_heap
from fitwell.predictor import Run

CHUNK_ROWS = 16_384


@dataclass
class PredictSummary:
    """What the user is told beside the predictions."""

    rows: int = 0
    extra_columns: list[str] = field(default_factory=list)
    unknown_categories: dict[str, int] = field(default_factory=dict)


class _Restart(Exception):
    """The streaming reader met something only the careful reader handles: start again."""


def _sep(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _columns(path: Path) -> list[str] | None:
    """The file's column names without reading its rows; None: read the whole file instead."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return csv_column_names(path, _sep(path))
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return [str(n) for n in pq.ParquetFile(path).schema_arrow.names]
        except Exception:  # a corrupt file: the careful reader names it
            return None
    return None


def _streamed(path: Path, run: Run) -> Iterator[pd.DataFrame]:
    """The model's columns of ``path`` in frames of about CHUNK_ROWS rows."""
    specs = run.preprocessor.columns
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches(
                batch_size=CHUNK_ROWS, columns=[c.name for c in specs]
            ):
                yield batch.to_pandas()
        except Exception as exc:
            raise _Restart(str(exc)) from None
        return
    numeric = [c.name for c in specs if c.kind == "numeric"]
    text = [c.name for c in specs if c.kind != "numeric"]
    pending: list[pd.DataFrame] = []
    held = 0
    try:
        for frame in iter_csv_frames(
            path, _sep(path), numeric=numeric, text=text, max_cell_chars=MAX_CELL_CHARS
        ):
            pending.append(frame)
            held += len(frame)
            if held >= CHUNK_ROWS:
                yield pd.concat(pending, ignore_index=True)
                pending, held = [], 0
    except NotArrowReadable as exc:
        raise _Restart(str(exc)) from None
    if pending:
        yield pd.concat(pending, ignore_index=True)


def _whole(path: Path) -> Iterator[pd.DataFrame]:
    frame, _ = read_file(path)
    for start in range(0, len(frame), CHUNK_ROWS):
        yield frame.iloc[start : start + CHUNK_ROWS].reset_index(drop=True)


def predict_file(run: Run, path: str | Path, out: Path | None) -> PredictSummary:
    """Predict every row of ``path`` into ``out`` (CSV; None: standard output)."""
    path = Path(path)
    columns = _columns(path)
    if columns is None:
        columns = [str(c) for c in read_file(path)[0].columns]  # also raises the careful errors
        chunks = _whole(path)
    else:
        chunks = _streamed(path, run)
    expected = run.preprocessor.input_columns
    missing = [c for c in expected if c not in columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} that the "
            "model was trained on."
        )
    # The target and the weight column (``weight_column``) are expected extras, not noted.
    # (metrics.json is read as whatever JSON it holds; predicting does not need it.)
    metrics = run.metrics if isinstance(run.metrics, dict) else {}
    known = {run.target, metrics.get("weight_column")}
    summary = PredictSummary(
        extra_columns=[c for c in columns if c not in expected and c not in known]
    )
    target_dir = out.parent if out is not None else Path(tempfile.gettempdir())
    name = out.name if out is not None else "predictions.csv"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target_dir)
    try:
        runs.give_new_file_mode(fd)
        with os.fdopen(fd, "w", newline="") as fh:
            try:
                _predict_chunks(run, path, chunks, fh, summary)
            except _Restart:  # the careful reader takes over from the first row
                fh.seek(0)
                fh.truncate()
                summary.rows = 0
                summary.unknown_categories.clear()
                _predict_chunks(run, path, _whole(path), fh, summary)
            fh.flush()
            os.fsync(fh.fileno())
        if summary.rows == 0:
            raise InputError(f"{path}: no data rows to predict.")
        if out is not None:
            os.replace(tmp, out)
        else:
            with open(tmp, encoding="utf-8") as fh:
                shutil.copyfileobj(fh, sys.stdout)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return summary


def _predict_chunks(
    run: Run, path: Path, chunks: Iterator[pd.DataFrame], fh: IO[str], summary: PredictSummary
) -> None:
    source = str(path)
    expected = run.preprocessor.input_columns
    first_bad: int | None = None
    n_bad = 0
    for frame in chunks:
        offset = summary.rows
        validate_table(
            Table(frame[expected].copy(), target=None, source=source),
            require_target=False,
            allow_empty_columns=True,
            first_row=offset,
        )
        x = run.preprocessor.transform(frame, source=source, first_row=offset)
        for col, n in run.preprocessor.unknown_categories(frame).items():
            summary.unknown_categories[col] = summary.unknown_categories.get(col, 0) + n
        outputs = run.encoded_outputs(x)
        if run.task == "classification":
            proba = torch.softmax(torch.as_tensor(outputs), dim=1).numpy()
            result = pd.DataFrame({"prediction": run.target_encoder.decode(proba.argmax(axis=1))})
            for i, c in enumerate(run.target_encoder.classes):
                result[f"proba_{c}"] = proba[:, i]
            checked = proba
        else:
            values = run.target_encoder.decode(outputs[:, 0])
            result = pd.DataFrame({"prediction": values})
            checked = np.asarray(values, dtype=float)
        bad = ~np.isfinite(np.asarray(checked, dtype=float).reshape(len(result), -1)).all(axis=1)
        if bad.any():  # a wrong answer must never leave with exit 0; count them all first
            n_bad += int(bad.sum())
            if first_bad is None:
                first_bad = offset + int(np.flatnonzero(bad)[0])
        elif first_bad is None:
            result.to_csv(fh, index=False, header=offset == 0)
        summary.rows += len(frame)
        trim_heap()  # each chunk's pandas and torch temporaries: hand their pages back
    if first_bad is not None:
        raise InputError(
            f"{path}: data row {first_bad} gives a non-finite prediction ({n_bad} row(s) "
            "in all); its values lie far outside what the model was trained on."
        )
