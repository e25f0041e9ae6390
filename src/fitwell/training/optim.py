"""Optimizer steps for a population: PyTorch's own optimizers, with per-member learning rates and
the L1 proximal step layered on top.

PyTorch optimizers take one learning rate per parameter group, but population members share
stacked tensors. Every update of Adam, AdamW and SGD(momentum) is linear in the learning rate, so
when members' rates differ we step with ``lr=1`` and scale each member's update by its own rate
(``p = old + lr_k * (p_after - old)``). When all rates are equal the optimizer steps with that rate
directly, and the K = 1 path is exactly PyTorch's fused step.

Two RealMLP ingredients sit here too: a fixed learning-rate factor per parameter tensor (the NTK
parametrization trains biases at 0.1 x lr) and decoupled weight decay per member
(``W <- W * (1 - lr_k * wd_k)`` after each step, on the weight matrices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ADAM_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01
# Adaptive weights are ``1 / norm`` of a pilot fit's column norms (mean 1); this floor keeps a
# column the pilot switched off (norm 0) at a large but finite weight.
ADAPTIVE_NORM_FLOOR = 1e-3


def adaptive_group_weights(norms: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Adaptive group-lasso weights ``w_g = (mean_g' n_g' / n_g) ** gamma`` from pilot norms.

    ``norms`` is ``[G]`` or ``[K, G]``: the first-layer column norms ``||W1_g||`` of one or
    more pilot fits. Each fit's norms are divided by their mean (so the weights do not
    depend on the network's scale), averaged over fits, floored at ``ADAPTIVE_NORM_FLOOR``, then
    inverted. Why: plain group lasso shrinks every column by the same threshold, so it cannot
    drop noise columns without also biasing signal ones (Zou 2006; Wang & Leng 2008); columns
    the pilot barely reads get a large penalty, columns it relies on a small one. A column the
    pilot switched off gets ``1 / ADAPTIVE_NORM_FLOOR``; when every norm is zero all weigh 1.
    """
    n = norms.detach().to(torch.float64)
    if n.dim() == 1:
        n = n.unsqueeze(0)
    mean = n.mean(dim=1, keepdim=True)
    rel = torch.where(mean > 0, n / mean.clamp_min(1e-30), torch.ones_like(n)).mean(dim=0)
    return rel.clamp_min(ADAPTIVE_NORM_FLOOR).pow(-gamma).to(torch.float32)


def input_count_scales(
    row_groups: Sequence[int], reference_groups: Sequence[int]
) -> list[float] | None:
    """Per group, ``sqrt(ref_g / rows_g)``: what turns the group step's ``sqrt(rows_g)`` into
    ``sqrt(ref_g)``; None when every group has as many rows in both.

    ``row_groups[r]`` is the group of first-layer row ``r``; ``reference_groups`` the same for
    the rows the columns have without the numeric embedding (a numeric column: one; a one-hot
    column: one per level). Why: a numeric embedding gives one input several first-layer rows
    (its raw row plus the embedding's), which would multiply its penalty by ``sqrt(1 + dim)`` at
    the same ``l1_inputs``; counted as the table's inputs, a λ means the same under either front.
    """
    n_groups = max([*row_groups, *reference_groups], default=-1) + 1
    rows = [0] * n_groups
    ref = [0] * n_groups
    for g in row_groups:
        rows[g] += 1
    for g in reference_groups:
        ref[g] += 1
    if rows == ref:
        return None
    return [math.sqrt(i / r) if r > 0 and i > 0 else 1.0 for i, r in zip(ref, rows, strict=True)]


def _member_view(values: torch.Tensor, param: torch.Tensor, n_members: int) -> torch.Tensor:
    """Broadcast one value per member onto ``param``'s layout (stacked or flat batch-norm)."""
    if param.dim() >= 2 and param.shape[0] == n_members:
        return values.view(n_members, *([1] * (param.dim() - 1)))
    width = param.shape[0] // n_members
    return values.repeat_interleave(width)


