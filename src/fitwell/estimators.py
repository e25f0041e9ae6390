"""scikit-learn face: ``FitwellClassifier`` and ``FitwellRegressor`` on the one training loop.

They train on arrays in memory with the library's :class:`~fitwell.training.Trainer` (no run
directory is written), take their early-stopping validation rows from the data given to ``fit``,
and follow scikit-learn's contract: parameters are stored untouched by ``__init__``, learned state
ends in ``_``, inputs are validated at ``fit`` / ``predict`` time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from fitwell.config import TrainConfig
from fitwell.embeddings import first_layer_sources, per_input
from fitwell.errors import TrainingFailed
from fitwell.models import Architecture, PopulationMLP, ensemble_outputs, stack_member_states
from fitwell.training import LoopSettings, MemberSettings, Trainer
from fitwell.training.optim import input_count_scales

# The library's recommended recipe: the estimators' defaults follow `fitwell train`'s.
_DEFAULTS = TrainConfig()
_DROPOUT = float(_DEFAULTS.dropout) if isinstance(_DEFAULTS.dropout, (int, float)) else 0.0


class _FitwellEstimator(BaseEstimator):
    """Shared parameters and the fit on the population loop (``restarts`` members at once)."""

    _task = "classification"

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] | str = _DEFAULTS.hidden,
        activation: str = _DEFAULTS.activation,
        dropout: float = _DROPOUT,
        optimizer: str = _DEFAULTS.optimizer,
        lr: float = _DEFAULTS.lr,
        lr_schedule: str = _DEFAULTS.lr_schedule,
        warmup_epochs: int = _DEFAULTS.warmup_epochs,
        adam_beta2: float = _DEFAULTS.adam_beta2,
        batch_size: int = _DEFAULTS.batch_size,
        max_epochs: int = _DEFAULTS.max_epochs,
        l1: float = _DEFAULTS.l1,
        l2: float = _DEFAULTS.l2,
        l1_inputs: float = _DEFAULTS.l1_inputs,
        patience: int = _DEFAULTS.patience,
        validation_fraction: float = 0.15,
        restarts: int = _DEFAULTS.restarts,
        ensemble: int = _DEFAULTS.ensemble,
        scale: bool = _DEFAULTS.scale,
        numeric_embedding: str = _DEFAULTS.numeric_embedding,
        front_scale: bool | None = _DEFAULTS.front_scale,
        random_state: int = 0,
        device: str = "cpu",
        metric: str = "auto",
        class_weight: str | dict[Any, float] | None = None,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.adam_beta2 = adam_beta2
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.l1 = l1
        self.l2 = l2
        self.l1_inputs = l1_inputs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.restarts = restarts
        self.ensemble = ensemble
        self.scale = scale
        self.numeric_embedding = numeric_embedding
        self.front_scale = front_scale
        self.random_state = random_state
        self.device = device
        self.metric = metric
        self.class_weight = class_weight

    # ------------------------------------------------------------------------------ internals
    def _check_params(self) -> TrainConfig:
        """Validate through the library's own config so messages match the CLI's."""
        from fitwell.config import build_config

        cfg = build_config(
            {
                "hidden": self.hidden if isinstance(self.hidden, str) else list(self.hidden),
                "activation": self.activation,
                "dropout": self.dropout,
                "optimizer": self.optimizer,
                "lr": self.lr,
                "lr_schedule": self.lr_schedule,
                "warmup_epochs": self.warmup_epochs,
                "adam_beta2": self.adam_beta2,
                "batch_size": self.batch_size,
                "max_epochs": self.max_epochs,
                "l1": self.l1,
                "l2": self.l2,
                "l1_inputs": self.l1_inputs,
                "patience": self.patience,
                "restarts": self.restarts,
                "ensemble": self.ensemble,
                "seed": self.random_state,
                "device": self.device,
                "numeric_embedding": self.numeric_embedding,
                "front_scale": self.front_scale,
                "metric": self.metric,
            }
        )
        from fitwell.scoring import resolve_metric

        resolve_metric(self.metric, self._task)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"`validation_fraction` must be in [0, 1); got {self.validation_fraction}. "
                "Use 0 to validate on the training rows (no early stopping)."
            )
        return cfg

    def _split(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[Any, ...]:
        """Hold out ``validation_fraction`` of the rows for early stopping and model choice
        (``w``, the sample weights, split alike)."""
        n = len(x)
        n_val = int(round(n * self.validation_fraction))
        if self.validation_fraction == 0 or n_val < 1 or n - n_val < 1:
            return x, y, x, y, w, w
        stratify = None
        if self._task == "classification":
            _, counts = np.unique(y, return_counts=True)
            if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
                stratify = y
        rows = np.arange(n)
        tr, val = train_test_split(
            rows, test_size=n_val, random_state=self.random_state, stratify=stratify
        )
        w_tr, w_val = (None, None) if w is None else (w[tr], w[val])
        return x[tr], y[tr], x[val], y[val], w_tr, w_val

    def _class_factors(self, n_outputs: int, y: np.ndarray) -> tuple[float, ...] | None:
        """``class_weight`` as one factor per class (``classes_`` order): scikit-learn's rule."""
        if self._task != "classification" or self.class_weight is None:
            return None
        from sklearn.utils.class_weight import compute_class_weight

        classes = np.arange(n_outputs)
        if isinstance(self.class_weight, dict):
            unknown = [k for k in self.class_weight if k not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(
                    f"`class_weight` names class {unknown[0]!r}, which y does not have; "
                    f"classes are {self.classes_.tolist()}."
                )
            by_index = {
                int(np.flatnonzero(self.classes_ == k)[0]): float(v)
                for k, v in self.class_weight.items()
            }
            return tuple(by_index.get(int(i), 1.0) for i in classes)
        if self.class_weight != "balanced":
            raise ValueError(
                f"`class_weight` must be 'balanced', a dict or None; got {self.class_weight!r}."
            )
        return tuple(float(v) for v in compute_class_weight("balanced", classes=classes, y=y))

    def _fit_arrays(
        self, x: np.ndarray, y: np.ndarray, n_outputs: int, sample_weight: Any = None
    ) -> None:
        cfg = self._check_params()
        w = None
        if sample_weight is not None:
            from sklearn.utils.validation import _check_sample_weight

            w = _check_sample_weight(sample_weight, x, dtype=np.float64, ensure_non_negative=True)
        factors = self._class_factors(n_outputs, y)
        if factors is not None:
            # As HistGradientBoostingClassifier does: class factors multiply the sample weights,
            # so early stopping and member choice weigh the classes the way training does.
            per_row = np.asarray(factors, dtype=np.float64)[np.asarray(y, dtype=np.int64)]
            w = per_row if w is None else w * per_row
        if w is not None and not (w > 0).any():
            raise ValueError("`sample_weight` is zero for every row; some must be > 0.")
        x = np.asarray(x, dtype=np.float64)
        if self.scale:
            self.mean_ = x.mean(axis=0)
            std = x.std(axis=0)
            self.scale_ = np.where(std > 0, std, 1.0)
        else:
            self.mean_ = np.zeros(x.shape[1])
            self.scale_ = np.ones(x.shape[1])
        x = (x - self.mean_) / self.scale_
        x_tr, y_tr, x_val, y_val, w_tr, w_val = self._split(x, y, w)
        from fitwell.config import resolve_front, resolve_hidden

        hidden = tuple(int(h) for h in resolve_hidden(self.hidden, len(x_tr)))
        front = resolve_front(cfg, "classification" if n_outputs > 1 else "regression")
        arch = Architecture(
            n_inputs=x.shape[1],
            hidden=hidden,
            n_outputs=n_outputs,
            activation=self.activation,
            numeric_embedding=front.numeric_embedding,
            embedded=tuple(range(x.shape[1])) if front.numeric_embedding != "none" else (),
            front_scale=front.front_scale is True,
        )
        drop = tuple(float(self.dropout) for _ in hidden)
        members = [
            MemberSettings(
                seed=self.random_state + r,
                lr=self.lr,
                l1=self.l1,
                l2=self.l2,
                dropout=drop,
                l1_inputs=self.l1_inputs,
                lr_schedule=self.lr_schedule,
                warmup_epochs=self.warmup_epochs,
            )
            for r in range(max(self.restarts, self.ensemble))
        ]
        loop = LoopSettings(
            optimizer=self.optimizer,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            adam_beta2=self.adam_beta2,
        )
        from fitwell.api import resolve_device

        device = resolve_device(self.device)
        trainer = Trainer(
            arch,
            members,
            loop,
            task=self._task,
            x_train=x_tr,
            y_train=y_tr,
            x_val=x_val,
            y_val=y_val,
            device=device,
            # l1_inputs: an embedding's first-layer rows belong to their feature's group,
            # which counts as one input in the penalty's sqrt(p_g), as in `fitwell train`
            input_groups=arch.first_layer_sources,
            group_weights=input_count_scales(
                arch.first_layer_sources,
                first_layer_sources(
                    arch.n_inputs,
                    (),
                    arch.embedding_dim,
                    categorical=arch.categorical,
                    category_dims=arch.category_dims,
                ),
            ),
            w_train=w_tr,
            w_val=w_val,
        )
        fit = trainer.fit()
        if self.metric != "auto":
            from fitwell.scoring import member_metric_values, rank_members

            values = member_metric_values(
                fit,
                arch,
                self.metric,
                x_val,
                y_val,
                weights=w_val,
                scale=getattr(self, "y_scale_", 1.0),
                device=device,
            )
            rank_members(fit, self.metric, values)
        best = fit.best_member
        if not best.finite:
            raise TrainingFailed(
                f"training diverged ({best.stop_reason or 'non-finite values'}); "
                f"got lr={self.lr}. Lower the learning rate."
            )
        from fitwell.ensemble import ensemble_members

        chosen = ensemble_members(fit, self.ensemble)
        model = PopulationMLP(arch, len(chosen))
        state = stack_member_states([m.state for m in chosen])
        model.load_state_dict({k: v.to("cpu") for k, v in state.items()})
        # Predict in float64: float32 kernels round differently with the batch size, and
        # scikit-learn rightly expects a row's prediction not to depend on its neighbours.
        model.double().eval()
        self.model_ = model
        self.n_iter_ = best.epochs_run
        self.best_epoch_ = best.best_epoch
        self.history_ = pd.DataFrame(fit.history)
        self.val_scores_ = [m.val_score for m in fit.members]
        # Inputs the fitted model does not read: every averaged member's first-layer weights for
        # the column are exactly zero (``l1`` / ``l1_inputs`` feature selection).
        rows = model.weights[0].detach().abs().sum(dim=(0, 2))
        per_column = per_input(rows, arch.first_layer_sources, arch.n_inputs)
        self.zeroed_features_ = np.flatnonzero(per_column.numpy() == 0.0)

    @torch.no_grad()
    def _outputs(self, x: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        x = validate_data(self, x, reset=False, dtype=[np.float64, np.float32])
        x = (np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_
        return ensemble_outputs(self.model_.predict_chunks(torch.as_tensor(x)), self._task).numpy()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class FitwellClassifier(ClassifierMixin, _FitwellEstimator):
    """A fitwell MLP classifier (cross-entropy, Adam, early stopping on a held-out split).

    Defaults are ``fitwell train``'s (see :class:`fitwell.TrainConfig`), so the estimator and
    the CLI give the same recipe.

    Parameters
    ----------
    hidden : tuple of int or "auto", default "auto"
        Hidden layer widths; ``auto`` sizes two layers from the training rows
        (:func:`fitwell.config.resolve_hidden`).
    activation : str, default "relu"
    dropout : float, default TrainConfig.dropout
        Drop probability of every hidden layer.
    optimizer : {"adam", "adamw", "sgd"}, default "adam"
    lr : float, default TrainConfig.lr
    lr_schedule : {"constant", "cosine", "onecycle", "plateau"}, default "constant"
    warmup_epochs : int, default 0
    adam_beta2 : float, default 0.999
        As in :class:`fitwell.config.TrainConfig`.
    batch_size : int, default 64
    max_epochs : int, default 200
    l1, l2 : float, default 0.0
        Penalty strengths: the objective is ``mean_batch_loss + l1 * sum|W| + l2 * sum W**2``
        over weight matrices, not divided by the row count (scikit-learn's MLP ``alpha`` is
        ``0.5 * alpha * ||W||^2 / n_samples``).
    l1_inputs : float, default 0.0
        Feature selection: adds ``l1_inputs * sum_j ||W1[j, :]||_2`` (one group per input column
        of ``X``), applied as a proximal group step so whole columns reach exactly zero.
    patience : int, default 20
        Early-stopping patience in epochs on validation loss; 0 turns it off.
    validation_fraction : float, default 0.15
        Share of the ``fit`` rows held out (stratified when possible) for early stopping and for
        choosing among restarts; 0 validates on the training rows.
    restarts : int, default 1
        Independent initialisations trained together; the lowest validation loss is kept.
    ensemble : int, default 3
        Predictions are averaged over this many best members (``max(restarts, ensemble)``
        members are trained, as one batched population); 1 keeps a single model.
    scale : bool, default True
        Standardize features with the ``fit`` rows' mean and standard deviation.
    numeric_embedding : {"auto", "none", "pbld"}, default "none"
        ``auto``: ``pbld`` for the classifier, ``none`` for the regressor. ``pbld``: every
        feature also reaches the first layer through a learned periodic embedding (see
        :class:`fitwell.TrainConfig`; 16 frequencies, 3 outputs per feature).
    front_scale : bool or None, default None
        A learned scale per first-layer input, starting at 1 (RealMLP's scaling layer);
        ``None``: on exactly when features are embedded.
    random_state : int, default 0
        Seeds initialisation, data order, dropout and the validation split.
    device : {"cpu", "cuda", "auto"}, default "cpu"
    metric : str, default "auto"
        Chooses the kept member and the ensemble on the validation rows: ``accuracy``,
        ``balanced_accuracy``, ``macro_f1``, ``roc_auc``, ``log_loss`` (or, for the regressor,
        ``rmse``, ``mae``, ``r2``); ``auto`` chooses by validation loss.
    class_weight : "balanced", dict or None, default None
        Each row's class factor multiplies its sample weight (as in scikit-learn's
        ``HistGradientBoostingClassifier``), so training, early stopping and member choice all
        weigh the classes alike: ``balanced`` is ``n / (C * n_class)`` on the ``fit`` rows; a
        dict maps labels (as in ``y``) to factors, unlisted classes weighing 1. Ignored by the
        regressor.

    Attributes
    ----------
    classes_ : ndarray
    n_features_in_ : int
    history_ : DataFrame
        Per-epoch, per-member train / validation loss and accuracy.
    best_epoch_ : int
        Epoch whose weights were kept.
    n_iter_ : int
        Epochs run by the kept member.
    zeroed_features_ : ndarray of int
        Columns of ``X`` the fitted model does not read (every averaged member's first-layer
        weights for them are exactly zero): the features ``l1_inputs`` (or ``l1``) switched off.
    """

    _task = "classification"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FitwellClassifier:
        """Fit on ``X``, ``y``; ``sample_weight`` (>= 0 per row) weighs the training loss
        (weighted mean), the validation loss and the metric that chooses members."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"FitwellClassifier needs at least 2 classes; got 1 class ({self.classes_[0]!r})."
            )
        self._fit_arrays(X, encoded.astype(np.int64), len(self.classes_), sample_weight)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        out = self._outputs(X)
        out = out - out.max(axis=1, keepdims=True)
        p = np.exp(out)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        out = self._outputs(X)  # first: raises NotFittedError before classes_ is touched
        return self.classes_[out.argmax(axis=1)]


class FitwellRegressor(RegressorMixin, _FitwellEstimator):
    """A fitwell MLP regressor (mean squared error on the standardized target).

    Parameters are those of :class:`FitwellClassifier`; ``validation_fraction`` is a plain
    random split. The target is standardized with the ``fit`` rows' mean and standard deviation
    and predictions are returned in its original units.

    Attributes
    ----------
    n_features_in_ : int
    history_ : DataFrame
        Per-epoch, per-member train / validation loss and R^2 (standardized target).
    best_epoch_ : int
    n_iter_ : int
    zeroed_features_ : ndarray of int
    """

    _task = "regression"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FitwellRegressor:
        """Fit on ``X``, ``y``; ``sample_weight`` as in :meth:`FitwellClassifier.fit`."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        if len(y) < 2:
            raise ValueError(f"FitwellRegressor needs at least 2 samples; got {len(y)} sample.")
        y = np.asarray(y, dtype=np.float64)
        self.y_mean_ = float(y.mean())
        std = float(y.std())
        self.y_scale_ = std if std > 0 and math.isfinite(std) else 1.0
        self._fit_arrays(
            X, ((y - self.y_mean_) / self.y_scale_).astype(np.float32), 1, sample_weight
        )
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self._outputs(X)[:, 0] * self.y_scale_ + self.y_mean_
