"""Signals -> findings: pure functions, one per fault, unit-testable on made-up inputs.

``fitwell.diagnosis.findings.diagnose`` combines them.

Every rule is relative (a ratio between layers, a weight change relative to the weights, a score
relative to a trivial baseline or to a linear model, a loss relative to its own minimum), so the
same thresholds hold across datasets and model sizes. Thresholds and their reasons:

- ``VANISHING_RATIO``: first-layer / output-layer gradient norm below 1e-3 (AutoTrainer's rule).
- ``EXPLODING_RATIO`` / ``EXPLODING_GRAD_TO_WEIGHT``: that ratio above 1e3, or some hidden
  layer's gradient norm more than 10x its weight norm (healthy hidden layers stay below ~3 even
  with heavy dropout: a gradient step that would replace the weights many times over). The
  output layer is left out of the second test: its gradient scales with the loss, not with
  depth (a healthy regression's first epoch reaches 10-13x there on diabetes; the broken
  setups reach 200-12,000x in every layer).
- ``SATURATED_FRACTION``: more than half the pre-activations where tanh/sigmoid's derivative is
  below 1% of its peak (DeepDiagnosis uses > 50%).
- ``DEAD_FRACTION``: at least 70% of a layer's ReLU units fire on fewer than 1% of the training
  rows (DeepDiagnosis / AutoTrainer use 70%).
- ``LR_TOO_HIGH_UPDATE``: the weights move by more than their own norm within one epoch, with
  loss spikes (a batch loss 3x the epoch's mean), a validation loss jumping up by 25% from one
  epoch to the next, or a training loss twice the loss at the first step (training made it worse).
- ``SLOW_UPDATE``: the weights move by less than 0.1% of their norm per epoch in each of the
  first epochs (up to 3), where a working optimizer moves them most.
- ``OVERFIT_RISE``: validation loss 5% above its minimum while the training loss kept falling;
  or (``OVERFIT_MIN_RISE``, ``OVERFIT_MEMORIZE``) 1% above it while the training loss halved.
  In a user's own loop (the doctor) the 5% rise must also clear the validation loss's own
  epoch-to-epoch jitter (``OVERFIT_NOISE_SIGMAS``, see :func:`validation_noise_limit`).
- ``UNDERFIT_MARGIN``: the network scores below a ridge-regularized linear model on both train
  and validation rows by 0.05 (accuracy or R^2): it cannot even match a linear fit.
- ``LOCAL_MINIMUM_RECOVERY`` / ``LOCAL_MINIMUM_ERROR_RATIO``: a restart recovers less than half
  of the best restart's gain over the trivial baseline, or has 1.5 times its error, and trails
  the best by more than validation noise (2 standard errors of a difference) -- and it also
  trails the best restart on the *training* rows at the last epoch both trained, by more than
  2 standard errors of a difference there: the optimizer itself ended in a worse place (a
  local minimum), rather than early stopping on a noisy validation split halting one restart
  sooner than another. Runs saved without the training-row count skip that last check.
- ``NO_SIGNAL_SE``: the chosen model's validation score is within 2 standard errors of the
  trivial baseline.
- ``LEAKAGE_FRACTION``: 5% or more of the test rows also appear in the training rows.
- ``IMBALANCE_SHARE``: accuracy is the run's metric while the smallest class holds under 10% of
  the training rows: a model that never predicts that class still scores over 90%. Only when
  that class also holds under half its balanced share ``1 / classes``
  (``IMBALANCE_OF_BALANCED``): ten equal classes hold 10% each and accuracy suits them.
- ``PLATEAU_EPOCHS`` / ``PLATEAU_GAIN`` (user loops, no reference model): the training score
  gained less than 0.01 over the last 5 epochs, stays ``UNDERFIT_MARGIN`` below 1, and the
  training and validation scores are within ``UNDERFIT_MARGIN`` of each other: a network with
  room to spare, trained to a plateau, fits its own rows better than unseen ones.
- ``INIT_GAIN_PRODUCT``: the initial weights multiply a signal's scale by more than 1000 from
  the first layer to the output (the product over layers of ``std(W) sqrt(fan_in / 2)``, the
  factor by which a ReLU layer scales its input's root mean square), the same 1e3 as the
  gradient-ratio rule: gradients flowing back grow by the same factor.
- ``STALE_GRAD_SHARE``: in 90% of the checked steps the output layer's ``.grad`` still held the
  previous step's gradient when the next backward began (``zero_grad()`` was not called).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
EXPLODING_GRAD_TO_WEIGHT = 10.0
SATURATED_FRACTION = 0.5
DEAD_FRACTION = 0.7
LR_TOO_HIGH_UPDATE = 1.0
LR_SPIKE = 3.0
LR_SWING = 0.25
LR_WORSE = 2.0
SLOW_UPDATE = 1e-3
OVERFIT_RISE = 0.05
OVERFIT_MIN_RISE = 0.01
OVERFIT_MEMORIZE = 0.5
# Validation epochs count as settled once within this share of the first epoch's excess over the
# minimum: the descent before that is learning, not jitter.
OVERFIT_SETTLED = 0.1
# A rise must exceed the minimum's selection bias plus this many jitter standard deviations.
OVERFIT_NOISE_SIGMAS = 1.0
UNDERFIT_MARGIN = 0.05
LOCAL_MINIMUM_RECOVERY = 0.5
LOCAL_MINIMUM_ERROR_RATIO = 1.5
NO_SIGNAL_SE = 2.0
LEAKAGE_FRACTION = 0.05
IMBALANCE_SHARE = 0.10
IMBALANCE_OF_BALANCED = 0.5
# Epochs over which a training score that gains less than PLATEAU_GAIN has stopped improving.
PLATEAU_EPOCHS = 5
PLATEAU_GAIN = 0.01
# Product over layers of std(W) * sqrt(fan_in / 2): Kaiming init gives 1 per layer, PyTorch's
# default 0.41, Xavier with tanh's gain 5/3 1.18 (1e3 needs 42 such layers); N(0, 1) weights
# on 128 inputs give 8 per layer, 1e3 after 4 layers.
INIT_GAIN_PRODUCT = 1e3
# Steps (of those checked) whose gradient still held the previous step's: accumulation by
# mistake, not a rare skipped zero_grad (the share is exact, so 0.9 leaves room only for the
# first step of each epoch and loops that clear the gradients every few steps).
STALE_GRAD_SHARE = 0.9
STALE_GRAD_MIN_STEPS = 4
# Fraction of the (later) epochs whose median validation score judges no_signal: the typical
# score of the trained model, not the best of many noisy epochs.
NO_SIGNAL_LATE_SHARE = 0.5
# Share of a classifier's training batches whose output rows are probabilities and whose loss
# gradient sums to zero across each row (a loss that applies softmax to those outputs itself).
PROBABILITY_ROWS_SHARE = 0.9
# Epochs in a row a single output column must stay in [0, 1] with a sigmoid-loss gradient: a
# logit column that learns leaves [0, 1] within an epoch (a confident row needs |z| > 1), an
# output that went through a sigmoid never does.
SIGMOID_EPOCHS = 2
# Root mean square of an input column above which it is unscaled: default initializations
# (Kaiming, Xavier, PyTorch's uniform) size the first layer for inputs of about unit scale.
INPUT_RMS_LIMIT = 10.0
# Batches holding one class: this share of an epoch's batches, where shuffled rows would make
# such a batch rarer than 1 in 20, means the rows come in label order.
SINGLE_CLASS_SHARE = 0.5
SHUFFLED_SINGLE_CLASS_MAX = 0.05
# Faults that large inputs cause: their advice then leads with scaling.
CAUSED_BY_SCALE = (
    "divergence",
    "exploding_gradients",
    "lr_too_high",
    "saturated_activations",
    "dead_relu",
)

CODES = (
    "overfitting",
    "underfitting",
    "vanishing_gradients",
    "exploding_gradients",
    "saturated_activations",
    "dead_relu",
    "divergence",
    "lr_too_high",
    "slow_convergence",
    "local_minimum",
    "no_signal",
    "leakage",
    "probabilities_as_logits",
    "unscaled_inputs",
    "unshuffled_batches",
    "unscaled_target",
    "imbalanced_accuracy",
    "missing_zero_grad",
)
# Faults of the optimization itself: when one is found, a poor score is its consequence, so
# "underfitting" / "no_signal" would point at the wrong cause.
OPTIMIZATION_FAULTS = (
    "divergence",
    "exploding_gradients",
    "vanishing_gradients",
    "saturated_activations",
    "dead_relu",
    "lr_too_high",
    "slow_convergence",
    "missing_zero_grad",
)


@dataclass
class RunContext:
    """What the rules need to know about a run besides its per-epoch signals.

    Scores are "higher is better" (accuracy or R^2). ``model_epoch`` is the epoch whose weights
    are the final model (the best epoch when early stopping restored weights, else the last).
    """

    task: str
    member: int = 0
    model_epoch: int | None = None
    restored_best: bool = False
    # What chose the restored epoch: the validation loss, or the validation score (accuracy).
    best_epoch_by: str = "loss"
    lr: float | None = None
    # The chosen member's regularization, so advice can say "raise" rather than repeat it.
    l2: float | None = None
    dropout: tuple[float, ...] | None = None
    n_val: int = 0
    baseline_val_score: float | None = None
    linear_train_score: float | None = None
    linear_val_score: float | None = None
    # A wider, unregularized network's scores on the same rows (``fitwell.training.capacity``);
    # None when it was not needed (the run fits its training rows) or not run (a user's loop).
    capacity_train_score: float | None = None
    capacity_val_score: float | None = None
    capacity_hidden: tuple[int, ...] | None = None
    restart_groups: list[list[tuple[int, float]]] = field(default_factory=list)
    # Training rows: the noise of training-split scores (0 = unknown).
    n_train: int = 0
    test_duplicates: int = 0
    n_test: int = 0
    divergence: dict[int, dict[str, Any]] = field(default_factory=dict)
    all_members: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # The run's headline metric (``accuracy`` / ``r2`` unless ``metric`` chose another). When
    # one was chosen, ``no_signal`` compares the kept member's value of it with the trivial
    # baseline's, within ``metric_standard_error`` (on the metric's own scale).
    metric: str = ""
    metric_val_score: float | None = None
    metric_baseline: float | None = None
    metric_standard_error: float | None = None
    # Classification: the smallest class's share of the training rows; the class weighting.
    minority_share: float | None = None
    n_classes: int = 0
    class_weight: str = "none"


def finding(
    code: str,
    severity: str,
    advice: str,
    *,
    epoch: int | None = None,
    layer: str | None = None,
    member: int | None = None,
    **evidence: Any,
) -> dict[str, Any]:
    """One finding in the shared format (``metrics.json["findings"]``)."""
    return {
        "code": code,
        "severity": severity,
        "epoch": epoch,
        "layer": layer,
        "member": member,
        "evidence": {k: _plain(v) for k, v in evidence.items()},
        "advice": advice,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _finite(values: Sequence[float | None] | None) -> list[float]:
    return [float(v) for v in values or [] if v is not None and math.isfinite(float(v))]


# ------------------------------------------------------------------------ per-epoch signal rules
def gradient_findings(records: Sequence[dict[str, Any]], layers: Sequence[str]) -> list[dict]:
    """Vanishing and exploding gradients from one member's per-epoch layer gradient norms."""
    out: list[dict] = []
    vanishing_done = exploding_done = False
    for rec in records:
        g = rec.get("grad_norm") or []
        w = rec.get("weight_norm") or []
        if len(g) < 2 or not all(v is not None and math.isfinite(v) for v in g):
            continue
        first, last = g[0], g[-1]
        if not vanishing_done and len(g) >= 3 and last > 0 and first / last < VANISHING_RATIO:
            vanishing_done = True
            out.append(
                finding(
                    "vanishing_gradients",
                    "warning",
                    "switch activation to relu (Kaiming init), or use fewer layers / batch_norm",
                    epoch=rec["epoch"],
                    layer=layers[0] if layers else None,
                    member=rec["member"],
                    first_to_last_grad_ratio=first / last,
                    threshold=VANISHING_RATIO,
                    grad_norm=list(g),
                )
            )
        rel = [  # hidden layers only: the output layer's gradient follows the loss scale
            a / b for a, b in zip(g[:-1], w[:-1], strict=False) if b and math.isfinite(b) and b > 0
        ]
        worst = max(rel) if rel else 0.0
        depth = first / last if last > 0 else 0.0
        if not exploding_done and (worst > EXPLODING_GRAD_TO_WEIGHT or depth > EXPLODING_RATIO):
            exploding_done = True
            at = rel.index(worst) if rel else 0
            out.append(
                finding(
                    "exploding_gradients",
                    "warning",
                    "set init_scale to 1 (the default init), add batch_norm, or lower lr by 10x",
                    epoch=rec["epoch"],
                    layer=layers[at] if at < len(layers) else None,
                    member=rec["member"],
                    max_grad_to_weight_ratio=worst,
                    first_to_last_grad_ratio=depth,
                    threshold=EXPLODING_GRAD_TO_WEIGHT,
                )
            )
    return out


