"""Cheap training signals, recorded per epoch, per member and per layer by a training callback.

What is recorded (the ``signals.json`` format): the mean L2 norm of each layer's weight gradient
over the epoch's steps (read on about ``GRADIENT_NORM_SAMPLES`` evenly spaced steps of each epoch:
the rules compare layers and epochs, not single steps), each layer's weight norm, the update
ratio ``||W_end - W_begin|| / ||W_begin||`` over the epoch, the fraction of dead units
(ReLU-like: pre-activation > 0 on fewer than 1% of the training rows, read on a 512-row sample
of them each epoch) or saturated pre-activations (tanh/sigmoid: derivative below 1% of its
maximum), and non-finite training losses. Under the NTK parametrization the norms are those of
the effective weights ``w / sqrt(fan_in)`` and their gradients (``sqrt(fan_in)`` times the stored
weights' gradients), so the rules' thresholds read the same network either way; update ratios do
not depend on the factor. Gradient norms accumulate on the device; the only
host read per step is one comparison of the step's losses with their limit (divergence is caught
the step it happens); the activation statistics ride on the loop's epoch-end evaluation pass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fitwell.training.callbacks import Callback
from fitwell.training.loop import PREACTIVATION_HOOK_ROWS

if TYPE_CHECKING:
    from fitwell.training.loop import Trainer

SIGNALS_VERSION = 1

# |pre-activation| beyond which the activation's derivative is below 1% of its maximum:
# tanh'(x) = 1 - tanh(x)^2 < 0.01 for |x| > 2.99; sigmoid'(x) / 0.25 < 0.01 for |x| > 5.29.
SATURATION_THRESHOLD = {"tanh": 2.99, "sigmoid": 5.29}
# A unit that fires on fewer than 1% of the training rows is dead: it passes (almost) no gradient.
DEAD_ACTIVE_RATE = 0.01
# Rows of each epoch's training-split evaluation that the activation statistics read: 1% of
# them (the dead-unit threshold) is still 5 rows, and the cost stops growing with the table.
ACTIVATION_SAMPLE_ROWS = PREACTIVATION_HOOK_ROWS
# Steps per epoch whose gradient norms are read (every k-th step, k = steps // this): a norm of a
# 256x256 MLP's gradients costs ~60 us after a backward pass, ~5% of a 64-row training step.
GRADIENT_NORM_SAMPLES = 5
# Activations whose units can "die": zero output and zero gradient for negative inputs.
RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "selu", "mish")
# A training loss this many times the member's first-step loss counts as diverged: no stable
# optimizer reaches it, and it leaves float32 headroom before the weights themselves overflow.
EXPLODING_LOSS_FACTOR = 1e4


def _nan_max(values: list[float]) -> float:
    """The largest value, NaN if any is NaN (as a tensor ``max`` would); NaN when empty."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def layer_names(n_hidden: int) -> list[str]:
    """``hidden1 .. hiddenN, output``: the names findings and ``signals.json`` use."""
    return [f"hidden{i + 1}" for i in range(n_hidden)] + ["output"]


