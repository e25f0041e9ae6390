"""``fitwell auto``: the checklist automated, above the one fitting pipeline.

The training engine never imports this package; it imports the engine (``fitwell.api``).
"""

from fitwell.auto.pipeline import auto, parse_budget

__all__ = ["auto", "parse_budget"]
