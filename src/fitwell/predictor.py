"""A finished run as a predictor: ``Run``, ``load_run`` and the saved model's reconstruction.

Loading reads JSON and safetensors only; nothing on this path can execute code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fitwell import runs
from fitwell.data import Preprocessor
from fitwell.data.preparation import TargetEncoder
from fitwell.errors import InputError
from fitwell.models import Architecture, PopulationMLP, ensemble_outputs


@dataclass
class Run:
    """A finished run: its directory, metrics, and a model ready to predict."""

    run_dir: Path | None
    metrics: dict[str, Any]
    history: pd.DataFrame
    model: PopulationMLP
    preprocessor: Preprocessor
    target_encoder: TargetEncoder
    target: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.target_encoder.task

    def _inputs(self, data: pd.DataFrame | np.ndarray | str | Path) -> pd.DataFrame:
        if isinstance(data, (str, Path)):
            from fitwell.data.loading import read_file

            frame, _ = read_file(data)
            return frame
        if isinstance(data, np.ndarray):
            if data.ndim != 2 or data.shape[1] != len(self.preprocessor.input_columns):
                raise InputError(
                    f"expected a 2-D array with {len(self.preprocessor.input_columns)} columns; "
                    f"got shape {data.shape}."
                )
            return pd.DataFrame(data, columns=self.preprocessor.input_columns)
        return data

    @torch.no_grad()
    def _outputs(
        self, data: pd.DataFrame | np.ndarray | str | Path, source: str | None = None
    ) -> np.ndarray:
        frame = self._inputs(data)
        if source is None:
            source = str(data) if isinstance(data, (str, Path)) else "data"
        return self.encoded_outputs(self.preprocessor.transform(frame, source=source))

    @torch.no_grad()
    def encoded_outputs(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's outputs (logits, or standardized values) for encoded rows ``x``."""
        device = next(self.model.parameters()).device
        self.model.eval()
        outputs = self.model.predict_chunks(torch.as_tensor(x).to(device))
        return ensemble_outputs(outputs, self.task).cpu().numpy()

    def predict(
        self, data: pd.DataFrame | np.ndarray | str | Path, *, source: str | None = None
    ) -> np.ndarray:
        """Predicted labels (classification) or values in the target's units (regression).

        ``source`` names the data in error messages (default: the path, or "data").
        """
        out = self._outputs(data, source)
        if self.task == "classification":
            return self.target_encoder.decode(out.argmax(axis=1))
        return self.target_encoder.decode(out[:, 0])

    def predict_proba(
        self, data: pd.DataFrame | np.ndarray | str | Path, *, source: str | None = None
    ) -> np.ndarray:
        """Class probabilities, columns in ``target_encoder.classes`` order."""
        if self.task != "classification":
            raise InputError("predict_proba needs a classification run.")
        out = torch.as_tensor(self._outputs(data, source))
        return torch.softmax(out, dim=1).numpy()


def model_from_state(arch: Architecture, state: dict[str, torch.Tensor]) -> PopulationMLP:
    """The saved model: one member, or an ensemble of K stacked members (``weights.0 [K, ...]``)."""
    weights = state.get("weights.0")
    n_members = int(weights.shape[0]) if weights is not None and weights.dim() == 3 else 1
    model = PopulationMLP(arch, n_members)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"model weights do not match the architecture ({first}).") from None
    return model


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory written by :func:`train` (JSON + safetensors; nothing unpickled)."""
    saved = runs.load_model_files(run_dir)
    folder = Path(run_dir)
    try:
        arch = Architecture.from_json(saved.meta["architecture"])
        pre = Preprocessor.from_json(saved.meta["preprocessing"])
        enc = TargetEncoder.from_json(saved.meta["target_encoder"])
        target = str(saved.meta["target"])
    except KeyError as exc:
        raise InputError(f"{folder / runs.MODEL_META}: missing field {exc}.") from None
    codes = pre.embedded_inputs()
    if [(i, n) for i, n in codes] != list(zip(arch.categorical, arch.category_sizes, strict=True)):
        raise InputError(
            f"{folder / runs.MODEL_META}: the preprocessing's embedded text columns {codes} do "
            f"not match the architecture's ({list(arch.categorical)}, sizes "
            f"{list(arch.category_sizes)}); the run files are inconsistent, retrain the run."
        )
    model = model_from_state(arch, saved.state)
    for name, tensor in saved.state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{folder / runs.MODEL_FILE}: tensor {name!r} holds non-finite values."
            )
    metrics_path = folder / runs.METRICS_FILE
    metrics = runs.read_json(metrics_path) if metrics_path.exists() else {}
    history_path = folder / runs.HISTORY_FILE
    history = pd.DataFrame()
    if history_path.exists():
        try:
            history = pd.read_csv(history_path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{history_path}: not a readable history CSV ({first}).") from None
    return Run(folder, metrics, history, model, pre, enc, target)
