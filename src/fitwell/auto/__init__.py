"""``fitwell auto``: the checklist automated, above the one fitting pipeline.

The training engine never imports this package; it imports the engine (``fitwell.api``).

``fitwell.auto(...)`` is this package called as a function: importing any of its modules makes
``fitwell.auto`` the package, so the package itself forwards calls to :func:`auto`.
"""

import sys
import types
from typing import Any

from fitwell.auto.pipeline import auto, parse_budget

__all__ = ["auto", "parse_budget"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return auto(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
