"""Load a table (CSV, Parquet, ``.npz`` or built-in) and validate it before anything is written.

Every error names the file and, where it applies, the column, row and value.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fitwell.data.arrow_csv import read_csv_arrow
from fitwell.errors import InputError, did_you_mean

# Training runs in float32: a value this large overflows once standardized by train-row statistics
# and multiplied through the network (3.4e38 is float32's limit; squares of 1e19 already overflow).
MAX_ABS_VALUE = 1e15

# Longest cell (characters) a table may hold: Python's csv default field limit. Longer cells are
# pasted documents or binary junk, not a feature value.
MAX_CELL_CHARS = 131_072

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npz")


@dataclass
class Table:
    """A validated feature table and its target column name."""

    frame: pd.DataFrame
    target: str | None
    source: str
    # Per-row sample weights (``weight_column``), taken out of the frame: never a feature.
    weights: np.ndarray | None = None

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.target]


def load_table(
    path: str | Path | None = None,
    *,
    dataset: str | None = None,
    target: str | None = None,
    require_target: bool = True,
    weight_column: str | None = None,
) -> Table:
    """Load and validate a table from a file or a built-in dataset name.

    ``weight_column`` is taken out of the frame into ``Table.weights`` (see
    :func:`read_weights`), so it is never a feature.
    """
    if dataset is not None:
        from fitwell.data.datasets import load_builtin

        frame, default_target = load_builtin(dataset)
        source = f"dataset {dataset!r}"
        target = target or default_target
    elif path is not None:
        frame, npz_target = read_file(path)
        source = str(path)
        target = target or npz_target
    else:
        raise InputError("no data given: pass a data file or `--dataset NAME`.")
    if require_target and target is None:
        raise InputError(f"{source}: no target column given; use `--target COLUMN`.")
    weights = None
    if weight_column is not None:
        if weight_column == target:
            raise InputError(
                f"{source}: weight column {weight_column!r} is the target column; "
                "choose another column for --weight-column."
            )
        weights = read_weights(frame, weight_column, source)
        frame = frame.drop(columns=[weight_column])
    table = Table(frame=frame, target=target, source=source, weights=weights)
    validate_table(table, require_target=require_target)
    return table


def read_weights(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """The sample weights in ``column``: numbers, finite, >= 0 and not all zero.

    Errors name the file, the column, the first bad data row and its value.
    """
    cols = [str(c) for c in frame.columns]
    if column not in cols:
        hint = did_you_mean(column, cols)
        raise InputError(f"{source}: weight column {column!r} not found.{hint}")
    series = frame[frame.columns[cols.index(column)]]
    what = f"{source}: weight column {column!r}"
    if pd.api.types.is_bool_dtype(series):
        raise InputError(f"{what} holds true/false values; weights must be numbers >= 0.")
    missing = series.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise InputError(f"{what} is missing a value in data row {row}; weights must be numbers.")
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64)
    else:
        parsed = pd.to_numeric(series.astype(str).str.strip(), errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{what} holds {series.iloc[row]!r} in data row {row}; weights must be numbers."
            )
        values = parsed.to_numpy(dtype=np.float64)
    wrong = ~np.isfinite(values) | (values < 0)
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise InputError(
            f"{what} holds {values[row]:g} in data row {row}; weights must be finite and >= 0."
        )
    if not (values > 0).any():
        raise InputError(f"{what} is zero in every row; at least one row must weigh more than 0.")
    return values


def read_file(path: str | Path) -> tuple[pd.DataFrame, str | None]:
    """Read a data file into a frame. ``.npz`` files bring their own target column ``y``."""
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise InputError(f"{name}: file does not exist.")
    if not p.is_file():
        raise InputError(f"{name}: not a regular file.")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"{name}: unsupported file type {suffix or '(none)'!r}; use .csv, .parquet or .npz."
        )
    if p.stat().st_size == 0:
        raise InputError(f"{name}: file is empty.")
    if suffix == ".npz":
        import zipfile

        if not zipfile.is_zipfile(p):  # else np.load would try it as a (pickled) .npy file
            raise InputError(f"{name}: not a .npz archive (a .npz file is a zip of arrays).")
        return _read_npz(p), "y"
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(p), None
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise InputError(f"{name}: not a readable Parquet file ({_first_line(exc)}).") from None
    return _read_csv(p), None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _read_csv(p: Path) -> pd.DataFrame:
    """Well-formed files take the Arrow path (columns straight into compact arrays, no copy of
    the text); anything it does not accept is read again by the careful path, which names the
    problem by line, column and value."""
    sep = "\t" if p.suffix.lower() == ".tsv" else ","
    frame = read_csv_arrow(p, sep, MAX_CELL_CHARS)
    if frame is not None:
        return frame
    return _read_csv_careful(p, sep)


def _read_csv_careful(p: Path, sep: str) -> pd.DataFrame:
    name = str(p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{name}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8."
        ) from None
    del raw
    if not text.strip():
        raise InputError(f"{name}: file is empty (only blank lines).")
    if "\x00" in text:
        raise InputError(f"{name}: contains NUL bytes; is it a binary file?")
    # The csv module's own field limit would stop at an oversized cell without naming it: lift
    # it while reading (restored after) and name the row and column here instead.
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, len(text) + 1))
    try:
        return _parse_csv(name, text, sep)
    finally:
        csv.field_size_limit(old_limit)


def _check_cell_sizes(name: str, row: list[str], header: list[str], lineno: int) -> None:
    for i, cell in enumerate(row):
        if len(cell) > MAX_CELL_CHARS:
            column = header[i] if i < len(header) else f"#{i + 1}"
            raise InputError(
                f"{name}: row {lineno}, column {column!r} holds a cell of {len(cell):,} "
                f"characters (at most {MAX_CELL_CHARS:,}); is this a table of features?"
            )


def check_header(name: str, header: list[str], sep: str) -> None:
    """A header fitwell can read: more than one separator-kind, no empty or repeated names."""
    if len(header) == 1:
        for other, label in (
            (";", "';'-separated"),
            ("\t", "tab-separated"),
            ("|", "'|'-separated"),
        ):
            if other != sep and other in header[0]:
                raise InputError(
                    f"{name}: the header is one column {header[0][:60]!r}; the file looks "
                    f"{label}. fitwell reads comma-separated .csv and tab-separated .tsv files."
                )
    seen: set[str] = set()
    for col in header:
        if col == "":
            raise InputError(f"{name}: the header has an empty column name.")
        if col in seen:
            raise InputError(f"{name}: column {col!r} appears more than once in the header.")
        seen.add(col)


def _parse_csv(name: str, text: str, sep: str) -> pd.DataFrame:
    rows = csv.reader(io.StringIO(text), delimiter=sep)
    try:
        header = next(rows)
    except StopIteration:
        raise InputError(f"{name}: file is empty.") from None
    except csv.Error as exc:
        raise InputError(f"{name}: cannot parse the header ({exc}).") from None
    _check_cell_sizes(name, header, [f"#{i + 1}" for i in range(len(header))], 1)
    header = [h.strip() for h in header]
    check_header(name, header, sep)
    try:
        for row in rows:
            lineno = rows.line_num
            _check_cell_sizes(name, row, header, lineno)
            if row and len(row) != len(header):
                raise InputError(
                    f"{name}: row {lineno} has {len(row)} fields, the header has {len(header)}."
                )
    except csv.Error as exc:
        raise InputError(f"{name}: cannot parse the file ({exc}).") from None
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{name}: cannot parse the file ({_first_line(exc)}).") from None
    frame.columns = header
    return frame


def _read_npz(p: Path) -> pd.DataFrame:
    name = str(p)
    try:
        # allow_pickle=False: an object array in the file is rejected, never unpickled.
        with np.load(p, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = {"X", "y"} - keys
            if missing:
                raise InputError(
                    f"{name}: .npz must hold arrays 'X' and 'y'; missing {sorted(missing)} "
                    f"(found {sorted(keys)})."
                )
            x = archive["X"]
            y = archive["y"]
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(
                f"{name}: holds object arrays, which fitwell does not load (they need pickle)."
            ) from None
        raise InputError(f"{name}: not a readable .npz file ({_first_line(exc)}).") from None
    except Exception as exc:
        raise InputError(f"{name}: not a readable .npz file ({_first_line(exc)}).") from None
    if x.ndim != 2:
        raise InputError(f"{name}: array 'X' must be 2-D (rows x features); got shape {x.shape}.")
    if y.ndim != 1:
        raise InputError(f"{name}: array 'y' must be 1-D; got shape {y.shape}.")
    if len(x) != len(y):
        raise InputError(f"{name}: 'X' has {len(x)} rows but 'y' has {len(y)}.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InputError(f"{name}: array 'X' must be numeric; got dtype {x.dtype}.")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["y"] = y
    return frame


def _numeric_mostly(series: pd.Series) -> tuple[float, pd.Series]:
    values = series.dropna()
    parsed = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    return (float(parsed.notna().mean()) if len(values) else 0.0), parsed


def validate_table(
    table: Table,
    *,
    require_target: bool = True,
    allow_empty_columns: bool = False,
    first_row: int = 0,
) -> None:
    """Reject tables that cannot be trained on, naming the file, column, row and value.

    ``allow_empty_columns``: a column with no values at all is fine (rows to predict, where the
    preprocessing imputes it); every value that is there is checked as in training.
    ``first_row``: the data row of the frame's first row, when it is a chunk of a larger file.
    """
    src, frame = table.source, table.frame
    if frame.shape[1] == 0:
        raise InputError(f"{src}: no columns.")
    if len(frame) == 0:
        raise InputError(f"{src}: no data rows (only a header?).")
    cols = [str(c) for c in frame.columns]
    if len(set(cols)) != len(cols):
        dup = next(c for c in cols if cols.count(c) > 1)
        raise InputError(f"{src}: column {dup!r} appears more than once.")
    frame.columns = cols
    if require_target:
        if table.target not in frame.columns:
            hint = did_you_mean(str(table.target), cols)
            shown = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")
            raise InputError(
                f"{src}: target column {table.target!r} not found.{hint} Columns: {shown}."
            )
        target = frame[table.target]
        bad = target.isna()
        if bad.any():
            rows = [int(i) for i in np.flatnonzero(bad.to_numpy())[:5]]
            raise InputError(
                f"{src}: target column {table.target!r} is missing a value in "
                f"{int(bad.sum())} row(s) (first data rows {rows}); drop or fill them."
            )
        if pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target):
            inf = ~np.isfinite(target.to_numpy(dtype=float))
            if inf.any():
                row = int(np.flatnonzero(inf)[0])
                raise InputError(
                    f"{src}: target column {table.target!r} has a non-finite value "
                    f"{float(target.iloc[row])} in data row {row}."
                )
            _check_magnitude(src, str(table.target), target.to_numpy(dtype=float))
    features = [c for c in cols if c != table.target]
    if not features:
        raise InputError(f"{src}: no feature columns besides the target {table.target!r}.")
    for col in features:
        series = frame[col]
        if series.isna().all():
            if allow_empty_columns:
                continue
            raise InputError(f"{src}: column {col!r} has no values (all missing); drop it.")
        if pd.api.types.is_bool_dtype(series):
            continue
        if pd.api.types.is_numeric_dtype(series):
            values = series.to_numpy(dtype=float)
            inf = np.isinf(values)
            if inf.any():
                row = int(np.flatnonzero(inf)[0])
                raise InputError(
                    f"{src}: column {col!r} has an infinite value {values[row]} in data row "
                    f"{first_row + row}."
                )
            _check_magnitude(src, col, values, first_row)
            continue
        if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            nested = series.map(lambda v: not _is_scalar_cell(v)).to_numpy(dtype=bool)
            if nested.any():
                row = int(np.flatnonzero(nested)[0])
                raise InputError(
                    f"{src}: column {col!r} holds a {type(series.iloc[row]).__name__} in data row "
                    f"{first_row + row}; cells must be numbers or text."
                )
            lengths = series.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy()
            if len(lengths) and lengths.max() > MAX_CELL_CHARS:
                row = int(np.argmax(lengths > MAX_CELL_CHARS))
                raise InputError(
                    f"{src}: column {col!r} holds a cell of {int(lengths[row]):,} characters in "
                    f"data row {first_row + row} (at most {MAX_CELL_CHARS:,}); is this a table of "
                    "features?"
                )
            share, parsed = _numeric_mostly(series)
            # A column that is almost all numbers holds a typo, not a category.
            if share >= 0.9 and share < 1.0:
                bad_pos = parsed[parsed.isna()].index[0]
                row = int(frame.index.get_loc(bad_pos))
                raise InputError(
                    f"{src}: column {col!r} is numeric but data row {first_row + row} holds "
                    f"{series.loc[bad_pos]!r}; fix or blank that value."
                )
            if share == 1.0:
                as_num = parsed.astype(float)
                if not np.isfinite(as_num.to_numpy()).all():
                    row = int(np.flatnonzero(~np.isfinite(as_num.to_numpy()))[0])
                    raise InputError(
                        f"{src}: column {col!r} has a non-finite value in data row "
                        f"{first_row + row}."
                    )
                _check_magnitude(src, col, as_num.to_numpy(), first_row)
                frame[col] = pd.to_numeric(series.astype(str).str.strip(), errors="coerce")
            continue
        if not isinstance(series.dtype, pd.CategoricalDtype):
            raise InputError(f"{src}: column {col!r} has unsupported type {series.dtype}.")


def _is_scalar_cell(value: object) -> bool:
    """Numbers, text, booleans and missing values; not lists, dicts, bytes or arrays."""
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def _check_magnitude(src: str, col: str, values: np.ndarray, first_row: int = 0) -> None:
    big = np.abs(np.nan_to_num(values, nan=0.0)) > MAX_ABS_VALUE
    if big.any():
        row = int(np.flatnonzero(big)[0])
        raise InputError(
            f"{src}: column {col!r} has a value {values[row]:.4g} in data row {first_row + row} "
            f"beyond +-{MAX_ABS_VALUE:g}, too large for float32 training; rescale the column."
        )


def check_finite_number(value: float, what: str) -> None:
    """Raise when a number that must be finite is not."""
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite; got {value}.")
