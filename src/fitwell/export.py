"""``fitwell export``: a finished run as one ONNX file that predicts from raw feature columns.

The graph (:mod:`fitwell.onnx_graph`) holds the preprocessing, every ensemble member and the
average, so a runtime needs nothing from fitwell. Before the file is written, the export runs it
with onnxruntime on probe rows (missing values, every category, an unseen one) and compares
with fitwell's own predictions: a graph that disagrees is refused, never written. The file
appears whole or not at all (temporary file, then rename) and never inside a run directory.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fitwell.data.arrow_csv import FLOAT32_TOLERANCE
from fitwell.data.loading import MAX_ABS_VALUE
from fitwell.data.preprocessing import SCALINGS, ColumnSpec, Preprocessor
from fitwell.errors import FitwellError, InputError
from fitwell.models import state_shapes

if TYPE_CHECKING:
    from fitwell.predictor import Run

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'fitwell[onnx]'"
# Largest graph written: protobuf cannot serialise a message over 2 GiB (ONNX's external data
# files would lift this; export does not write them). Some room is left for the graph itself.
MAX_WEIGHT_BYTES = 2**31 - 2**26
# Probe rows compared with fitwell's predictions before writing: probabilities, and regression
# predictions relative to the target's spread. Float32 rounding differs between the runtimes by
# about 1e-7; a wrong graph by far more.
PROBE_ROWS = 16
PROBE_TOLERANCE = 1e-4
# Fields the graph knows how to compute; anything else a run may carry (a newer fitwell's
# feature) must still have its default value, or the export is refused rather than wrong.
_KNOWN_ARCHITECTURE = {
    "n_inputs",
    "hidden",
    "n_outputs",
    "activation",
    "batch_norm",
    "numeric_embedding",
    "embedded",
    "embedding_frequencies",
    "embedding_dim",
    "front_scale",
    "categorical",
    "category_sizes",
    "category_dims",
    "learnable_activation",
    "parametrization",
}
_KNOWN_COLUMN = {"name", "kind", "fill", "mean", "std", "categories"}
_KNOWN_PREPROCESSOR = {"columns", "scale", "scaling"}


def _require_onnx() -> None:
    """Refuse in one line when the optional dependencies are missing."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise FitwellError(
                f"ONNX export needs the packages onnx and onnxruntime ({module} is not "
                f"installed); install them with: {INSTALL_HINT}"
            ) from None


def _unknown_fields(obj: Any, known: set[str]) -> list[str]:
    """Dataclass fields outside ``known`` whose value differs from their default."""
    out = []
    for f in dataclasses.fields(obj):
        if f.name in known:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if getattr(obj, f.name) != default:
            out.append(f.name)
    return out


def float32_coarse_columns(pre: Preprocessor) -> list[str]:
    """Numeric columns whose values float32 inputs would round by more than
    ``FLOAT32_TOLERANCE`` of their spread at their typical magnitude (|centre| + 3 spreads):
    timestamps, large identifiers. The threshold fitwell's CSV reader keeps float64 columns by."""
    out = []
    for spec in pre.columns:
        if spec.kind == "numeric":
            magnitude = abs(spec.mean) + 3.0 * abs(spec.std)
            if magnitude * 2.0**-24 > FLOAT32_TOLERANCE * abs(spec.std):
                out.append(spec.name)
    return out


