"""Diagnosis: signals recorded during training (``probes``) -> findings (``rules``).

``Doctor`` brings the same rules to any PyTorch model and training loop.
"""

from fitwell.diagnosis.doctor import Doctor
from fitwell.diagnosis.rules import CODES, diagnose

__all__ = ["CODES", "Doctor", "diagnose"]
