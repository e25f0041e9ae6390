"""One ONNX graph for a finished run: raw feature columns in, what ``fitwell predict`` writes out.

Built node by node with ``onnx.helper`` rather than traced with ``torch.onnx``: the network is a
few batched matrix products, the preprocessing is NumPy and pandas code that no tracer sees,
and a hand-built graph needs neither onnxscript nor a tracer whose output changes with the torch
version. Each part mirrors one function of fitwell, named in its docstring:
``Preprocessor._encode_column`` (imputation, scaling, one-hot, category codes),
``embeddings.embed``, ``category_embeddings.lookup`` and ``PopulationMLP.forward`` (the members,
stacked ``[K, ...]`` as in training), then ``ensemble_outputs`` and ``TargetEncoder.decode``
(the average and the target's units).
tests/test_export.py compares the graph with ``fitwell predict`` on every kind of run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fitwell import __version__, category_embeddings, embeddings
from fitwell.data.arrow_csv import NA_VALUES
from fitwell.data.preparation import TargetEncoder
from fitwell.data.preprocessing import SMOOTH_CLIP_BOUND, ColumnSpec, Preprocessor
from fitwell.models import Architecture

# Opset 17 / IR 8 (ONNX 1.12, 2022): every op used here exists there, and runtimes from then on
# load the file. GELU is therefore written with Erf (the Gelu op came in opset 20).
OPSET = 17
ML_OPSET = 2  # ai.onnx.ml: LabelEncoder with string keys
IR_VERSION = 8
# F.batch_norm's default, used by PopulationMLP in evaluation.
BATCH_NORM_EPS = 1e-5
# Graph outputs, in the words of `fitwell predict`'s CSV: `prediction`, then `proba_<class>`.
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
OUTPUT_NAMES = (PREDICTION, PROBABILITIES)
NUMERIC_TYPES = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE}


class _Graph:
    """Nodes and constants under construction; every intermediate gets a fresh, unused name."""

    def __init__(self, taken: Sequence[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken)
        self._count = 0

    def name(self, hint: str) -> str:
        while True:
            self._count += 1
            candidate = f"fitwell/{hint}_{self._count}"
            if candidate not in self._taken:
                self._taken.add(candidate)
                return candidate

    def const(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        name = self.name(hint)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(
        self,
        op_type: str,
        *inputs: str,
        output: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> str:
        out = output if output is not None else self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out


def missing_markers(spec: ColumnSpec) -> list[str]:
    """Strings read as a missing value of a text column: the markers a CSV cell is missing by
    (the same list ``fitwell predict`` reads files with), except categories seen in training,
    which stay themselves."""
    return [m for m in NA_VALUES if m not in spec.categories]


def _numeric_block(g: _Graph, specs: list[ColumnSpec], pre: Preprocessor, dtype: int) -> str:
    """``[N, n_numeric]`` float32: median imputation, then standard or robust scaling with smooth
    clipping, in float64 as ``Preprocessor._encode_column`` computes them, then rounded once."""
    cols = [s.name for s in specs]
    x = cols[0] if len(cols) == 1 else g.op("Concat", *cols, axis=1)
    if dtype != TensorProto.DOUBLE:
        x = g.op("Cast", x, to=TensorProto.DOUBLE)
    fill = g.const([[s.fill for s in specs]], "fill", np.float64)
    x = g.op("Where", g.op("IsNaN", x), fill, x)
    if pre.scale:
        mean = g.const([[s.mean for s in specs]], "centre", np.float64)
        std = g.const([[s.std for s in specs]], "spread", np.float64)
        x = g.op("Div", g.op("Sub", x, mean), std)
        if pre.scaling == "robust":  # z / sqrt(1 + (z / 3)^2)
            t = g.op("Div", x, g.const(SMOOTH_CLIP_BOUND, "clip_bound", np.float64))
            root = g.op("Sqrt", g.op("Add", g.const(1.0, "one", np.float64), g.op("Mul", t, t)))
            x = g.op("Div", x, root)
    return g.op("Cast", x, to=TensorProto.FLOAT)


def _one_hot(g: _Graph, spec: ColumnSpec) -> str:
    """``[N, n_categories]`` float32: a missing value takes the most frequent training category,
    an unseen one encodes as all zeros."""
    fill_index = spec.categories.index(str(spec.fill))
    markers = missing_markers(spec)
    codes = g.op(
        "LabelEncoder",
        spec.name,
        domain="ai.onnx.ml",
        keys_strings=[*spec.categories, *markers],
        values_int64s=[*range(len(spec.categories)), *([fill_index] * len(markers))],
        default_int64=-1,
    )
    levels = g.const([list(range(len(spec.categories)))], "levels", np.int64)
    return g.op("Cast", g.op("Equal", codes, levels), to=TensorProto.FLOAT)


def _category_code(g: _Graph, spec: ColumnSpec) -> str:
    """``[N, 1]`` float32: an embedded column's code, 1, 2, ... for its categories in order and 0
    for anything else: missing (the empty string, a CSV missing marker) or unseen alike."""
    codes = g.op(
        "LabelEncoder",
        spec.name,
        domain="ai.onnx.ml",
        keys_strings=list(spec.categories),
        values_int64s=list(range(1, len(spec.categories) + 1)),
        default_int64=0,
    )
    return g.op("Cast", codes, to=TensorProto.FLOAT)


def preprocessing(g: _Graph, pre: Preprocessor, numeric_type: int) -> str:
    """The encoded matrix ``[N, n_encoded]`` (float32), columns in ``pre.encoded_names`` order."""
    numeric = [s for s in pre.columns if s.kind == "numeric"]
    blocks: list[str] = []
    positions: dict[str, list[int]] = {}  # encoded positions of each column in the blocks
    at = 0
    if numeric:
        blocks.append(_numeric_block(g, numeric, pre, numeric_type))
        for s in numeric:
            positions[s.name] = [at]
            at += 1
    for s in pre.columns:
        if s.kind != "numeric":
            blocks.append(_one_hot(g, s) if s.kind == "categorical" else _category_code(g, s))
            positions[s.name] = list(range(at, at + len(s.encoded_names)))
            at += len(s.encoded_names)
    x = blocks[0] if len(blocks) == 1 else g.op("Concat", *blocks, axis=1)
    order = [i for s in pre.columns for i in positions[s.name]]
    if order != list(range(at)):
        x = g.op("Gather", x, g.const(order, "order", np.int64), axis=1)
    return x


def _activation(g: _Graph, h: str, name: str) -> str:
    """The activations of ``models.ACTIVATION_FUNCTIONS`` with torch's default constants."""
    if name == "relu":
        return g.op("Relu", h)
    if name == "tanh":
        return g.op("Tanh", h)
    if name == "sigmoid":
        return g.op("Sigmoid", h)
    if name == "leaky_relu":
        return g.op("LeakyRelu", h, alpha=0.01)
    if name == "elu":
        return g.op("Elu", h, alpha=1.0)
    if name == "selu":
        return g.op("Selu", h, alpha=1.6732632423543772, gamma=1.0507009873554805)
    if name == "gelu":  # exact GELU: x * (1 + erf(x / sqrt 2)) / 2
        erf = g.op("Erf", g.op("Mul", h, g.const(1.0 / math.sqrt(2.0), "inv_sqrt2")))
        half = g.op("Mul", h, g.const(0.5, "half"))
        return g.op("Mul", half, g.op("Add", erf, g.const(1.0, "one")))
    if name == "mish":  # x * tanh(softplus(x))
        return g.op("Mul", h, g.op("Tanh", g.op("Softplus", h)))
    raise ValueError(f"activation {name!r} has no ONNX form here")