def check_exportable(run: Run) -> None:
    """Refuse, naming the reason, a run whose predictions the graph could not reproduce."""
    from fitwell.onnx_graph import OUTPUT_NAMES, network_tensors

    where = str(run.run_dir) if run.run_dir is not None else "run"
    problems: list[str] = []
    pre, arch = run.preprocessor, run.model.arch
    for name in _unknown_fields(arch, _KNOWN_ARCHITECTURE):
        problems.append(f"its architecture sets {name}={getattr(arch, name)!r}")
    for name in _unknown_fields(pre, _KNOWN_PREPROCESSOR):
        problems.append(f"its preprocessing sets {name}={getattr(pre, name)!r}")
    if pre.scaling not in SCALINGS:
        problems.append(f"its preprocessing uses scaling {pre.scaling!r}")
    if arch.numeric_embedding not in ("none", "pbld"):
        problems.append(f"it uses the numeric embedding {arch.numeric_embedding!r}")
    state = run.model.state_dict()
    extra = sorted(set(state) - network_tensors(arch))
    if extra:
        problems.append(f"its model holds tensors the export does not know ({', '.join(extra)})")
    expected = state_shapes(arch, run.model.n_members)
    wrong = sorted(n for n in set(state) & set(expected) if tuple(state[n].shape) != expected[n])
    if wrong:
        problems.append(f"its model's tensors {', '.join(wrong)} do not fit its architecture")
    if run.task not in ("classification", "regression"):
        problems.append(f"its task is {run.task!r}")
    for spec in pre.columns:
        problems += _column_problems(spec)
    names = pre.input_columns
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"input column(s) {', '.join(map(repr, repeated))} appear twice")
    if not pre.columns:
        problems.append("it has no input columns")
    codes = pre.embedded_inputs()
    if [i for i, _ in codes] != list(arch.categorical) or [n for _, n in codes] != list(
        arch.category_sizes
    ):
        problems.append(
            f"its network reads category codes at inputs {list(arch.categorical)} with "
            f"{list(arch.category_sizes)} codes but the preprocessing makes them at "
            f"{[i for i, _ in codes]} with {[n for _, n in codes]}"
        )
    if run.model.arch.n_inputs != len(pre.encoded_names):
        problems.append(
            f"its network reads {arch.n_inputs} inputs but the preprocessing makes "
            f"{len(pre.encoded_names)}"
        )
    for name in pre.input_columns:
        if name in OUTPUT_NAMES:
            problems.append(
                f"input column {name!r} has the name of a graph output ({', '.join(OUTPUT_NAMES)})"
                "; retrain with the column renamed"
            )
    weight_bytes = sum(4 * t.numel() for t in state.values())
    if weight_bytes > MAX_WEIGHT_BYTES:
        problems.append(
            f"its weights take {weight_bytes / 2**30:.1f} GiB, beyond the 2 GiB one ONNX file "
            "holds; train an ensemble of fewer members or a narrower network"
        )
    if problems:
        raise InputError(f"{where} cannot be exported to ONNX: {'; '.join(problems)}.")


def _column_problems(spec: ColumnSpec) -> list[str]:
    extra = _unknown_fields(spec, _KNOWN_COLUMN)
    problems = [f"column {spec.name!r} sets {', '.join(extra)}"] if extra else []
    if spec.name == "":
        problems.append("an input column has an empty name")
    if spec.kind == "categorical":
        if str(spec.fill) not in spec.categories:
            problems.append(f"column {spec.name!r} fills missing values with an unseen category")
        elif "" in spec.categories and spec.fill != "":
            # the graph's inputs spell a missing text value as "", so it cannot also be a level
            problems.append(
                f"column {spec.name!r} has the empty string as a category of its own, and the "
                "graph reads an empty string as missing"
            )
    elif spec.kind == "embedded":
        if "" in spec.categories:  # as above; an embedded column's missing value is code 0
            problems.append(
                f"column {spec.name!r} has the empty string as a category of its own, and the "
                "graph reads an empty string as missing"
            )
    elif spec.kind == "numeric":
        values = [spec.fill, spec.mean, spec.std]
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
            problems.append(f"column {spec.name!r} has non-finite preprocessing statistics")
    else:
        problems.append(f"column {spec.name!r} is of kind {spec.kind!r}")
    return problems


