"""The repair table: for each finding of the doctor, the config changes to try, in order.

Pure data and pure functions: ``candidates(code, settings)`` lists the changes that apply to a
configuration (a change that would leave it as it is is skipped), and ``accept_repair`` decides
from validation losses alone whether a change is kept. Nothing here trains.

The orders follow what fixes each fault most often and costs least (AutoTrainer's repair
orders, ICSE 2021, adapted to fitwell's options). Learning rates move by orders of magnitude for
divergence and slow convergence: a rate that diverges or barely moves is usually off by 10-1000x
(a typed 1e-6 for 1e-3), and all candidates of one finding train in one population anyway.
Initialisation fixes restore the default scale, since a scaled-up init is the usual cause of
saturated or exploding layers.

================== ============================================================================
finding            candidate changes, in order
================== ============================================================================
vanishing_gradients relu + kaiming init (default scale); batch norm; one layer fewer
saturated_activations standardized inputs with the default init scale (when inputs are
                   unscaled); default init scale; relu + kaiming init (default scale); batch norm
exploding_gradients default init scale; lr /10; batch norm; standardized inputs*
dead_relu          leaky_relu; hidden biases start at 0.01; lr /3; no regularization**;
                   standardized inputs*
divergence         lr /10; lr /100; lr /1000; standardized inputs*
lr_too_high        lr /3; lr /10; lr /30; standardized inputs*
slow_convergence   lr x10; lr x100; lr x1000; adam (when another optimizer ran)
overfitting        early stopping on (when off: patience 20, best weights kept); L2 (x10, at
                   least 1e-4); dropout +0.2 (at most 0.5); layers half as wide
underfitting       layers 4x as wide (at least 64); one layer more; no regularization**
local_minimum      three times the restarts (in the restarts stage); layers 4x as wide (>= 64)
================== ============================================================================

Standardized inputs (``scale`` on, and the default init scale, which is sized for unit-scale
inputs) applies only where the inputs reach the network unscaled (``scale = false``).
Saturated units are its typical symptom, so it leads that row; for the other faults that
large inputs cause (the doctor's ``CAUSED_BY_SCALE``) it is tried first (*) only when the
finding's evidence says the inputs are unscaled (``inputs_unscaled``), and last otherwise.
Heavy dropout or weight decay silences units too (a unit dropped in 9 of 10 forwards barely
learns), so ``no regularization`` closes the dead_relu row, in the same population as ``lr /3``
(nothing extra when an earlier change is kept). (**) With a dropout of at least 0.5 on a layer
(``HEAVY_DROPOUT``) it leads its rows: most units are dropped in every forward, the likelier
cause of dead or too-weak units than the rows' usual suspects.

Changes of ``lr``, ``l1``, ``l2`` and ``dropout`` keep the network's shape, so all candidates of
that kind train together as one population; the others train as their own populations.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fitwell.config import AUTO_DEPTH, PER_MEMBER_FIELDS

Settings = Mapping[str, Any]


@dataclass(frozen=True)
class Change:
    """One candidate repair: a name for the log and a function from settings to new values."""

    name: str
    apply: Callable[[Settings], dict[str, Any]]
    # An evidence key of the finding (e.g. ``inputs_unscaled``) that moves this change to the
    # front of its row: the doctor's evidence names the cause it removes.
    led_by: str | None = None
    # A condition on the settings that moves this change to the front of its row (e.g. a
    # dropout so heavy that it is the likelier cause than the row's usual suspects).
    leads_when: Callable[[Settings], bool] | None = None

    def leads(self, settings: Settings, evidence: Mapping[str, Any]) -> bool:
        """Whether the finding's evidence or the settings put this change first."""
        by_evidence = self.led_by is not None and bool(evidence.get(self.led_by))
        return by_evidence or (self.leads_when is not None and self.leads_when(settings))

    def changes(self, settings: Settings) -> dict[str, Any]:
        """The settings this change sets, without those already at that value."""
        return {k: v for k, v in self.apply(settings).items() if _differs(settings.get(k), v)}

    def same_shape(self, settings: Settings) -> bool:
        """True when only per-member settings change (it can join a shared population)."""
        return all(k in PER_MEMBER_FIELDS for k in self.changes(settings))


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) != list(new)
    return bool(old != new)


def _hidden(settings: Settings, n_train_rows: int | None = None) -> list[int]:
    hidden = settings.get("hidden", "auto")
    if isinstance(hidden, str):
        from fitwell.config import resolve_hidden

        return list(resolve_hidden(hidden, n_train_rows or 4096))
    return [int(h) for h in hidden]


def _dropouts(settings: Settings) -> list[float]:
    d = settings.get("dropout", 0.0)
    n = len(_hidden(settings)) if not isinstance(settings.get("hidden"), str) else AUTO_DEPTH
    if isinstance(d, (int, float)):
        return [float(d)] * n
    return [float(p) for p in d]


def _lr_times(factor: float) -> Callable[[Settings], dict[str, Any]]:
    return lambda s: {"lr": float(s.get("lr", 3e-3)) * factor}


