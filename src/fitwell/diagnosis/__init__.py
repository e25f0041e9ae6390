"""Diagnosis: signals recorded during training (``probes``) -> findings (``rules``).

``Doctor`` brings the same rules to any PyTorch model and training loop.
"""

from fitwell.diagnosis.doctor import Doctor
from fitwell.diagnosis.findings import diagnose
from fitwell.diagnosis.rules import CODES

__all__ = ["CODES", "Doctor", "diagnose"]
