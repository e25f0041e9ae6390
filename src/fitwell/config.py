"""One validated training configuration, built from defaults, a TOML file and flags (in that order).

The same names (underscores) are used in TOML, in the Python API and, with dashes, on the CLI.
Every problem with one configuration is collected into a single error message.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fitwell.errors import InputError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "gelu", "mish")
INITS = ("auto", "xavier", "kaiming", "normal", "data")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "onecycle", "plateau", "coslog4")
# Schedules of dropout and weight decay (RealMLP: "flat_cos", flat then cosine to 0).
REGULARIZATION_SCHEDULES = ("constant", "flat_cos")
BIAS_INIT_MODES = ("constant", "he+5")
BEST_EPOCH_BY = ("loss", "score")
PARAMETRIZATIONS = ("standard", "ntk")
NUMERIC_EMBEDDINGS = ("auto", "none", "pbld")
TASKS = ("auto", "classification", "regression")
DEVICES = ("auto", "cpu", "cuda")
METRICS = (
    "auto",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "log_loss",
    "rmse",
    "mae",
    "r2",
)
BUILTIN_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes", "penguins", "mnist1d")

# ``hidden = "auto"``: two layers whose width follows the training rows (see resolve_hidden).
AUTO_DEPTH = 2
AUTO_WIDTH_RANGE = (64, 256)


def resolve_hidden(hidden: tuple[int, ...] | str, n_train_rows: int) -> tuple[int, ...]:
    """The hidden widths to build: ``hidden`` itself, or for ``"auto"`` two layers of
    ``2**ceil(log2(n_train_rows / 4))`` units, clamped to 64..256.

    Why: 256-unit layers are the published MLP recipe for MNIST-1D (thousands of rows) but
    overfit tiny tables, where early stopping then has a noisy 20-row validation split to
    choose from (``benchmarks/defaults.py --seeds 7 --set ensemble=1``, with and without
    ``--set hidden=[256,256]``, compares the two). Any table with about 1000 or more training rows
    gets the full 256.
    """
    if not isinstance(hidden, str):
        return tuple(hidden)
    low, high = AUTO_WIDTH_RANGE
    width = 2 ** math.ceil(math.log2(max(n_train_rows, 1) / 4)) if n_train_rows > 4 else low
    return (int(min(high, max(low, width))),) * AUTO_DEPTH


# ------------------------------------------------------------------------------ recipe presets
# ``recipe`` names a set of defaults; every setting given explicitly (flag, TOML, keyword) wins.
RECIPES = ("classic", "realmlp")
# RealMLP-TD (Holzmueller et al., NeurIPS 2024), as pytabkit 1.8.0's
# ``models/sklearn/default_params.py`` sets it (``RealMLP_TD_CLASS`` / ``RealMLP_TD_REG``):
# robust scaling + smooth clipping, PBLD embeddings (16 frequencies, 3 outputs + the raw value
# = its ``plr_hidden_2 = 4``), the front scale, NTK parametrization with a learnable activation,
# dropout 0.15 and weight decay 0.02 on flat_cos schedules, coslog4 at Adam beta2 0.95, 3 x 256
# units, batch 256 (pytabkit's default), 256 epochs keeping the best epoch on validation (here:
# patience = max_epochs, so nothing stops early and the best epoch is restored) and one network.
REALMLP_PRESET: dict[str, Any] = {
    "scaling": "robust",
    "numeric_embedding": "pbld",
    "embedding_frequencies": 16,
    "embedding_dim": 3,
    "front_scale": True,
    "hidden": (256, 256, 256),
    "parametrization": "ntk",
    "learnable_activation": True,
    "dropout": 0.15,
    "dropout_schedule": "flat_cos",
    "weight_decay": 0.02,
    "wd_schedule": "flat_cos",
    "optimizer": "adam",
    "adam_beta2": 0.95,
    "lr_schedule": "coslog4",
    "batch_size": 256,
    "max_epochs": 256,
    "patience": 256,
    "ensemble": 1,
}
# The settings RealMLP-TD chooses by task: SELU, lr 0.04, label smoothing 0.1 and the best
# epoch by validation error for classification; Mish, lr 0.2 and the best epoch by validation
# loss for regression. (Its ``he+5`` biases are the option ``bias_init_mode``, left out: on
# top of the rest, docs/recipe.md measured no consistent gain.)
REALMLP_BY_TASK: dict[str, dict[str, Any]] = {
    "classification": {
        "activation": "selu",
        "lr": 0.04,
        "label_smoothing": 0.1,
        "best_epoch_by": "score",
    },
    "regression": {
        "activation": "mish",
        "lr": 0.2,
        "label_smoothing": 0.0,
        "best_epoch_by": "loss",
    },
}
# ``extra`` key: the per-task settings the preset filled in while the task was still "auto".
RECIPE_PENDING = "recipe_pending"


def recipe_defaults(values: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """The preset values that ``values`` (raw settings) do not give explicitly, and the per-task
    settings among them still to be chosen by :func:`resolve_recipe` (filled with the
    classification values while the task is "auto"; none when the task is given). Values
    written by :meth:`TrainConfig.to_dict` before the task was known carry that list as
    ``recipe_pending``. ``classic`` (or an unknown name, refused later) adds nothing."""
    if values.get("recipe", "classic") != "realmlp":
        return {}, None
    task = values.get("task", "auto")
    by_task = REALMLP_BY_TASK.get(task, REALMLP_BY_TASK["classification"])
    preset = {k: v for k, v in (REALMLP_PRESET | by_task).items() if k not in values}
    if task in REALMLP_BY_TASK:
        return preset, ()
    written = values.get(RECIPE_PENDING) or ()
    pending = tuple(k for k in by_task if k in preset or k in written)
    return preset, pending


def resolve_recipe(cfg: TrainConfig, task: str) -> TrainConfig:
    """``cfg`` with a recipe built while the task was "auto" made concrete for ``task``: the
    task is recorded and the preset's per-task settings it filled in are set for it (``realmlp``
    on a regression target: Mish, lr 0.2, no smoothing). Settings given explicitly are kept."""
    if cfg.recipe != "realmlp" or cfg.task != "auto" or task not in REALMLP_BY_TASK:
        return cfg
    wanted = REALMLP_BY_TASK[task]
    pending = cfg.extra.get(RECIPE_PENDING) or ()
    return cfg.replace(task=task, **{k: wanted[k] for k in pending})


# The seed reaches NumPy and scikit-learn, which take 32-bit unsigned seeds.
MAX_SEED = 2**32 - 1
# Members trained at once (restarts per setting, ensemble size): beyond this a population is a
# sweep that belongs in several runs; memory is checked separately from the model's shape.
MAX_MEMBERS = 1000
# Counts (epochs, batch size, widths) beyond this are typos; torch's int64 shapes would accept
# them and fail later, or allocate until the machine swaps.
MAX_COUNT = 2**31 - 1

# Settings that may differ between members of one population without changing tensor shapes.
PER_MEMBER_FIELDS = (
    "seed",
    "lr",
    "l1",
    "l1_inputs",
    "l2",
    "dropout",
    "lr_schedule",
    "warmup_epochs",
    "weight_decay",
    "dropout_schedule",
    "wd_schedule",
)


@dataclass
class TrainConfig:
    """Everything that decides a training run. Defaults are the recommended recipe.

    The default recipe (two hidden layers of ReLU units, 256 wide on tables of 1000+ training
    rows and narrower on smaller ones; dropout 0.2; Adam at 3e-3; batch 64; early stopping with
    patience 20 and the best weights restored; the average of 3 seeds) was chosen on MNIST-1D,
    digits, breast cancer, wine, iris, diabetes and penguins against scikit-learn's MLP defaults
    (``benchmarks/defaults.py``).

    Parameters
    ----------
    data : str or None
        Path to a CSV, Parquet or ``.npz`` file. Exclusive with ``dataset``.
    dataset : str or None
        Built-in dataset name (see ``BUILTIN_DATASETS``); nothing is downloaded.
    target : str or None
        Target column. Built-in datasets and ``.npz`` files know their own.
    recipe : {"classic", "realmlp"}, default "classic"
        A named set of defaults; any setting given explicitly wins over it. ``classic``: the
        defaults listed here. ``realmlp``: RealMLP-TD's recipe with pytabkit 1.8.0's values
        (``REALMLP_PRESET``): ``scaling="robust"``, ``numeric_embedding="pbld"`` (16
        frequencies, 3 outputs), ``front_scale=True``, ``hidden=(256, 256, 256)``,
        ``parametrization="ntk"``, ``learnable_activation=True``, ``dropout=0.15`` and
        ``weight_decay=0.02`` on ``flat_cos`` schedules, ``lr_schedule="coslog4"``,
        ``adam_beta2=0.95``, ``batch_size=256``, ``max_epochs=256``, ``patience=256`` (no early
        stop; the best validation epoch is restored), ``ensemble=1``; and by task,
        ``activation="selu"``, ``lr=0.04``, ``label_smoothing=0.1``, ``best_epoch_by="score"``
        for classification, ``activation="mish"``, ``lr=0.2`` for regression (chosen once the
        task is known when ``task="auto"``). ``docs/recipe.md`` compares the two
        (``benchmarks/recipe.py``).
    task : {"auto", "classification", "regression"}, default "auto"
        ``auto`` infers it from the target column.
    split : tuple of 3 floats, default (0.7, 0.15, 0.15)
        Train / validation / test fractions; stratified for classification.
    scale : bool, default True
        Scale numeric columns (fitted on training rows only).
    scaling : {"standard", "robust"}, default "standard"
        ``standard``: subtract the mean, divide by the std. ``robust``: subtract the median,
        divide by the IQR, then clip smoothly into (-3, 3) (RealMLP's preprocessing).
    embed_categories_above : int, default 30
        Text columns with more distinct training values than this get a learned embedding
        (fastai's entity embeddings, ``min(600, round(1.6 * n ** 0.56))`` wide) instead of one
        one-hot input per value; 0 or less: always one-hot. See
        :mod:`fitwell.data.preprocessing` for missing, unknown and rare values.
    hidden : tuple of int or "auto", default "auto"
        Hidden layer widths. ``auto`` is two layers, 256 units wide from about 1000 training rows,
        narrower (down to 64) for smaller tables: see :func:`resolve_hidden`. The run's saved
        ``config.toml`` records the widths it used.
    activation : str, default "relu"
        ``mish`` (``x * tanh(softplus(x))``) is RealMLP's activation for regression.
    learnable_activation : bool, default False
        RealMLP's parametric activation: each hidden unit computes ``x + a * (act(x) - x)``
        with its own learned ``a``, starting at 1 (the plain activation), so training can make a
        unit more linear. Not penalised by ``l1`` / ``l2`` / ``weight_decay``.
    parametrization : {"standard", "ntk"}, default "standard"
        ``ntk`` (RealMLP's): each layer computes ``(x @ w) / sqrt(fan_in) + b``; the stored
        ``w`` is drawn at ``sqrt(fan_in)`` times the ``init`` rule's std, so the initial function
        is the standard one (N(0, 1) for SELU with ``init="auto"``) and only training changes:
        Adam moves ``w`` by about ``lr`` per step, the layer's effective weights by
        ``lr / sqrt(fan_in)``, so ``ntk`` wants a larger ``lr`` (RealMLP: 0.04 to 0.2). Biases
        and learnable-activation shapes, which ``ntk`` does not rescale, train at 0.1 x ``lr``
        (RealMLP's ``bias_lr_factor`` and ``act_lr_factor``).
    dropout : float or tuple of float, default 0.2
        Drop probability, one for all hidden layers or one per hidden layer.
    dropout_schedule : {"constant", "flat_cos"}, default "constant"
        ``flat_cos`` (RealMLP's): the full rate for the first half of ``max_epochs``, then a
        cosine down to 0 (:func:`fitwell.training.schedules.regularization_factor`). Per member.
    init : {"auto", "xavier", "kaiming", "normal", "data"}, default "auto"
        ``auto``: Kaiming for ReLU-like activations, Xavier for tanh/sigmoid, LeCun for SELU.
        ``data`` (RealMLP's ``std`` init): drawn as ``auto``, then, layer after layer (output
        layer too), each unit's weights are rescaled so that its pre-activation has standard
        deviation ``init_scale`` over a random batch of training rows, whatever the inputs'
        (or the embedding's) scale.
    init_scale : float, default 1.0
        Multiplies the initial weights' standard deviation (``normal`` uses it as the std;
        ``data``: the pre-activations' std).
    bias_init : float, default 0.0
        Constant initial value of every hidden bias.
    bias_init_mode : {"constant", "he+5"}, default "constant"
        ``he+5`` (RealMLP's): from the training rows, each unit's bias (output layer's too) is
        minus a random convex combination of its pre-activation at 5 rows, so every unit's
        kink starts inside the data (:meth:`fitwell.models.PopulationMLP.initialize_biases`).
        ``constant`` uses ``bias_init``.
    batch_norm : bool, default False
    numeric_embedding : {"auto", "none", "pbld"}, default "none"
        ``auto``: ``pbld`` for classification, ``none`` for regression (what
        ``benchmarks/embeddings.py`` measured: ahead on all six classification tables, +4.6
        points on MNIST-1D, behind on the regression table); ``fitwell auto`` starts from it.
        ``none`` (the classic recipe) stays ``train``'s default: under the embedding the doctor's
        benchmark caught under-fitting in 32% of runs (100% without) and raised 5 false alarms
        in 105 healthy runs (1 without).
        ``pbld`` (RealMLP's periodic embedding): each numeric input ``x_j`` also feeds the first
        layer through ``W_j cos(2 pi (w_j x_j + b_j)) + c_j``, with ``embedding_frequencies``
        learned frequencies ``w_j`` (initially ~ N(0, 0.1^2)) and phases ``b_j``, reduced to
        ``embedding_dim`` values by the learned ``W_j``, ``c_j``; the raw value is kept beside
        them. Per member and per column, computed batch by batch. One-hot levels are not
        embedded. ``l1_inputs`` groups a column's embedding with its raw value.
    embedding_frequencies : int, default 16
        Frequencies per embedded column (RealMLP: 16).
    embedding_dim : int, default 3
        Embedding outputs per embedded column, besides the raw value (RealMLP: 3, so 4 inputs
        per column reach the first layer).
    front_scale : bool or None, default None
        ``None``: on exactly when numeric columns are embedded. A learned scale per member and
        first-layer input, starting at 1, multiplies the inputs (raw values and embeddings)
        before the first layer (RealMLP's scaling layer). Not penalised by ``l1`` / ``l2``.
    optimizer : {"adam", "adamw", "sgd"}, default "adam"
    lr : float, default 3e-3
    lr_schedule : {"constant", "cosine", "onecycle", "plateau", "coslog4"}, default "constant"
        A factor on ``lr`` set at every epoch start, laid out over ``max_epochs``
        (:func:`fitwell.training.schedules.lr_factor`). Per member, so a population can compare
        schedules. ``plateau`` multiplies the member's rate by 0.1 (down to 1e-3 of ``lr``) each
        time its validation loss has not improved for ``max(1, patience // 2)`` epochs (10 when
        ``patience`` is 0), so the rate drops before early stopping fires
        (:func:`fitwell.training.schedules.plateau_factor`).
        ``coslog4`` is RealMLP's: four cosine cycles on a log time axis,
        ``0.5 * (1 - cos(2 pi log2(1 + 15 t)))``, read at each epoch's midpoint.
    warmup_epochs : int, default 0
        Linear warm-up: the first ``warmup_epochs`` epochs run at ``(epoch + 1) / (warmup + 1)``
        of the scheduled rate.
    weight_decay : float, default 0.0
        Decoupled weight decay (RealMLP's ``wd``, 0.02 there): after every step each weight
        matrix is multiplied by ``1 - lr_now * weight_decay_now``, with the member's scheduled
        rate (as AdamW and pytabkit do). Biases and front / activation parameters are not
        decayed. Per member; on top of AdamW's own fixed decay when ``optimizer="adamw"``.
    wd_schedule : {"constant", "flat_cos"}, default "constant"
        Schedule of ``weight_decay``, as ``dropout_schedule``. Per member.
    adam_beta2 : float, default 0.999
        Adam's / AdamW's second-moment decay (RealMLP uses 0.95).
    label_smoothing : float, default 0.0
        Classification: train against targets with ``1 - eps`` on the class and ``eps`` spread
        over all classes (RealMLP uses 0.1). Validation and test losses stay plain
        cross-entropy, so early stopping and the doctor read the same loss as without it.
    class_weight : {"none", "balanced"} or dict of str to float, default "none"
        ``balanced``: each training row's loss is multiplied by ``n / (C * n_class)``
        (scikit-learn's rule), so a rare class weighs as much as a common one in training.
        A table ``{yes = 5.0, no = 1.0}`` gives each class's factor by label (finite, >= 0;
        unlisted classes weigh 1). Validation loss and scores stay unweighted by class;
        balanced accuracy and macro-F1 are reported beside accuracy.
    metric : str, default "auto"
        The score that chooses the kept member and the ensemble on validation rows, that
        ``target_score`` is compared with, and that leads the summary: ``accuracy``,
        ``balanced_accuracy``, ``macro_f1``, ``roc_auc``, ``log_loss`` (classification) or
        ``rmse``, ``mae``, ``r2`` (regression). ``log_loss``, ``rmse`` and ``mae`` are lower is
        better. ``auto``: accuracy or R^2 is reported and members are chosen by validation loss
        (the behaviour without a metric). Early stopping always watches validation loss.
    weight_column : str or None, default None
        A numeric column of the table holding each row's weight (finite, >= 0, not all zero);
        not a feature. Training minimizes the weighted mean loss ``sum w_i l_i / sum w_i`` per
        batch; validation and test losses and scores are weighted alike (scikit-learn's
        ``sample_weight``), as is the trivial baseline. ``predict`` does not need the column.
    momentum : float, default 0.9
        SGD only.
    batch_size : int, default 64
    max_epochs : int, default 200
    l1, l2 : float, default 0.0
        Penalty strengths lambda. The objective is
        ``mean_batch_loss + l1 * sum|W| + l2 * sum W**2`` over all weight matrices (biases and
        batch-norm parameters are not penalised). Unlike scikit-learn's ``alpha`` (which is
        ``0.5 * alpha * ||W||^2 / n_samples``) the penalty is not divided by the row count.
        L1 is applied as a proximal (soft-threshold) step so weights become exactly zero.
    l1_inputs : float, default 0.0
        Feature selection (group lasso): adds ``l1_inputs * sum_g sqrt(p_g) * ||W1_g||_2``, one
        group ``g`` per original input column (its ``p_g`` encoded inputs' outgoing first-layer
        weights, so a one-hot column is one group). Applied as the proximal group step after each
        optimizer step, so whole columns reach exactly zero and the model stops reading them.
        While it is on, early stopping watches validation loss plus this penalty, so restoring the
        best epoch does not bring back columns the penalty had switched off.
    l1_inputs_adaptive : bool or None, default None
        Adaptive group lasso: column ``g``'s penalty is multiplied by
        ``w_g = mean_g' ||W1_g'|| / ||W1_g||`` measured on a plain group-lasso pilot (every
        column weighing 1; each fit's norms divided by their mean, averaged over fits, floored at
        1e-3), so columns the pilot barely reads, or switched off, get a large penalty and the
        columns it relies on a small one. ``fitwell select`` takes the pilot from its plain path
        (the members at the λ :func:`fitwell.selection.pilot_index` picks) and returns the
        weights; ``train`` without ``l1_inputs_weights`` runs a 3-seed pilot at its own
        ``l1_inputs`` first. The weights are saved in the run's config. ``None`` (the default):
        on in ``fitwell select``, where ``benchmarks/feature_selection.py`` measured it (noise
        columns off 28-93% -> 100%), off in ``train`` (a pilot costs three more fits, and a run
        saved before this option trains as it did).
    l1_inputs_weights : dict of str to float or None, default None
        Per-column factors ``w_g`` of the ``l1_inputs`` penalty (``>= 0``; one per input column,
        by name). Set by the adaptive pilot and saved with the run, so a resumed run replays the
        same penalty; give them explicitly to reuse the weights ``fitwell select`` chose with.
    patience : int, default 20
        Early stopping: epochs without a validation-loss improvement larger than ``min_delta``
        before stopping. 0 turns early stopping off.
    min_delta : float, default 0.0
    restore_best : bool, default True
        Restore the weights of the best validation epoch at the end.
    best_epoch_by : {"loss", "score"}, default "loss"
        What "best validation epoch" means for ``restore_best``: the lowest validation loss, or
        the highest validation score (accuracy / R^2; ties go to the later epoch, as in
        RealMLP). Early stopping's patience counts on the same quantity.
    restarts : int, default 1
        Random restarts (independent initialisations trained together); the best on validation
        is kept.
    ensemble : int, default 3
        The final model averages the predictions (class probabilities, or regression outputs)
        of this many members of the population, the best on validation loss; 1 keeps the single
        best member. A population with fewer members gets more seeds (``seed + restarts``, ...).
        Why 3: averaging three seeds raised the mean test score on five of the seven built-in
        tables and lowered none (``benchmarks/defaults.py --seeds 7`` with and without
        ``--set ensemble=1``: digits 0.971 -> 0.977, MNIST-1D 0.681 -> 0.717), for three times
        the arithmetic, batched into one population.
    target_score : float or None
        After the test evaluation, the CLI exits with code 1 if the test ``metric`` is below it
        (or above it, for a lower-is-better metric).
    seed : int, default 0
    device : {"auto", "cpu", "cuda"}, default "auto"
    threads : int or None
        CPU threads for torch; ``None`` picks 1, which does not collapse when the machine is busy.
    checkpoint_every : int, default 1
        Write a resumable checkpoint into the run directory every this many epochs (0 = never;
        then ``fitwell resume`` restarts from epoch 0).
    """

    data: str | None = None
    dataset: str | None = None
    target: str | None = None
    recipe: str = "classic"
    task: str = "auto"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    scale: bool = True
    scaling: str = "standard"
    embed_categories_above: int = 30
    hidden: tuple[int, ...] | str = "auto"
    activation: str = "relu"
    learnable_activation: bool = False
    parametrization: str = "standard"
    dropout_schedule: str = "constant"
    dropout: float | tuple[float, ...] = 0.2
    init: str = "auto"
    init_scale: float = 1.0
    bias_init: float = 0.0
    bias_init_mode: str = "constant"
    batch_norm: bool = False
    numeric_embedding: str = "none"
    embedding_frequencies: int = 16
    embedding_dim: int = 3
    front_scale: bool | None = None
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    wd_schedule: str = "constant"
    label_smoothing: float = 0.0
    class_weight: str | dict[str, float] = "none"
    metric: str = "auto"
    weight_column: str | None = None
    momentum: float = 0.9
    batch_size: int = 64
    max_epochs: int = 200
    l1: float = 0.0
    l1_inputs: float = 0.0
    l1_inputs_adaptive: bool | None = None
    l1_inputs_weights: dict[str, float] | None = None
    l2: float = 0.0
    patience: int = 20
    min_delta: float = 0.0
    restore_best: bool = True
    best_epoch_by: str = "loss"
    restarts: int = 1
    ensemble: int = 3
    target_score: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def dropout_per_layer(self) -> tuple[float, ...]:
        """The drop probability of each hidden layer."""
        if isinstance(self.dropout, (int, float)):
            n_layers = AUTO_DEPTH if isinstance(self.hidden, str) else len(self.hidden)
            return tuple(float(self.dropout) for _ in range(n_layers))
        return tuple(float(p) for p in self.dropout)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        cfg = build_config(dataclasses.asdict(self) | changes)
        pending = self.extra.get(RECIPE_PENDING)
        if pending is not None:  # a recipe's per-task settings not yet resolved, unless changed
            cfg.extra[RECIPE_PENDING] = tuple(k for k in pending if k not in changes)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain values, ready for TOML / JSON (None values dropped: TOML has no null)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.extra.get(RECIPE_PENDING):  # a recipe waiting for the task: kept in the TOML
            out[RECIPE_PENDING] = list(self.extra[RECIPE_PENDING])
        return out


_FIELD_NAMES = tuple(f.name for f in fields(TrainConfig) if f.name != "extra")


def _to_int(value: Any) -> int:
    """An integer setting: an int (or a string of one), never a bool or a float.

    ``1e3`` in TOML is a float and ``true`` a bool; both are refused alike rather than one
    silently truncated and the other rejected.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _as_tuple(value: Any, cast: type, name: str, problems: list[str]) -> tuple | None:
    if isinstance(value, str):
        parts: list[Any] = value.replace(" ", "").split(",")
        if any(p == "" for p in parts):
            problems.append(
                f"`{name}` has an empty item in {value!r}; remove the extra comma "
                "(an empty `hidden` alone means a linear model)"
            )
            return None
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    convert = _to_int if cast is int else _to_float
    try:
        return tuple(convert(p) for p in parts)
    except (TypeError, ValueError, OverflowError):
        problems.append(
            f"`{name}` must be a comma-separated list of {cast.__name__}; got {value!r}"
        )
        return None


def resolve_front(cfg: TrainConfig, task: str) -> TrainConfig:
    """``cfg`` with ``numeric_embedding="auto"``, ``front_scale=None`` and a recipe's per-task
    settings (:func:`resolve_recipe`) made concrete for ``task``, so that the saved config
    records what was trained."""
    cfg = resolve_recipe(cfg, task)
    embedding = cfg.numeric_embedding
    if embedding == "auto":
        embedding = "pbld" if task == "classification" else "none"
    front = cfg.front_scale if cfg.front_scale is not None else embedding != "none"
    return cfg.replace(numeric_embedding=embedding, front_scale=bool(front))


def build_config(values: dict[str, Any]) -> TrainConfig:
    """Validate raw values (from TOML, flags or keyword arguments) into a :class:`TrainConfig`.

    Raises :class:`InputError` listing every problem at once.
    """
    problems: list[str] = []
    unknown = [k for k in values if k not in _FIELD_NAMES and k not in ("extra", RECIPE_PENDING)]
    for name in unknown:
        hint = did_you_mean(name, _FIELD_NAMES).strip().replace("Did", "did")
        problems.append(f"unknown setting `{name}`" + (f" ({hint})" if hint else ""))
    preset, pending = recipe_defaults(values)
    raw = preset | {k: v for k, v in values.items() if k in _FIELD_NAMES}

    if "hidden" in raw:
        if isinstance(raw["hidden"], str) and raw["hidden"].strip() == "auto":
            raw["hidden"] = "auto"
        elif raw["hidden"] in ([], ()) or (
            isinstance(raw["hidden"], str) and raw["hidden"].strip() == ""
        ):
            raw["hidden"] = ()
        else:
            raw["hidden"] = _as_tuple(raw["hidden"], int, "hidden", problems)
    if "split" in raw:
        raw["split"] = _as_tuple(raw["split"], float, "split", problems)
    if "dropout" in raw and not isinstance(raw["dropout"], (int, float)):
        got = _as_tuple(raw["dropout"], float, "dropout", problems)
        raw["dropout"] = got[0] if got is not None and len(got) == 1 else got
    for name in (
        "lr",
        "momentum",
        "adam_beta2",
        "weight_decay",
        "label_smoothing",
        "init_scale",
        "bias_init",
        "l1",
        "l1_inputs",
        "l2",
        "min_delta",
    ):
        if name in raw:
            try:
                raw[name] = _to_float(raw[name])
            except (TypeError, ValueError):
                problems.append(f"`{name}` must be a number; got {raw[name]!r}")
    if raw.get("target_score") is not None:
        try:
            raw["target_score"] = _to_float(raw["target_score"])
        except (TypeError, ValueError):
            problems.append(f"`target_score` must be a number; got {raw['target_score']!r}")
    for name in (
        "batch_size",
        "max_epochs",
        "patience",
        "restarts",
        "ensemble",
        "seed",
        "threads",
        "checkpoint_every",
        "warmup_epochs",
        "embedding_frequencies",
        "embedding_dim",
        "embed_categories_above",
    ):
        if raw.get(name) is not None:
            v = raw[name]
            try:
                raw[name] = _to_int(v)
            except (TypeError, ValueError):
                hint = (
                    f"; write {int(v)} without a decimal point or exponent"
                    if isinstance(v, float) and v.is_integer() and math.isfinite(v)
                    else ""
                )
                problems.append(f"`{name}` must be an integer; got {v!r}{hint}")
    if raw.get("l1_inputs_weights") is not None:
        raw["l1_inputs_weights"] = _group_weights(raw["l1_inputs_weights"], problems)
    if isinstance(raw.get("class_weight"), dict):
        raw["class_weight"] = _class_weight_table(raw["class_weight"], problems)
    if raw.get("weight_column") is not None and (
        not isinstance(raw["weight_column"], str) or not raw["weight_column"].strip()
    ):
        problems.append(f"`weight_column` must be a column name; got {raw['weight_column']!r}")
    bad_fields = {name for name in raw if any(f"`{name}`" in p for p in problems)}
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k not in bad_fields})
    if pending is not None:
        cfg.extra[RECIPE_PENDING] = pending
    _check(cfg, problems)
    if problems:
        text = "; ".join(p.rstrip(".") if not p.endswith("?") else p for p in problems)
        raise InputError("invalid configuration: " + text + ("" if text.endswith("?") else "."))
    return cfg


def _group_weights(value: Any, problems: list[str]) -> dict[str, float] | None:
    """``l1_inputs_weights``: a table of column name -> finite factor >= 0."""
    if not isinstance(value, dict):
        problems.append(
            f"`l1_inputs_weights` must be a table of column name -> number; got {value!r}"
        )
        return None
    out: dict[str, float] = {}
    bad = []
    for name, w in value.items():
        try:
            out[str(name)] = _to_float(w)
        except (TypeError, ValueError):
            bad.append(name)
            continue
        if not (math.isfinite(out[str(name)]) and out[str(name)] >= 0):
            bad.append(name)
    if bad:
        problems.append(
            f"`l1_inputs_weights` must be finite numbers >= 0; got {[value[b] for b in bad]!r} "
            f"for {bad!r}"
        )
        return None
    return out


def _class_weight_table(value: dict[Any, Any], problems: list[str]) -> dict[str, float] | None:
    """``class_weight`` as a table: class label -> finite factor >= 0 (labels checked against
    the data's classes once they are known, :func:`fitwell.api.class_weights`)."""
    out: dict[str, float] = {}
    for name, w in value.items():
        try:
            factor = _to_float(w)
        except (TypeError, ValueError):
            factor = math.nan
        if not (math.isfinite(factor) and factor >= 0):
            problems.append(
                f"`class_weight` factors must be finite numbers >= 0; got {w!r} for class {name!r}"
            )
            return None
        out[str(name)] = factor
    if not out:
        problems.append('`class_weight` table is empty; use "none" for no class weights')
        return None
    return out


def _choice(name: str, value: str, choices: tuple[str, ...], problems: list[str]) -> None:
    if value not in choices:
        hint = did_you_mean(value, choices).strip().replace("Did", "did")
        problems.append(
            f"`{name}` must be one of {', '.join(choices)}; got {value!r}"
            + (f" ({hint})" if hint else "")
        )


def _check(cfg: TrainConfig, problems: list[str]) -> None:
    _choice("recipe", cfg.recipe, RECIPES, problems)
    _choice("activation", cfg.activation, ACTIVATIONS, problems)
    _choice("init", cfg.init, INITS, problems)
    _choice("optimizer", cfg.optimizer, OPTIMIZERS, problems)
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES, problems)
    _choice("scaling", cfg.scaling, ("standard", "robust"), problems)
    if not isinstance(cfg.class_weight, dict):
        _choice("class_weight", str(cfg.class_weight), ("none", "balanced"), problems)
    _choice("metric", str(cfg.metric), METRICS, problems)
    _choice("numeric_embedding", cfg.numeric_embedding, NUMERIC_EMBEDDINGS, problems)
    _choice("parametrization", cfg.parametrization, PARAMETRIZATIONS, problems)
    _choice("dropout_schedule", cfg.dropout_schedule, REGULARIZATION_SCHEDULES, problems)
    _choice("wd_schedule", cfg.wd_schedule, REGULARIZATION_SCHEDULES, problems)
    _choice("bias_init_mode", cfg.bias_init_mode, BIAS_INIT_MODES, problems)
    _choice("best_epoch_by", cfg.best_epoch_by, BEST_EPOCH_BY, problems)
    if not isinstance(cfg.learnable_activation, bool):
        problems.append(
            f"`learnable_activation` must be true or false; got {cfg.learnable_activation!r}"
        )
    for name in ("embedding_frequencies", "embedding_dim"):
        v = getattr(cfg, name)
        if not 1 <= v <= 1024:
            problems.append(f"`{name}` must be in [1, 1024]; got {v}")
    if cfg.warmup_epochs < 0:
        problems.append(f"`warmup_epochs` must be >= 0; got {cfg.warmup_epochs}")
    if not (math.isfinite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        problems.append(f"`label_smoothing` must be in [0, 1); got {cfg.label_smoothing}")
    if not (math.isfinite(cfg.adam_beta2) and 0 < cfg.adam_beta2 < 1):
        problems.append(f"`adam_beta2` must be in (0, 1); got {cfg.adam_beta2}")
    _choice("task", cfg.task, TASKS, problems)
    _choice("device", cfg.device, DEVICES, problems)
    if cfg.dataset is not None:
        _choice("dataset", cfg.dataset, BUILTIN_DATASETS, problems)
    if cfg.data is not None and cfg.dataset is not None:
        problems.append("give either a data file or `dataset`, not both")
    if len(cfg.split) != 3 or any(not (0 <= s < 1) for s in cfg.split):
        problems.append(f"`split` must be three fractions in [0, 1); got {cfg.split}")
    elif not math.isclose(sum(cfg.split), 1.0, abs_tol=1e-6):
        problems.append(
            f"`split` fractions must add up to 1; got {cfg.split} (sum {sum(cfg.split):g})"
        )
    elif cfg.split[0] <= 0 or cfg.split[1] <= 0 or cfg.split[2] <= 0:
        problems.append(f"`split` needs train, validation and test rows; got {cfg.split}")
    if isinstance(cfg.hidden, str):
        if cfg.hidden != "auto":
            problems.append(
                f"`hidden` must be widths such as 256,256 or 'auto'; got {cfg.hidden!r}"
            )
    elif any(h <= 0 for h in cfg.hidden):
        problems.append(f"`hidden` widths must be positive; got {cfg.hidden}")
    drops = cfg.dropout_per_layer()
    n_layers = AUTO_DEPTH if isinstance(cfg.hidden, str) else len(cfg.hidden)
    if not isinstance(cfg.dropout, (int, float)) and len(drops) != n_layers:
        problems.append(
            f"`dropout` needs one value or one per hidden layer ({n_layers}); got {cfg.dropout}"
        )
    if any(not (0 <= p < 1) for p in drops):
        problems.append(f"`dropout` must be in [0, 1); got {cfg.dropout}. Use 0 to disable dropout")
    for name in ("lr", "init_scale"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            problems.append(f"`{name}` must be a positive number; got {v}")
    for name in ("l1", "l1_inputs", "l2", "min_delta", "weight_decay"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            problems.append(f"`{name}` must be >= 0; got {v}. Use 0 to disable it")
    if cfg.l1_inputs_adaptive is not None and not isinstance(cfg.l1_inputs_adaptive, bool):
        problems.append(
            f"`l1_inputs_adaptive` must be true or false; got {cfg.l1_inputs_adaptive!r}"
        )
    if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
        problems.append(f"`momentum` must be in [0, 1); got {cfg.momentum}")
    if not math.isfinite(cfg.bias_init):
        problems.append(f"`bias_init` must be finite; got {cfg.bias_init}")
    if cfg.batch_size < 1:
        problems.append(f"`batch_size` must be >= 1; got {cfg.batch_size}")
    if cfg.max_epochs < 1:
        problems.append(f"`max_epochs` must be >= 1; got {cfg.max_epochs}")
    if cfg.patience < 0:
        problems.append(f"`patience` must be >= 0; got {cfg.patience}. Use 0 to disable it")
    if cfg.restarts < 1:
        problems.append(f"`restarts` must be >= 1; got {cfg.restarts}")
    elif cfg.restarts > MAX_MEMBERS:
        problems.append(
            f"`restarts` must be at most {MAX_MEMBERS}; got {cfg.restarts}. Train several runs "
            "instead"
        )
    if cfg.ensemble < 1:
        problems.append(f"`ensemble` must be >= 1; got {cfg.ensemble}. Use 1 for a single model")
    elif cfg.ensemble > MAX_MEMBERS:
        problems.append(f"`ensemble` must be at most {MAX_MEMBERS}; got {cfg.ensemble}")
    if not (0 <= cfg.seed <= MAX_SEED):
        problems.append(
            f"`seed` must be in [0, {MAX_SEED}] (what NumPy and scikit-learn accept); "
            f"got {cfg.seed}"
        )
    if cfg.checkpoint_every < 0:
        problems.append(f"`checkpoint_every` must be >= 0; got {cfg.checkpoint_every}")
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"`threads` must be >= 1; got {cfg.threads}")
    elif cfg.threads is not None and cfg.threads > cores:
        problems.append(
            f"`threads` must be at most the {cores} CPU core(s) of this machine (more only "
            f"slows torch down); got {cfg.threads}"
        )
    for name in ("batch_size", "max_epochs", "patience", "checkpoint_every", "warmup_epochs"):
        v = getattr(cfg, name)
        if v > MAX_COUNT:
            problems.append(f"`{name}` must be at most {MAX_COUNT}; got {v}")
    if not isinstance(cfg.hidden, str) and any(h > MAX_COUNT for h in cfg.hidden):
        problems.append(f"`hidden` widths must be at most {MAX_COUNT}; got {cfg.hidden}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into raw values (validated later by :func:`build_config`)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {str(p)!r} does not exist.")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {str(p)!r} is not valid TOML: {exc}.") from None
    # Accept both a flat file and one with a [train] table.
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    return data


def to_toml(cfg: TrainConfig) -> str:
    """The resolved configuration as TOML text; ``fitwell train --config`` reproduces the run."""
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