def _relu_kaiming(s: Settings) -> dict[str, Any]:
    return {"activation": "relu", "init": "kaiming", "init_scale": 1.0}


def _default_init(s: Settings) -> dict[str, Any]:
    return {"init": "auto", "init_scale": 1.0}


def _fewer_layers(s: Settings) -> dict[str, Any]:
    hidden = _hidden(s)
    if len(hidden) <= 1:
        return {}
    new = hidden[:-1]
    out: dict[str, Any] = {"hidden": new}
    d = s.get("dropout", 0.0)
    if not isinstance(d, (int, float)):
        out["dropout"] = list(d)[: len(new)]
    return out


def _more_layers(s: Settings) -> dict[str, Any]:
    hidden = _hidden(s)
    new = [*hidden, hidden[-1] if hidden else 64]
    out: dict[str, Any] = {"hidden": new}
    d = s.get("dropout", 0.0)
    if not isinstance(d, (int, float)):
        drops = list(d)
        out["dropout"] = [*drops, drops[-1] if drops else 0.0]
    return out


def _scale_width(factor: float, *, at_least: int = 4) -> Callable[[Settings], dict[str, Any]]:
    def apply(s: Settings) -> dict[str, Any]:
        return {"hidden": [max(at_least, int(round(h * factor))) for h in _hidden(s)]}

    return apply


# Capacity shortfalls are usually large (a 2-unit layer where 64 are needed), and a network too
# wide for its data is held back by early stopping: widen by 4x, to at least 64 units.
_WIDER = _scale_width(4.0, at_least=64)


def _more_l2(s: Settings) -> dict[str, Any]:
    return {"l2": max(float(s.get("l2", 0.0)) * 10.0, 1e-4)}


def _more_dropout(s: Settings) -> dict[str, Any]:
    drops = _dropouts(s)
    if not drops:
        return {}
    return {"dropout": [min(0.5, p + 0.2) for p in drops]}


def _no_regularization(s: Settings) -> dict[str, Any]:
    d = s.get("dropout", 0.0)
    # In the setting's own form (one rate or one per layer), so none already reads as a no-op.
    dropout = 0.0 if isinstance(d, (int, float)) else [0.0] * len(list(d))
    return {"l1": 0.0, "l2": 0.0, "dropout": dropout}


# Dropout at or above this rate on a hidden layer drops most of its units in every forward:
# too few are left to learn, so removing it comes before the row's usual suspects.
HEAVY_DROPOUT = 0.5


def _heavy_dropout(s: Settings) -> bool:
    return max(_dropouts(s), default=0.0) >= HEAVY_DROPOUT


_NO_REGULARIZATION = Change("no regularization", _no_regularization, leads_when=_heavy_dropout)


def _more_restarts(s: Settings) -> dict[str, Any]:
    return {"restarts": max(3, int(s.get("restarts", 1)) * 3)}


def _early_stopping(s: Settings) -> dict[str, Any]:
    """fitwell's early stopping (patience 20, best weights restored) when it is off: the
    doctor's own advice for overfitting, and overfitting it undoes is no longer a fault."""
    if int(s.get("patience", 20)) > 0 and s.get("restore_best", True):
        return {}
    return {"patience": 20, "restore_best": True}


def _standardized_inputs(s: Settings) -> dict[str, Any]:
    """Inputs standardized, with the default init that expects unit-scale inputs: a scaled-up
    init on unscaled inputs saturates for either cause alone, so one without the other is
    judged with the fault still there. Only for inputs left unscaled (``scale`` off)."""
    if s.get("scale", True):
        return {}
    return {"scale": True, **_default_init(s)}


# Settings that change how the inputs are preprocessed: a population with other values than
# the prepared data's needs the table prepared again (``fitwell.auto.executors``).
PREPROCESSING_FIELDS = ("scale", "scaling")

_SCALED = "standardized inputs (scale on, default init scale)"
_SCALE_FIRST = Change(_SCALED, _standardized_inputs)
_SCALE_IF_UNSCALED = Change(_SCALED, _standardized_inputs, led_by="inputs_unscaled")


def _adam(s: Settings) -> dict[str, Any]:
    return {"optimizer": "adam", "lr": 3e-3} if s.get("optimizer", "adam") != "adam" else {}


