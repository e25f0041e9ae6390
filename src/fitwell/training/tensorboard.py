"""TensorBoard logging as a callback: curves, per-layer gradient norms, and the doctor's findings.

An optional extra (``pip install 'fitwell[tensorboard]'``). The callback reads gradients itself in
``on_after_backward``, so it needs nothing from the doctor; findings arrive after training through
:meth:`TensorBoardLogger.log_findings`, because they are decided once the run has ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fitwell.errors import InputError
from fitwell.training.callbacks import Callback

if TYPE_CHECKING:
    from fitwell.training.loop import Trainer


def layer_names(n_hidden: int) -> list[str]:
    """The names the run files use for layers: ``hidden1 .. hiddenN, output``."""
    return [f"hidden{i + 1}" for i in range(n_hidden)] + ["output"]


class TensorBoardLogger(Callback):
    """Log every member's curves and mean per-layer weight-gradient L2 norm per epoch.

    Parameters
    ----------
    log_dir : path
        Folder for the event files (created if missing); point ``tensorboard --logdir`` at it.
    gradients : bool, default True
        Also log gradient norms. Costs one small reduction per layer and step.

    Tags are ``member_{m}/{train_loss, val_loss, train_<score>, val_<score>}`` and
    ``member_{m}/grad_norm/{layer}``; the step is the epoch.
    """

    def __init__(self, log_dir: str | Path, *, gradients: bool = True) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError(
                "--tensorboard needs the tensorboard package; install it with "
                "`pip install 'fitwell[tensorboard]'`."
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.gradients = gradients
        self._grad_sums: list[torch.Tensor] = []
        self._steps = 0
        self._last_epoch = 0

    def on_epoch_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        self._grad_sums = []
        self._steps = 0

    def on_after_backward(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self.gradients:
            return
        # Kept on the device and summed; read once per epoch so logging adds no sync per step.
        norms = [
            w.grad.detach().flatten(1).norm(dim=1)
            if w.grad is not None
            else torch.zeros(w.shape[0], device=w.device)
            for w in trainer.model.weights
        ]
        if not self._grad_sums:
            self._grad_sums = norms
        else:
            self._grad_sums = [s + n for s, n in zip(self._grad_sums, norms, strict=True)]
        self._steps += 1

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        logs: dict[int, dict[str, float]] = kwargs["logs"]
        epoch = trainer.epoch
        self._last_epoch = epoch
        for member, row in logs.items():
            for key, value in row.items():
                if key != "lr":
                    self.writer.add_scalar(f"member_{member}/{key}", float(value), epoch)
        if self._grad_sums and self._steps:
            names = layer_names(len(self._grad_sums) - 1)
            means = [(s / self._steps).cpu().tolist() for s in self._grad_sums]
            for pos, member in enumerate(trainer.active):
                for name, values in zip(names, means, strict=True):
                    self.writer.add_scalar(f"member_{member}/grad_norm/{name}", values[pos], epoch)

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self.writer.flush()

    def log_findings(self, findings: list[dict[str, Any]]) -> None:
        """Write the doctor's findings as one text entry and per-severity counts."""
        counts = {"error": 0, "warning": 0, "info": 0}
        lines = ["| severity | code | epoch | layer | advice |", "|---|---|---|---|---|"]
        for f in findings:
            severity = str(f.get("severity", "info"))
            counts[severity] = counts.get(severity, 0) + 1
            cells = [severity, f.get("code"), f.get("epoch"), f.get("layer"), f.get("advice")]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        text = "\n".join(lines) if findings else "No findings."
        self.writer.add_text("findings", text, self._last_epoch)
        for severity, n in counts.items():
            self.writer.add_scalar(f"findings/{severity}", n, self._last_epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _cell(value: Any) -> str:
    """Markdown table cell: no pipes or newlines from user text can break the table."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
