"""Read well-formed CSV files with Arrow, block by block, into compact column arrays.

The careful reader in :mod:`fitwell.data.loading` holds the file's bytes and its text and
parses it twice: on a table of millions of rows that is gigabytes. This path streams the file in
blocks, stores float columns as float32 where float32 is exact enough, and never holds the text.
It accepts only what it reads the way the careful path does; for anything else it returns None
(or raises :class:`NotArrowReadable`), and the careful path reads the file and names the problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fitwell.heap import trim_heap

# pandas' default missing-value markers, so both paths read the same cells as missing.
NA_VALUES = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
# Small blocks: Arrow's working memory grows with the block (about 200 MB extra at 4 MB blocks,
# 500 MB at 64 MB; 80 MB at 1 MB). Types are inferred from the first block and widened, as
# pandas does (null -> int -> float -> text, bool -> text), when a later block disagrees.
BLOCK_BYTES = 1 << 20
MAX_WIDENINGS = 64
# Blocks between heap trims: the kept float32 blocks sit between freed Arrow buffers, and glibc
# keeps those free pages resident until trimmed (~100 MB per 1M x 20 table otherwise).
TRIM_EVERY_BLOCKS = 32
# A float column is stored as float32 when rounding to float32 moves no value by more than this
# share of the column's spread (judged on the first block): then the rounding is far below what
# a network fed standardized float32 inputs can resolve. Otherwise it stays float64 (e.g. values
# near 1e8 that differ by 0.1).
FLOAT32_TOLERANCE = 1e-4


class NotArrowReadable(Exception):
    """The file needs the careful reader (which will name the problem, if there is one)."""


def _arrow():  # imported lazily: pyarrow costs start-up time that most commands do not need
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    return pa, pc, pacsv


def _open(path: Path, sep: str, columns: Sequence[str] | None, types: dict | None):
    pa, _, pacsv = _arrow()
    try:
        return pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                null_values=NA_VALUES,
                strings_can_be_null=True,
                include_columns=list(columns) if columns is not None else None,
                column_types=types or {},
            ),
            # malloc hands large blocks back to the system; Arrow's default pool keeps them.
            memory_pool=pa.system_memory_pool(),
        )
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise NotArrowReadable(str(exc)) from None


def _header_ok(names: Sequence[str], sep: str) -> bool:
    """What the careful path's header checks accept (it raises with a message otherwise)."""
    stripped = [n.strip() for n in names]
    if any(n == "" or "\x00" in n for n in stripped) or len(set(stripped)) != len(stripped):
        return False
    return not (len(stripped) == 1 and any(c in stripped[0] for c in ";\t|" if c != sep))


def _column(array, max_cell_chars: int):
    """One column of one block as the careful path reads it; raises NotArrowReadable."""
    pa, pc, _ = _arrow()
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if len(array) and array.null_count < len(array):
            if pc.any(pc.match_substring(array, "\x00")).as_py():
                raise NotArrowReadable("NUL byte")
            if pc.max(pc.utf8_length(array)).as_py() > max_cell_chars:
                raise NotArrowReadable("oversized cell")
        # pandas' skipinitialspace: spaces after the separator are not part of the value.
        trimmed = pc.utf8_ltrim(array, characters=" ")
        return pc.if_else(pc.is_in(trimmed, value_set=pa.array(NA_VALUES)), None, trimmed)
    if (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    ):
        return array
    raise NotArrowReadable(f"type {kind}")  # dates, binary (invalid UTF-8), ...: careful path


def _float32_enough(array) -> bool:
    values = array.to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return True
    spread = float(values.std())
    rounding = float(np.abs(values - values.astype(np.float32)).max())
    return rounding == 0.0 or (spread > 0 and rounding <= FLOAT32_TOLERANCE * spread)


def _to_series(chunks: list, name: str) -> pd.Series:
    """One column from its Arrow blocks."""
    pa, _, _ = _arrow()
    column = pa.chunked_array(chunks) if chunks else pa.chunked_array([], type=pa.null())
    return column.to_pandas().rename(name)


def _blocks(reader) -> Iterator:
    pa, _, _ = _arrow()
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, ValueError) as exc:  # a row that breaks the inferred types
            raise NotArrowReadable(str(exc)) from None
        yield batch


def _widened(reader_schema, message: str, types: dict) -> dict | None:
    """The column types to retry with after ``message`` (a later block disagreeing with the
    types inferred from the first), or None when nothing can be widened."""
    pa, _, _ = _arrow()
    found = re.search(r"column #(\d+)", message)
    if not found or "conversion error" not in message:
        return None
    name = reader_schema.names[int(found.group(1))]
    now = types.get(name, reader_schema.field(name).type)
    if pa.types.is_null(now) or pa.types.is_integer(now):
        wider = pa.float64()
    elif pa.types.is_floating(now) or pa.types.is_boolean(now):
        wider = pa.string()
    else:
        return None
    return {**types, name: wider}