def _median_so_far(records: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float, int]]:
    """``(epoch, running median of the worst layer's value, worst layer)`` per epoch."""
    seen: list[float] = []
    out: list[tuple[int, float, int]] = []
    for rec in records:
        values = rec.get(key)
        if not values:
            continue
        clean = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        worst = max(clean)
        seen.append(worst)
        out.append((rec["epoch"], statistics.median(seen), clean.index(worst)))
    return out


def activation_findings(
    records: Sequence[dict[str, Any]],
    layers: Sequence[str],
    activation: str,
    *,
    dead_layers: Sequence[str] | None = None,
    saturated_layers: Sequence[str] | None = None,
) -> list[dict]:
    """Saturated tanh/sigmoid units and dead ReLU units, held over most epochs so far.

    ``dead_layers`` / ``saturated_layers`` name the entries of ``dead_fraction`` /
    ``saturated_fraction`` (default: ``layers`` in order, i.e. the hidden layers).
    """
    out: list[dict] = []
    dead_names = list(dead_layers) if dead_layers is not None else list(layers)
    sat_names = list(saturated_layers) if saturated_layers is not None else list(layers)

    def name(names: list[str], at: int) -> str | None:
        return names[at] if at < len(names) else None

    for epoch, med, at in _median_so_far(records, "saturated_fraction"):
        if med > SATURATED_FRACTION:
            out.append(
                finding(
                    "saturated_activations",
                    "warning",
                    "scale the inputs (drop --no-scale), set init_scale to 1, or switch activation "
                    "to relu",
                    epoch=epoch,
                    layer=name(sat_names, at),
                    member=records[0]["member"],
                    saturated_fraction=med,
                    threshold=SATURATED_FRACTION,
                    activation=activation,
                )
            )
            break
    for epoch, med, at in _median_so_far(records, "dead_fraction"):
        if med >= DEAD_FRACTION:
            out.append(
                finding(
                    "dead_relu",
                    "warning",
                    "set bias_init to 0, lower lr, or switch activation to leaky_relu",
                    epoch=epoch,
                    layer=name(dead_names, at),
                    member=records[0]["member"],
                    dead_fraction=med,
                    threshold=DEAD_FRACTION,
                )
            )
            break
    return out


