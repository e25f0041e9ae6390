"""Command line: parses, calls the library, prints. No training logic lives here.

Errors from the library become one line on stderr (``error: ...``) with exit code 2 (bad input)
or 3 (training failed); a missed ``--target-score`` exits with 1.
"""

from fitwell.cli.flags import EXIT_INPUT, EXIT_OK, EXIT_TARGET_MISSED, EXIT_TRAINING
from fitwell.cli.main import build_parser, main
from fitwell.cli.summaries import print_findings, print_summary, summary_json

__all__ = [
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_TARGET_MISSED",
    "EXIT_TRAINING",
    "build_parser",
    "main",
    "print_findings",
    "print_summary",
    "summary_json",
]
