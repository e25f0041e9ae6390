"""Optimizer steps for a population: PyTorch's own optimizers, with per-member learning rates and
the L1 proximal step layered on top.

PyTorch optimizers take one learning rate per parameter group, but population members share
stacked tensors. Every update of Adam, AdamW and SGD(momentum) is linear in the learning rate, so
when members' rates differ we step with ``lr=1`` and scale each member's update by its own rate
(``p = old + lr_k * (p_after - old)``). When all rates are equal the optimizer steps with that rate
directly, and the K = 1 path is exactly PyTorch's fused step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ADAM_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01


def _member_view(values: torch.Tensor, param: torch.Tensor, n_members: int) -> torch.Tensor:
    """Broadcast one value per member onto ``param``'s layout (stacked or flat batch-norm)."""
    if param.dim() >= 2 and param.shape[0] == n_members:
        return values.view(n_members, *([1] * (param.dim() - 1)))
    width = param.shape[0] // n_members
    return values.repeat_interleave(width)


class PopulationOptimizer:
    """One optimizer over stacked parameters, with per-member ``lr`` and ``l1``.

    ``penalized`` are the weight matrices the L1 proximal step acts on.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        penalized: Sequence[torch.Tensor],
        *,
        kind: str,
        lrs: torch.Tensor,
        l1s: torch.Tensor,
        momentum: float = 0.9,
    ) -> None:
        self.kind = kind
        self.momentum = momentum
        self.lrs = lrs
        self.l1s = l1s
        self.params = list(params)
        self.penalized = list(penalized)
        self.optimizer = self._make(self.params, self.penalized)

    @property
    def n_members(self) -> int:
        return int(self.lrs.numel())

    @property
    def uniform_lr(self) -> bool:
        return bool(torch.all(self.lrs == self.lrs[0]))

    def _make(
        self, params: list[nn.Parameter], penalized: list[torch.Tensor]
    ) -> torch.optim.Optimizer:
        lr = float(self.lrs[0]) if self.uniform_lr else 1.0
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        if self.kind == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, fused=fused)
        if self.kind == "adamw":
            ids = {id(p) for p in penalized}
            groups = [
                {"params": [p for p in params if id(p) in ids], "weight_decay": ADAMW_WEIGHT_DECAY},
                {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
            ]
            return torch.optim.AdamW(groups, lr=lr, eps=ADAM_EPS, fused=fused)
        return torch.optim.Adam(params, lr=lr, eps=ADAM_EPS, fused=fused)

    def set_lrs(self, lrs: torch.Tensor) -> None:
        """Change members' learning rates in place (the non-finite guard halves one)."""
        self.lrs = lrs
        lr = float(lrs[0]) if self.uniform_lr else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        if self.uniform_lr:
            self.optimizer.step()
        else:
            before = [p.detach().clone() for p in self.params]
            self.optimizer.step()
            for old, p in zip(before, self.params, strict=True):
                old.lerp_(p, _member_view(self.lrs, p, self.n_members))
                p.copy_(old)
        if bool(torch.any(self.l1s > 0)):
            self._l1_proximal_step()

    @torch.no_grad()
    def _l1_proximal_step(self) -> None:
        """Soft-threshold the weights: the proximal operator of ``l1 * sum|W|``.

        The threshold is ``lr * l1`` for SGD. For Adam/AdamW it is divided by Adam's own
        per-weight scale ``sqrt(v_hat) + eps`` (the prox in Adam's diagonal metric), so weights
        whose gradients are tiny, such as those reading noise features, reach exactly zero.
        """
        for w in self.penalized:
            thresh = _member_view(self.lrs * self.l1s, w, self.n_members)
            if self.kind != "sgd":
                state = self.optimizer.state.get(w)
                if state and "exp_avg_sq" in state:
                    beta2 = self.optimizer.param_groups[0]["betas"][1]
                    step = float(state["step"])
                    v_hat = state["exp_avg_sq"] / (1 - beta2**step)
                    thresh = thresh / (v_hat.sqrt() + ADAM_EPS)
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - thresh, min=0.0))

    def keep_members(
        self,
        mapping: dict[torch.Tensor, tuple[nn.Parameter, torch.Tensor]],
        members: torch.Tensor,
    ) -> None:
        """Follow :meth:`PopulationMLP.keep_members`: slice state and rates to the kept members."""
        old_state = self.optimizer.state
        self.lrs = self.lrs[members]
        self.l1s = self.l1s[members]
        self.params = [mapping[p][0] for p in self.params]
        self.penalized = [mapping[p][0] for p in self.penalized]
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