def learning_rate_findings(records: Sequence[dict[str, Any]], lr: float | None) -> list[dict]:
    """Too high (weights replaced each epoch, loss spiking) or too low (weights barely move)."""
    out: list[dict] = []
    previous_val: float | None = None
    for rec in records:
        upd = _finite(rec.get("update_ratio"))
        worst = max(upd) if upd else 0.0
        mean, peak = rec.get("batch_loss_mean"), rec.get("batch_loss_max")
        spike = peak / mean if mean and peak and mean > 0 and math.isfinite(peak) else 0.0
        val = rec.get("val_loss")
        swing = (
            max(val - previous_val, 0.0) / previous_val
            if val is not None and previous_val and math.isfinite(val) and previous_val > 0
            else 0.0
        )
        previous_val = val
        start_loss, now = rec.get("first_loss"), rec.get("train_loss")
        worse = (
            now / start_loss
            if start_loss and now is not None and start_loss > 0 and math.isfinite(now)
            else 0.0
        )
        unstable = spike > LR_SPIKE or swing > LR_SWING or worse > LR_WORSE
        if worst > LR_TOO_HIGH_UPDATE and unstable:
            lower = f" to {lr / 10:g}" if lr else " by 10x"
            out.append(
                finding(
                    "lr_too_high",
                    "warning",
                    f"lower lr{lower}",
                    epoch=rec["epoch"],
                    member=rec["member"],
                    update_ratio=worst,
                    batch_loss_spike=spike,
                    val_loss_rise=swing,
                    train_loss_vs_start=worse,
                    threshold=LR_TOO_HIGH_UPDATE,
                )
            )
            break
    start = [max(_finite(r.get("update_ratio")) or [0.0]) for r in records[:3]]
    if len(records) >= 2 and start and max(start) < SLOW_UPDATE:
        first = records[0].get("train_loss")
        last = records[-1].get("train_loss")
        raise_to = f" to {lr * 100:g}" if lr else " by 100x"
        out.append(
            finding(
                "slow_convergence",
                "warning",
                f"raise lr{raise_to}",
                epoch=records[min(len(records), 3) - 1]["epoch"],
                member=records[0]["member"],
                update_ratio=max(start),
                threshold=SLOW_UPDATE,
                train_loss_first=first,
                train_loss_last=last,
            )
        )
    return out


def signal_findings(
    records: Sequence[dict[str, Any]],
    layers: Sequence[str],
    activation: str,
    lr: float | None,
    *,
    dead_layers: Sequence[str] | None = None,
    saturated_layers: Sequence[str] | None = None,
) -> list[dict]:
    """Every rule that reads per-epoch signals of one member (faults 1-7 except divergence)."""
    records = sorted(records, key=lambda r: r["epoch"])
    if not records:
        return []
    out = gradient_findings(records, layers)
    out += activation_findings(
        records, layers, activation, dead_layers=dead_layers, saturated_layers=saturated_layers
    )
    out += learning_rate_findings(records, lr)
    codes = {f["code"]: f for f in out}
    dead, high = codes.get("dead_relu"), codes.get("lr_too_high")
    if dead is not None and high is not None and high["epoch"] <= dead["epoch"]:
        dead["severity"] = "info"
        dead["advice"] = "units died after too-large steps: lower lr first"
    if "slow_convergence" in codes and ("dead_relu" in codes or "vanishing_gradients" in codes):
        out.remove(codes["slow_convergence"])  # tiny updates are the consequence, not the cause
    return out


# ------------------------------------------------------------------------------ run-level rules
def divergence_findings(ctx: RunContext) -> list[dict]:
    """A member whose loss became non-finite or exploded; error when no member survived."""
    out: list[dict] = []
    members = ctx.all_members or sorted(ctx.divergence)
    every = bool(ctx.divergence) and all(m in ctx.divergence for m in members)
    lower = f" to {ctx.lr / 10:g}" if ctx.lr else " by 10x"
    for m, info in sorted(ctx.divergence.items()):
        out.append(
            finding(
                "divergence",
                "error" if every or m == ctx.member else "warning",
                f"lower lr{lower}; with sgd, try adam",
                epoch=info.get("epoch"),
                member=m,
                **{k: v for k, v in info.items() if k != "epoch" and v is not None},
            )
        )
    for event in ctx.events:
        kind = str(event.get("kind", ""))
        if ("nonfinite" in kind or "diverg" in kind or "rollback" in kind) and not out:
            out.append(
                finding(
                    "divergence",
                    "warning",
                    f"the loss became non-finite and was rolled back; lower lr{lower}",
                    epoch=event.get("epoch"),
                    member=event.get("member"),
                    step=event.get("step"),
                    event=kind,
                )
            )
    return out