def _embedding_front(
    g: _Graph, x: str, raw: str, arch: Architecture, state: dict[str, np.ndarray], k: int
) -> str:
    """``embeddings.embed``: ``[K, N, F + C * D]``, the ``raw`` inputs ``[N, F]`` then each
    embedded column's ``W cos(2 pi (w x + b)) + c``."""
    c, d = arch.n_embedded, arch.embedding_dim
    cols = g.op("Gather", x, g.const(list(arch.embedded), "embedded", np.int64), axis=1)
    cols = g.op("Unsqueeze", g.op("Transpose", cols, perm=[1, 0]), g.const([2], "axis", np.int64))
    freq = g.const(state["embed_frequencies"][:, :, None, :], "frequencies")  # [K, C, 1, F]
    phase = g.const(state["embed_phases"][:, :, None, :], "phases")
    z = g.op("Add", phase, g.op("Mul", cols, freq))  # [K, C, N, F]
    z = g.op("Cos", g.op("Mul", z, g.const(2.0 * math.pi, "two_pi")))
    e = g.op("MatMul", z, g.const(state["embed_weights"], "embed_weights"))  # [K, C, N, D]
    e = g.op("Add", e, g.const(state["embed_biases"][:, :, None, :], "embed_biases"))
    e = g.op("Transpose", e, perm=[0, 2, 1, 3])
    e = g.op("Reshape", e, g.const([k, -1, c * d], "shape", np.int64))
    raw = g.op("Expand", raw, g.const([k, 1, 1], "members", np.int64))
    return g.op("Concat", raw, e, axis=2)


