"""The subcommands and `main`: errors become one line and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from fitwell import __version__
from fitwell.cli.auto_command import cmd_auto
from fitwell.cli.commands import (
    cmd_doctor,
    cmd_export,
    cmd_predict,
    cmd_report,
    cmd_resume,
    cmd_select,
    cmd_train,
)
from fitwell.cli.flags import EXIT_INPUT, Parser, add_tracking_flags, add_training_flags


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fitwell",
        description="Train neural networks well on tables, and learn why a run went wrong.",
    )
    parser.add_argument("--version", action="version", version=f"fitwell {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("train", help="train a model and write a run directory")
    add_training_flags(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the fitwell run already in --out once the new run finishes "
        "(a folder with other files is refused)",
    )
    add_tracking_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "auto",
        help="diagnose, repair and search a network within a time budget, then test once",
    )
    add_training_flags(p)  # they set the start configuration
    g = p.add_argument_group("auto")
    g.add_argument(
        "--time-budget", default="10m", help="wall time for all stages: 90s, 10m, 1h (default 10m)"
    )
    g.add_argument("--trials", type=int, help="at most this many search trials")
    g.add_argument("--no-repair", dest="repair", action="store_false", help="skip the repairs")
    g.add_argument("--no-search", dest="search", action="store_false", help="skip the search")
    g.add_argument(
        "--storage",
        help="Optuna storage URL (sqlite:///f.db, postgresql+psycopg://...) or journal file; "
        "default: study.journal in the run directory",
    )
    g.add_argument("--study-name", help="study name in the storage (default fitwell-auto)")
    g.add_argument("--resume", action="store_true", help="continue a killed search in --out")
    g.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where populations train: this process, or a Ray cluster (the `ray` extra); "
        "default local",
    )
    g.add_argument(
        "--address",
        help="with --executor ray: the cluster's HOST:PORT (default: start Ray on this machine)",
    )
    g.add_argument(
        "--population-size",
        type=int,
        default=8,
        help="search trials of one shape trained together as one population (default 8)",
    )
    g.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="search populations asked together and trained side by side (default 1); the "
        "trials chosen depend on the seed, --trials and --parallel, not on the executor",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the fitwell run already in --out once the new run finishes",
    )
    add_tracking_flags(p)
    p.set_defaults(func=cmd_auto)
    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run_dir", help="the run directory of the interrupted `fitwell train`")
    add_training_flags(p)  # given flags must match the run's; the data file may have moved
    add_tracking_flags(p)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("predict", help="predict with a trained run")
    p.add_argument("run_dir")
    p.add_argument("data", help="CSV, Parquet or .npz file with the same columns")
    p.add_argument("--out", help="write predictions to this CSV (default: stdout)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser(
        "export", help="write a trained run as one ONNX file (preprocessing and ensemble inside)"
    )
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="file format (onnx)")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.add_argument(
        "--numeric-type",
        choices=("float", "double"),
        default="float",
        help="element type of the numeric inputs (default float; double keeps large values "
        "such as timestamps exact)",
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help="(re)build report.html of a finished run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("doctor", help="print the findings of a finished run")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser(
        "select",
        help="feature selection: train one population over a grid of --l1-inputs, choose on val",
    )
    add_training_flags(p)
    g = p.add_argument_group("selection")
    g.add_argument("--lambdas", help="comma-separated l1_inputs grid (default 0,1e-4,...,0.3)")
    g.add_argument(
        "--tolerance",
        type=float,
        help="how far below the best val score the chosen λ may be (default 0.01): the smallest "
        "such λ that reads no shadow column, else the largest",
    )
    p.set_defaults(func=cmd_select)
    return parser


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings reach the user as one ``warning:`` line, never as source file and code lines."""
    text = " ".join(str(message).split())
    (file or sys.stderr).write(f"warning: {text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    from fitwell.errors import FitwellError

    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args))
    except FitwellError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"error: {message}\n")
        return exc.exit_code
    except OSError as exc:  # a file the command had to read or write: the path, then what to do
        where = f"{exc.filename!s}: " if exc.filename else ""
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"error: {where}{reason}; check the path, free space and permissions.\n")
        return EXIT_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:  # an internal fault: still one line, full trace on request
        if os.environ.get("FITWELL_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(
            f"error: internal error ({type(exc).__name__}: {message}); "
            "rerun with FITWELL_DEBUG=1 for the traceback\n"
        )
        return 4
    finally:
        warnings.showwarning = previous