def _curve(history: Sequence[dict[str, Any]], member: int, key: str) -> list[tuple[int, float]]:
    rows = [(int(r["epoch"]), r.get(key)) for r in history if r.get("member") == member]
    return [(e, float(v)) for e, v in sorted(rows) if v is not None and math.isfinite(float(v))]


def regularization_advice(ctx: RunContext) -> str:
    """More regularization than the run already has: l2 x10 (at least 1e-3), dropout +0.2
    (at most 0.5). Unknown settings (a user's own loop) get the plain starting points."""
    l2 = ctx.l2 or 0.0
    # Three significant digits: a searched setting (l2 1.44245e-06) reads as 1.44e-06.
    options = [
        f"raise l2 from {l2:.3g} to {max(1e-3, 10 * l2):.3g}" if l2 > 0 else "set l2 to 1e-3"
    ]
    if ctx.dropout is None:
        options.append("dropout to 0.2")
    else:
        current = max(ctx.dropout, default=0.0)
        if current == 0:
            options.append("set dropout to 0.2")
        elif current < 0.5:
            options.append(f"raise dropout from {current:.3g} to {min(0.5, current + 0.2):.3g}")
    return " or ".join(options)


def validation_noise_limit(losses: Sequence[float]) -> tuple[float, float]:
    """``(jitter, limit)``: how far above its minimum a validation loss must rise to be more
    than epoch-to-epoch noise.

    The jitter ``sigma`` is the root mean square of the successive differences of the settled
    epochs (those within ``OVERFIT_SETTLED`` of the way from the minimum to the first epoch's
    loss), divided by sqrt(2): the difference of two independent draws has twice their variance.
    A steady rise inflates it, which only makes the limit stricter for short runs; a long one
    accumulates a rise that grows with the epochs while the jitter does not. The minimum is
    picked among the ``N`` settled epochs, so on a flat curve it sits about
    ``sigma * sqrt(2 ln N)`` below the level (the expected largest of N standard normals), and a
    later epoch at that level scatters by another ``sigma``: the limit is
    ``(sqrt(2 ln N) + OVERFIT_NOISE_SIGMAS) * sigma``. Fewer than 4 settled epochs give no
    estimate: ``(0, 0)``.
    """
    if not losses:
        return 0.0, 0.0
    best = min(losses)
    cut = best + OVERFIT_SETTLED * max(losses[0] - best, 0.0)
    start = next(i for i, v in enumerate(losses) if v <= cut)
    settled = losses[start:]
    if len(settled) < 4:
        return 0.0, 0.0
    diffs = [b - a for a, b in zip(settled[:-1], settled[1:], strict=True)]
    sigma = math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2.0)
    return sigma, (math.sqrt(2.0 * math.log(len(settled))) + OVERFIT_NOISE_SIGMAS) * sigma


def overfitting_findings(
    history: Sequence[dict[str, Any]], ctx: RunContext, *, noise_aware: bool = False
) -> list[dict]:
    """Past the validation optimum, validation loss rose while training loss kept falling.

    An epoch is overfit when its validation loss is ``OVERFIT_RISE`` above the minimum with a
    lower training loss, or when the training loss has halved since the optimum
    (``OVERFIT_MEMORIZE``) while validation loss got worse: the extra epochs only memorized.

    ``noise_aware`` (a user's own loop, whose validation split may be small and whose curve
    nobody smoothed): the ``OVERFIT_RISE`` branch also needs the rise to clear
    :func:`validation_noise_limit`, since a 5% rise over a minimum picked among noisy epochs can
    be the minimum's luck. The memorizing branch needs no such margin: a training loss that
    halved while validation did not improve at all is the overfit, whatever the jitter.
    """
    val = _curve(history, ctx.member, "val_loss")
    train = dict(_curve(history, ctx.member, "train_loss"))
    if len(val) < 3:
        return []
    best_epoch, best = min(val, key=lambda p: p[1])
    if best <= 0 or best_epoch not in train:
        return []
    jitter, limit = validation_noise_limit([v for _, v in val]) if noise_aware else (0.0, 0.0)

    def overfit(epoch: int, loss: float) -> bool:
        if epoch <= best_epoch or epoch not in train:
            return False
        rise = (loss - best) / best
        if rise > OVERFIT_RISE and loss - best > limit and train[epoch] < train[best_epoch]:
            return True
        return rise > OVERFIT_MIN_RISE and train[epoch] <= OVERFIT_MEMORIZE * train[best_epoch]

    over = [(e, v) for e, v in val if overfit(e, v)]
    if not over:
        return []
    last_epoch, last = val[-1]
    model_epoch = ctx.model_epoch if ctx.model_epoch is not None else last_epoch
    model_val = dict(val).get(model_epoch, last)
    advice = regularization_advice(ctx) + ", and keep early stopping on (patience 20)"
    evidence: dict[str, Any] = {
        "best_val_loss": best,
        "best_epoch": best_epoch,
        "last_val_loss": last,
        "model_epoch": model_epoch,
        "model_val_rise": (model_val - best) / best,
        "threshold": OVERFIT_RISE,
        "train_loss_at_best": train[best_epoch],
        "train_loss_last": train.get(last_epoch),
    }
    if noise_aware:
        evidence["val_loss_jitter"] = jitter
        evidence["noise_limit"] = limit
    if not overfit(model_epoch, model_val):
        return [
            finding(
                "overfitting",
                "info",
                "early stopping caught it and the best weights were kept; " + advice,
                epoch=best_epoch,
                member=ctx.member,
                **evidence,
            )
        ]
    if ctx.restored_best and ctx.best_epoch_by == "score":
        # The kept epoch has the best validation score, by the user's own rule: on that
        # score it is not over-fitted; what rose is the loss, i.e. its confidence.
        return [
            finding(
                "overfitting",
                "info",
                f"the kept epoch {model_epoch} has the best validation score, chosen over the "
                f"validation-loss minimum at epoch {best_epoch} "
                f"({model_val / best:.3g} x its loss): its probabilities are less calibrated; "
                'best_epoch_by = "loss" keeps the calibrated epoch, or ' + advice,
                epoch=over[0][0],
                member=ctx.member,
                **evidence,
            )
        ]
    return [
        finding("overfitting", "warning", advice, epoch=over[0][0], member=ctx.member, **evidence)
    ]