def _category_front(
    g: _Graph, x: str, h: str | None, arch: Architecture, state: dict[str, np.ndarray], k: int
) -> str:
    """``category_embeddings.lookup`` appended to the first-layer inputs ``h`` (``[N, F]``, or
    ``[K, N, F]`` after a periodic embedding; None when every input is a code): each code
    column's row of every member's table, in column order."""
    parts = []
    if h is not None:
        if not arch.n_embedded:  # shared rows: the same inputs for every member
            h = g.op("Expand", h, g.const([k, 1, 1], "members", np.int64))
        parts.append(h)
    names = category_embeddings.names(len(arch.categorical))
    for index, name in zip(arch.categorical, names, strict=True):
        code = g.op("Gather", x, g.const(index, "code_column", np.int64), axis=1)  # [N]
        code = g.op("Cast", code, to=TensorProto.INT64)
        table = g.const(state[name], name)  # [K, codes, dim]
        parts.append(g.op("Gather", table, code, axis=1))  # [K, N, dim]
    return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=2)


def network_tensors(arch: Architecture) -> set[str]:
    """Names of the model tensors :func:`network` reads: a saved model holding any other is
    something this graph would silently leave out."""
    names = {f"{kind}.{i}" for i in range(len(arch.layer_sizes)) for kind in ("weights", "biases")}
    if arch.batch_norm:
        for i in range(len(arch.hidden)):
            names |= {f"bn_weights.{i}", f"bn_biases.{i}", f"bn_mean_{i}", f"bn_var_{i}"}
    if arch.n_embedded:
        names |= set(embeddings.PARAMETERS)
    names |= set(category_embeddings.names(len(arch.categorical)))
    if arch.front_scale:
        names.add("front_scales")
    if arch.learnable_activation:
        names |= {f"act_alphas.{i}" for i in range(len(arch.hidden))}
    return names


def network(g: _Graph, x: str, arch: Architecture, state: dict[str, np.ndarray], k: int) -> str:
    """``PopulationMLP.forward`` in evaluation for shared rows ``x [N, F]``: ``[K, N, C]``."""
    h = x
    if arch.categorical:  # the codes are no first-layer inputs of their own
        kept = [i for i in range(arch.n_inputs) if i not in set(arch.categorical)]
        raw = g.op("Gather", x, g.const(kept, "raw_inputs", np.int64), axis=1) if kept else None
        if arch.n_embedded and raw is not None:
            raw = _embedding_front(g, x, raw, arch, state, k)
        h = _category_front(g, x, raw, arch, state, k)
    elif arch.n_embedded:
        h = _embedding_front(g, x, x, arch, state, k)
    if arch.front_scale:
        h = g.op("Mul", h, g.const(state["front_scales"], "front_scales"))
    last = len(arch.layer_sizes) - 1
    for layer in range(last + 1):
        weights = state[f"weights.{layer}"]
        if arch.parametrization == "ntk":  # PopulationMLP.weight_scales, folded into the weights
            fan_in = arch.layer_sizes[layer][0]
            weights = weights * np.float32(1.0 / math.sqrt(max(fan_in, 1)))
        h = g.op("MatMul", h, g.const(weights, f"weights{layer}"))
        h = g.op("Add", h, g.const(state[f"biases.{layer}"], f"biases{layer}"))
        if layer == last:
            break
        if arch.batch_norm:  # running statistics, per member and unit: [K * H] -> [K, 1, H]
            width = arch.hidden[layer]
            var = state[f"bn_var_{layer}"].astype(np.float64)
            scale = state[f"bn_weights.{layer}"] / np.sqrt(var + BATCH_NORM_EPS)
            shift = state[f"bn_biases.{layer}"] - state[f"bn_mean_{layer}"] * scale
            h = g.op("Mul", h, g.const(scale.reshape(k, 1, width), "bn_scale"))
            h = g.op("Add", h, g.const(shift.reshape(k, 1, width), "bn_shift"))
        act = _activation(g, h, arch.activation)
        if arch.learnable_activation:  # torch.lerp(h, act(h), a) = h + a * (act(h) - h)
            alpha = g.const(state[f"act_alphas.{layer}"], f"act_alpha{layer}")
            act = g.op("Add", h, g.op("Mul", alpha, g.op("Sub", act, h)))
        h = act
    return h


