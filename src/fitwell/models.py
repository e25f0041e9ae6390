"""A population of K MLPs stored as stacked weights and run as one batched computation.

K = 1 is an ordinary MLP. Members share the architecture (so their weights stack into
``[K, fan_in, fan_out]`` tensors) but each has its own initialisation seed; per-member dropout
rates are applied through masks the training loop draws from each member's own generator.

An optional front sits before the first layer: periodic embeddings of the numeric inputs (PBLD,
from RealMLP), learned embeddings of high-cardinality text columns (entity embeddings, from
fastai; :mod:`fitwell.category_embeddings`) and a learnable scale per first-layer input. All
are computed per batch inside ``forward``, so the embedded table never exists in memory, and all
keep the member axis first (``[K, ...]``) so the members stay one batched model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fitwell import category_embeddings, embeddings
from fitwell.config import ACTIVATIONS, INITS, NUMERIC_EMBEDDINGS, PARAMETRIZATIONS
from fitwell.errors import InputError, did_you_mean

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "mish": F.mish,
}

# The same functions overwriting their input: used where no gradient is recorded (evaluation),
# so a chunk's activations are not copied once more. GELU has no in-place form.
_ACTIVATIONS_IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "leaky_relu": F.leaky_relu_,
    "elu": F.elu_,
    "selu": torch.selu_,
    "gelu": F.gelu,
    "mish": functools.partial(F.mish, inplace=True),
}

# Gain for Kaiming / Xavier initialisation, as torch.nn.init.calculate_gain defines it.
_GAIN_NAME = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "elu": "relu",
    "gelu": "relu",
    "mish": "relu",
    "selu": "linear",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
}

# Evaluation (no gradients) runs in row chunks whose widest activation holds about this many
# values (512 KiB of float32: an L2 cache), at least 64 rows so matrix products stay efficient,
# and never more than _EVAL_CHUNK_ELEMENTS (64 MiB), so eval on large tables stays in memory.
# Measured on MNIST-1D's 3,500 training rows, 256 wide: 512-row chunks with in-place activations
# evaluate in 9.5 ms, one 3,500-row pass with out-of-place ones in 21 ms.
_EVAL_CACHE_ELEMENTS = 1 << 17
_EVAL_CHUNK_ELEMENTS = 1 << 24
# Shared-row evaluation on the CPU runs member by member when the hidden layers are at least
# _MEMBER_LOOP_WIDTH wide and one member's chunk is at least _MEMBER_LOOP_MACS multiply-adds: a
# [K, N, width] batch falls out of cache, one member's [N, width] does not (measured on digits'
# rows: 1.2x at K=16 x 512 wide, 1.8x at K=64 x 512, 3x at K=64 x 128). Narrower members
# stay batched: a 32-wide member's own matmuls are too thin (K=16 x 32: 4.4 ms batched in
# cache-sized chunks, 6.8 ms member by member).
_MEMBER_LOOP_WIDTH = 128
_MEMBER_LOOP_MACS = 1 << 20

# A layer with fewer outputs than this (a classifier's or regressor's output layer, a thin
# hidden layer) runs as ``(W^T h^T)^T`` in populations: MKL's batched matmul is 4-7x slower
# when the output dimension is this thin (measured, K=16, 128 rows: 512 -> 10 forward 2.0 ms
# vs 0.56 ms, weight gradient 3.3 ms vs 0.49 ms; 32 -> 10: 142 vs 39 us). One member keeps the
# plain form (no gain there).
_NARROW_OUTPUTS = 16

# Learning-rate factor of the parameters the NTK parametrization does not rescale (biases,
# learnable-activation shapes): RealMLP's bias_lr_factor and act_lr_factor, which keep their
# steps at the usual size under the large rates NTK is run with.
NTK_UNSCALED_LR_FACTOR = 0.1
# Under NTK the front scale learns at 6x the rate (RealMLP's scale_lr_factor) and the numeric
# embeddings at 0.1x (plr_lr_factor): pytabkit's values, which its ablations tuned together.
FRONT_SCALE_LR_FACTOR = 6.0

PreactivationHook = Callable[[int, torch.Tensor], None]


class _NarrowLinear(torch.autograd.Function):
    """``h [K, B, I] @ w [K, I, O] + b`` for small ``O``, computed in the transposed layout.

    Autograd of the transposed expression would hand the previous layer a transposed input
    gradient (slower downstream), so the backward is written out: every product keeps a wide
    output dimension, and every gradient comes back in its parameter's own layout.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h, w, b):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.mT, w.mT, h.mT).mT.contiguous()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        h, w = ctx.saved_tensors
        grad_h = torch.bmm(grad, w.mT) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.mT, h).mT.contiguous() if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(dim=1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b


def narrow_linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(b, h, w)`` for a thin output dimension, in its fast layout.

    Without gradients the result keeps the class-major storage of that layout (a transposed
    view, no copy): evaluation reduces over the classes in it (see ``SplitAccumulator``).
    """
    if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad or b.requires_grad):
        out: torch.Tensor = _NarrowLinear.apply(h, w, b)
        return out
    return torch.baddbmm(b.mT, w.mT, h.mT).mT


class _NarrowCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy ``[K, B]`` of the thin output layer ``h @ w + b`` against class
    indices ``targets [K, B]``, as one step of the graph.

    The logits stay class-major ``[K, C, B]``, the layout the thin product is fast in, so the
    softmax over C classes runs with the rows contiguous (vectorised) instead of over rows of
    C values; the backward reuses the softmax of the forward. Replaces the thin product, its
    transposing copy, log-softmax and NLL with their four backward steps (measured, K = 16,
    128 rows, 32 -> 10: 697 vs 903 us a step forward and backward).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h, w, b, targets):  # type: ignore[no-untyped-def, override]
        logits = torch.baddbmm(b.mT, w.mT, h.mT)  # [K, C, B]
        top = logits.amax(dim=1, keepdim=True)
        probs = (logits - top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        index = targets.unsqueeze(1)
        rows = (total.log() + top - logits.gather(1, index)).squeeze(1)
        probs.div_(total)
        ctx.save_for_backward(h, w, probs, index)
        return rows

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        h, w, probs, index = ctx.saved_tensors
        # d rows / d logits = softmax - one_hot(target), scaled by each row's upstream gradient.
        grad_logits = probs * grad.unsqueeze(1)
        grad_logits.scatter_add_(1, index, -grad.unsqueeze(1))
        grad_h = torch.bmm(grad_logits.mT, w.mT) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad_logits, h).mT.contiguous() if ctx.needs_input_grad[1] else None
        grad_b = grad_logits.sum(dim=2).unsqueeze(1) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None


def narrow_cross_entropy(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(baddbmm(b, h, w), targets, reduction="none")`` per member, ``[K, B]``,
    for a thin output layer (see :class:`_NarrowCrossEntropy`)."""
    rows: torch.Tensor = _NarrowCrossEntropy.apply(h, w, b, targets)
    return rows


@dataclass(frozen=True)
class Architecture:
    """The shape and wiring of every member: saved as JSON next to the weights."""

    n_inputs: int
    hidden: tuple[int, ...]
    n_outputs: int
    activation: str = "relu"
    batch_norm: bool = False
    numeric_embedding: str = "none"
    # Inputs that get a periodic embedding (indices into the encoded inputs: numeric columns).
    embedded: tuple[int, ...] = ()
    embedding_frequencies: int = 16
    embedding_dim: int = 3
    front_scale: bool = False
    # Inputs holding a text column's integer code (indices into the encoded inputs), the codes of
    # each column (its categories plus code 0) and the width of its learned embedding.
    categorical: tuple[int, ...] = ()
    category_sizes: tuple[int, ...] = ()
    category_dims: tuple[int, ...] = ()
    # RealMLP's parametric activation: a learned per-unit mix of act(x) and x (1: act(x)).
    learnable_activation: bool = False
    # "ntk": each layer computes (x @ w) / sqrt(fan_in) + b (see PopulationMLP.weight_scales).
    parametrization: str = "standard"

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("hidden", "embedded", "categorical", "category_sizes", "category_dims"):
            data[name] = list(data[name])
        return data

    @property
    def n_embedded(self) -> int:
        """Inputs with a periodic embedding (0 without one)."""
        return len(self.embedded) if self.numeric_embedding == "pbld" else 0

    @property
    def has_front(self) -> bool:
        """Whether anything sits between the encoded inputs and the first layer."""
        return bool(self.n_embedded or self.categorical or self.front_scale)

    @property
    def first_layer_inputs(self) -> int:
        """Inputs of the first linear layer: the encoded inputs other than the text columns'
        codes, then the periodic embeddings' outputs, then the text columns' embeddings."""
        return (
            self.n_inputs
            - len(self.categorical)
            + self.n_embedded * self.embedding_dim
            + sum(self.category_dims)
        )

    @property
    def first_layer_sources(self) -> list[int]:
        """The encoded input each first-layer input reads: its own index for the raw inputs, the
        embedded input for each of its ``embedding_dim`` embedding outputs, the code input for
        each of its text column's embedding outputs."""
        embedded = self.embedded if self.n_embedded else ()
        return embeddings.first_layer_sources(
            self.n_inputs,
            embedded,
            self.embedding_dim,
            categorical=self.categorical,
            category_dims=self.category_dims,
        )

    @classmethod
    def from_json(cls, data: dict) -> Architecture:
        try:
            arch = cls(
                n_inputs=int(data["n_inputs"]),
                hidden=tuple(int(h) for h in data["hidden"]),
                n_outputs=int(data["n_outputs"]),
                activation=str(data["activation"]),
                batch_norm=bool(data["batch_norm"]),
                # Runs saved before the front existed have none of these keys: no front.
                numeric_embedding=str(data.get("numeric_embedding", "none")),
                embedded=tuple(int(i) for i in data.get("embedded", ())),
                embedding_frequencies=int(data.get("embedding_frequencies", 16)),
                embedding_dim=int(data.get("embedding_dim", 3)),
                front_scale=bool(data.get("front_scale", False)),
                categorical=tuple(int(i) for i in data.get("categorical", ())),
                category_sizes=tuple(int(n) for n in data.get("category_sizes", ())),
                category_dims=tuple(int(d) for d in data.get("category_dims", ())),
                learnable_activation=bool(data.get("learnable_activation", False)),
                parametrization=str(data.get("parametrization", "standard")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"architecture description is malformed ({exc!r}).") from None
        if arch.activation not in ACTIVATIONS:
            raise InputError(
                f"unknown activation {arch.activation!r} in the architecture."
                f"{did_you_mean(arch.activation, ACTIVATIONS)}"
            )
        if arch.numeric_embedding not in NUMERIC_EMBEDDINGS:
            raise InputError(
                f"unknown numeric embedding {arch.numeric_embedding!r} in the architecture."
                f"{did_you_mean(arch.numeric_embedding, NUMERIC_EMBEDDINGS)}"
            )
        if arch.parametrization not in PARAMETRIZATIONS:
            raise InputError(
                f"unknown parametrization {arch.parametrization!r} in the architecture."
                f"{did_you_mean(arch.parametrization, PARAMETRIZATIONS)}"
            )
        if (
            arch.n_inputs < 0
            or arch.n_outputs < 1
            or any(h < 1 for h in arch.hidden)
            or arch.embedding_frequencies < 1
            or arch.embedding_dim < 1
            or any(not 0 <= i < arch.n_inputs for i in arch.embedded)
            or any(not 0 <= i < arch.n_inputs for i in arch.categorical)
            or len(set(arch.categorical)) != len(arch.categorical)
            or set(arch.categorical) & set(arch.embedded)
            or len(arch.category_sizes) != len(arch.categorical)
            or len(arch.category_dims) != len(arch.categorical)
            or any(n < 1 for n in arch.category_sizes)
            or any(d < 1 for d in arch.category_dims)
        ):
            raise InputError(f"architecture has impossible sizes: {arch}.")
        return arch

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        dims = [self.first_layer_inputs, *self.hidden, self.n_outputs]
        return list(zip(dims[:-1], dims[1:], strict=True))


def state_shapes(arch: Architecture, n_members: int) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in the state of a :class:`PopulationMLP` (no allocation)."""
    k = n_members
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, (i, o) in enumerate(arch.layer_sizes):
        shapes[f"weights.{layer}"] = (k, i, o)
        shapes[f"biases.{layer}"] = (k, 1, o)
    if arch.batch_norm:
        for layer, h in enumerate(arch.hidden):
            for name in (f"bn_weights.{layer}", f"bn_biases.{layer}"):
                shapes[name] = (k * h,)
            shapes[f"bn_mean_{layer}"] = (k * h,)
            shapes[f"bn_var_{layer}"] = (k * h,)
    if arch.learnable_activation:
        for layer, h in enumerate(arch.hidden):
            shapes[f"act_alphas.{layer}"] = (k, 1, h)
    if arch.n_embedded:
        shapes |= embeddings.shapes(
            k, arch.n_embedded, arch.embedding_frequencies, arch.embedding_dim
        )
    if arch.categorical:
        shapes |= category_embeddings.shapes(k, arch.category_sizes, arch.category_dims)
    if arch.front_scale:
        shapes["front_scales"] = (k, 1, arch.first_layer_inputs)
    return shapes


def front_width(arch: Architecture) -> int:
    """Widest per-row tensor of the front (the periodic features ``[C, frequencies]``, or the
    first layer's inputs), 0 without a front."""
    if not arch.has_front:
        return 0
    return max(arch.n_embedded * arch.embedding_frequencies, arch.first_layer_inputs)


# Float32 copies of the weights alive while training: weights, gradients, Adam's two moments,
# the best-epoch and start-of-epoch snapshots, the probe's epoch-start copy and final states.
TRAINING_WEIGHT_COPIES = 8
# Activations of one batch kept for the backward pass (pre-activation, activation, dropout mask,
# gradient), per unit and row.
TRAINING_ACTIVATION_COPIES = 4


def model_bytes(
    arch: Architecture, n_members: int, *, training: bool = False, batch_size: int = 0
) -> int:
    """Estimated bytes of a model of this shape: its weights, or everything training holds."""
    params = sum(math.prod(s) for s in state_shapes(arch, n_members).values())
    if not training:
        return 4 * params
    units = sum(arch.hidden) + arch.n_outputs + arch.n_inputs
    if front_width(arch):  # periodic features, cosines, embeddings and scaled inputs
        units += 2 * arch.n_embedded * arch.embedding_frequencies + 2 * arch.first_layer_inputs
    activations = TRAINING_ACTIVATION_COPIES * 4 * n_members * batch_size * units
    return TRAINING_WEIGHT_COPIES * 4 * params + activations


def check_model_memory(
    arch: Architecture,
    n_members: int,
    device: torch.device,
    *,
    training: bool = False,
    batch_size: int = 0,
) -> None:
    """Refuse a model whose estimated memory exceeds what ``device`` has, before allocating it."""
    from fitwell.resources import check_memory

    estimate = model_bytes(arch, n_members, training=training, batch_size=batch_size)
    params = estimate if not training else model_bytes(arch, n_members)
    check_memory(
        estimate,
        device,
        f"{'training ' if training else ''}a model of {params // 4:,} parameters "
        f"({n_members} member(s), hidden {list(arch.hidden)})",
        "use narrower or fewer --hidden layers, fewer --restarts or --ensemble members, or a "
        "smaller --batch-size.",
    )


def init_std(activation: str, init: str, scale: float, fan_in: int, fan_out: int) -> float:
    """Standard deviation of the normal initialisation of one weight matrix.

    ``auto`` picks Kaiming for ReLU-like activations, Xavier for tanh/sigmoid and LeCun for SELU;
    ``normal`` uses ``scale`` itself as the standard deviation.
    """
    if init not in INITS:
        raise InputError(f"unknown init {init!r}.{did_you_mean(init, INITS)}")
    if init == "normal":
        return scale
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])  # type: ignore[arg-type]
    if init == "auto":
        init = "xavier" if activation in ("tanh", "sigmoid") else "kaiming"
    if init == "xavier":
        return scale * gain * math.sqrt(2.0 / (fan_in + fan_out))
    return scale * gain / math.sqrt(max(fan_in, 1))


def eval_chunk_rows(arch: Architecture, n_members: int, *, cache: bool = True) -> int:
    """Rows per evaluation chunk when ``n_members`` members run as one batched computation.

    ``cache=False`` (accelerators, which want large batches and have no CPU cache to fit)
    keeps only the memory bound.
    """
    per_row = n_members * max([*arch.hidden, arch.n_outputs, front_width(arch), 1])
    cache_rows = max(64, _EVAL_CACHE_ELEMENTS // per_row) if cache else 8192
    return max(1, min(8192, cache_rows, _EVAL_CHUNK_ELEMENTS // per_row))


def ensemble_outputs(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """One prediction ``[N, C]`` from the members' outputs ``[K, N, C]``.

    Classification averages the members' class probabilities and returns their logarithm (valid
    logits: ``softmax`` gives the averaged probabilities back, ``argmax`` the ensemble's class);
    regression averages the outputs. One member's outputs are returned unchanged.
    """
    if outputs.shape[0] == 1:
        return outputs[0]
    if task == "classification":
        log_probs = torch.log_softmax(outputs, dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(outputs.shape[0])
    return outputs.mean(dim=0)


def stack_member_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join single-member states (leading axis 1, or flat batch-norm ``[width]``) into one
    K-member state, in the given order: what a :class:`PopulationMLP` of K members loads."""
    return {name: torch.cat([s[name] for s in states], dim=0) for name in states[0]}


class PopulationMLP(nn.Module):
    """K independent MLPs evaluated together with batched matrix multiplies.

    ``forward`` accepts either ``[K, B, F]`` (a different batch per member, as in training) or
    ``[N, F]`` (the same rows for every member, as in evaluation; broadcast, never copied K times)
    and returns ``[K, B, n_outputs]``.
    """

    def __init__(self, arch: Architecture, n_members: int) -> None:
        super().__init__()
        if arch.activation not in ACTIVATION_FUNCTIONS:
            raise InputError(
                f"unknown activation {arch.activation!r}."
                f"{did_you_mean(arch.activation, ACTIVATIONS)}"
            )
        check_model_memory(arch, n_members, torch.device("cpu"))
        self.arch = arch
        self.n_members = n_members
        self.act = ACTIVATION_FUNCTIONS[arch.activation]
        self.act_in_place = _ACTIVATIONS_IN_PLACE[arch.activation]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(n_members, i, o)) for i, o in arch.layer_sizes
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(n_members, 1, o)) for _, o in arch.layer_sizes
        )
        self._pairs: tuple[tuple[nn.Parameter, nn.Parameter], ...] | None = None
        self._alphas: tuple[nn.Parameter, ...] = ()
        self.bn_weights = nn.ParameterList()
        self.bn_biases = nn.ParameterList()
        if arch.batch_norm:
            for h in arch.hidden:
                self.bn_weights.append(nn.Parameter(torch.ones(n_members * h)))
                self.bn_biases.append(nn.Parameter(torch.zeros(n_members * h)))
                layer = len(self.bn_weights) - 1
                self.register_buffer(f"bn_mean_{layer}", torch.zeros(n_members * h))
                self.register_buffer(f"bn_var_{layer}", torch.ones(n_members * h))
        # One shape parameter per member and hidden unit; an empty list registers nothing, so
        # runs without it keep their parameter order (and their optimizer state's).
        self.act_alphas = nn.ParameterList(
            nn.Parameter(torch.ones(n_members, 1, h))
            for h in (arch.hidden if arch.learnable_activation else ())
        )
        # NTK: the factor 1 / sqrt(fan_in) each layer's product is multiplied by (None: 1).
        self.weight_scales: tuple[float, ...] | None = (
            tuple(1.0 / math.sqrt(max(i, 1)) for i, _ in arch.layer_sizes)
            if arch.parametrization == "ntk"
            else None
        )
        self._front_names: tuple[str, ...] = ()
        shapes = state_shapes(arch, n_members)
        if arch.n_embedded:
            self._front_names += embeddings.PARAMETERS
            # Not saved: the architecture says which inputs are embedded.
            index = torch.as_tensor(arch.embedded, dtype=torch.long)
            self.register_buffer("embedded_index", index, persistent=False)
        if arch.categorical:
            self._front_names += category_embeddings.names(len(arch.categorical))
            # Not saved either: which inputs hold codes, and which inputs stay raw.
            codes = torch.as_tensor(arch.categorical, dtype=torch.long)
            self.register_buffer("categorical_index", codes, persistent=False)
            kept = [i for i in range(arch.n_inputs) if i not in set(arch.categorical)]
            self.register_buffer("raw_index", torch.as_tensor(kept, dtype=torch.long), False)
        if arch.front_scale:
            self._front_names += ("front_scales",)
        for name in self._front_names:
            self.register_parameter(name, nn.Parameter(torch.zeros(shapes[name])))
            if name == "front_scales":
                getattr(self, name).data.fill_(1.0)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def _front(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """First-layer inputs ``[K, B, first_layer_inputs]`` from ``x`` (``[K, B, F]``, or
        shared rows ``[N, F]``): the raw inputs but the text columns' codes, then each embedded
        input's PBLD embedding (:func:`fitwell.embeddings.embed`), then each text column's
        learned embedding (:func:`fitwell.category_embeddings.lookup`), all times the front
        scale when there is one. ``member`` computes that one member's ``[1, N, ...]`` from
        shared rows.

        Called per batch (and per evaluation chunk): the embedded table never exists whole."""
        part = slice(None) if member is None else slice(member, member + 1)
        codes = bool(self.arch.categorical)
        h = x.index_select(-1, self._parameter("raw_index")) if codes else x
        if self.arch.n_embedded:
            params = (self._parameter(name)[part] for name in embeddings.PARAMETERS)
            h = embeddings.embed(x, self._parameter("embedded_index"), *params, raw=h)
        if codes:
            names = category_embeddings.names(len(self.arch.categorical))
            tables = [self._parameter(name)[part] for name in names]
            vectors = category_embeddings.lookup(x, self._parameter("categorical_index"), tables)
            if h.dim() == 2:  # shared rows and no periodic embedding: the same raw inputs for all
                h = h.unsqueeze(0).expand(vectors.shape[0], -1, -1)
            h = torch.cat([h, vectors], dim=2)
        if self.arch.front_scale:
            # [K, 1, F]: shared rows come out [K, N, F]
            h = h * self._parameter("front_scales")[part]
        return h

    def _parameter(self, name: str) -> torch.Tensor:
        """A parameter or buffer registered by name (typed for mypy: nn.Module's getattr
        is untyped)."""
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor)
        return value

    def _cache_pairs(self) -> tuple[tuple[nn.Parameter, nn.Parameter], ...]:
        # ParameterList indexing costs ~6 us per access: a plain tuple keeps it out of the
        # per-step path. Rebuilt whenever keep_members swaps the parameter objects.
        self._pairs = tuple(zip(self.weights, self.biases, strict=True))
        self._alphas = tuple(self.act_alphas)
        return self._pairs

    def _layer_pairs(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Each layer's (effective weights, bias): the stored weights, times ``weight_scales``
        under NTK (one elementwise product of the weights per layer, tiny next to the batch's
        matrix products; autograd carries the factor to the stored weights' gradients)."""
        pairs = self._pairs if self._pairs is not None else self._cache_pairs()
        if self.weight_scales is None:
            return pairs
        return tuple((w * c, b) for (w, b), c in zip(pairs, self.weight_scales, strict=True))

    def weight_multipliers(self) -> list[float]:
        """Per layer, what the stored weights are multiplied by in the forward pass (1 without
        NTK): the doctor's probes read effective weights and gradients through it."""
        return (
            list(self.weight_scales)
            if self.weight_scales is not None
            else [1.0] * len(self.weights)
        )

    def lr_factors(self) -> list[float]:
        """A learning-rate factor per tensor of ``parameters()``, in that order: 1, except
        under NTK, where biases, activation shapes and the numeric embeddings get
        ``NTK_UNSCALED_LR_FACTOR`` and the front scale ``FRONT_SCALE_LR_FACTOR``."""
        if self.weight_scales is None:
            return [1.0 for _ in self.parameters()]
        slow = {id(p) for p in [*self.biases, *self.act_alphas]}
        slow |= {id(getattr(self, n)) for n in self._front_names if n in embeddings.PARAMETERS}
        fast = {id(self.front_scales)} if "front_scales" in self._front_names else set()
        return [
            FRONT_SCALE_LR_FACTOR
            if id(p) in fast
            else NTK_UNSCALED_LR_FACTOR
            if id(p) in slow
            else 1.0
            for p in self.parameters()
        ]

    def _activate(
        self, layer: int, h: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The activation of hidden layer ``layer``; with a learnable shape
        ``h + a * (act(h) - h)`` as ``torch.lerp`` (exactly ``act(h)`` where ``a = 1``)."""
        if not self.arch.learnable_activation:
            return act(h)
        alpha = self._alphas[layer] if self._alphas else self.act_alphas[layer]
        return torch.lerp(h, self.act(h), alpha)

    def penalized_weights(self) -> list[torch.Tensor]:
        """The weight matrices L1/L2 act on (not biases, batch-norm or front parameters). The
        first is the first layer, whose rows ``arch.first_layer_sources`` map to input columns
        (the group step of ``l1_inputs``)."""
        return list(self.weights)

    @torch.no_grad()
    def initialize(
        self, seeds: Sequence[int], *, init: str, init_scale: float, bias_init: float
    ) -> None:
        """Draw every member's weights from its own seed, so a member is reproducible alone."""
        if len(seeds) != self.n_members:
            raise ValueError(f"need {self.n_members} seeds, got {len(seeds)}")
        last = self.n_layers - 1
        for k, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            for layer, (fan_in, fan_out) in enumerate(self.arch.layer_sizes):
                act = self.arch.activation if layer < last else "sigmoid"  # output: Xavier, gain 1
                rule = "auto" if init == "data" else init  # "data" rescales afterwards
                method = rule if layer < last or rule == "normal" else "xavier"
                std = init_std(act, method, init_scale, fan_in, fan_out)
                if self.weight_scales is not None:  # the same effective weights as standard
                    std /= self.weight_scales[layer]
                w = torch.randn(fan_in, fan_out, generator=gen) * std
                self.weights[layer][k].copy_(w.to(self.weights[layer].device))
                self.biases[layer][k].fill_(bias_init if layer < last else 0.0)
            if self.arch.n_embedded:  # drawn after the layers: the layers' draws do not change
                a = self.arch
                drawn = embeddings.draw(gen, a.n_embedded, a.embedding_frequencies, a.embedding_dim)
                for name, value in zip(embeddings.PARAMETERS, drawn, strict=True):
                    param = getattr(self, name)
                    param[k].copy_(value.to(param.device))
            if self.arch.categorical:  # after the rest, so their draws do not change either
                a = self.arch
                tables = category_embeddings.draw(gen, a.category_sizes, a.category_dims)
                for name, value in zip(category_embeddings.names(len(tables)), tables, strict=True):
                    param = getattr(self, name)
                    param[k].copy_(value.to(param.device))
            if self.arch.front_scale:
                self._parameter("front_scales")[k].fill_(1.0)
            for alpha in self.act_alphas:
                alpha[k].fill_(1.0)

    @torch.no_grad()
    def initialize_biases(
        self,
        x: torch.Tensor,
        seeds: Sequence[int],
        *,
        rows: int,
        points: int = 5,
        unit_std: float | None = None,
        biases: bool = True,
    ) -> None:
        """RealMLP's ``he+5`` biases, from training rows ``x [N, F]``, after :meth:`initialize`.

        With ``unit_std`` (RealMLP's ``std`` weight init, ``init = "data"``), each unit's weights
        are first rescaled in the same pass so that its pre-activation has that standard
        deviation over the batch (units constant over the batch are left as drawn); with
        ``biases=False`` the biases keep their constant and only the weights are rescaled.

        Layer by layer (output layer too), each unit's bias is minus a random convex combination
        (Exponential(1) weights, normalised) of its pre-activation ``h @ w`` at ``points`` rows of
        a random batch of ``rows`` training rows, so every unit starts with its kink inside the
        data instead of at 0 for all of them. The batch then passes through the layer with its
        new bias and the plain activation (a learnable shape starts at the plain one) to
        initialise the next. No dropout and no batch norm in this pass. Each member draws from
        its own seed (a stream apart from its weights', data order's and dropout's), so a member
        is reproducible alone.
        """
        if len(seeds) != self.n_members:
            raise ValueError(f"need {self.n_members} seeds, got {len(seeds)}")
        pairs = self._layer_pairs()
        last = self.n_layers - 1
        for k, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed) * 7919 + 3)
            pick = torch.randperm(len(x), generator=gen)[: max(1, rows)].to(x.device)
            h = self._front(x.index_select(0, pick), member=k)
            h = h[0] if h.dim() == 3 else h
            for layer, (w, _) in enumerate(pairs):
                z = h @ w[k]
                if unit_std is not None:
                    std = z.std(dim=0, correction=0)
                    factor = torch.where(std > 1e-6, unit_std / std.clamp_min(1e-6), 1.0)
                    self.weights[layer][k].mul_(factor)  # [fan_in, units] * [units]
                    z = z * factor
                bias = self.biases[layer][k, 0]
                if biases:
                    n, units = z.shape
                    idx = torch.randint(0, n, (units, points), generator=gen).to(x.device)
                    weights = -torch.log1p(-torch.rand(units, points, generator=gen)).to(z)
                    weights = weights / weights.sum(dim=1, keepdim=True)
                    chosen = z.gather(0, idx.T).T  # [units, points]: unit j at its rows
                    bias.copy_(-(chosen * weights).sum(dim=1))
                if layer < last:
                    h = self.act(z + bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        dropout_masks: Sequence[torch.Tensor | None] | None = None,
        on_preactivation: PreactivationHook | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs ``[K, B, n_outputs]``; with class-index ``targets [K, B]``, the per-row
        cross-entropy ``[K, B]`` of those outputs instead (``F.cross_entropy(..., reduction=
        "none")``; populations with a thin output layer fuse that layer with the loss).

        Hooks see each hidden layer's pre-activations ``[K, B, H]`` and must not keep them:
        without gradients the activation is applied in place."""
        pairs = self._layer_pairs()
        if self._front_names:
            x = self._front(x)
        h = self._hidden(x, pairs, dropout_masks, on_preactivation)
        if targets is None:
            return self._linear(h, *pairs[-1])
        if self.fuses_cross_entropy and h.dim() == 3:
            return narrow_cross_entropy(h, *pairs[-1], targets)
        logits = self._linear(h, *pairs[-1])
        k, b, c = logits.shape
        rows = F.cross_entropy(logits.reshape(k * b, c), targets.reshape(k * b), reduction="none")
        return rows.view(k, b)

    @property
    def fuses_cross_entropy(self) -> bool:
        """Whether ``forward(..., targets=...)`` fuses the output layer with the loss: populations
        whose output layer is thin (the transposed layout of :func:`narrow_linear`)."""
        return self.n_members > 1 and self.arch.n_outputs < _NARROW_OUTPUTS

    @staticmethod
    def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if h.dim() == 2:  # shared rows: one member reads them as a batch of one, no copy
            return torch.baddbmm(b, h.unsqueeze(0), w) if len(w) == 1 else torch.matmul(h, w) + b
        if len(w) > 1 and w.shape[2] < _NARROW_OUTPUTS:
            return narrow_linear(h, w, b)
        return torch.baddbmm(b, h, w)

    def _hidden(
        self,
        x: torch.Tensor,
        pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...],
        dropout_masks: Sequence[torch.Tensor | None] | None,
        on_preactivation: PreactivationHook | None,
    ) -> torch.Tensor:
        """The last hidden layer's activations (``x`` itself for a network without one)."""
        h = x
        act = self.act if torch.is_grad_enabled() else self.act_in_place
        for layer, (w, b) in enumerate(pairs[:-1]):
            h = self._linear(h, w, b)
            if self.arch.batch_norm:
                h = self._batch_norm(layer, h)
            if on_preactivation is not None:
                on_preactivation(layer, h)
            h = self._activate(layer, h, act)
            mask = dropout_masks[layer] if dropout_masks is not None else None
            if mask is not None:
                h = h * mask
        return h

    def _batch_norm(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        k, b, width = h.shape
        flat = h.transpose(0, 1).reshape(b, k * width)  # per-member, per-unit statistics
        flat = F.batch_norm(
            flat,
            getattr(self, f"bn_mean_{layer}"),
            getattr(self, f"bn_var_{layer}"),
            self.bn_weights[layer],
            self.bn_biases[layer],
            training=self.training,
        )
        return flat.reshape(b, k, width).transpose(0, 1)

    @torch.no_grad()
    def shared_chunks(
        self,
        x: torch.Tensor,
        *,
        on_preactivation: PreactivationHook | None = None,
        hooked_rows: int = 0,
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Eval outputs ``[K, rows, n_outputs]`` for consecutive chunks of rows ``x [N, F]``
        that every member reads, with the rows each chunk covers.

        Chunks are sized to stay in cache. On the CPU, with enough work per member, the members
        run one after another on each chunk (``addmm`` on ``[rows, width]``) instead of as one
        batched ``[K, rows, width]`` computation; results agree up to float32 rounding.
        ``on_preactivation`` sees the batched pre-activations of the chunks that hold the first
        ``hooked_rows`` rows (exactly those rows when members run one by one; whole chunks
        otherwise, so a hook that wants a fixed number of rows slices them itself).
        """
        on_cpu = x.device.type == "cpu"
        rows = eval_chunk_rows(self.arch, 1)
        one_by_one = (
            not self.training
            and self.n_members > 1
            and on_cpu
            and max(self.arch.hidden, default=0) >= _MEMBER_LOOP_WIDTH
            and min(rows, len(x)) * sum(i * o for i, o in self.arch.layer_sizes)
            >= _MEMBER_LOOP_MACS
        )
        if not one_by_one:
            rows = eval_chunk_rows(self.arch, self.n_members, cache=on_cpu)
        hooked = min(hooked_rows, len(x)) if on_preactivation is not None else 0
        if one_by_one:  # hooked rows run batched, in chunks of their own
            hooked_rows_per_chunk = eval_chunk_rows(self.arch, self.n_members, cache=on_cpu)
            starts = [*range(0, hooked, hooked_rows_per_chunk), *range(hooked, len(x), rows)]
        else:  # the same chunks with or without hooks: no extra pass for the hooked rows
            starts = list(range(0, len(x), rows))
        bounds = [*starts, len(x)]
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            part = slice(begin, end)
            if begin < hooked:
                yield part, self(x[part], on_preactivation=on_preactivation)
            elif one_by_one:
                yield (
                    part,
                    torch.stack([self._member_forward(x[part], k) for k in range(self.n_members)]),
                )
            else:
                yield part, self(x[part])

    def _member_forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Eval-mode outputs ``[N, n_outputs]`` of member ``k`` alone."""
        pairs = self._layer_pairs()
        last = len(pairs) - 1
        h = self._front(x, k)[0] if self._front_names else x
        for layer, (w, b) in enumerate(pairs):
            h = torch.addmm(b[k], h, w[k])
            if layer == last:
                break
            if self.arch.batch_norm:
                width = h.shape[1]
                part = slice(k * width, (k + 1) * width)
                h = F.batch_norm(
                    h,
                    getattr(self, f"bn_mean_{layer}")[part],
                    getattr(self, f"bn_var_{layer}")[part],
                    self.bn_weights[layer][part],
                    self.bn_biases[layer][part],
                    training=False,
                )
            if self.arch.learnable_activation:
                h = torch.lerp(h, self.act(h), self._alphas[layer][k])
            else:
                h = self.act_in_place(h)
        return h

    @torch.no_grad()
    def predict_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """Eval outputs ``[K, N, n_outputs]`` for shared rows ``x [N, F]``, in bounded memory."""
        outs = [out for _, out in self.shared_chunks(x)]
        return torch.cat(outs, dim=1) if outs else x.new_zeros(self.n_members, 0, 1)

    @torch.no_grad()
    def keep_members(
        self, members: torch.Tensor
    ) -> dict[torch.Tensor, tuple[nn.Parameter, torch.Tensor]]:
        """Drop every member not in ``members`` (indices into the current population).

        Returns ``{old_param: (new_param, row_index)}`` so optimizer state can be sliced the same
        way. Used to stop paying for members whose early stopping has fired.
        """
        mapping: dict[torch.Tensor, tuple[nn.Parameter, torch.Tensor]] = {}
        self._pairs = None
        for plist in (self.weights, self.biases):
            for i, p in enumerate(plist):
                new = nn.Parameter(p.detach()[members].clone())
                mapping[p] = (new, members)
                plist[i] = new
        if self.arch.batch_norm:
            for layer, width in enumerate(self.arch.hidden):
                offsets = torch.arange(width, device=members.device)
                flat_idx = (members[:, None] * width + offsets).reshape(-1)
                for plist in (self.bn_weights, self.bn_biases):
                    p = plist[layer]
                    new = nn.Parameter(p.detach()[flat_idx].clone())
                    mapping[p] = (new, flat_idx)
                    plist[layer] = new
                for name in (f"bn_mean_{layer}", f"bn_var_{layer}"):
                    setattr(self, name, getattr(self, name)[flat_idx].clone())
        for i, p in enumerate(self.act_alphas):
            new = nn.Parameter(p.detach()[members].clone())
            mapping[p] = (new, members)
            self.act_alphas[i] = new
        for name in self._front_names:
            p = getattr(self, name)
            new = nn.Parameter(p.detach()[members].clone())
            mapping[p] = (new, members)
            setattr(self, name, new)
        self.n_members = int(len(members))
        return mapping

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """One member's tensors, named for safetensors (leading member axis of size 1)."""
        state: dict[str, torch.Tensor] = {}
        for name, tensor in self.state_dict().items():
            if name.startswith(("bn_weights", "bn_biases", "bn_mean", "bn_var")):
                width = tensor.shape[0] // self.n_members
                state[name] = tensor[member * width : (member + 1) * width].detach().clone()
            else:
                state[name] = tensor[member : member + 1].detach().clone()
        return state