def underfitting_findings(
    history: Sequence[dict[str, Any]], ctx: RunContext, score: str
) -> list[dict]:
    """The network fits worse, on training and on validation rows alike, than a linear model or
    than a wider network trained briefly on the same rows.

    Both yardsticks are needed: the linear one costs nothing but is weak where a linear fit is
    weak (MNIST-1D), the wider network holds anywhere but costs a short run, so it is only
    trained when :func:`capacity_check_needed` leaves room for the finding. Trailing on both
    splits is what separates too little capacity (or too much regularization) from overfitting.
    The wider network is one seed, so on validation it must also lead by more than the noise of
    a difference of two scores (2 standard errors, as for restarts): on a small split a lucky
    seed would otherwise pass for capacity.
    """
    train = dict(_curve(history, ctx.member, f"train_{score}"))
    val = dict(_curve(history, ctx.member, f"val_{score}"))
    if not train:
        return []
    epoch = ctx.model_epoch if ctx.model_epoch in train else max(train)
    net_train, net_val = train[epoch], val.get(epoch)
    if net_val is None:
        return []
    references = [
        ("linear model", ctx.linear_train_score, ctx.linear_val_score),
        ("wider network", ctx.capacity_train_score, ctx.capacity_val_score),
    ]
    for name, ref_train, ref_val in references:
        if ref_train is None or ref_val is None:
            continue
        needed = UNDERFIT_MARGIN
        if name == "wider network":
            needed = max(needed, NO_SIGNAL_SE * math.sqrt(2.0) * _standard_error(ctx, ref_val))
        if ref_train - net_train > UNDERFIT_MARGIN and ref_val - net_val > needed:
            evidence: dict[str, Any] = {"train_score": net_train, "val_score": net_val}
            if name == "linear model":
                evidence |= {"linear_train_score": ref_train, "linear_val_score": ref_val}
            else:
                evidence |= {
                    "wider_train_score": ref_train,
                    "wider_val_score": ref_val,
                    "wider_hidden": list(ctx.capacity_hidden or ()),
                }
            return [
                finding(
                    "underfitting",
                    "warning",
                    f"a {name} fits these rows better: widen the network (e.g. hidden 256,256), "
                    "lower l2 / dropout, or train longer",
                    epoch=epoch,
                    member=ctx.member,
                    **evidence,
                    margin=round(needed, 4),
                )
            ]
    return []


def plateau_underfitting_findings(
    history: Sequence[dict[str, Any]], ctx: RunContext, score: str
) -> list[dict]:
    """Underfitting without a reference model (a user's own loop): the training score has
    stopped improving, is well below 1, and validation matches it.

    A network with capacity to spare keeps fitting its training rows after it stops improving
    on unseen ones (it fits their noise too), so train and validation scores drift apart; one
    that cannot even fit its own rows better than unseen rows, at a plateau, is held back by its
    size (or its regularization). The absence of that gap is the signal, so no linear or wider
    reference is needed; data whose score is capped by noise still shows the gap once the
    model has room to memorize.
    """
    train = _curve(history, ctx.member, f"train_{score}")
    val = dict(_curve(history, ctx.member, f"val_{score}"))
    if len(train) < 2 * PLATEAU_EPOCHS:
        return []
    last_epoch, last = train[-1]
    before = max(v for _, v in train[:-PLATEAU_EPOCHS])
    recent = max(v for _, v in train[-PLATEAU_EPOCHS:])
    net_val = val.get(last_epoch)
    if net_val is None or recent - before >= PLATEAU_GAIN:
        return []
    gap = last - net_val
    if last >= _max_score(ctx) - UNDERFIT_MARGIN or gap >= UNDERFIT_MARGIN:
        return []
    return [
        finding(
            "underfitting",
            "warning",
            "the network fits its own training rows no better than unseen rows and has stopped "
            "improving: widen it (more units per hidden layer, e.g. 64 or more), lower weight "
            "decay / dropout, or train longer with a higher learning rate",
            epoch=last_epoch,
            member=ctx.member,
            train_score=last,
            val_score=net_val,
            train_val_gap=gap,
            gain_last_epochs=recent - before,
            plateau_epochs=PLATEAU_EPOCHS,
            margin=UNDERFIT_MARGIN,
        )
    ]


def capacity_check_needed(
    history: Sequence[dict[str, Any]], ctx: RunContext, score: str, codes: set[str]
) -> bool:
    """Whether a wider reference network could show underfitting that nothing else explains.

    Not when the run reaches ``1 - UNDERFIT_MARGIN`` on its training rows: scores are at most 1,
    so no reference can beat it there by the margin. Not when an optimization fault or
    underfitting (already shown by the linear model) was found: the reference would only confirm
    what the findings already say, at the cost of a run. A ``no_signal`` finding does not stop it:
    a network too small to beat the trivial baseline looks like data without signal, and only a
    network that can fit tells the two apart.
    """
    if codes & (set(OPTIMIZATION_FAULTS) | {"underfitting"}):
        return False
    train = dict(_curve(history, ctx.member, f"train_{score}"))
    if not train:
        return False
    epoch = ctx.model_epoch if ctx.model_epoch in train else max(train)
    return train[epoch] < 1.0 - UNDERFIT_MARGIN


def local_minimum_findings(
    history: Sequence[dict[str, Any]], ctx: RunContext, score: str
) -> list[dict]:
    """Restarts that differ only in seed end far apart, on validation and training rows alike."""
    base = ctx.baseline_val_score
    if base is None:
        return []
    out: list[dict] = []
    for group in ctx.restart_groups:
        scores = [(m, s) for m, s in group if s is not None and math.isfinite(s)]
        if len(scores) < 2:
            continue
        best_member, best = max(scores, key=lambda ms: ms[1])
        gain = best - base
        if gain <= _standard_error(ctx) * NO_SIGNAL_SE:
            continue
        # Stalled: recovered under half the best restart's gain (or 1.5x its error), by more
        # than validation noise, and behind it on the training rows too.
        best_error = max(_max_score(ctx) - best, 0.0)
        train_gaps = {m: _training_gap(history, ctx, score, m, best_member) for m, _ in scores}
        stalled = [
            (m, s)
            for m, s in scores
            if best - s > _difference_noise(ctx, best, s)
            and (
                (s - base) / gain < LOCAL_MINIMUM_RECOVERY
                or _max_score(ctx) - s >= LOCAL_MINIMUM_ERROR_RATIO * best_error
            )
            and train_gaps[m][0]
        ]
        if stalled:
            out.append(
                finding(
                    "local_minimum",
                    "warning",
                    "results depend on the seed: keep --restarts 5 or more (the best is kept), "
                    "or widen the network",
                    member=stalled[0][0],
                    val_scores=[s for _, s in scores],
                    members=[m for m, _ in scores],
                    stalled_members=[m for m, _ in stalled],
                    train_score_gaps=[train_gaps[m][1] for m, _ in scores],
                    baseline_val_score=base,
                    threshold=LOCAL_MINIMUM_RECOVERY,
                )
            )
    return out


