"""A corpus of malformed inputs: each must be refused with exit code 2 and one ``error:`` line.

Every case writes its file(s) into a folder and lists the words the error line must contain
(the file name always; the column and row where they apply). Files are built here rather than
stored as binary blobs, so each case reads as what it is.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

GOOD_HEADER = "a,b,label"


def _rows(n: int = 30, *, label: Callable[[int], str] = lambda i: "yes" if i % 2 else "no") -> str:
    return "".join(f"{i * 0.5},{(i * 7) % 5},{label(i)}\n" for i in range(n))


def _csv(body: str, header: str = GOOD_HEADER) -> bytes:
    return (header + "\n" + body).encode("utf-8")


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good_frame(n: int = 30) -> pd.DataFrame:
    return pd.DataFrame(
        {"a": np.arange(n) * 0.5, "b": np.arange(n) % 5, "label": ["yes", "no"] * (n // 2)}
    )


def _with_row(body: str, index: int, line: str) -> str:
    lines = body.splitlines(keepends=True)
    lines[index] = line
    return "".join(lines)


@dataclass
class Case:
    """One malformed input. ``args`` are CLI arguments after ``train``; ``{f}`` is the file."""

    name: str
    filename: str
    content: bytes | None
    expect: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=lambda: ["{f}", "--target", "label"])


def train_cases() -> list[Case]:
    body = _rows()
    big = _good_frame()
    return [
        Case("empty file", "empty.csv", b""),
        Case("blank lines only", "blank.csv", b"\n\n\n", ["empty"]),
        Case("header only", "header_only.csv", _csv("")),
        Case("header and blank lines", "header_blank.csv", _csv("\n\n")),
        Case("one row", "one_row.csv", _csv("1,2,yes\n")),
        Case("two rows", "two_rows.csv", _csv("1,2,yes\n3,4,no\n")),
        Case(
            "all-NaN column",
            "all_nan.csv",
            _csv("".join(f",{i},{'yes' if i % 2 else 'no'}\n" for i in range(30))),
            ["'a'"],
        ),
        Case("inf value", "inf.csv", _csv(_with_row(body, 4, "inf,1,yes\n")), ["'a'", "row 4"]),
        Case("-inf value", "neginf.csv", _csv(_with_row(body, 7, "1,-inf,no\n")), ["'b'", "row 7"]),
        Case(
            "overflowing number",
            "overflow.csv",
            _csv(_with_row(body, 2, "1e999,1,yes\n")),
            ["'a'", "row 2"],
        ),
        Case(
            "value too large for float32",
            "huge.csv",
            _csv(_with_row(body, 9, "1e30,1,yes\n")),
            ["'a'", "row 9"],
        ),
        Case("NaN target", "nan_target.csv", _csv(_with_row(body, 5, "1,2,\n")), ["'label'", "5"]),
        Case(
            "inf regression target",
            "inf_target.csv",
            _csv("".join(f"{i},{i % 3},{i * 1.5}\n" for i in range(29)) + "1,2,inf\n"),
            ["'label'", "row 29"],
        ),
        Case(
            "single-class target",
            "single_class.csv",
            _csv(_rows(label=lambda i: "yes")),
            ["'label'", "single class"],
        ),
        Case(
            "one-sample class",
            "one_sample_class.csv",
            _csv(_with_row(body, 3, "1,2,maybe\n")),
            ["'maybe'"],
        ),
        Case(
            "all labels unique",
            "unique_labels.csv",
            _csv(_rows(label=lambda i: f"c{i}")),
            ["class"],
        ),
        Case("missing target column", "no_target.csv", _csv(body, "a,b,lbl"), ["'label'"]),
        Case(
            "no feature columns",
            "only_target.csv",
            b"label\n" + b"".join(b"yes\n" if i % 2 else b"no\n" for i in range(30)),
            ["feature"],
        ),
        Case("duplicate column names", "dup_cols.csv", _csv(body, "a,a,label"), ["'a'"]),
        Case("duplicate after trimming", "dup_trim.csv", _csv(body, "a, a,label"), ["'a'"]),
        Case("empty column name", "empty_name.csv", _csv(body, "a,,label"), ["empty column"]),
        Case(
            "string in numeric column",
            "typo.csv",
            _csv(_with_row(body, 6, "1,two,no\n")),
            ["'b'", "row 6", "two"],
        ),
        Case(
            "ragged row, extra field",
            "ragged_long.csv",
            _csv(_with_row(body, 3, "1,2,yes,9\n")),
            ["row 5", "4 fields"],
        ),
        Case(
            "ragged row, missing field",
            "ragged_short.csv",
            _csv(_with_row(body, 8, "1,yes\n")),
            ["row 10", "2 fields"],
        ),
        Case(
            "wrong delimiter", "semicolon.csv", _csv(body.replace(",", ";"), "a;b;label"), ["';'"]
        ),
        Case(
            "tab-separated .csv",
            "tabs.csv",
            _csv(body.replace(",", "\t"), "a\tb\tlabel"),
            ["tab-separated"],
        ),
        Case(
            "non-UTF-8 bytes",
            "latin1.csv",
            _csv(body).replace(b"yes", "yés".encode("latin-1"), 1),
            ["line 3", "UTF-8"],
        ),
        Case(
            "UTF-16 with BOM", "utf16.csv", (GOOD_HEADER + "\n" + body).encode("utf-16"), ["UTF-8"]
        ),
        Case("NUL bytes", "nul.csv", _csv(body).replace(b"1", b"\x00", 1), ["NUL"]),
        Case(
            "gzip disguised as CSV",
            "gz.csv",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" * 5,
            ["UTF-8"],
        ),
        Case("unclosed quote", "quote.csv", _csv(_with_row(body, 4, '1,"2,yes\n')), []),
        Case("unsupported suffix", "table.xlsx", b"PK\x03\x04 not really", ["unsupported"]),
        Case("file does not exist", "missing.csv", None, ["does not exist"]),
        Case(
            "corrupt Parquet",
            "corrupt.parquet",
            b"PAR1" + b"\x00garbage" * 20 + b"PAR1",
            ["Parquet"],
        ),
        Case("truncated Parquet", "truncated.parquet", _parquet(big)[:300], ["Parquet"]),
        Case(
            "Parquet with a list column",
            "nested.parquet",
            _parquet(big.assign(a=[[i, i] for i in range(30)])),
            ["'a'"],
        ),
        Case(
            "Parquet with a datetime column",
            "dates.parquet",
            _parquet(big.assign(a=pd.date_range("2020-01-01", periods=30))),
            ["'a'"],
        ),
        Case(
            "Parquet with an inf",
            "inf.parquet",
            _parquet(big.assign(a=np.where(np.arange(30) == 11, np.inf, 1.0))),
            ["'a'", "row 11"],
        ),
        Case(
            "object-dtype .npz",
            "object.npz",
            _npz(X=np.array([[1, "a"]] * 30, dtype=object), y=np.arange(30) % 2),
            ["object"],
            ["{f}"],
        ),
        Case(
            "3-D .npz",
            "cube.npz",
            _npz(X=np.zeros((30, 2, 2)), y=np.arange(30) % 2),
            ["'X'", "2-D"],
            ["{f}"],
        ),
        Case(
            "mismatched X/y lengths",
            "mismatch.npz",
            _npz(X=np.zeros((30, 3)), y=np.arange(29) % 2),
            ["30", "29"],
            ["{f}"],
        ),
        Case(".npz without y", "no_y.npz", _npz(X=np.zeros((30, 3))), ["'y'"], ["{f}"]),
        Case(
            ".npz with 2-D y",
            "y2d.npz",
            _npz(X=np.zeros((30, 3)), y=np.zeros((30, 2))),
            ["'y'"],
            ["{f}"],
        ),
        Case(
            ".npz with NaN target",
            "nan_y.npz",
            _npz(X=np.ones((30, 3)), y=np.where(np.arange(30) == 4, np.nan, 1.0)),
            ["'y'"],
            ["{f}"],
        ),
        Case(
            ".npz with inf feature",
            "inf_x.npz",
            _npz(X=np.where(np.arange(90).reshape(30, 3) == 40, np.inf, 1.0), y=np.arange(30) % 2),
            ["'x1'", "row 13"],
            ["{f}"],
        ),
        Case(
            "not a zip .npz", "fake.npz", b"this is not a zip archive" * 4, ["not a .npz"], ["{f}"]
        ),
        Case("directory as data", "a_folder.csv", None, ["not a regular file"]),
    ]


def predict_cases() -> list[Case]:
    """Inputs for ``fitwell predict RUN data``; the run was trained on columns a, b."""
    body = "".join(f"{i * 0.5},{i % 5}\n" for i in range(10))
    return [
        Case(
            "predict: missing column",
            "pred_missing.csv",
            _csv(body, "a,c"),
            ["'b'"],
            ["{run}", "{f}"],
        ),
        Case(
            "predict: string in numeric column",
            "pred_typo.csv",
            _csv(_with_row(body, 3, "1,three\n"), "a,b"),
            ["'b'", "row 3"],
            ["{run}", "{f}"],
        ),
        Case(
            "predict: inf value",
            "pred_inf.csv",
            _csv(_with_row(body, 2, "inf,1\n"), "a,b"),
            ["'a'", "row 2"],
            ["{run}", "{f}"],
        ),
        Case(
            "predict: non-UTF-8", "pred_latin1.csv", b"a,b\n1,\xe9\n", ["UTF-8"], ["{run}", "{f}"]
        ),
        Case("predict: empty file", "pred_empty.csv", b"", ["empty"], ["{run}", "{f}"]),
    ]


def materialize(case: Case, folder: Path) -> Path:
    """Write the case's file into ``folder`` and return its path."""
    path = folder / case.filename
    if case.name == "directory as data":
        path.mkdir()
    elif case.content is not None:
        path.write_bytes(case.content)
    return path