class PopulationOptimizer:
    """One optimizer over stacked parameters, with per-member ``lr``, ``l1``, ``l1_inputs``, ``l2``.

    ``penalized`` are the weight matrices the L1 proximal step and the L2 gradient act on. Which
    members use which penalty is read once here (and again when members are removed), so a step
    never waits on the device to decide what to do. ``input_groups[i]`` is the group (original
    column) of encoded input ``i`` for the ``l1_inputs`` group step (default: one group each);
    ``group_weights[g]`` multiplies group ``g``'s penalty (adaptive group lasso; default 1).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        penalized: Sequence[torch.Tensor],
        *,
        kind: str,
        lrs: torch.Tensor,
        l1s: torch.Tensor,
        l2s: torch.Tensor | None = None,
        momentum: float = 0.9,
        l1_inputs: torch.Tensor | None = None,
        input_groups: Sequence[int] | None = None,
        adam_beta2: float = 0.999,
        group_weights: Sequence[float] | torch.Tensor | None = None,
        lr_factors: Sequence[float] | None = None,
        weight_decays: torch.Tensor | None = None,
    ) -> None:
        self.kind = kind
        self.momentum = momentum
        self.adam_beta2 = adam_beta2
        self.lrs = lrs
        self.l1s = l1s
        self.l2s = torch.zeros_like(lrs) if l2s is None else l2s
        self.l1_inputs = torch.zeros_like(lrs) if l1_inputs is None else l1_inputs
        self.input_groups = None if input_groups is None else list(input_groups)
        self.group_weights = (
            None
            if group_weights is None
            else torch.as_tensor(group_weights, dtype=torch.float32, device=lrs.device)
        )
        self.params = list(params)
        self.penalized = list(penalized)
        # One fixed factor per tensor of ``params`` (same order), multiplying every member's rate.
        self.lr_factors = [1.0] * len(self.params) if lr_factors is None else list(lr_factors)
        if len(self.lr_factors) != len(self.params):
            raise ValueError(f"need {len(self.params)} lr factors, got {len(self.lr_factors)}")
        self.wds = torch.zeros_like(lrs) if weight_decays is None else weight_decays
        self._refresh()
        self.optimizer = self._make(self.params, self.penalized)

    def _refresh(self) -> None:
        """Cache host-side flags and per-parameter views of the member settings (one sync)."""
        lrs = self.lrs.tolist()
        self._uniform_lr = all(lr == lrs[0] for lr in lrs)
        self._any_l1 = any(v > 0 for v in self.l1s.tolist())
        self._any_l2 = any(v > 0 for v in self.l2s.tolist())
        self._any_group = any(v > 0 for v in self.l1_inputs.tolist())
        k = self.n_members
        self._any_wd = any(v > 0 for v in self.wds.tolist())
        self._lr_views = [
            _member_view(self.lrs, p, k) * f if f != 1.0 else _member_view(self.lrs, p, k)
            for p, f in zip(self.params, self.lr_factors, strict=True)
        ]
        self._decay_views = [1.0 - _member_view(self.lrs * self.wds, w, k) for w in self.penalized]
        self._l1_views = [_member_view(self.lrs * self.l1s, w, k) for w in self.penalized]
        self._l2_views = [_member_view(2.0 * self.l2s, w, k) for w in self.penalized]
        # Where the pre-step values are kept when members' rates differ (reused every step).
        self._before = [] if self._uniform_lr else [torch.empty_like(p) for p in self.params]

    @property
    def n_members(self) -> int:
        return int(self.lrs.numel())

    @property
    def uniform_lr(self) -> bool:
        return self._uniform_lr

    def _make(
        self, params: list[torch.Tensor], penalized: list[torch.Tensor]
    ) -> torch.optim.Optimizer:
        lr = float(self.lrs[0]) if self.uniform_lr else 1.0
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        groups = self._groups(params, penalized, lr)
        if self.kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.momentum, fused=fused)
        if self.kind == "adamw":
            return torch.optim.AdamW(
                groups, lr=lr, betas=(0.9, self.adam_beta2), eps=ADAM_EPS, fused=fused
            )
        return torch.optim.Adam(
            groups, lr=lr, betas=(0.9, self.adam_beta2), eps=ADAM_EPS, fused=fused
        )

    def _groups(self, params: list[torch.Tensor], penalized: list[torch.Tensor], lr: float) -> list:
        """Parameter groups: AdamW's decayed weights apart from the rest, and one group per
        lr factor (its ``lr`` times the factor when members share a rate; with differing
        rates the factor is in the per-member views instead). Without factors and AdamW: one."""
        ids = {id(p) for p in penalized}
        keyed: dict[tuple[bool, float], list[torch.Tensor]] = {}
        for p, f in zip(params, self.lr_factors, strict=True):
            keyed.setdefault((self.kind == "adamw" and id(p) in ids, f), []).append(p)
        if self.kind == "adamw":  # the decayed group first, as before, even when empty
            keyed = {(True, 1.0): keyed.pop((True, 1.0), [])} | keyed
        uniform = self.uniform_lr
        return [
            {
                "params": group,
                "weight_decay": ADAMW_WEIGHT_DECAY if decayed else 0.0,
                "lr": lr * factor if uniform else lr,
                "lr_factor": factor,
            }
            for (decayed, factor), group in keyed.items()
        ]

    def set_lrs(self, lrs: torch.Tensor) -> None:
        """Change members' learning rates in place (e.g. a guard halving one member's rate)."""
        self.lrs = lrs
        self._refresh()
        lr = float(lrs[0]) if self.uniform_lr else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0) if self.uniform_lr else lr

    def set_weight_decays(self, wds: torch.Tensor) -> None:
        """Change members' decoupled weight decay (a schedule's value this epoch)."""
        self.wds = wds
        self._refresh()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def add_l2_gradient(self) -> None:
        """Add the gradient of ``l2 * sum W**2`` (``2 * l2 * W``) to each weight's gradient.

        The same gradient autograd would give for the penalty added to the loss, without building
        that graph every step. Call it right after ``backward`` so gradient readers see it.
        """
        if not self._any_l2:
            return
        grads, weights, scales = [], [], []
        for w, scale in zip(self.penalized, self._l2_views, strict=True):
            if w.grad is not None:
                grads.append(w.grad)
                weights.append(w)
                scales.append(scale)
        if grads:
            torch._foreach_addcmul_(grads, weights, scales)

    @torch.no_grad()
    def step(self) -> None:
        if self._uniform_lr:
            self.optimizer.step()
        else:
            # Every supported update is linear in lr: step with lr = 1, then move each member
            # only lr_k of the way (foreach kernels: a few launches, no per-tensor Python).
            torch._foreach_copy_(self._before, self.params)
            self.optimizer.step()
            torch._foreach_sub_(self.params, self._before)
            torch._foreach_mul_(self.params, self._lr_views)
            torch._foreach_add_(self.params, self._before)
        if self._any_wd:  # decoupled: after the step, scaled by each member's rate (as AdamW)
            torch._foreach_mul_(self.penalized, self._decay_views)
        if self._any_l1:
            self._l1_proximal_step()
        if self._any_group:
            self._group_proximal_step()

    @torch.no_grad()
    def _l1_proximal_step(self) -> None:
        """Soft-threshold the weights: the proximal operator of ``l1 * sum|W|``.

        The threshold is ``lr * l1`` for SGD. For Adam/AdamW it is divided by Adam's own
        per-weight scale ``sqrt(v_hat) + eps`` (the prox in Adam's diagonal metric), so weights
        whose gradients are tiny, such as those reading noise features, reach exactly zero.
        """
        for w, thresh in zip(self.penalized, self._l1_views, strict=True):
            if self.kind != "sgd":
                state = self.optimizer.state.get(w)
                if state and "exp_avg_sq" in state:
                    beta2 = self.optimizer.param_groups[0]["betas"][1]
                    # `step` may live on the device: keep the bias correction there (no sync).
                    v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                    thresh = thresh / (v_hat.sqrt() + ADAM_EPS)
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - thresh, min=0.0))

    def _group_norms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group index per input, group sizes ``p_g`` and per-member norms ``||W1_g||`` [K, G]."""
        w = self.penalized[0]
        k, n_in = w.shape[0], w.shape[1]
        groups = self.input_groups if self.input_groups is not None else list(range(n_in))
        index = torch.as_tensor(groups, dtype=torch.long, device=w.device)
        n_groups = int(max(groups)) + 1
        sizes = torch.zeros(n_groups, device=w.device).index_add_(
            0, index, torch.ones(n_in, device=w.device)
        )
        sq = torch.zeros(k, n_groups, device=w.device, dtype=w.dtype)
        sq.index_add_(1, index, (w * w).sum(dim=2))
        if self.group_weights is not None and self.group_weights.numel() != n_groups:
            raise ValueError(
                f"`group_weights` has {self.group_weights.numel()} values for {n_groups} groups"
            )
        return index, sizes, sq.sqrt()

    def _group_scale(self, sizes: torch.Tensor) -> torch.Tensor:
        """Each group's penalty factor ``sqrt(p_g) * w_g`` (``w_g = 1`` without weights)."""
        scale = sizes.sqrt()
        return scale if self.group_weights is None else scale * self.group_weights

    @torch.no_grad()
    def group_penalty(self) -> torch.Tensor | None:
        """Per member ``l1_inputs * sum_g sqrt(p_g) * w_g * ||W1_g||``; None when no member uses
        it."""
        if not self._any_group:
            return None
        _, sizes, norms = self._group_norms()
        return self.l1_inputs * (norms * self._group_scale(sizes)).sum(dim=1)

    @torch.no_grad()
    def _group_proximal_step(self) -> None:
        """Proximal step of ``l1_inputs * sum_g sqrt(p_g) * w_g * ||W1_g||_2`` on the first layer.

        ``W1_g`` are the outgoing first-layer weights of input column ``g``'s ``p_g`` encoded
        inputs, per member. Block soft-threshold: ``W1_g <- W1_g * max(0, 1 - t_g / ||W1_g||)``
        with ``t_g = eta * l1_inputs * sqrt(p_g) * w_g`` (``w_g``: ``group_weights``, default 1);
        ``eta = lr`` for SGD, and for Adam/AdamW
        ``lr`` divided by the group's mean ``sqrt(v_hat) + eps`` (one step size per group keeps
        the step a block shrink, so a whole column reaches zero at once). A column set to zero
        also loses its Adam momentum, so that stale momentum does not push it off zero again.
        """
        w = self.penalized[0]
        k = w.shape[0]
        index, sizes, norms = self._group_norms()
        n_groups = sizes.numel()
        eta = self.lrs.view(k, 1).expand(k, n_groups)
        if self.kind != "sgd":
            state = self.optimizer.state.get(w)
            if state and "exp_avg_sq" in state:
                beta2 = self.optimizer.param_groups[0]["betas"][1]
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                scale = torch.zeros(k, n_groups, device=w.device, dtype=w.dtype)
                scale.index_add_(1, index, v_hat.sqrt().sum(dim=2))
                scale = scale / (sizes * w.shape[2]) + ADAM_EPS
                eta = eta / scale
        thresh = eta * self.l1_inputs.view(k, 1) * self._group_scale(sizes)
        factor = torch.clamp(1.0 - thresh / norms.clamp_min(1e-30), min=0.0)
        keep = factor[:, index].unsqueeze(2)
        w.mul_(keep)
        state = self.optimizer.state.get(w)
        if self.kind != "sgd" and state and "exp_avg" in state:
            # A column set to zero forgets its momentum: only fresh gradient evidence that
            # outweighs the penalty brings it back, not the memory of the steps that shrank it.
            state["exp_avg"].mul_((keep > 0).to(w.dtype))

    def keep_members(
        self,
        mapping: dict[torch.Tensor, tuple[nn.Parameter, torch.Tensor]],
        members: torch.Tensor,
    ) -> None:
        """Follow :meth:`PopulationMLP.keep_members`: slice state and rates to the kept members."""
        old_state = self.optimizer.state
        self.lrs = self.lrs[members]
        self.l1s = self.l1s[members]
        self.l2s = self.l2s[members]
        self.l1_inputs = self.l1_inputs[members]
        self.wds = self.wds[members]
        new_of = {id(old): new for old, (new, _) in mapping.items()}
        self.params = [new_of[id(p)] for p in self.params]
        self.penalized = [new_of[id(p)] for p in self.penalized]
        self._refresh()
        self.optimizer = self._make(self.params, self.penalized)
        for old, (new, rows) in mapping.items():
            if old not in old_state:
                continue
            sliced = {}
            for key, value in old_state[old].items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == old.shape[0]:
                    sliced[key] = value[rows].clone()
                else:
                    sliced[key] = value.clone() if torch.is_tensor(value) else value
            self.optimizer.state[new] = sliced

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