def _training_gap(
    history: Sequence[dict[str, Any]], ctx: RunContext, score: str, member: int, best: int
) -> tuple[bool, float | None]:
    """``(trails, gap)``: how far ``member``'s training score is behind ``best``'s at the last
    epoch both trained, and whether that is beyond the noise of ``ctx.n_train`` rows.

    Unknown (no training-row count, or no common epoch in the history) counts as trailing:
    validation alone decides, as it did for runs saved before the training check existed.
    """
    mine = dict(_curve(history, member, f"train_{score}"))
    theirs = dict(_curve(history, best, f"train_{score}"))
    common = set(mine) & set(theirs)
    if ctx.n_train < 1 or not common:
        return True, None
    epoch = max(common)
    gap = theirs[epoch] - mine[epoch]
    return gap > _difference_noise(ctx, theirs[epoch], mine[epoch], n=ctx.n_train), gap


def _difference_noise(ctx: RunContext, a: float, b: float, *, n: int | None = None) -> float:
    """``NO_SIGNAL_SE`` standard errors of the difference of scores ``a`` and ``b`` measured on
    ``n`` rows (default: the validation split's): each score's own standard error counts.

    Reading both at the better score (``sqrt(2)`` times its error) fails at the ceiling: a
    restart at 100% has almost no error of its own, so 98% against it looked beyond noise on
    150 rows (3 rows apart) though the 98% score alone is uncertain by more than that.
    """
    return NO_SIGNAL_SE * math.hypot(_standard_error(ctx, a, n=n), _standard_error(ctx, b, n=n))


def _max_score(ctx: RunContext) -> float:
    return 1.0  # accuracy and R^2 both top out at 1


def _standard_error(ctx: RunContext, score: float | None = None, *, n: int | None = None) -> float:
    """Standard error of a score near ``score`` (default: the baseline's) measured on ``n`` rows
    (default: the validation split's)."""
    n = max(ctx.n_val if n is None else n, 1)
    p = ctx.baseline_val_score if score is None else score
    if ctx.task == "classification" and p is not None:
        p = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
        return math.sqrt(p * (1.0 - p) / n)
    return math.sqrt(2.0 / n)  # rough sd of validation R^2 of a model with no signal


def no_signal_score(scores: Sequence[float]) -> float | None:
    """The validation score ``no_signal`` judges in a user's loop, where the kept model is
    unknown: the higher of the median over the later ``NO_SIGNAL_LATE_SHARE`` of the epochs and
    the median over three epochs around the best one.

    The best single epoch is the maximum of many noisy draws (30 epochs of a model with no
    signal reach 2 standard errors above the baseline by chance, and a model that predicts the
    validation split's most common class for one epoch jumps further); the medians ignore one
    lucky epoch but keep a model that learned late, or learned and then overfit.
    """
    clean = [float(s) for s in scores if math.isfinite(float(s))]
    if not clean:
        return None
    late = clean[int(len(clean) * (1.0 - NO_SIGNAL_LATE_SHARE)) :] or clean
    at = clean.index(max(clean))
    around = clean[max(at - 1, 0) : at + 2]
    return max(statistics.median(late), statistics.median(around))


def no_signal_findings(best_val_score: float | None, ctx: RunContext) -> list[dict]:
    """The chosen model does not beat the trivial baseline by more than noise."""
    if ctx.metric_val_score is not None:
        return metric_no_signal_findings(ctx)
    base = ctx.baseline_val_score
    if base is None or best_val_score is None or not math.isfinite(best_val_score):
        return []
    se = _standard_error(ctx)
    if best_val_score > base + NO_SIGNAL_SE * se:
        return []
    what = "majority-class" if ctx.task == "classification" else "mean"
    return [
        finding(
            "no_signal",
            "warning",
            f"no model beats the {what} baseline: the features may not predict the target; check "
            "the target column and the features before tuning",
            member=ctx.member,
            val_score=best_val_score,
            baseline_val_score=base,
            standard_error=se,
            threshold_se=NO_SIGNAL_SE,
        )
    ]


def metric_no_signal_findings(ctx: RunContext) -> list[dict]:
    """``no_signal`` on the chosen metric: the kept member is not better than the trivial
    baseline by ``NO_SIGNAL_SE`` standard errors (lower is better for log loss, RMSE, MAE)."""
    value, base, se = ctx.metric_val_score, ctx.metric_baseline, ctx.metric_standard_error
    if value is None or base is None or se is None or not math.isfinite(value):
        return []
    lower = ctx.metric in ("log_loss", "rmse", "mae")
    gain = (base - value) if lower else (value - base)
    if gain > NO_SIGNAL_SE * se:
        return []
    what = "class-frequency" if ctx.task == "classification" else "mean"
    return [
        finding(
            "no_signal",
            "warning",
            f"no model beats the {what} baseline on {ctx.metric}: the features may not predict "
            "the target; check the target column and the features before tuning",
            member=ctx.member,
            metric=ctx.metric,
            val_score=value,
            baseline_val_score=base,
            standard_error=se,
            threshold_se=NO_SIGNAL_SE,
        )
    ]


def imbalance_findings(ctx: RunContext) -> list[dict]:
    """Accuracy on a table whose smallest class is rare: predicting the common classes only
    already scores high, so accuracy hides a model that ignores the rare class."""
    share = ctx.minority_share
    if ctx.task != "classification" or ctx.metric != "accuracy" or share is None:
        return []
    if share >= IMBALANCE_SHARE or share >= IMBALANCE_OF_BALANCED / max(ctx.n_classes, 2):
        return []
    advice = "accuracy rewards ignoring the rare class: choose and judge the model with "
    advice += "--metric balanced_accuracy (or macro_f1)"
    if ctx.class_weight == "none":
        advice += ", and train with --class-weight balanced"
    return [
        finding(
            "imbalanced_accuracy",
            "warning",
            advice,
            minority_share=share,
            threshold=IMBALANCE_SHARE,
            metric=ctx.metric,
        )
    ]


def leakage_findings(ctx: RunContext) -> list[dict]:
    """Test rows that also appear among the training rows inflate the test score."""
    if ctx.test_duplicates <= 0 or ctx.n_test <= 0:
        return []
    fraction = ctx.test_duplicates / ctx.n_test
    severity = "warning" if fraction >= LEAKAGE_FRACTION else "info"
    return [
        finding(
            "leakage",
            severity,
            "remove duplicate rows before splitting (or split by group) so the test score is "
            "honest",
            duplicated_test_rows=ctx.test_duplicates,
            test_rows=ctx.n_test,
            fraction=fraction,
            threshold=LEAKAGE_FRACTION,
        )
    ]


def cross_entropy_floor(classes: int) -> float:
    """The lowest cross-entropy a softmax over probability rows allows: ``log(1 + (K-1)/e)``
    (the true class at probability 1, the others at 0)."""
    return math.log(1.0 + (classes - 1) / math.e)


