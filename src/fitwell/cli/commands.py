"""The subcommands other than `auto`: each turns parsed flags into one library call and prints."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from fitwell.cli.flags import EXIT_OK, EXIT_TARGET_MISSED, NOT_SETTINGS
from fitwell.cli.summaries import print_findings, print_summary, summary_json


def default_out(settings: dict[str, Any]) -> Path:
    name = settings.get("dataset") or Path(str(settings.get("data") or "run")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip(".-") or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path("runs")
    root.mkdir(exist_ok=True)
    out = root / f"{name}-{stamp}"
    i = 1
    while out.exists():
        i += 1
        out = root / f"{name}-{stamp}-{i}"
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from fitwell.api import make_config, train
    from fitwell.errors import InputError, TrainingFailed

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS and v is not None}
    check_not_empty(args, "out", "tensorboard", "mlflow", "mlflow_experiment")
    cfg = make_config(args.config, **settings)
    out = Path(args.out) if args.out is not None else default_out(cfg.to_dict())
    if args.tensorboard is not None and is_within(Path(args.tensorboard), out):
        raise InputError(
            f"--tensorboard {args.tensorboard!r} lies inside the run directory {str(out)!r}, "
            "which holds only the run's own files; choose a folder outside it."
        )
    show = not (args.quiet or args.json)
    existed = out.exists()

    callbacks: list[Any] = []
    if args.tensorboard:
        from fitwell.training.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger(args.tensorboard))
    try:
        # MLflow is told last, outside --overwrite's replacement: a store failing then never
        # costs the finished run directory.
        run = train(
            config=cfg,
            out=out,
            progress=None if show else False,
            callbacks=callbacks,
            overwrite=args.overwrite,
            mlflow_uri=args.mlflow,
            mlflow_experiment=args.mlflow_experiment,
        )
    except OSError as exc:
        raise write_failure(exc, out, created=not existed) from None
    except TrainingFailed as exc:  # divergence: the findings travel with the error
        for cb in callbacks:
            cb.log_findings(exc.findings or [])
            cb.close()
        if args.json:
            from fitwell.runs import json_safe

            error = " ".join(str(exc).split())
            print(json.dumps(json_safe({"error": error, "findings": exc.findings})))
        elif not args.quiet:
            print_findings(exc.findings, stderr=True)
        raise
    for cb in callbacks:
        cb.log_findings(run.metrics.get("findings") or [])
        cb.close()
    m = run.metrics
    if args.json:
        print(json.dumps(summary_json(m), default=str))
    elif not args.quiet:
        print_summary(m)
    if m.get("target_met") is False:
        return EXIT_TARGET_MISSED
    return EXIT_OK


def check_not_empty(args: argparse.Namespace, *names: str) -> None:
    """``--out ""`` is a mistake (an unset variable in a script), not a request for the default."""
    from fitwell.errors import InputError

    for name in names:
        value = getattr(args, name, None)
        if value is not None and str(value).strip() == "":
            raise InputError(
                f"--{name} is empty; give a path, or leave --{name} out for the default."
            )


def is_within(path: Path, folder: Path) -> bool:
    inner, outer = path.resolve(), folder.resolve()
    return inner == outer or outer in inner.parents


def write_failure(exc: OSError, out: Path, *, created: bool) -> Exception:
    """An OS error while a run was written (disk full, file too large, permission): one line that
    names the path and says whether the run can be resumed or that nothing was kept."""
    from fitwell.errors import InputError
    from fitwell.runs import RUN_STATE_FILE

    where = exc.filename or out
    reason = exc.strerror or str(exc) or type(exc).__name__
    state: Any = None
    try:
        state = json.loads((out / RUN_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and state.get("status") == "running":
        tail = (
            f"the run so far is kept in {str(out)!r}: fix the cause (free space, raise the file "
            f"size limit) and continue it with `fitwell resume {out}`."
        )
    else:
        import shutil

        if created:
            shutil.rmtree(out, ignore_errors=True)
        tail = "nothing was kept; fix the cause and train again."
    return InputError(f"{where}: {reason}; {tail}")


def cmd_select(args: argparse.Namespace) -> int:
    from fitwell.api import make_config
    from fitwell.errors import InputError
    from fitwell.selection import DEFAULT_LAMBDAS, DEFAULT_TOLERANCE, select_features

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS and v is not None}
    if args.out is not None or args.tensorboard is not None:
        raise InputError("`fitwell select` writes no run directory; drop --out/--tensorboard.")
    cfg = make_config(args.config, **settings)
    lambdas: list[float] | tuple[float, ...] = DEFAULT_LAMBDAS
    if args.lambdas is not None:
        try:
            lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"`--lambdas` must be comma-separated numbers; got {args.lambdas!r}."
            ) from None
    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    path = select_features(cfg, lambdas, tolerance=tol)
    if args.json:
        print(json.dumps(path.to_dict()))
        return EXIT_OK
    score = path.score
    print(f"{'l1_inputs':>10}  {'val_' + score:>10}  {'kept':>4}  columns off")
    for i, p in enumerate(path.points):
        mark = " <- chosen" if i == path.chosen else ""
        off = ", ".join(p.off[:8]) + (f" … (+{len(p.off) - 8})" if len(p.off) > 8 else "")
        print(f"{p.l1_inputs:>10g}  {p.val_score:>10.4f}  {len(p.kept):>4}  {off or '-'}{mark}")
    c = path.chosen_point
    rule = (
        f"the smallest λ within {path.tolerance:g} of the best val {score} whose member reads "
        "no shadow column (a row-permuted copy of a column)"
        if path.shadows and path.points[path.chosen].shadows_kept == 0
        else f"the largest λ whose val {score} is within {path.tolerance:g} of the best"
    )
    print(
        f"chosen l1_inputs = {c.l1_inputs:g}: {rule}; keeps {len(c.kept)} column(s): "
        f"{', '.join(c.kept)}"
    )
    if path.weights is not None:
        print(
            "adaptive weights (l1_inputs_weights; --json prints them for a config file): "
            + ", ".join(f"{name} {w:.3g}" for name, w in path.weights.items())
        )
    if c.off:
        print(
            "to train on exactly these columns (--json: refit): "
            f"l1_inputs = {path.refit()['l1_inputs']:g} with l1_inputs_weights 0 for each kept "
            "column and 1000 for each column off"
        )
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from fitwell.resume import resume

    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in NOT_SETTINGS | {"run_dir", "data"} and v is not None
    }
    check_not_empty(args, "mlflow", "mlflow_experiment")
    show = not (args.quiet or args.json)

    def warn(msg: str) -> None:
        sys.stderr.write(f"warning: {msg}\n")

    try:
        run = resume(
            args.run_dir,
            data=args.data,
            progress=None if show else False,
            warn=warn,
            mlflow_uri=args.mlflow,
            mlflow_experiment=args.mlflow_experiment,
            **settings,
        )
    except OSError as exc:
        raise write_failure(exc, Path(args.run_dir), created=False) from None
    m = run.metrics
    if args.json:
        print(json.dumps(summary_json(m), default=str))
    elif not args.quiet:
        print_summary(m)
    return EXIT_TARGET_MISSED if m.get("target_met") is False else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from fitwell.diagnosis.context import findings_from_files
    from fitwell.runs import json_safe, verify_run

    verify_run(args.run_dir)  # a run is trusted only whole, checksums included
    findings = findings_from_files(args.run_dir)
    if args.json:
        print(json.dumps(json_safe({"run_dir": args.run_dir, "findings": findings})))
    elif findings:
        print_findings(findings)
    else:
        print("no findings: training looks healthy")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from fitwell.api import load_run
    from fitwell.batch_predict import predict_file
    from fitwell.errors import InputError
    from fitwell.runs import check_output_file

    out = None
    if args.out is not None:  # checked before any work: a read-only command never harms a run
        out = check_output_file(args.out, run_dir=args.run_dir)
        if Path(args.data).exists() and is_within(out, Path(args.data)):
            raise InputError(f"--out {args.out!r} is the input file {args.data!r}; choose another.")
    run = load_run(args.run_dir)
    try:
        summary = predict_file(run, args.data, out)
    except PermissionError as exc:
        raise InputError(
            f"cannot write {str(out or exc.filename)!r} ({exc.strerror or exc}); "
            "nothing was written."
        ) from None
    if summary.extra_columns:
        shown = ", ".join(repr(c) for c in summary.extra_columns[:10])
        sys.stderr.write(f"note: ignoring {len(summary.extra_columns)} extra column(s): {shown}\n")
    for col, n in summary.unknown_categories.items():
        sys.stderr.write(
            f"note: column {col!r} has {n} value(s) unseen in training; "
            "they encode as no category\n"
        )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from fitwell.export import export_onnx

    print(export_onnx(args.run_dir, args.out, numeric_type=args.numeric_type))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from fitwell.errors import InputError
    from fitwell.report import write_report
    from fitwell.runs import check_not_running, verify_run

    check_not_running(args.run_dir)
    verify_run(args.run_dir)  # rebuilt only from files the manifest vouches for
    try:
        path = write_report(args.run_dir)
    except OSError as exc:
        raise InputError(
            f"cannot write {str(exc.filename or args.run_dir)!r} ({exc.strerror or exc}); "
            "the run itself is unchanged. Fix the cause and run `fitwell report` again."
        ) from None
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # The manifest vouches for the bytes; this is a run whose files were made by hand.
        raise InputError(
            f"{args.run_dir}: metrics.json or signals.json lack the fields a report needs "
            f"({exc!r}); retrain or restore the run."
        ) from None
    print(path)
    return EXIT_OK
