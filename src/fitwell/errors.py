"""Error types: the CLI turns these into one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FitwellError(Exception):
    """Base class for errors fitwell reports to the user as one line."""

    exit_code = 2


class InputError(FitwellError, ValueError):
    """Bad user input: a file, column, value or setting that cannot be used (exit code 2)."""

    exit_code = 2


class TrainingFailed(FitwellError, RuntimeError):
    """Training could not produce a finite model, e.g. the loss diverged (exit code 3)."""

    exit_code = 3

    def __init__(self, *args: object, findings: list[dict] | None = None) -> None:
        super().__init__(*args)
        self.findings: list[dict] = list(findings or [])


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean `x`?' for the closest valid choice, or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" Did you mean `{close[0]}`?" if close else ""
