"""Big tables without big copies: the Arrow CSV path, column-wise preprocessing, chunked
predict, block-wise linear reference. Each is checked against the plain computation it
replaces, on small inputs cut into many blocks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fitwell.cli import main
from fitwell.data import arrow_csv
from fitwell.data.loading import _read_csv_careful, read_file
from fitwell.data.preprocessing import Preprocessor

TINY = ["--max-epochs", "2", "--hidden", "4", "--quiet", "--ensemble", "1"]


def _same_frames(fast: pd.DataFrame, careful: pd.DataFrame) -> None:
    assert list(fast.columns) == list(careful.columns)
    for name in fast.columns:
        a, b = fast[name], careful[name]
        if pd.api.types.is_float_dtype(a) or pd.api.types.is_float_dtype(b):
            np.testing.assert_allclose(
                a.to_numpy(dtype=float), b.to_numpy(dtype=float), rtol=1e-6, equal_nan=True
            )
        else:
            assert (
                a.astype(object).where(a.notna(), None).tolist()
                == b.astype(object).where(b.notna(), None).tolist()
            ), name


CSVS = {
    "numbers and text": "a,b,c\n1,x,0.5\n2,y,1.5\n3,,2.5\n",
    "spaces after the comma": "a, b\n 1, x\n2,NA\n3, None\n",
    "missing markers": "a,b\nNA,n/a\n1,<NA>\nnull,z\n",
    "booleans with a gap": "a,b\nTrue,1\nFalse,0\n,1\n",
    "quoted separators": 'a,b\n1,"x,y"\n2,"z"\n',
    "byte-order mark": "\ufeffa,b\n1,2\n3,4\n",
    # Types inferred from the first block and widened when a later block disagrees.
    "widened across blocks": "a,b,c,d\n" + "1,,x,True\n" * 400 + "2.5,3,y,maybe\n",
}


@pytest.mark.parametrize("name", sorted(CSVS))
def test_arrow_path_reads_what_the_careful_path_reads(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrow_csv, "BLOCK_BYTES", 256)  # many blocks even for tiny files
    path = tmp_path / "t.csv"
    path.write_text(CSVS[name], encoding="utf-8")
    fast = arrow_csv.read_csv_arrow(path, ",", 10_000)
    assert fast is not None
    _same_frames(fast, _read_csv_careful(path, ","))


@pytest.mark.parametrize(
    "raw",
    [
        b"a,b\n2020-01-01,1\n2020-01-02,2\n",  # dates: Arrow would parse them, pandas keeps text
        b"a,b\n1,\xff\n",  # invalid UTF-8
        b"a,b\n1,x\x00y\n",  # NUL byte
        b"a,b\n1,2,3\n",  # a row longer than the header
        b"a;b;c\n1;2;3\n",  # another separator
    ],
)
def test_arrow_path_hands_odd_files_to_the_careful_path(raw: bytes, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(raw)
    assert arrow_csv.read_csv_arrow(path, ",", 10_000) is None


def test_float_columns_are_float32_only_where_that_is_exact_enough(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "plain": rng.normal(size=500),
            # 1e8 + noise of 0.1: float32's spacing there is 8, so it stays float64.
            "offset": 1e8 + rng.normal(scale=0.1, size=500),
            "y": rng.integers(0, 2, 500),
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    read, _ = read_file(path)
    assert read["plain"].dtype == np.float32
    assert read["offset"].dtype == np.float64
    assert read["y"].dtype == np.int64
    np.testing.assert_allclose(read["offset"], frame["offset"], rtol=0, atol=1e-6)


def test_transform_by_row_positions_equals_transforming_the_rows() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=50).astype(np.float32),
            "c": rng.choice(["a", "b", "c"], size=50),
            "m": np.where(rng.random(50) < 0.2, np.nan, rng.normal(size=50)),
        }
    )
    rows = rng.permutation(50)[:30]
    by_rows = Preprocessor.fit(frame, rows=rows)
    copied = Preprocessor.fit(frame.iloc[rows])
    assert by_rows.to_json() == copied.to_json()
    np.testing.assert_array_equal(
        by_rows.transform(frame, rows=rows), copied.transform(frame.iloc[rows])
    )


def test_transform_errors_name_the_data_row_of_the_file() -> None:
    from fitwell.errors import InputError

    pre = Preprocessor.fit(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    chunk = pd.DataFrame({"x": [1.0, "oops"]})
    with pytest.raises(InputError, match="data row 1001 holds 'oops'"):
        pre.transform(chunk, first_row=1000)


def test_linear_reference_in_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from fitwell.diagnosis import context

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=300) > 0).astype(np.int64)
    xv, yv = x[:100], y[:100]
    whole = context.linear_reference("classification", x, y, xv, yv)
    monkeypatch.setattr(context, "LINEAR_BLOCK_ROWS", 7)
    assert context.linear_reference("classification", x, y, xv, yv) == pytest.approx(whole)
    yr = x @ np.arange(5.0) + rng.normal(size=300)
    whole_r = context.linear_reference("regression", x, yr, xv, yr[:100])
    monkeypatch.setattr(context, "LINEAR_BLOCK_ROWS", 300)
    assert context.linear_reference("regression", x, yr, xv, yr[:100]) == pytest.approx(whole_r)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chunks")
    rng = np.random.default_rng(3)
    n = 200
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "colour": rng.choice(["red", "green"], size=n),
            "label": np.where(x1 + x2 > 0, "yes", "no"),
        }
    )
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    assert main(["train", str(data), "--target", "label", "--out", str(root / "run"), *TINY]) == 0
    return root / "run", data


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_in_chunks_equals_predict_in_one(
    finished: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from fitwell import batch_predict

    run, data = finished
    if suffix == ".parquet":
        parquet = tmp_path / "data.parquet"
        pd.read_csv(data).to_parquet(parquet)
        data = parquet
    one, many = tmp_path / "one.csv", tmp_path / "many.csv"
    assert main(["predict", str(run), str(data), "--out", str(one)]) == 0
    monkeypatch.setattr(batch_predict, "CHUNK_ROWS", 7)
    monkeypatch.setattr(arrow_csv, "BLOCK_BYTES", 300)
    assert main(["predict", str(run), str(data), "--out", str(many)]) == 0
    a, b = pd.read_csv(one), pd.read_csv(many)
    assert len(b) == 200
    # Same labels; probabilities equal up to float32 rounding (BLAS blocks rows differently).
    assert (a["prediction"] == b["prediction"]).all()
    np.testing.assert_allclose(a.iloc[:, 1:], b.iloc[:, 1:], rtol=0, atol=1e-6)


def test_a_bad_value_late_in_the_file_leaves_nothing_written(
    finished: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fitwell import batch_predict

    run, data = finished
    frame = pd.read_csv(data).astype({"x2": object})
    frame.loc[173, "x2"] = "oops"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    monkeypatch.setattr(batch_predict, "CHUNK_ROWS", 16)
    out = tmp_path / "out" / "pred.csv"
    out.parent.mkdir()
    assert main(["predict", str(run), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data row 173" in err and "'oops'" in err, err
    assert list(out.parent.iterdir()) == []  # neither the output nor a temporary file


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_heap_trim_is_available_on_glibc() -> None:
    from fitwell.heap import trim_heap

    assert trim_heap() is True


def test_step_losses_fill_one_buffer_per_epoch() -> None:
    """The probe keeps the members' step losses in one preallocated tensor, not one small tensor
    per step (those fragmented the heap: +1 GB an epoch on 1M rows)."""
    import fitwell
    from fitwell.diagnosis.probes import SignalProbe

    seen = {}
    real = SignalProbe.on_epoch_end

    def spy(self, trainer, **kwargs):
        seen["rows"], seen["buffer"] = self._loss_rows, self._loss_buffer
        return real(self, trainer, **kwargs)

    SignalProbe.on_epoch_end = spy
    try:
        fitwell.train(dataset="iris", max_epochs=2, restarts=3, batch_size=16, progress=False)
    finally:
        SignalProbe.on_epoch_end = real
    assert seen["buffer"] is not None and seen["buffer"].shape[1] == 3
    assert seen["rows"] == len(seen["buffer"])  # exactly the epoch's steps, no growth