def sigmoid_bce_floor() -> tuple[float, float]:
    """The lowest BCE-with-logits a row can reach when its "logit" is a probability in [0, 1]:
    ``log(1 + e^-1)`` for a positive row (z = 1), ``log 2`` for a negative one (z = 0)."""
    return math.log(1.0 + math.exp(-1.0)), math.log(2.0)


def probabilities_as_logits_findings(records: Sequence[dict[str, Any]]) -> list[dict]:
    """The model's outputs are probabilities and the loss treats them as something else.

    Three exact gradient signatures, each on at least ``PROBABILITY_ROWS_SHARE`` of an epoch's
    training batches, with outputs that are probabilities on as many:

    - Softmax rows into a loss with softmax inside (``CrossEntropyLoss``): the gradient sums to
      zero across each row (softmax(z) - onehot). ``NLLLoss`` on their log has gradient
      ``-1/(N p_y)`` on the true class alone, never summing to zero, so a correct softmax + log +
      NLLLoss stays quiet, and logits are never probability rows. Loss floor
      ``log(1 + (K-1)/e)``.
    - Softmax rows into ``NLLLoss`` directly (it expects log-probabilities): one entry per row,
      equal within each class (``-1/N``), where softmax + log + NLLLoss gives ``-1/(N p_y)``.
      The loss is then ``-mean(p_y)``, in [-1, 0]: it cannot say how wrong a row is.
    - One column in [0, 1] into a loss that applies a sigmoid (``BCEWithLogitsLoss``): the
      gradient is ``(sigmoid(z) - y)/N`` with 0/1 labels. A logit column is not confined to
      [0, 1] batch after batch (that would predict the positive class for every row), and BCE
      on probabilities gives a different gradient. Floor ``log(1 + e^-1)`` per positive row.

    The gradients are exact from the first step on, so no epoch count or loss threshold is
    needed; the sigmoid case asks for ``SIGMOID_EPOCHS`` epochs in a row in [0, 1], since a
    logit column that is still near its initial values can sit there for a few batches.
    """
    confined = 0
    for r in records:
        batches = int(r.get("output_batches") or 0)
        if batches:
            prob = float(r.get("output_probability_batches") or 0) / batches
            zero = float(r.get("output_zero_sum_grad_batches") or 0) / batches
            nll = float(r.get("output_nll_grad_batches") or 0) / batches
            classes = int(r.get("output_classes") or 2)
            floor = cross_entropy_floor(classes)
            common: dict[str, Any] = {
                "epoch": int(r["epoch"]),
                "member": int(r.get("member", 0)),
                "classes": classes,
                "probability_row_batches": round(prob, 3),
                "train_loss": r.get("train_loss"),
            }
            if prob >= PROBABILITY_ROWS_SHARE and zero >= PROBABILITY_ROWS_SHARE:
                return [
                    finding(
                        "probabilities_as_logits",
                        "warning",
                        "the model ends in a softmax and its loss applies softmax again "
                        "(CrossEntropyLoss expects raw logits): remove the final nn.Softmax and "
                        "apply softmax only to predict, or end in nn.LogSoftmax and use "
                        f"nn.NLLLoss; cross-entropy on probability rows cannot go below "
                        f"{floor:.3g}",
                        **common,
                        zero_sum_gradient_batches=round(zero, 3),
                        loss_floor=round(floor, 4),
                    )
                ]
            if prob >= PROBABILITY_ROWS_SHARE and nll >= PROBABILITY_ROWS_SHARE:
                return [
                    finding(
                        "probabilities_as_logits",
                        "warning",
                        "the model ends in a softmax and NLLLoss takes its probabilities as "
                        "log-probabilities (the loss is -mean(p_y), between -1 and 0): end in "
                        "nn.LogSoftmax instead of nn.Softmax, or drop the softmax and use "
                        "nn.CrossEntropyLoss",
                        **common,
                        nll_gradient_batches=round(nll, 3),
                        loss_range=[-1.0, 0.0],
                    )
                ]
        columns = int(r.get("column_batches") or 0)
        unit = float(r.get("column_unit_batches") or 0) / max(columns, 1)
        sig = float(r.get("column_sigmoid_grad_batches") or 0) / max(columns, 1)
        confined = confined + 1 if min(unit, sig) >= PROBABILITY_ROWS_SHARE else 0
        if confined >= SIGMOID_EPOCHS:
            positive, negative = sigmoid_bce_floor()
            return [
                finding(
                    "probabilities_as_logits",
                    "warning",
                    "the model ends in a sigmoid and its loss applies a sigmoid again "
                    "(BCEWithLogitsLoss expects raw logits): remove the final nn.Sigmoid and "
                    "apply torch.sigmoid only to predict, or keep it and use nn.BCELoss; "
                    f"the loss cannot go below {positive:.3g} per positive row and "
                    f"{negative:.3g} per negative row",
                    epoch=int(r["epoch"]),
                    member=int(r.get("member", 0)),
                    unit_interval_batches=round(unit, 3),
                    sigmoid_gradient_batches=round(sig, 3),
                    loss_floor_positive=round(positive, 4),
                    loss_floor_negative=round(negative, 4),
                    train_loss=r.get("train_loss"),
                )
            ]
    return []


def init_scale_findings(gains: Sequence[float], layers: Sequence[str]) -> list[dict]:
    """Initial weights so large that activations and gradients grow layer after layer.

    ``gains`` are ``std(W) * sqrt(fan_in)`` per weighted layer, read before the first step. A
    ReLU layer multiplies the root mean square of its input by about ``gain / sqrt(2)`` (1 for
    Kaiming init), and the backward pass by the same factor, so their product over the layers
    is how much larger the output (and the first layer's gradient) is than a well-initialized
    network's. Only meaningful for a chain of layers without normalization between them (the
    caller skips models with BatchNorm / LayerNorm / GroupNorm).
    """
    usable = [(i, g) for i, g in enumerate(gains) if math.isfinite(g) and g > 0]
    if len(usable) < 2:
        return []
    product = math.prod(g / math.sqrt(2.0) for _, g in usable)
    if product <= INIT_GAIN_PRODUCT:
        return []
    at, worst = max(usable, key=lambda ig: ig[1])
    return [
        finding(
            "exploding_gradients",
            "warning",
            "the initial weights are too large: each layer multiplies the signal (forward) and "
            "the gradient (backward) again; use PyTorch's default init or "
            "nn.init.kaiming_normal_ (ReLU) / nn.init.xavier_normal_ (tanh), with std about "
            "sqrt(2 / fan_in), not N(0, 1)",
            epoch=1,
            layer=layers[at] if at < len(layers) else None,
            member=0,
            init_gain=[round(g, 3) for g in gains],
            init_gain_product=product,
            kaiming_gain=round(math.sqrt(2.0), 3),
            threshold=INIT_GAIN_PRODUCT,
        )
    ]


