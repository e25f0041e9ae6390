"""fitwell: train neural networks well on tables, and learn why a training run went wrong.

Heavy modules (torch) load on first use, so ``fitwell --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "train": "fitwell.api",
    "train_population": "fitwell.api",
    "auto": "fitwell",  # the fitwell.auto package, callable as fitwell.auto(...)
    "load_run": "fitwell.api",
    "Run": "fitwell.api",
    "TrainConfig": "fitwell.config",
    "export_onnx": "fitwell.export",
    "build_config": "fitwell.config",
    "Callback": "fitwell.training.callbacks",
    "Doctor": "fitwell.diagnosis.doctor",
    "InputError": "fitwell.errors",
    "FitwellError": "fitwell.errors",
    "TrainingFailed": "fitwell.errors",
    "FitwellClassifier": "fitwell.estimators",
    "FitwellRegressor": "fitwell.estimators",
}

if TYPE_CHECKING:
    from fitwell.api import Run, load_run, train, train_population
    from fitwell.config import TrainConfig, build_config
    from fitwell.diagnosis.doctor import Doctor
    from fitwell.errors import FitwellError, InputError, TrainingFailed
    from fitwell.estimators import FitwellClassifier, FitwellRegressor
    from fitwell.export import export_onnx
    from fitwell.training.callbacks import Callback

__all__ = [
    "Callback",
    "Doctor",
    "FitwellClassifier",
    "FitwellError",
    "FitwellRegressor",
    "InputError",
    "Run",
    "TrainConfig",
    "TrainingFailed",
    "build_config",
    "auto",
    "export_onnx",
    "load_run",
    "train",
    "train_population",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fitwell' has no attribute {name!r}")
    import importlib

    if name == "auto":  # importing the package sets fitwell.auto to it (it is callable)
        return importlib.import_module("fitwell.auto")
    return getattr(importlib.import_module(module), name)
