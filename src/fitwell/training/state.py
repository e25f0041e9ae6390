"""A trainer's complete state as one nested structure, and the way back.

Everything a resumed run needs to continue bitwise-identically at an epoch boundary: weights,
optimizer state (with the population's active members), per-member RNG generators, callback
state, epoch, history, stop reasons and the final/best tensors of stopped members. Tensors stay
tensors (they go to safetensors); everything else is plain JSON (see :mod:`fitwell.checkpoints`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from fitwell.models import PopulationMLP
from fitwell.training.optim import PopulationOptimizer

if TYPE_CHECKING:
    from fitwell.training.loop import MemberSettings, Trainer

STATE_VERSION = 1


def _by_member(tensors: dict[int, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    return {str(m): {k: v.detach().clone() for k, v in t.items()} for m, t in tensors.items()}


def _from_member(data: dict[str, dict[str, torch.Tensor]]) -> dict[int, dict[str, torch.Tensor]]:
    return {int(m): dict(t) for m, t in data.items()}


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """Snapshot the trainer at an epoch boundary (no step in flight)."""
    callbacks = [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in trainer.callbacks]
    opt = trainer.optimizer.state_dict()
    return {
        "version": STATE_VERSION,
        "epoch": trainer.epoch,
        "stop_training": trainer.stop_training,
        "members": [dataclasses.asdict(m) for m in trainer.members],
        "active": list(trainer.active),
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": {
            "state": {str(i): dict(s) for i, s in opt["state"].items()},
            "param_groups": opt["param_groups"],
        },
        "shuffle_rng": [g.get_state() for g in trainer.shuffle_generators],
        "dropout_rng": [g.get_state() for g in trainer.dropout_generators],
        "global_rng": torch.get_rng_state(),
        "history": [dict(row) for row in trainer.history],
        "stop_reasons": {str(k): v for k, v in trainer.stop_reasons.items()},
        "epochs_run": {str(k): v for k, v in trainer.epochs_run.items()},
        "final_state": _by_member(trainer.final_state),
        "best_state": _by_member(trainer.early_stopping.best_state),
        "events": [dict(e) for e in trainer.events],
        "failed_members": sorted(trainer.failed_members),
        "callbacks": callbacks,
    }


def load_trainer_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`trainer_state`) into a freshly built trainer of the same run."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"trainer state version {state.get('version')!r} is not supported")
    members = [_member(m) for m in state["members"]]
    if len(members) != len(trainer.members):
        raise ValueError(
            f"checkpoint has {len(members)} members, the run has {len(trainer.members)}"
        )
    trainer.members = members
    trainer.active = [int(m) for m in state["active"]]
    trainer.epoch = int(state["epoch"])
    trainer.stop_training = bool(state["stop_training"])
    device = trainer.device
    model = PopulationMLP(trainer.arch, len(trainer.active)).to(device)
    model.load_state_dict({k: v.to(device) for k, v in state["model"].items()}, strict=True)
    trainer.model = model
    trainer.optimizer = PopulationOptimizer(
        list(model.parameters()),
        model.penalized_weights(),
        kind=trainer.loop.optimizer,
        lrs=trainer._member_tensor("lr"),
        l1s=trainer._member_tensor("l1"),
        l2s=trainer._member_tensor("l2"),
        momentum=trainer.loop.momentum,
        l1_inputs=trainer._member_tensor("l1_inputs"),
        input_groups=trainer.input_groups,
        adam_beta2=trainer.loop.adam_beta2,
        group_weights=trainer.group_weights,
        lr_factors=model.lr_factors(),
        weight_decays=trainer.scheduled_weight_decays(),
    )
    opt = state["optimizer"]
    trainer.optimizer.load_state_dict(
        {
            "state": {int(i): dict(s) for i, s in opt["state"].items()},
            "param_groups": opt["param_groups"],
        }
    )
    # Every generator, a CUDA one too, takes its state as a CPU ByteTensor.
    for gen, rng in zip(trainer.shuffle_generators, state["shuffle_rng"], strict=True):
        gen.set_state(rng.cpu())
    for gen, rng in zip(trainer.dropout_generators, state["dropout_rng"], strict=True):
        gen.set_state(rng.cpu())
    torch.set_rng_state(state["global_rng"])
    trainer.history = [dict(row) for row in state["history"]]
    trainer.stop_reasons = {int(k): str(v) for k, v in state["stop_reasons"].items()}
    trainer.epochs_run = {int(k): int(v) for k, v in state["epochs_run"].items()}
    trainer.final_state = {
        m: {k: v.to(device) for k, v in t.items()}
        for m, t in _from_member(state["final_state"]).items()
    }
    trainer.early_stopping.best_state = {
        m: {k: v.to(device) for k, v in t.items()}
        for m, t in _from_member(state["best_state"]).items()
    }
    trainer.events = [dict(e) for e in state["events"]]
    trainer.failed_members = {int(m) for m in state["failed_members"]}
    saved = list(state["callbacks"])
    # Match callbacks by class, in order: a resumed run builds the same list of callbacks.
    for cb in trainer.callbacks:
        for i, entry in enumerate(saved):
            if entry["class"] == type(cb).__name__:
                cb.load_state_dict(entry["state"])
                del saved[i]
                break


def _member(data: dict[str, Any]) -> MemberSettings:
    from fitwell.training.loop import MemberSettings

    return MemberSettings(
        seed=int(data["seed"]),
        lr=float(data["lr"]),
        l1=float(data["l1"]),
        l2=float(data["l2"]),
        dropout=tuple(float(p) for p in data["dropout"]),
        l1_inputs=float(data.get("l1_inputs", 0.0)),
        lr_schedule=str(data.get("lr_schedule", "constant")),
        warmup_epochs=int(data.get("warmup_epochs", 0)),
        weight_decay=float(data.get("weight_decay", 0.0)),
        dropout_schedule=str(data.get("dropout_schedule", "constant")),
        wd_schedule=str(data.get("wd_schedule", "constant")),
    )