class SignalProbe(Callback):
    """Record the doctor's signals during :meth:`Trainer.fit`.

    A member whose training loss becomes non-finite (or explodes past
    ``EXPLODING_LOSS_FACTOR`` times its first loss) is stopped at that step; when every member has
    diverged, training stops. ``records`` holds one dict per (epoch, member).
    """

    def __init__(self) -> None:
        self.layers: list[str] = []
        self.activation = "relu"
        self.records: list[dict[str, Any]] = []
        self.divergence: dict[int, dict[str, Any]] = {}
        self.first_loss: dict[int, float] = {}
        self._norm_steps: list[torch.Tensor] = []
        self._loss_buffer: torch.Tensor | None = None
        self._loss_rows = 0
        self._loss_values: list[float] = []
        self._n_members = 1
        self._steps = 0
        self._norm_stride = 1
        self._start_weights: list[torch.Tensor] = []
        self._alive: list[torch.Tensor | None] = []
        self._unit_rows: list[int] = []
        self._saturated: list[torch.Tensor | None] = []
        self._seen_rows: list[int] = []
        self._nonfinite: dict[int, int] = {}
        self._limit: torch.Tensor | None = None
        self._limit_value = math.inf
        self._limit_members: tuple[int, ...] = ()
        # Members this probe stopped for a finite loss explosion. Non-finite losses are left to
        # the NonFiniteGuard, which rolls back, halves lr and retries before giving up.
        self.stopped: set[int] = set()

    # ------------------------------------------------------------------------------ hooks
    def on_fit_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        self.layers = layer_names(len(trainer.arch.hidden))
        self.activation = trainer.arch.activation
        trainer.eval_preactivation_hooks.append(self._on_preactivation)

    def on_epoch_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        k = len(trainer.active)
        # The optimizer's plain list of weight matrices: no ParameterList walk (~6 us each).
        weights = trainer.optimizer.penalized
        # Per-step gradient norms and losses are kept as the tensors the step produced (no copy,
        # no host sync); means and maxima are taken once at epoch end.
        self._norm_steps = []
        self._loss_values = []
        self._n_members = k
        self._steps = 0
        steps = -(-len(trainer.x_train) // trainer.loop.batch_size)
        # One buffer per epoch for the members' step losses, filled in place: a small tensor
        # kept per step would sit between the step's large freed blocks and fragment the heap
        # (training 3 members on 1M rows grew by ~1 GB an epoch that way).
        self._loss_rows = 0
        self._loss_buffer = torch.empty(steps, k, device=trainer.x_train.device) if k > 1 else None
        self._norm_stride = max(1, steps // GRADIENT_NORM_SAMPLES)
        if self._limit_members != tuple(trainer.active):  # members stopped: rebuild the limit
            self._limit = None
        self._start_weights = [w.detach().clone() for w in weights]
        self._nonfinite = {}
        self._reset_activation_stats(len(trainer.arch.hidden))

    def on_after_backward(self, trainer: Trainer, **kwargs: Any) -> None:
        losses: torch.Tensor = kwargs["losses"]  # already detached by the loop
        one_member = self._n_members == 1
        if self._steps % self._norm_stride == 0:
            # The optimizer's plain list of weight matrices: no ParameterList walk (~6 us each).
            grads = [w.grad for w in trainer.optimizer.penalized]
            if all(g is not None for g in grads):
                present = [g for g in grads if g is not None]
                if one_member:  # one fused kernel for every layer's norm: L scalars
                    self._norm_steps.extend(torch._foreach_norm(present))
                else:  # L vectors [K]
                    self._norm_steps.extend(
                        torch.linalg.vector_norm(g, dim=(1, 2)) for g in present
                    )
        self._steps += 1
        if self._steps == 1 and trainer.epoch == 0:
            for pos, m in enumerate(trainer.active):
                self.first_loss.setdefault(m, float(losses[pos]))
            self._limit = None  # now known: rebuild the limit from the first losses
        # One cheap check per step: divergence is caught the step it happens.
        if self._limit is None:
            self._limit = self._loss_limit(trainer, losses.device)
            self._limit_value = float(self._limit.max())
            self._limit_members = tuple(trainer.active)
        # ``not (loss <= limit)`` is also true for NaN: one comparison, one host read per step
        # (for one member, a plain float comparison: no tensor kernels at all; the value is kept
        # as a float for the epoch's batch-loss statistics).
        if one_member:
            value = losses.item()
            self._loss_values.append(value)
            if value <= self._limit_value:
                return
        else:
            buffer = self._loss_buffer
            if buffer is None or self._loss_rows >= len(buffer):  # more steps than planned
                grown = torch.empty(2 * self._loss_rows + 1, len(losses), device=losses.device)
                if buffer is not None:
                    grown[: self._loss_rows] = buffer[: self._loss_rows]
                self._loss_buffer = buffer = grown
            buffer[self._loss_rows] = losses
            self._loss_rows += 1
            if bool((losses <= self._limit).all()):
                return
        values = losses.tolist()
        for pos, m in enumerate(trainer.active):
            value = values[pos]
            limit = EXPLODING_LOSS_FACTOR * max(self.first_loss.get(m, math.inf), 1e-12)
            if math.isfinite(value) and value <= limit:
                continue
            self._nonfinite[m] = self._nonfinite.get(m, 0) + 1
            if m not in self.divergence:
                self.divergence[m] = {
                    "epoch": trainer.epoch + 1,
                    "step": self._steps,
                    "loss": value,
                    "first_loss": self.first_loss.get(m),
                }
            if math.isfinite(value) and m not in self.stopped:
                self.stopped.add(m)
                trainer.stop_member(
                    m,
                    f"training loss became {value:.4g} at epoch "
                    f"{trainer.epoch + 1}, step {self._steps}",
                )
        if trainer.active and all(m in self.stopped for m in trainer.active):
            trainer.stop_training = True

    def _loss_limit(self, trainer: Trainer, device: torch.device) -> torch.Tensor:
        first = [self.first_loss.get(m, math.inf) for m in trainer.active]
        return EXPLODING_LOSS_FACTOR * torch.tensor(first, device=device).clamp_min(1e-12)

    def _reset_activation_stats(self, n_hidden: int) -> None:
        self._alive = [None] * n_hidden
        self._unit_rows = [0] * n_hidden
        self._saturated = [None] * n_hidden
        self._seen_rows = [0] * n_hidden

    def _on_preactivation(self, layer: int, pre: torch.Tensor) -> None:
        """Called on the epoch-end evaluation pass over the training rows: ``pre [K, N, H]``.

        Only the first ``ACTIVATION_SAMPLE_ROWS`` rows count (the training split is shuffled,
        so they are a random sample): an elementwise comparison costs ~1 ns per value on this
        CPU, more than the rest of the probe's epoch-end work for a 256-wide layer.
        """
        room = ACTIVATION_SAMPLE_ROWS - self._unit_rows[layer]
        if room <= 0:
            return
        pre = pre[:, :room]
        with torch.no_grad():
            if self.activation in RELU_LIKE:
                # Rows on which each unit fires: sign() clamped at 0 is 1 exactly where pre > 0;
                # a float sum over rows runs ~4x faster than a boolean one on the CPU.
                # float32 counts are exact up to 2**24 rows.
                active = pre.sign().clamp_(min=0).sum(dim=1)
                prev = self._alive[layer]
                self._alive[layer] = active if prev is None else prev + active
            threshold = SATURATION_THRESHOLD.get(self.activation)
            if threshold is not None:
                sat = (pre.abs() >= threshold).sum(dim=(1, 2)).double()
                prev_sat = self._saturated[layer]
                self._saturated[layer] = sat if prev_sat is None else prev_sat + sat
                self._seen_rows[layer] += pre.shape[1] * pre.shape[2]
            self._unit_rows[layer] += pre.shape[1]

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        logs: dict[int, dict[str, float]] = kwargs["logs"]
        with torch.no_grad():
            k = self._n_members
            n_layers = len(self.layers)
            grad = self._mean_gradient_norms(k, n_layers)
            weight_norm, ratio = self._weight_norms_and_update_ratios(trainer, k)
            # NTK: stored weights are the effective ones / c, their gradients c times the
            # effective weights' (c = 1 / sqrt(fan_in)); report the effective network's.
            scales = trainer.model.weight_multipliers()
            if any(c != 1.0 for c in scales):
                grad = [[g / c for g, c in zip(row, scales, strict=True)] for row in grad]
                weight_norm = [
                    [w * c for w, c in zip(row, scales, strict=True)] for row in weight_norm
                ]
            dead = self._dead_fractions()
            saturated = self._saturated_fractions()
            if k == 1 and self._loss_values:
                per_step = [self._loss_values]
            elif self._loss_rows and self._loss_buffer is not None:
                per_step = self._loss_buffer[: self._loss_rows].T.tolist()  # [K][steps]
            else:
                per_step = [[] for _ in range(k)]
            batch_max = [_nan_max(v) for v in per_step]
            batch_mean = [sum(v) / len(v) if v else math.nan for v in per_step]
        for pos, m in enumerate(trainer.active):
            row = logs.get(m, {})
            self.records.append(
                {
                    "epoch": trainer.epoch,
                    "member": m,
                    "grad_norm": grad[pos],
                    "weight_norm": weight_norm[pos],
                    "update_ratio": ratio[pos],
                    "dead_fraction": None if dead is None else [d[pos] for d in dead],
                    "saturated_fraction": None
                    if saturated is None
                    else [s[pos] for s in saturated],
                    "nonfinite_steps": self._nonfinite.get(m, 0),
                    "first_loss": self.first_loss.get(m),
                    "steps": self._steps,
                    "batch_loss_mean": batch_mean[pos],
                    "batch_loss_max": batch_max[pos],
                    "train_loss": row.get("train_loss"),
                    "val_loss": row.get("val_loss"),
                }
            )

    def _mean_gradient_norms(self, k: int, n_layers: int) -> list[list[float]]:
        """``[K][layers]`` means over the sampled steps: one stack, one host read."""
        if not self._norm_steps:
            return [[math.nan] * n_layers for _ in range(k)]
        # [samples * layers, K] (or [samples * layers] for one member), sample-major.
        values = torch.stack(self._norm_steps).reshape(-1, n_layers, k).mean(dim=0)
        return values.T.tolist()

    def _weight_norms_and_update_ratios(
        self, trainer: Trainer, k: int
    ) -> tuple[list[list[float]], list[list[float]]]:
        """``||W||`` and ``||W - W_start|| / ||W_start||`` per member and layer, one host read."""
        now = [w.detach() for w in trainer.optimizer.penalized]
        start = self._start_weights
        moved = torch._foreach_sub(now, start)
        every = [*now, *start, *moved]
        if k == 1:  # fused norms over all layers: one kernel
            norms = torch.stack(torch._foreach_norm(every)).reshape(3, -1, 1)
        else:
            norms = torch.stack([torch.linalg.vector_norm(t, dim=(1, 2)) for t in every])
            norms = norms.reshape(3, -1, k)
        now_norm, start_norm, moved_norm = norms.transpose(1, 2).tolist()  # [K][layers] each
        weight_norm = now_norm
        ratio = [
            [m / max(s, 1e-12) for m, s in zip(moved_k, start_k, strict=True)]
            for moved_k, start_k in zip(moved_norm, start_norm, strict=True)
        ]
        return weight_norm, ratio

    def _dead_fractions(self) -> list[list[float]] | None:
        if self.activation not in RELU_LIKE or any(a is None for a in self._alive):
            return None
        if not self._alive:  # a linear model: no hidden layer, no unit that could die
            return []
        dead_units = [
            (a < DEAD_ACTIVE_RATE * max(rows, 1)).sum(dim=1)
            for a, rows in zip(self._alive, self._unit_rows, strict=True)
            if a is not None
        ]
        counts = torch.stack(dead_units).tolist()  # [layers][K]
        widths = [a.shape[1] for a in self._alive if a is not None]
        return [[c / width for c in layer] for layer, width in zip(counts, widths, strict=True)]

    def _saturated_fractions(self) -> list[list[float]] | None:
        if self.activation not in SATURATION_THRESHOLD or any(s is None for s in self._saturated):
            return None
        return [
            (s / max(n, 1)).tolist()
            for s, n in zip(self._saturated, self._seen_rows, strict=True)
            if s is not None
        ]

    # ------------------------------------------------------------------------------ output
    def signals(self) -> dict[str, Any]:
        """The ``signals.json`` document (NaN values become ``null`` when written)."""
        return {
            "version": SIGNALS_VERSION,
            "layers": list(self.layers),
            "activation": self.activation,
            "records": list(self.records),
            "divergence": {str(m): d for m, d in self.divergence.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "records": list(self.records),
            "divergence": {str(m): d for m, d in self.divergence.items()},
            "first_loss": {str(m): v for m, v in self.first_loss.items()},
            "stopped": sorted(self.stopped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state.get("records", []))
        self.divergence = {int(k): dict(v) for k, v in state.get("divergence", {}).items()}
        self.first_loss = {int(k): float(v) for k, v in state.get("first_loss", {}).items()}
        self.stopped = {int(m) for m in state.get("stopped", [])}