def build_onnx(run: Run, *, numeric_type: str = "float") -> Any:
    """The run as an ``onnx.ModelProto`` (checked with ``onnx.checker``), not yet verified."""
    import onnx

    from fitwell.onnx_graph import build_model

    check_exportable(run)
    state = {k: v.detach().cpu().float().numpy() for k, v in run.model.state_dict().items()}
    metadata = {"target": run.target}
    if run.run_dir is not None:
        metadata["run"] = Path(run.run_dir).name
    model = build_model(
        run.preprocessor,
        run.model.arch,
        state,
        run.model.n_members,
        run.target_encoder,
        numeric_type=numeric_type,
        metadata=metadata,
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FitwellError(
            f"the ONNX graph of {run.run_dir or 'the run'} fails onnx's checker ({first}); "
            "nothing was written. Please report this run."
        ) from None
    return model


def probe_frame(pre: Preprocessor, rows: int = PROBE_ROWS, *, seed: int = 0) -> pd.DataFrame:
    """Rows that exercise every path of the preprocessing: numeric values around the training
    centre and missing ones; every category, missing values and a value never seen."""
    rng = np.random.default_rng(seed)
    width = max([len(s.categories) + 2 for s in pre.columns if s.kind != "numeric"] or [0])
    n = max(rows, width)
    data: dict[str, Any] = {}
    for spec in pre.columns:
        if spec.kind == "numeric":
            values = spec.mean + spec.std * rng.uniform(-2.5, 2.5, size=n)
            values = np.clip(values, -MAX_ABS_VALUE, MAX_ABS_VALUE)  # predict's bound
            values[::5] = np.nan
            data[spec.name] = values
        else:
            cycle = [*spec.categories, None, "\x00fitwell-unseen"]
            data[spec.name] = pd.Series([cycle[i % len(cycle)] for i in range(n)], dtype=object)
    return pd.DataFrame(data)


def graph_feeds(
    pre: Preprocessor, frame: pd.DataFrame, *, numeric_type: str = "float"
) -> dict[str, np.ndarray]:
    """onnxruntime inputs for ``frame``: one ``[N, 1]`` array per column; a missing text value
    becomes the empty string (the graph reads it as missing)."""
    dtype = np.float32 if numeric_type == "float" else np.float64
    feeds = {}
    for spec in pre.columns:
        column = frame[spec.name]
        if spec.kind == "numeric":
            values = pd.to_numeric(column, errors="raise").to_numpy(dtype=dtype, na_value=np.nan)
        else:
            values = column.astype(object).where(column.notna(), "").astype(str).to_numpy()
            values = values.astype(object)
        feeds[spec.name] = values.reshape(-1, 1)
    return feeds


def verify(model: Any, run: Run, *, numeric_type: str = "float") -> float:
    """Run ``model`` with onnxruntime on :func:`probe_frame` rows and compare with the run's own
    predictions; returns the largest difference, refuses beyond :data:`PROBE_TOLERANCE`."""
    import onnxruntime as ort

    from fitwell.onnx_graph import PREDICTION, PROBABILITIES

    frame = probe_frame(run.preprocessor)
    if numeric_type == "float":  # fitwell sees the values the float32 inputs can hold
        for spec in run.preprocessor.columns:
            if spec.kind == "numeric":
                frame[spec.name] = frame[spec.name].astype(np.float32).astype(float)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = graph_feeds(run.preprocessor, frame, numeric_type=numeric_type)
    if run.task == "classification":
        got = session.run([PROBABILITIES], feeds)[0]
        want = run.predict_proba(frame, source="probe rows")
        scale = 1.0
    else:
        got = session.run([PREDICTION], feeds)[0]
        want = run.predict(frame, source="probe rows")
        scale = max(1.0, abs(run.target_encoder.std))
    diff = float(np.max(np.abs(np.asarray(got, dtype=float) - np.asarray(want, dtype=float))))
    if not diff <= PROBE_TOLERANCE * scale:
        where = str(run.run_dir) if run.run_dir is not None else "run"
        raise FitwellError(
            f"{where}: the ONNX graph disagrees with fitwell's predictions on probe rows "
            f"(largest difference {diff:.3g}); nothing was written. Please report this run."
        )
    return diff


def export_onnx(run: Run | str | Path, path: str | Path, *, numeric_type: str = "float") -> Path:
    """Write ``run`` (a run directory or a loaded :class:`~fitwell.Run`) to ``path`` as ONNX.

    Parameters
    ----------
    run : Run, str or Path
        The finished run; a directory is loaded and verified as ``fitwell predict`` does.
    path : str or Path
        The ``.onnx`` file to write (replaced atomically if it exists); never inside a run
        directory.
    numeric_type : {"float", "double"}, default "float"
        Element type of the numeric inputs. ``float`` rounds each value to float32 before the
        preprocessing (exact for most tables); ``double`` keeps values such as timestamps or
        large identifiers exact, as ``fitwell predict`` reads them.

    Returns
    -------
    Path
        ``path``. Graph inputs: one ``[N, 1]`` tensor per raw feature column, in the run's
        column order (NaN or, for text, the empty string: missing). Outputs: ``prediction``
        ``[N]`` (label or value in the target's units) and, for classification,
        ``probabilities`` ``[N, n_classes]``; the model's metadata lists the classes.
    """
    _require_onnx()  # before anything imports onnx: a missing extra is one line
    from fitwell.onnx_graph import NUMERIC_TYPES
    from fitwell.predictor import load_run
    from fitwell.runs import check_output_file, write_atomic

    if numeric_type not in NUMERIC_TYPES:
        raise InputError(
            f"`numeric_type` must be one of {', '.join(NUMERIC_TYPES)}; got {numeric_type!r}."
        )
    text = str(path)
    if text.strip() == "" or Path(text).is_dir() or text.endswith(("/", "\\")):
        raise InputError(f"--out {text!r} is not a file name; give one such as model.onnx.")
    run_dir = run if isinstance(run, (str, Path)) else run.run_dir
    out = check_output_file(path, run_dir=run_dir, what="exported models")
    loaded = load_run(run) if isinstance(run, (str, Path)) else run
    model = build_onnx(loaded, numeric_type=numeric_type)
    verify(model, loaded, numeric_type=numeric_type)
    write_atomic(out, model.SerializeToString())  # with a new file's mode, not 0600
    coarse = float32_coarse_columns(loaded.preprocessor) if numeric_type == "float" else []
    if coarse:
        warnings.warn(
            f"column(s) {', '.join(map(repr, coarse[:5]))} hold values float32 inputs round "
            "by more than 1e-4 of their spread, so the graph's predictions can differ from "
            "fitwell predict's; export with --numeric-type double to keep them exact.",
            UserWarning,
            stacklevel=2,
        )
    return out