REPAIRS: dict[str, tuple[Change, ...]] = {
    "vanishing_gradients": (
        Change("relu + kaiming init", _relu_kaiming),
        Change("batch norm", lambda s: {"batch_norm": True}),
        Change("one layer fewer", _fewer_layers),
    ),
    "saturated_activations": (
        _SCALE_FIRST,
        Change("default init scale", _default_init),
        Change("relu + kaiming init", _relu_kaiming),
        Change("batch norm", lambda s: {"batch_norm": True}),
    ),
    "exploding_gradients": (
        Change("default init scale", _default_init),
        Change("lr /10", _lr_times(0.1)),
        Change("batch norm", lambda s: {"batch_norm": True}),
        _SCALE_IF_UNSCALED,
    ),
    "dead_relu": (
        Change("leaky_relu", lambda s: {"activation": "leaky_relu"}),
        Change("hidden biases start at 0.01", lambda s: {"bias_init": 0.01}),
        Change("lr /3", _lr_times(1 / 3)),
        _NO_REGULARIZATION,
        _SCALE_IF_UNSCALED,
    ),
    "divergence": (
        Change("lr /10", _lr_times(0.1)),
        Change("lr /100", _lr_times(0.01)),
        Change("lr /1000", _lr_times(0.001)),
        _SCALE_IF_UNSCALED,
    ),
    "lr_too_high": (
        Change("lr /3", _lr_times(1 / 3)),
        Change("lr /10", _lr_times(0.1)),
        Change("lr /30", _lr_times(1 / 30)),
        _SCALE_IF_UNSCALED,
    ),
    "slow_convergence": (
        Change("lr x10", _lr_times(10.0)),
        Change("lr x100", _lr_times(100.0)),
        Change("lr x1000", _lr_times(1000.0)),
        Change("adam", _adam),
    ),
    "overfitting": (
        Change("early stopping on (patience 20, best weights kept)", _early_stopping),
        Change("L2 x10 (at least 1e-4)", _more_l2),
        Change("dropout +0.2 (at most 0.5)", _more_dropout),
        Change("layers half as wide", _scale_width(0.5)),
    ),
    "underfitting": (
        Change("layers 4x as wide (at least 64)", _WIDER),
        Change("one layer more", _more_layers),
        _NO_REGULARIZATION,
    ),
    # Restarts act in the restarts stage (no trial population); a tiny network's many minima
    # also go away with width (over-parametrized networks have benign landscapes).
    "local_minimum": (
        Change("three times the restarts", _more_restarts),
        Change("layers 4x as wide (at least 64)", _WIDER),
    ),
}

# Findings whose first change needs no trial population: it acts in the restarts stage.
RESTARTS_ONLY = frozenset({"local_minimum"})


def candidates(
    code: str, settings: Settings, evidence: Mapping[str, Any] | None = None
) -> list[Change]:
    """The table's changes for ``code`` that would change ``settings``, in order; those whose
    ``led_by`` key is true in the finding's ``evidence``, or whose ``leads_when`` holds for
    ``settings``, first (in the table's order)."""
    usable = [c for c in REPAIRS.get(code, ()) if c.changes(settings)]
    led = [c for c in usable if c.leads(settings, evidence or {})]
    return led + [c for c in usable if c not in led]


def changes_inputs(change: Change, settings: Settings) -> bool:
    """True when ``change`` alters the inputs' preprocessing (the data must be prepared again)."""
    return any(k in PREPROCESSING_FIELDS for k in change.changes(settings))


def repairable(findings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Codes of the warning/error findings that the table can repair, most severe first."""
    out: list[str] = []
    for f in findings:
        code = str(f.get("code"))
        if f.get("severity") in ("error", "warning") and code in REPAIRS and code not in out:
            out.append(code)
    return out


def seed_spread(val_losses: Sequence[float]) -> float:
    """Max minus min of the finite seeds' validation losses (0 with fewer than two)."""
    finite = [v for v in val_losses if math.isfinite(v)]
    return max(finite) - min(finite) if len(finite) >= 2 else 0.0


def median_loss(val_losses: Sequence[float]) -> float:
    """Median validation loss over seeds; a seed that diverged counts as +inf."""
    values = [v if math.isfinite(v) else math.inf for v in val_losses]
    return statistics.median(values) if values else math.inf


def accept_repair(
    before: Sequence[float],
    after: Sequence[float],
    *,
    code: str,
    codes_after: Sequence[str],
) -> tuple[bool, str]:
    """Keep a change only when the median validation loss over seeds improves by more than the
    changed configuration's seed spread **and** the finding it targets is gone.

    Why both: a lower loss alone can be seed luck, and a vanished finding alone can be a
    different fault hiding it. Why the changed configuration's spread: it is the noise of the
    number being judged, while a broken start's wide spread is often the symptom itself (a
    learning rate that diverges for some seeds and not others) and would veto every repair.
    Returns ``(kept, reason)``.
    """
    m_before, m_after = median_loss(before), median_loss(after)
    spread = seed_spread(after)
    gain = m_before - m_after if math.isfinite(m_before) or math.isfinite(m_after) else 0.0
    if not math.isfinite(m_after):
        return False, f"median validation loss not finite after the change ({m_after})"
    if not gain > spread:
        return False, (
            f"median validation loss {m_before:.4g} -> {m_after:.4g}: gain {gain:.3g} is not "
            f"above the seed spread {spread:.3g}"
        )
    if code in codes_after:
        return False, f"`{code}` is still found after the change"
    return True, (
        f"median validation loss {m_before:.4g} -> {m_after:.4g} (gain {gain:.3g} > seed "
        f"spread {spread:.3g}) and `{code}` is gone"
    )