def missing_zero_grad_findings(records: Sequence[dict[str, Any]]) -> list[dict]:
    """Gradients accumulate across steps: ``optimizer.zero_grad()`` is never called.

    Read on the first backward after each optimizer step: the output layer's ``.grad`` still
    holds a non-zero gradient (``zero_grad()`` leaves it None or zero). Every step then applies
    the sum of all gradients so far, so the step size grows with the step count. Accumulating
    micro-batches between steps is not counted (only the first backward after a step is read).
    The doctor reads a sample of steps, so the checks are pooled over the epochs so far.
    """
    checked = stale = 0
    for r in records:
        checked += int(r.get("stale_grad_checks") or 0)
        stale += int(r.get("stale_grad_steps") or 0)
        if checked < STALE_GRAD_MIN_STEPS:
            continue
        share = stale / checked
        if share >= STALE_GRAD_SHARE:
            return [
                finding(
                    "missing_zero_grad",
                    "warning",
                    "gradients are never cleared, so each step applies the sum of every "
                    "earlier step's gradient: call optimizer.zero_grad() before each "
                    "loss.backward()",
                    epoch=int(r["epoch"]),
                    member=int(r.get("member", 0)),
                    stale_grad_steps=round(share, 3),
                    steps_checked=checked,
                    threshold=STALE_GRAD_SHARE,
                )
            ]
    return []


def unscaled_inputs_findings(records: Sequence[dict[str, Any]]) -> list[dict]:
    """Input columns far from unit scale, as the first weighted layer receives them.

    Reads the first epoch that measured its inputs (``input_rms``: per column, over the
    training forwards), because that is what the initialization met; names the worst columns.
    """
    for r in records:
        rms = r.get("input_rms")
        if not rms:
            continue
        worst = sorted(
            ((i, float(v)) for i, v in enumerate(rms) if math.isfinite(float(v))),
            key=lambda iv: -iv[1],
        )
        over = [(i, v) for i, v in worst if v > INPUT_RMS_LIMIT]
        if not over:
            return []
        return [
            finding(
                "unscaled_inputs",
                "warning",
                f"{len(over)} of {len(rms)} input columns have a root mean square above "
                f"{INPUT_RMS_LIMIT:g} (largest {over[0][1]:.3g}): standardize each column with "
                "its training mean and standard deviation (or divide pixels by 255) before the "
                "first layer; the default initialization expects inputs of about unit scale",
                epoch=int(r["epoch"]),
                member=int(r.get("member", 0)),
                columns=[i for i, _ in over[:10]],
                column_rms=[round(v, 4) for _, v in over[:10]],
                limit=INPUT_RMS_LIMIT,
            )
        ]
    return []


def unscaled_target_findings(records: Sequence[dict[str, Any]]) -> list[dict]:
    """A regression target far from unit scale (from the labels given to ``Doctor.step``).

    The output layer starts at about unit scale, so a target with a standard deviation or mean
    beyond ``INPUT_RMS_LIMIT`` makes the first losses and gradients that many times (squared,
    for MSE) larger than the initialization and learning rate were chosen for.
    """
    for r in records:
        std, mean = r.get("target_std"), r.get("target_mean")
        if std is None or mean is None:
            continue
        if float(std) > INPUT_RMS_LIMIT or abs(float(mean)) > INPUT_RMS_LIMIT:
            return [
                finding(
                    "unscaled_target",
                    "warning",
                    "the regression target is far from unit scale: train on (y - mean) / std "
                    "with the training rows' mean and std, and map predictions back with "
                    "y = prediction * std + mean",
                    epoch=int(r["epoch"]),
                    member=int(r.get("member", 0)),
                    target_mean=float(mean),
                    target_std=float(std),
                    limit=INPUT_RMS_LIMIT,
                )
            ]
        return []
    return []


def lead_with_scaling(found: list[dict]) -> list[dict]:
    """When inputs or target are unscaled, the faults they cause say so and advise scaling
    first."""
    if not any(f["code"] in ("unscaled_inputs", "unscaled_target") for f in found):
        return found
    out = []
    for f in found:
        if f["code"] in CAUSED_BY_SCALE:
            f = {
                **f,
                "advice": "standardize the inputs / target first (see unscaled_inputs, "
                "unscaled_target), then: " + f["advice"],
                "evidence": {**f.get("evidence", {}), "inputs_unscaled": True},
            }
        out.append(f)
    return out


def lead_with_cause(found: list[dict], cause: str, first: str) -> list[dict]:
    """When ``cause`` was found at warning level, the other optimization faults it produces
    (divergence, lr_too_high, dead units, ...) say so and advise fixing it first."""
    if not any(f["code"] == cause and f["severity"] != "info" for f in found):
        return found
    out = []
    for f in found:
        if f["code"] != cause and f["code"] in OPTIMIZATION_FAULTS:
            f = {
                **f,
                "advice": f"{first} (see {cause}), then: " + f["advice"],
                "evidence": {**f.get("evidence", {}), "caused_by": cause},
            }
        out.append(f)
    return out


def single_class_chance(class_counts: Sequence[int], batch: float) -> float:
    """Chance that a batch of ``batch`` rows drawn from shuffled rows holds one class only:
    ``sum_k p_k ** batch`` (rows drawn independently; exact enough for batches of 8 or more)."""
    total = float(sum(class_counts))
    if total <= 0 or batch < 1:
        return 1.0
    return float(sum((c / total) ** batch for c in class_counts if c > 0))


def unshuffled_batches_findings(records: Sequence[dict[str, Any]]) -> list[dict]:
    """Most batches hold a single class where shuffled rows would almost never give one.

    From the labels passed to ``Doctor.step(loss, y=...)``: the share of batches with one class
    against the chance of that under shuffling (:func:`single_class_chance`), so an
    imbalanced table or tiny batches do not raise it. The doctor reads the labels of a sample of
    steps, so the batches are pooled over the epochs so far.
    """
    batches = single = 0
    for r in records:
        batches += int(r.get("label_batches") or 0)
        single += int(r.get("single_class_batches") or 0)
        if batches < 4 or "single_class_chance" not in r:
            continue
        share = single / batches
        chance = float(r.get("single_class_chance", 1.0))
        if share >= SINGLE_CLASS_SHARE and chance < SHUFFLED_SINGLE_CLASS_MAX:
            return [
                finding(
                    "unshuffled_batches",
                    "warning",
                    "batches come in label order: shuffle the training rows every epoch "
                    "(DataLoader(..., shuffle=True) or a fresh torch.randperm per epoch); each "
                    "step otherwise pulls the model towards one class and undoes the last",
                    epoch=int(r["epoch"]),
                    member=int(r.get("member", 0)),
                    single_class_batches=round(share, 3),
                    chance_if_shuffled=float(f"{chance:.3g}"),
                    batches=batches,
                )
            ]
    return []
