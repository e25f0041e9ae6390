"""`fitwell auto`: the start configuration from the flags, the search, and what it prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fitwell.cli.commands import check_not_empty, default_out
from fitwell.cli.flags import AUTO_ONLY, EXIT_OK, EXIT_TARGET_MISSED, NOT_SETTINGS
from fitwell.cli.summaries import print_auto_summary, print_summary, summary_json


def cmd_auto(args: argparse.Namespace) -> int:
    settings = {
        k: v for k, v in vars(args).items() if k not in NOT_SETTINGS | AUTO_ONLY and v is not None
    }
    if args.tensorboard:
        from fitwell.errors import InputError

        raise InputError("--tensorboard is not supported by `fitwell auto`; use `fitwell train`.")
    show = not (args.quiet or args.json)
    if args.resume and not args.out:
        from fitwell.errors import InputError

        raise InputError("--resume needs the --out of the search to continue.")
    out = Path(args.out) if args.out else default_out(settings)

    def log(message: str) -> None:
        if show:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    from contextlib import nullcontext, redirect_stdout

    from fitwell.runs import replacing_run

    if args.resume and args.overwrite:
        from fitwell.errors import InputError

        raise InputError(
            "--resume continues the search in --out; --overwrite replaces it: not both."
        )
    check_not_empty(args, "mlflow", "mlflow_experiment")

    def body() -> Any:
        # stdout carries the result only: what libraries print during the run (Ray's notes on
        # workers it restarted, for one) goes to stderr, so `--json` stays one JSON document.
        with replacing_run(out) if args.overwrite else nullcontext(), redirect_stdout(sys.stderr):
            return _auto_run(args, out, log, settings)

    if args.mlflow is None and args.mlflow_experiment is None:
        return _auto_report(args, body())
    from fitwell.api import make_config
    from fitwell.tracking import tracked

    # Logged to MLflow outside --overwrite's replacement, so a store failing at the end never
    # costs the finished run directory.
    run = tracked(
        body,
        args.mlflow,
        experiment=args.mlflow_experiment,
        settings=make_config(args.config, **settings).to_dict(),
        command="auto",
        run_name=out.name,
    )
    return _auto_report(args, run)


def _auto_run(args: argparse.Namespace, out: Path, log: Any, settings: dict[str, Any]) -> Any:
    from fitwell.auto import auto

    return auto(
        config=args.config,
        time_budget=args.time_budget,
        trials=args.trials,
        repair=args.repair,
        search=args.search,
        storage=args.storage,
        study_name=args.study_name,
        resume=args.resume,
        out=out,
        log=log,
        executor=args.executor,
        address=args.address,
        parallel=args.parallel,
        population_size=args.population_size,
        **settings,
    )


def _auto_report(args: argparse.Namespace, run: Any) -> int:
    m = run.metrics
    record = m["auto"]
    if args.json:
        from fitwell.runs import json_safe

        doc = summary_json(m) | {
            "repairs": record["repairs"],
            "trials": run.extra.get("trials", []),
            "best_settings": record["best_settings"],
            "auto": {k: v for k, v in record.items() if k not in ("repairs",)},
        }
        print(json.dumps(json_safe(doc), default=str))
    elif not args.quiet:
        print_auto_summary(m)
        print_summary(m)
    if record.get("refused"):
        sys.stderr.write(
            "error: no model beats the trivial baseline on validation (no_signal); "
            f"nothing is claimed. See {m.get('run_dir')}/report.html\n"
        )
        return EXIT_TARGET_MISSED
    if m.get("target_met") is False:
        return EXIT_TARGET_MISSED
    return EXIT_OK
