"""The training loop, its callbacks and the population optimizer."""

from fitwell.training.callbacks import Callback, EarlyStopping, ProgressBar, early_stopping_decision
from fitwell.training.loop import FitResult, LoopSettings, MemberResult, MemberSettings, Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "FitResult",
    "LoopSettings",
    "MemberResult",
    "MemberSettings",
    "ProgressBar",
    "Trainer",
    "early_stopping_decision",
]