def read_csv_arrow(path: Path, sep: str, max_cell_chars: int) -> pd.DataFrame | None:
    """The whole table, or None when the careful path must read it."""
    types: dict = {}
    for _ in range(MAX_WIDENINGS):
        try:
            reader = _open(path, sep, None, types)
        except NotArrowReadable:
            return None
        names = list(reader.schema.names)
        if not _header_ok(names, sep):
            return None
        try:
            return _read_all(reader, names, max_cell_chars, path.stat().st_size)
        except NotArrowReadable as exc:
            wider = _widened(reader.schema, str(exc), types)
            if wider is None:
                return None
            types = wider
    return None


class _Float32Column:
    """A float32 column filled block by block in one array, grown by half when full.

    Sized from the first block's rows per byte: pages never written cost no memory, so a
    generous estimate is free, while a list of small blocks to concatenate would fragment the
    heap and hold the column twice."""

    def __init__(self, capacity: int) -> None:
        self.values = np.empty(max(capacity, 1024), dtype=np.float32)
        self.size = 0

    def append(self, block: np.ndarray) -> None:
        end = self.size + len(block)
        if end > len(self.values):
            grown = np.empty(max(end, len(self.values) * 3 // 2), dtype=np.float32)
            grown[: self.size] = self.values[: self.size]
            self.values = grown
        self.values[self.size : end] = block  # cast from float64 in place, no temporary
        self.size = end

    def series(self, name: str) -> pd.Series:
        return pd.Series(self.values[: self.size], name=name, copy=False)


def _read_all(reader, names: list[str], max_cell_chars: int, file_bytes: int) -> pd.DataFrame:
    chunks: list = [[] for _ in names]
    first = True
    for n_blocks, batch in enumerate(_blocks(reader), start=1):
        if n_blocks % TRIM_EVERY_BLOCKS == 0:
            trim_heap()
        if first:  # rows in the file, estimated from the first block (1 MB of text)
            estimate = int(1.25 * batch.num_rows * file_bytes / min(BLOCK_BYTES, file_bytes))
        for i in range(len(names)):
            array = _column(batch.column(i), max_cell_chars)
            if first and pa_is_float(array) and _float32_enough(array):
                chunks[i] = _Float32Column(estimate)
            if isinstance(chunks[i], _Float32Column):
                chunks[i].append(array.to_numpy(zero_copy_only=False))
            else:
                chunks[i].append(array)
        first = False
    columns = {}
    for i, name in enumerate(names):
        column = chunks[i]
        if isinstance(column, _Float32Column):
            columns[name.strip()] = column.series(name.strip())
        else:
            columns[name.strip()] = _to_series(column, name.strip())
        chunks[i] = []  # release the Arrow blocks of this column before the next
    trim_heap()
    return pd.DataFrame(columns, copy=False)


def pa_is_float(array) -> bool:
    pa, _, _ = _arrow()
    return pa.types.is_floating(array.type)


def csv_column_names(path: Path, sep: str) -> list[str] | None:
    """The header's column names (stripped), or None when the careful path must read the file."""
    try:
        reader = _open(path, sep, None, None)
    except NotArrowReadable:
        return None
    names = list(reader.schema.names)
    return [n.strip() for n in names] if _header_ok(names, sep) else None


def iter_csv_frames(
    path: Path,
    sep: str,
    *,
    numeric: Sequence[str],
    text: Sequence[str],
    max_cell_chars: int,
) -> Iterator[pd.DataFrame]:
    """The columns ``numeric`` (read as numbers) and ``text`` (read as text) of the file, one
    frame per block; raises NotArrowReadable where the careful path must read the file."""
    pa, _, _ = _arrow()
    raw_names = _raw_names(path, sep)
    wanted = {n.strip(): n for n in raw_names}
    types = {wanted[c]: pa.float64() for c in numeric}
    types.update({wanted[c]: pa.string() for c in text})
    reader = _open(path, sep, [wanted[c] for c in (*numeric, *text)], types)
    for batch in _blocks(reader):
        columns = {}
        for i, name in enumerate(batch.schema.names):
            array = _column(batch.column(i), max_cell_chars)
            columns[name.strip()] = array.to_pandas().rename(name.strip())
        yield pd.DataFrame(columns, copy=False)


def _raw_names(path: Path, sep: str) -> list[str]:
    reader = _open(path, sep, None, None)
    names = list(reader.schema.names)
    if not _header_ok(names, sep):
        raise NotArrowReadable("header")
    return names