def head(g: _Graph, out: str, encoder: TargetEncoder) -> list[onnx.ValueInfoProto]:
    """``ensemble_outputs`` then ``TargetEncoder.decode``: the averaged class probabilities and
    the label of the largest, or the averaged prediction in the target's units."""
    if encoder.task == "classification":
        proba = g.op("Softmax", out, axis=2)
        g.op("ReduceMean", proba, axes=[0], keepdims=0, output=PROBABILITIES)
        index = g.op("ArgMax", PROBABILITIES, axis=1, keepdims=0)
        labels, label_type = class_labels(encoder.classes)
        g.op("Gather", g.const(labels, "classes", labels.dtype), index, axis=0, output=PREDICTION)
        n = len(encoder.classes)
        return [
            helper.make_tensor_value_info(PREDICTION, label_type, ["N"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", n]),
        ]
    mean = g.op("ReduceMean", out, axes=[0, 2], keepdims=0)  # [K, N, 1] -> [N]
    value = g.op("Mul", mean, g.const(encoder.std, "target_std"))
    g.op("Add", value, g.const(encoder.mean, "target_mean"), output=PREDICTION)
    return [helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, ["N"])]


def class_labels(classes: list[Any]) -> tuple[np.ndarray, int]:
    """The labels as a tensor: int64 when every class is an integer, else their text (as
    ``fitwell predict`` writes them to CSV)."""
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.asarray(classes, dtype=np.int64), TensorProto.INT64
    return np.asarray([str(c) for c in classes], dtype=object), TensorProto.STRING


def build_model(
    pre: Preprocessor,
    arch: Architecture,
    state: dict[str, np.ndarray],
    n_members: int,
    encoder: TargetEncoder,
    *,
    numeric_type: str = "float",
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """The whole graph: one input ``[N, 1]`` per raw column (``numeric_type`` for numbers, NaN
    meaning missing; strings for text columns), outputs ``prediction`` and, for classification,
    ``probabilities``. ``state``: the model's tensors as float32 arrays."""
    dtype = NUMERIC_TYPES[numeric_type]
    inputs = [
        helper.make_tensor_value_info(
            s.name, dtype if s.kind == "numeric" else TensorProto.STRING, ["N", 1]
        )
        for s in pre.columns
    ]
    g = _Graph([*pre.input_columns, *OUTPUT_NAMES])
    x = preprocessing(g, pre, dtype)
    outputs = head(g, network(g, x, arch, state, n_members), encoder)
    graph = helper.make_graph(g.nodes, "fitwell", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="fitwell",
        producer_version=__version__,
        doc_string="fitwell run exported to ONNX: raw feature columns in, predictions out.",
    )
    model.ir_version = IR_VERSION
    props = {
        "task": encoder.task,
        "classes": json.dumps(encoder.classes),
        "inputs": json.dumps([{"name": s.name, "kind": s.kind} for s in pre.columns]),
        "members": str(n_members),
        **(metadata or {}),
    }
    helper.set_model_props(model, props)
    return model
