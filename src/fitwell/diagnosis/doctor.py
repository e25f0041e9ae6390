"""The doctor for any PyTorch model: standard hooks on a user's own ``nn.Module`` and optimizer.

    with fitwell.Doctor(model, optimizer) as doc:
        for epoch in range(epochs):
            ...  # the user's own loop: forward, loss.backward(), optimizer.step()
            doc.end_epoch(train_loss=train_loss, val_loss=val_loss)
    for f in doc.findings():
        print(f["severity"], f["code"], f["advice"])

It records the same signals as fitwell's own training loop (see :mod:`fitwell.diagnosis.probes`)
and applies the same rules (:mod:`fitwell.diagnosis.rules`). Layers are the modules that own a
weight with two or more dimensions (``Linear``, ``Conv*``), in registration order; activation
statistics come from activation *modules* (``nn.ReLU``, ``nn.Tanh``, ...): activations called as
functions (``F.relu``) are invisible to hooks and are not measured. Per-step signals are read
on a sample of steps (``STEP_SAMPLES``, ``SAMPLE_SPACING``): the hooks that read them are
registered just before a sampled step and removed after it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from fitwell.diagnosis.probes import (
    DEAD_ACTIVE_RATE,
    EXPLODING_LOSS_FACTOR,
    SATURATION_THRESHOLD,
)
from fitwell.diagnosis.rules import (
    OPTIMIZATION_FAULTS,
    RunContext,
    divergence_findings,
    init_scale_findings,
    lead_with_cause,
    lead_with_scaling,
    missing_zero_grad_findings,
    no_signal_findings,
    no_signal_score,
    overfitting_findings,
    plateau_underfitting_findings,
    probabilities_as_logits_findings,
    signal_findings,
    single_class_chance,
    unscaled_inputs_findings,
    unscaled_target_findings,
    unshuffled_batches_findings,
)

# Steps whose per-step signals (gradient norms, activation counts, the output check, the
# stale-gradient check, batch labels) are read: the rules compare layers and epochs, not single
# steps. A read registers the hooks for one step and runs ~10 small kernels, about a quarter of a
# step of a small network (MLP 64-256-256-10, batch 64, on CPU), so reads are at least
# SAMPLE_SPACING steps apart (under 1% of such a loop) and at most STEP_SAMPLES per epoch (as in
# fitwell's own loop), evenly spaced from each epoch's first step once an epoch's length is
# known. The first epoch, whose length is unknown, reads steps 0, 4, 16, 64, ... (powers of
# FIRST_EPOCH_BASE). The two cheap checks (is .grad stale? the batch's label mix: one small
# kernel or a count of the labels each) also run on steps 2, 8, 32, ... (powers of CHECK_BASE),
# enough for the zero_grad and label-order rules to decide within the first epoch.
STEP_SAMPLES = 5
SAMPLE_SPACING = 25
FIRST_EPOCH_BASE = 4
CHECK_BASE = 2
# Label batches up to this many rows (on CPU) are counted in Python, larger ones by bincount.
SMALL_BATCH = 1024
# Weights whose change over one epoch is 1000x their norm have blown up (healthy: < 1).
EXPLODING_WEIGHT_RATIO = 1e3
# Output rows within this of summing to 1 (float32 softmax sums are within ~1e-6 of it), and
# gradient rows whose sum is this small against their absolute sum, count as exact.
ROW_SUM_TOLERANCE = 1e-4
# A gradient entry this close (relative) to its neighbours' counts as equal: float32 rounding
# of -1/N or -w/sum(w) is ~1e-7 relative; 1/(N p) for distinct probabilities differs by far more.
EQUAL_GRADIENT_TOLERANCE = 1e-4
# |row label implied by a sigmoid gradient - nearest of 0 and 1| below this counts as exact
# (float32 sigmoid and the loss's 1/N scale are exact to ~1e-6).
SIGMOID_GRADIENT_TOLERANCE = 1e-3
# Layers whose output is renormalized: the weight scale then does not carry to the next layer.
_NORMALIZING = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_RELU_LIKE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.Mish,
)
_SATURATING = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


class Doctor:
    """Watch a user's model and optimizer; report findings with evidence and advice.

    Parameters
    ----------
    model : nn.Module
        Any module (MLP, CNN, ...). Nothing about it is changed; hooks are removed on exit.
    optimizer : torch.optim.Optimizer
        The optimizer that steps ``model``'s parameters; its step is where gradients are read.
    task : {"classification", "regression"}, default "classification"
        Only used with ``baseline_val_score`` (for the ``no_signal`` rule).
    baseline_val_score : float, optional
        Validation score (accuracy or R^2) of a trivial predictor, e.g. the majority class.
        With it, and ``val_score`` given to :meth:`end_epoch`, ``no_signal`` can be reported.
    n_val : int, default 0
        Validation rows, for the standard error in the ``no_signal`` rule.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        task: str = "classification",
        baseline_val_score: float | None = None,
        n_val: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.baseline_val_score = baseline_val_score
        self.n_val = n_val
        self.layers: list[str] = []
        self._weights: list[nn.Parameter] = []
        self._first_layer: nn.Module | None = None
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
                self.layers.append(name or type(module).__name__)
                self._weights.append(weight)
                if self._first_layer is None:
                    self._first_layer = module
        self._acts: list[tuple[str, nn.Module, str]] = []
        for name, module in model.named_modules():
            if isinstance(module, _RELU_LIKE):
                self._acts.append((name, module, "relu"))
            for cls, kind in _SATURATING.items():
                if isinstance(module, cls):
                    self._acts.append((name, module, kind))
        self.activation = self._acts[0][2] if self._acts else "relu"
        self.records: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.divergence: dict[int, dict[str, Any]] = {}
        self._handles: list[Any] = []
        # Hooks that read one sampled step, registered just before it and removed after it, so
        # the steps between samples run exactly as without the doctor (no hook dispatch at all).
        self._sample_handles: list[Any] = []
        self._armed_full = False
        self._act_hooks = [self._activation_hook(i, k) for i, (_, _, k) in enumerate(self._acts)]
        # Steps between reads; None until an epoch's length is known.
        self._stride: int | None = None
        self._total_steps = 0
        self._inputs_measured = False
        self._loss_buffer: torch.Tensor | None = None
        # The class mix over every sampled batch so far (it does not change between epochs):
        # what the chance of a one-class batch under shuffling is computed from.
        self._class_counts: dict[int, int] = {}
        self._label_rows = 0
        self._labelled_batches = 0
        self._first_loss: float | None = None
        # Initial weight gain per layer, std(W) * sqrt(fan_in), read before any step: what the
        # initialization chose (PyTorch's default gives 0.58, Kaiming 1.41, N(0, 1) sqrt(fan_in)).
        self.normalized = any(isinstance(m, _NORMALIZING) for m in model.modules())
        self._device = self._weights[0].device if self._weights else torch.device("cpu")
        # Fused norms (``torch._foreach_norm``) need every tensor on one device.
        self._same_device = len({w.device for w in self._weights}) <= 1
        with torch.no_grad():
            self.init_gain = [
                float(w.detach().float().std() * math.sqrt(w[0].numel())) if w.numel() > 1 else 0.0
                for w in self._weights
            ]
        self._after_step = False
        self._reset_epoch()

    # --------------------------------------------------------------------------- attach
    def __enter__(self) -> Doctor:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> None:
        """Register the hooks (``with Doctor(...)`` does this for you)."""
        if self._handles:
            return
        # The one hook that runs every step: it counts steps and arms the sampled ones.
        self._handles.append(self.optimizer.register_step_pre_hook(self._before_step))
        if self._sampled(self._steps):
            self._arm(full=True)

    def detach(self) -> None:
        """Remove every hook; the model and optimizer are as they were."""
        self._disarm()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _sampled(self, k: int, base: int = FIRST_EPOCH_BASE) -> bool:
        """Whether the epoch's ``k``-th step (from 0) is read: every ``stride``-th step once an
        epoch's length is known; in the first epoch step 0 and the powers of ``base``."""
        if self._stride is not None:
            return k % self._stride == 0
        if k == 0:
            return True
        if k < base:
            return False
        while k % base == 0:
            k //= base
        return k == 1

    def _checked(self, k: int) -> bool:
        """Whether the cheap checks (stale gradient, label mix) run on the epoch's ``k``-th step:
        on every sampled step, and on the powers of ``CHECK_BASE`` in the first epoch."""
        return self._sampled(k, CHECK_BASE)

    def _arm(self, *, full: bool) -> None:
        """Register the hooks for the next step: every per-step hook (``full``) or only the
        stale-gradient check. A no-op if they are registered already."""
        if self._sample_handles and self._armed_full == full:
            return
        self._disarm()
        self._armed_full = full
        handles = self._sample_handles
        if self._weights and self._weights[-1].requires_grad:
            handles.append(self._weights[-1].register_hook(self._incoming_grad_hook))
        # Only a backward that follows an optimizer step can find a stale gradient.
        self._after_step = self._total_steps > 0
        if not full:
            return
        handles.append(self.model.register_forward_hook(self._output_hook))
        if self._first_layer is not None and not self._inputs_measured:
            handles.append(self._first_layer.register_forward_pre_hook(self._input_hook))
        for hook, (_, module, _) in zip(self._act_hooks, self._acts, strict=True):
            handles.append(module.register_forward_hook(hook))

    def _disarm(self) -> None:
        for handle in self._sample_handles:
            handle.remove()
        self._sample_handles = []
        self._armed_full = False

    # --------------------------------------------------------------------------- hooks
    def _reset_epoch(self, weight_norm: list[float] | None = None) -> None:
        # One tensor of layer gradient norms per sampled step, stacked at epoch end.
        self._grad_norms: list[torch.Tensor] = []
        self._steps = 0
        self._step_calls = 0
        self._keep_start(weight_norm)
        # Per activation module: one tensor per sampled forward (units' positive counts for
        # ReLU-like, the saturated count for tanh/sigmoid), summed at epoch end, and the rows
        # (ReLU-like) or entries (tanh/sigmoid) they were counted over.
        self._act_counts: list[list[torch.Tensor]] = [[] for _ in self._acts]
        self._act_rows = [0] * len(self._acts)
        self._out_batches = 0
        self._out_prob = 0
        self._out_zero_grad = 0
        self._out_classes = 0
        self._out_nll_grad = 0
        self._col_batches = 0
        self._col_unit = 0
        self._col_sigmoid_grad = 0
        self._stale: list[torch.Tensor] = []  # per check: did .grad hold a non-zero entry?
        self._stale_checked = 0
        self._in_norms: list[torch.Tensor] = []  # per sampled forward: column L2 norms
        self._in_rows = 0
        self._loss_values: list[float] = []
        self._loss_rows = 0  # losses waiting in ``_loss_buffer`` (on an accelerator)
        self._label_batches = 0
        self._single_class = 0
        self._target_sum = 0.0
        self._target_square_sum = 0.0
        self._target_count = 0

    @torch.no_grad()
    def _keep_start(self, norms: list[float] | None = None) -> None:
        """The weights as the epoch starts (for the update ratio), copied into the same buffers
        each epoch, and their norms (``norms`` when the caller just measured them)."""
        weights = [w.detach() for w in self._weights]
        start = getattr(self, "_start", None)
        if (
            self._same_device
            and start
            and all(
                s.shape == w.shape and s.dtype == w.dtype
                for s, w in zip(start, weights, strict=True)
            )
        ):
            torch._foreach_copy_(start, weights)
        else:
            self._start = [w.clone() for w in weights]
        self._start_norm = norms if norms is not None else self._norms(self._start)

    def _norms(self, tensors: list[torch.Tensor]) -> list[float]:
        """L2 norms as floats: one fused kernel and one host read when on one device."""
        if not tensors:
            return []
        if self._same_device:
            return torch.stack(torch._foreach_norm(tensors)).tolist()
        return [float(t.norm()) for t in tensors]

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Every step: count it; read it if it was sampled; arm the hooks if the next one is."""
        k = self._steps
        self._steps += 1
        self._total_steps += 1
        if self._armed_full:
            self._read_gradients()
        if self._sampled(k + 1):
            self._arm(full=True)
            self._after_step = True
        elif self._checked(k + 1):
            self._arm(full=False)
            self._after_step = True
        elif self._sample_handles:
            self._disarm()

    @torch.no_grad()
    def _read_gradients(self) -> None:
        """The layers' gradient norms of this step, kept on the device (no host sync)."""
        grads = [w.grad for w in self._weights]
        present = [g for g in grads if g is not None]
        if not grads:
            return
        if self._same_device and len(present) == len(grads):
            self._grad_norms.append(torch.stack(torch._foreach_norm(present)))  # one kernel
            return
        norms = [
            g.norm().to(self._device) if g is not None else torch.zeros((), device=self._device)
            for g in grads
        ]
        self._grad_norms.append(torch.stack(norms))

    @torch.no_grad()
    def _incoming_grad_hook(self, grad: torch.Tensor) -> None:
        """Before the first backward after a step adds into the output layer's ``.grad``: does
        it still hold the previous step's gradient? ``zero_grad()`` leaves it None or zero;
        accumulating micro-batches between steps is not looked at (only the first backward
        after each step is). Counted on the device: no host sync."""
        if not self._after_step:
            return
        self._after_step = False
        old = self._weights[-1].grad
        self._stale_checked += 1
        if old is not None:
            self._stale.append(old.ne(0).any())

    def _input_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        """Per-column sum of squares of what the first weighted layer receives on the sampled
        training forwards of the first epoch (the scale the initialization met): columns are
        the last dimension of a ``Linear``'s input and dimension 1 (channels) of a
        convolution's."""
        if not torch.is_grad_enabled():
            return  # an evaluation pass, not a training step
        with torch.no_grad():
            self._measure_inputs(module, inputs)

    def _measure_inputs(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            return
        if isinstance(module, nn.Linear):
            cols = x.reshape(-1, x.shape[-1])
        else:
            cols = x.transpose(0, 1).reshape(x.shape[1], -1).T
        # One kernel, accumulated in float64 (half-precision pixels would overflow a square).
        norms = torch.linalg.vector_norm(cols, dim=0, dtype=torch.float64)
        if self._in_norms and self._in_norms[0].shape != norms.shape:
            self._in_norms, self._in_rows = [], 0
        self._in_norms.append(norms)
        self._in_rows += int(cols.shape[0])

    def _output_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """On training forwards (outputs that carry gradients) of a classifier's output: for
        ``[rows, K]``, are the rows probabilities, and does the loss's gradient sum to zero per
        row (softmax inside the loss) or sit on one entry per row at an equal value (NLLLoss on
        the probabilities)? For one column, is it confined to [0, 1], and is the loss's gradient
        exactly the one of a loss that applies a sigmoid to it (BCEWithLogitsLoss)?"""
        if not (
            isinstance(output, torch.Tensor)
            and output.requires_grad
            and output.dim() in (1, 2)
            and output.shape[0] > 0
            and output.is_floating_point()
        ):
            return
        if output.dim() == 1 or output.shape[1] == 1:
            self._column_hook(output)
            return
        with torch.no_grad():
            rows = output.detach()
            # Logits almost always hold a negative entry: one reduction settles them.
            prob = float(rows.amin()) >= -ROW_SUM_TOLERANCE and bool(
                ((rows.sum(dim=1) - 1.0).abs() <= ROW_SUM_TOLERANCE).all()
            )
        self._out_batches += 1
        self._out_classes = int(output.shape[1])
        if not prob:
            return
        self._out_prob += 1

        def on_grad(grad: torch.Tensor) -> None:
            with torch.no_grad():
                size = grad.abs().sum(dim=1)
                sums = grad.sum(dim=1).abs()
                moving = size > 0
                if bool(moving.any()) and bool(
                    (sums[moving] <= ROW_SUM_TOLERANCE * size[moving]).all()
                ):
                    self._out_zero_grad += 1
                elif nll_on_probabilities(rows, grad):
                    self._out_nll_grad += 1

        output.register_hook(on_grad)

    def _column_hook(self, output: torch.Tensor) -> None:
        """A single output column (binary classifier): in [0, 1], and a sigmoid-loss gradient?"""
        with torch.no_grad():
            values = output.detach()
            # Varying rows only: a network whose units all died outputs one constant.
            unit = bool(((values >= 0) & (values <= 1)).all()) and bool(
                values.max() - values.min() > SIGMOID_GRADIENT_TOLERANCE
            )
        self._col_batches += 1
        if not unit:
            return
        self._col_unit += 1

        def on_grad(grad: torch.Tensor) -> None:
            if sigmoid_applied_by_loss(values, grad):
                self._col_sigmoid_grad += 1

        output.register_hook(on_grad)

    def _activation_hook(self, index: int, kind: str) -> Any:
        threshold = SATURATION_THRESHOLD.get(kind)

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            pre = inputs[0] if inputs else None
            # Training forwards only: an evaluation pass is not what the gradients flow through.
            if not isinstance(pre, torch.Tensor) or pre.dim() < 1 or not torch.is_grad_enabled():
                return
            with torch.no_grad():
                count(pre)

        def count(pre: torch.Tensor) -> None:
            # Two kernels per module and no host sync: counts are summed at epoch end.
            if threshold is None:
                # A unit is a feature (dense) or a channel (conv): dimension 1; a dense
                # [rows, units] input needs no transposed copy.
                if pre.dim() == 2:
                    active = (pre > 0).sum(dim=0)
                elif pre.dim() > 1:
                    active = (pre.transpose(0, 1).reshape(pre.shape[1], -1) > 0).sum(dim=1)
                else:
                    active = (pre > 0).sum(dim=0, keepdim=True)
                counts = self._act_counts[index]
                if counts and counts[0].shape != active.shape:
                    counts.clear()
                    self._act_rows[index] = 0
                counts.append(active)
                self._act_rows[index] += pre.numel() // max(active.numel(), 1)
            else:
                self._act_counts[index].append((pre.abs() >= threshold).sum())
                self._act_rows[index] += pre.numel()

        return hook

    # --------------------------------------------------------------------------- per step
    def step(self, loss: float | torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Optional, once per training step: the batch's loss and (for a classifier) its labels.

        Step losses let the ``lr_too_high`` rule see spikes inside an epoch; labels let the doctor
        see batches that come in label order (``unshuffled_batches``). Every loss is kept (a
        float on CPU; on an accelerator a copy into a device buffer read at epoch end, so no
        step waits for the device); the labels are read on the sampled steps only.
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"Doctor.step takes the batch's mean loss (one number); got a tensor of "
                    f"shape {tuple(loss.shape)}. Pass loss.mean() or the reduced loss."
                )
            if loss.device.type == "cpu":
                self._loss_values.append(loss.item())
            else:
                self._buffer_loss(loss)
        else:
            self._loss_values.append(float(loss))
        k = self._step_calls
        self._step_calls += 1
        if y is None or not isinstance(y, torch.Tensor) or y.numel() == 0 or not self._checked(k):
            return
        if y.is_floating_point():
            if self.task == "regression":
                values = y.detach().double()
                self._target_sum += float(values.sum())
                self._target_square_sum += float(values.pow(2).sum())
                self._target_count += int(values.numel())
            return  # regression targets or soft labels: no classes to count
        if y.dim() != 1:
            return
        if y.device.type == "cpu" and y.numel() <= SMALL_BATCH:
            present = list(Counter(v for v in y.tolist() if v >= 0).items())  # fewer kernels
        else:
            counts = torch.bincount(y.detach().to("cpu", torch.int64).clamp_min(0)).tolist()
            present = [(c, n) for c, n in enumerate(counts) if n]
        self._label_batches += 1
        self._labelled_batches += 1
        self._label_rows += int(y.numel())
        self._single_class += int(len(present) == 1)
        for c, n in present:
            self._class_counts[c] = self._class_counts.get(c, 0) + n

    @torch.no_grad()
    def _buffer_loss(self, loss: torch.Tensor) -> None:
        buf = self._loss_buffer
        if buf is None or buf.device != loss.device or self._loss_rows == buf.numel():
            self._flush_losses()
            size = 256 if buf is None else min(2 * buf.numel(), 65_536)
            buf = self._loss_buffer = torch.empty(size, device=loss.device)
        buf[self._loss_rows] = loss.detach().reshape(())
        self._loss_rows += 1

    def _flush_losses(self) -> None:
        """Step losses waiting on the device to the host: one read per buffer, not per step."""
        if self._loss_buffer is not None and self._loss_rows:
            self._loss_values += self._loss_buffer[: self._loss_rows].tolist()
        self._loss_rows = 0

    # --------------------------------------------------------------------------- per epoch
    def end_epoch(
        self,
        *,
        train_loss: float,
        val_loss: float | None = None,
        train_score: float | None = None,
        val_score: float | None = None,
    ) -> None:
        """Close one epoch: give its training (and validation) loss; scores are optional.

        Use the mean loss over the epoch's batches, or better an eval-mode pass over the
        training rows, measured the same way as the validation loss.
        """
        epoch = len(self.history) + 1
        self._flush_losses()
        # Few tensor ops and one host read each: the per-epoch arithmetic is done on lists.
        with torch.no_grad():
            norms = torch.stack(self._grad_norms).tolist() if self._grad_norms else []
            weights = [w.detach() for w in self._weights]
            if self._same_device and weights:
                # In place: the start buffers are overwritten with the new weights just after.
                torch._foreach_sub_(self._start, weights)
                moved = self._start
            else:
                moved = [w - s for w, s in zip(weights, self._start, strict=True)]
            sizes = self._norms(weights + moved)
        # Mean over the sampled steps per layer (NaN if any is), and steps with a non-finite one.
        grad = [sum(layer) / len(norms) for layer in zip(*norms, strict=True)] or [0.0] * len(
            weights
        )
        nonfinite_grads = sum(not all(math.isfinite(v) for v in step) for step in norms)
        weight_norm = sizes[: len(weights)]
        update = [
            m / max(s, 1e-12) for m, s in zip(sizes[len(weights) :], self._start_norm, strict=True)
        ]
        # Sampled steps with a non-finite gradient, or any step whose loss (given to
        # :meth:`step`) was non-finite.
        nonfinite = max(nonfinite_grads, sum(not math.isfinite(v) for v in self._loss_values))
        if self._first_loss is None and math.isfinite(train_loss):
            self._first_loss = float(train_loss)
        exploded = (
            self._first_loss is not None
            and math.isfinite(train_loss)
            and train_loss > EXPLODING_LOSS_FACTOR * max(self._first_loss, 1e-12)
        )
        # The doctor sees no per-step loss in a user's loop: weights that grew by three orders
        # of magnitude within one epoch are the step-level blow-up it can see.
        blown = max(update, default=0.0) > EXPLODING_WEIGHT_RATIO or not all(
            math.isfinite(u) for u in update
        )
        if (nonfinite or not math.isfinite(train_loss) or exploded or blown) and (
            0 not in self.divergence
        ):
            self.divergence[0] = {
                "epoch": epoch,
                "loss": float(train_loss),
                "nonfinite_steps": nonfinite,
                "first_loss": self._first_loss,
                "max_update_ratio": max(update, default=0.0),
            }
        dead, sat = self._activation_summary()
        self.records.append(
            {
                "epoch": epoch,
                "member": 0,
                "grad_norm": grad,
                "weight_norm": weight_norm,
                "update_ratio": update,
                "dead_fraction": dead,
                "saturated_fraction": sat,
                "nonfinite_steps": nonfinite,
                "steps": self._steps,
                "sampled_steps": len(self._grad_norms),
                "train_loss": float(train_loss),
                "val_loss": None if val_loss is None else float(val_loss),
                "first_loss": self._first_loss,
                "output_batches": self._out_batches,
                "output_probability_batches": self._out_prob,
                "output_zero_sum_grad_batches": self._out_zero_grad,
                "output_classes": self._out_classes,
                "output_nll_grad_batches": self._out_nll_grad,
                "column_batches": self._col_batches,
                "column_unit_batches": self._col_unit,
                "column_sigmoid_grad_batches": self._col_sigmoid_grad,
                "stale_grad_checks": self._stale_checked,
                "stale_grad_steps": sum(int(flag) for flag in self._stale),
                "input_rms": None
                if not self._in_norms or self._in_rows == 0
                else (torch.stack(self._in_norms).square().sum(dim=0) / self._in_rows)
                .sqrt()
                .tolist(),
                **self._step_summary(),
            }
        )
        row: dict[str, Any] = {"epoch": epoch, "member": 0, "train_loss": float(train_loss)}
        if val_loss is not None:
            row["val_loss"] = float(val_loss)
        score = "accuracy" if self.task == "classification" else "r2"
        if train_score is not None:
            row[f"train_{score}"] = float(train_score)
        if val_score is not None:
            row[f"val_{score}"] = float(val_score)
        self.history.append(row)
        measured = self.records[-1]["input_rms"] is not None
        steps = max(self._steps, self._step_calls)
        if steps:
            self._stride = max(1, steps // STEP_SAMPLES, SAMPLE_SPACING)
        self._reset_epoch(weight_norm)
        if self._handles:  # the next epoch's first step is read; the inputs only until measured
            if measured and not self._inputs_measured:
                self._disarm()
            self._inputs_measured = self._inputs_measured or measured
            self._arm(full=True)

    @torch.no_grad()
    def _activation_summary(self) -> tuple[list[float] | None, list[float] | None]:
        """Dead-unit fraction per ReLU-like module (units positive on fewer than
        ``DEAD_ACTIVE_RATE`` of the sampled training rows; None unless every one was seen) and
        saturated share per tanh/sigmoid module, from the sampled forwards' counts."""
        dead: list[float] = []
        sat: list[float] = []
        seen_all = True
        for counts, rows, (_, _, kind) in zip(
            self._act_counts, self._act_rows, self._acts, strict=True
        ):
            if not counts or rows == 0:
                seen_all = seen_all and kind != "relu"
                continue
            if kind == "relu":
                total = torch.stack(counts).sum(dim=0)
                below = int((total < DEAD_ACTIVE_RATE * rows).sum())
                dead.append(below / max(total.numel(), 1))
            else:
                sat.append(torch.stack(counts).sum().item() / rows)
        return (dead if dead and seen_all else None), (sat or None)

    def _step_summary(self) -> dict[str, Any]:
        """What :meth:`step` saw this epoch, in the probe records' field names."""
        out: dict[str, Any] = {}
        finite = [v for v in self._loss_values if math.isfinite(v)]
        if finite:
            out["batch_loss_mean"] = sum(finite) / len(finite)
            out["batch_loss_max"] = max(finite)
        if self._labelled_batches:
            out["label_batches"] = self._label_batches
            out["single_class_batches"] = self._single_class
            out["single_class_chance"] = single_class_chance(
                list(self._class_counts.values()), self._label_rows / self._labelled_batches
            )
        if self._target_count:
            mean = self._target_sum / self._target_count
            var = max(self._target_square_sum / self._target_count - mean * mean, 0.0)
            out["target_mean"], out["target_std"] = mean, math.sqrt(var)
        return out

    # --------------------------------------------------------------------------- findings
    def findings(self) -> list[dict[str, Any]]:
        """Findings so far, most severe first, in fitwell's shared format."""
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        ctx = RunContext(
            task=self.task,
            lr=float(lr) if lr is not None else None,
            divergence=self.divergence,
            all_members=[0],
            n_val=self.n_val,
            baseline_val_score=self.baseline_val_score,
        )
        dead_names = [n or type(m).__name__ for n, m, k in self._acts if k == "relu"]
        sat_names = [n or type(m).__name__ for n, m, k in self._acts if k != "relu"]
        out = divergence_findings(ctx)
        diverged_at = self.divergence.get(0, {}).get("epoch")
        init = [] if self.normalized else init_scale_findings(self.init_gain, self.layers)
        for f in signal_findings(
            self.records,
            self.layers,
            self.activation,
            ctx.lr,
            dead_layers=dead_names,
            saturated_layers=sat_names,
        ):
            if init and f["code"] == "exploding_gradients":
                continue  # the initialization finding names the cause
            if diverged_at is None or (f["epoch"] is not None and f["epoch"] < diverged_at):
                out.append(f)
        out += init  # read before the first step: it holds even when training diverged
        out += missing_zero_grad_findings(self.records)
        out += probabilities_as_logits_findings(self.records)
        out += unscaled_inputs_findings(self.records)
        out += unshuffled_batches_findings(self.records)
        out += unscaled_target_findings(self.records)
        out = lead_with_scaling(out)
        out = lead_with_cause(out, "exploding_gradients", "re-initialize the weights first")
        out = lead_with_cause(out, "missing_zero_grad", "call optimizer.zero_grad() first")
        out += overfitting_findings(self.history, ctx, noise_aware=True)
        # A validation score that never beat the trivial baseline is reported whatever else fired
        # (labels that do not match their inputs also overfit), unless the optimizer itself failed.
        failed = {f["code"] for f in out if f["severity"] != "info"} & set(OPTIMIZATION_FAULTS)
        if self.baseline_val_score is not None and not failed:
            score = "accuracy" if self.task == "classification" else "r2"
            scores = [
                float(r[f"val_{score}"])
                for r in self.history
                if r.get(f"val_{score}") is not None and math.isfinite(float(r[f"val_{score}"]))
            ]
            out += no_signal_findings(no_signal_score(scores), ctx)
        if not failed and not any(f["code"] == "no_signal" for f in out):
            score = "accuracy" if self.task == "classification" else "r2"
            out += plateau_underfitting_findings(self.history, ctx, score)
        rank = {"error": 0, "warning": 1, "info": 2}
        return sorted(out, key=lambda f: rank[f["severity"]])


def nll_on_probabilities(rows: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether ``grad`` (the loss's gradient w.r.t. probability ``rows``) is NLLLoss's on the
    rows themselves: one negative entry per row, equal within each class (``-1/N``, or
    ``-w_y / sum(w)`` with class weights). A softmax whose *log* goes to NLLLoss gives
    ``-1/(N p_y)`` there instead, equal only where the probabilities are; rows whose true-class
    probabilities are all equal cannot tell the two apart and count as no."""
    with torch.no_grad():
        nonzero = grad != 0
        if not bool((nonzero.sum(dim=1) == 1).all()):
            return False
        cls = nonzero.float().argmax(dim=1)
        g = grad.gather(1, cls[:, None])[:, 0]
        p = rows.gather(1, cls[:, None])[:, 0]
        if not bool((g < 0).all()):
            return False
        k = rows.shape[1]

        def spread(v: torch.Tensor) -> torch.Tensor:
            high = torch.full((k,), -math.inf, device=v.device, dtype=v.dtype)
            low = torch.full((k,), math.inf, device=v.device, dtype=v.dtype)
            high = high.scatter_reduce(0, cls, v, "amax")
            low = low.scatter_reduce(0, cls, v, "amin")
            seen = torch.isfinite(high)
            return (high - low)[seen] / high.abs()[seen].clamp_min(1e-30)

        same_grad = bool((spread(g.abs()) <= EQUAL_GRADIENT_TOLERANCE).all())
        varied_prob = bool((spread(p) > 1e3 * EQUAL_GRADIENT_TOLERANCE).any())
        return same_grad and varied_prob


def sigmoid_applied_by_loss(values: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether ``grad`` is what a loss that applies a sigmoid to ``values`` gives for 0/1 labels.

    BCEWithLogitsLoss's gradient is ``(sigmoid(z) - y) / N`` (``N`` rows, mean reduction; 1 for
    sum), so ``sigmoid(z) - N * grad`` recovers each row's label. A loss that takes ``values``
    as probabilities (BCELoss: ``(p - y) / (N p (1 - p))``, MSE: ``2 (p - y) / N``) recovers no
    0/1 label across a batch.
    """
    with torch.no_grad():
        z = values.double().reshape(-1)
        g = grad.double().reshape(-1)
        if g.numel() != z.numel() or not bool(g.ne(0).any()):
            return False
        for scale in (float(z.numel()), 1.0):
            label = torch.sigmoid(z) - scale * g
            near = torch.where(label > 0.5, 1.0, 0.0)
            if bool(((label - near).abs() <= SIGMOID_GRADIENT_TOLERANCE).all()):
                return True
        return False
