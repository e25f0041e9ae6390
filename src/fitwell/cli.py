"""Command line: parses, calls the library, prints. No training logic lives here.

Errors from the library become one line on stderr (``error: ...``) with exit code 2 (bad input)
or 3 (training failed); a missed ``--target-score`` exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fitwell import __version__
from fitwell.config import (
    ACTIVATIONS,
    BUILTIN_DATASETS,
    DEVICES,
    INITS,
    LR_SCHEDULES,
    METRICS,
    NUMERIC_EMBEDDINGS,
    OPTIMIZERS,
    PARAMETRIZATIONS,
    REGULARIZATION_SCHEDULES,
    TASKS,
)

EXIT_OK, EXIT_TARGET_MISSED, EXIT_INPUT, EXIT_TRAINING = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line with exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_INPUT)


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="?", help="CSV, Parquet or .npz file")
    g.add_argument("--dataset", help=f"built-in dataset: {', '.join(BUILTIN_DATASETS)}")
    g.add_argument("--target", help="target column")
    g.add_argument("--task", help=f"{' | '.join(TASKS)} (default auto)")
    g.add_argument("--split", help="train,val,test fractions (default 0.7,0.15,0.15)")
    g.add_argument(
        "--no-scale",
        dest="scale",
        action="store_const",
        const=False,
        help="do not standardize numeric columns",
    )
    g.add_argument(
        "--scaling",
        choices=("standard", "robust"),
        help="numeric scaling: standard (mean/std, default) or robust (median/IQR + smooth clip)",
    )
    g.add_argument(
        "--embed-categories-above",
        type=int,
        metavar="N",
        help="text columns with more than N distinct values get a learned embedding instead of "
        "one-hot inputs (default 30; 0: always one-hot)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--hidden",
        help="hidden widths, e.g. 256,256 (empty: a linear model); default auto: two layers, "
        "256 wide from ~1000 training rows, down to 64 for small tables",
    )
    g.add_argument("--activation", help=" | ".join(ACTIVATIONS))
    g.add_argument("--dropout", help="drop probability, one or one per hidden layer (default 0.2)")
    g.add_argument(
        "--dropout-schedule",
        help=" | ".join(REGULARIZATION_SCHEDULES) + " (flat_cos: full rate for half of "
        "max-epochs, then a cosine to 0; RealMLP's)",
    )
    g.add_argument(
        "--learnable-activation",
        action="store_const",
        const=True,
        help="RealMLP's parametric activation: x + a*(act(x) - x), a learned per unit from 1",
    )
    g.add_argument(
        "--parametrization",
        help=" | ".join(PARAMETRIZATIONS) + " (ntk: layers compute x@w/sqrt(fan_in); "
        "wants a larger --lr, RealMLP uses 0.04)",
    )
    g.add_argument("--init", help=" | ".join(INITS))
    g.add_argument("--init-scale", type=float, help="multiplies the initial weight std")
    g.add_argument("--bias-init", type=float, help="initial value of hidden biases")
    g.add_argument("--batch-norm", action="store_const", const=True, help="batch normalization")
    g.add_argument(
        "--numeric-embedding",
        help=" | ".join(NUMERIC_EMBEDDINGS) + " (train: none; auto: auto = pbld for "
        "classification); pbld: RealMLP's periodic embedding of each numeric column",
    )
    g.add_argument(
        "--embedding-frequencies", type=int, help="frequencies per embedded column (default 16)"
    )
    g.add_argument(
        "--embedding-dim", type=int, help="embedding outputs per embedded column (default 3)"
    )
    g.add_argument(
        "--front-scale",
        action="store_const",
        const=True,
        help="a learned scale per first-layer input, starting at 1 (default: on with pbld)",
    )
    g.add_argument(
        "--no-front-scale",
        dest="front_scale",
        action="store_const",
        const=False,
        help="no learned input scale, even with pbld",
    )
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", help=" | ".join(OPTIMIZERS))
    g.add_argument("--lr", type=float, help="learning rate (default 3e-3)")
    g.add_argument("--lr-schedule", help=" | ".join(LR_SCHEDULES) + " (default constant)")
    g.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up epochs")
    g.add_argument("--adam-beta2", type=float, help="Adam's second-moment decay (default 0.999)")
    g.add_argument(
        "--weight-decay",
        type=float,
        help="decoupled weight decay: W *= 1 - lr*wd after each step (default 0; RealMLP 0.02)",
    )
    g.add_argument(
        "--wd-schedule", help=" | ".join(REGULARIZATION_SCHEDULES) + " schedule of --weight-decay"
    )
    g.add_argument(
        "--label-smoothing", type=float, help="classification target smoothing eps (default 0)"
    )
    g.add_argument(
        "--class-weight",
        choices=("none", "balanced"),
        help="balanced: weigh each row's loss by n / (classes * n_class) (default none)",
    )
    g.add_argument(
        "--metric",
        help=" | ".join(METRICS) + ": chooses the kept member and the ensemble on validation, "
        "sets what --target-score means and leads the summary (default auto: accuracy or r2, "
        "members chosen by validation loss); log_loss, rmse and mae are lower-is-better",
    )
    g.add_argument(
        "--weight-column",
        help="column of per-row sample weights (numbers >= 0; not a feature): weighs the "
        "training loss, the validation and test scores and the baseline",
    )
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--max-epochs", type=int)
    g.add_argument("--l1", type=float, help="L1 strength: adds l1*sum|W| (exact zeros)")
    g.add_argument(
        "--l1-inputs",
        type=float,
        help="feature selection: group lasso on each input column's first-layer weights "
        "(whole columns switch off)",
    )
    g.add_argument(
        "--l1-inputs-adaptive",
        action="store_const",
        const=True,
        help="adaptive group lasso: weigh each column's --l1-inputs penalty by 1/its norm in a "
        "plain group-lasso pilot (columns the pilot barely reads get a large penalty); "
        "default: on in `select`, off in `train`",
    )
    g.add_argument(
        "--no-l1-inputs-adaptive",
        dest="l1_inputs_adaptive",
        action="store_const",
        const=False,
        help="plain group lasso: every column's --l1-inputs penalty weighs the same",
    )
    g.add_argument("--l2", type=float, help="L2 strength: adds l2*sum W^2")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    g.add_argument("--min-delta", type=float, help="smallest validation-loss improvement")
    g.add_argument(
        "--no-restore-best",
        dest="restore_best",
        action="store_const",
        const=False,
        help="keep the last weights instead of the best validation epoch's",
    )
    g.add_argument("--restarts", type=int, help="random restarts trained together; best kept")
    g.add_argument(
        "--ensemble",
        type=int,
        help="average the predictions of this many best members (default 3; 1 = single model)",
    )
    g.add_argument(
        "--target-score",
        type=float,
        help="exit 1 if the test --metric misses it (below it; above it for log_loss, rmse, mae)",
    )
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help=" | ".join(DEVICES))
    g.add_argument("--threads", type=int, help="CPU threads for torch (default 1)")
    g = p.add_argument_group("output")
    g.add_argument("--config", help="TOML file with the same settings (flags override it)")
    g.add_argument("--out", help="run directory to create (default runs/NAME-TIMESTAMP)")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also log curves, gradient norms and findings for TensorBoard here",
    )


def _add_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log the run to this MLflow tracking store: sqlite:///mlflow.db, a folder, "
        "http://HOST:PORT (needs fitwell[mlflow]); checked before training",
    )
    g.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="MLflow experiment (default: the dataset's name or the data file's stem)",
    )


_NOT_SETTINGS = {
    "command",
    "config",
    "out",
    "json",
    "quiet",
    "func",
    "tensorboard",
    "mlflow",
    "mlflow_experiment",
    "overwrite",
    "lambdas",
    "tolerance",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fitwell",
        description="Train neural networks well on tables, and learn why a run went wrong.",
    )
    parser.add_argument("--version", action="version", version=f"fitwell {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_training_flags(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the fitwell run already in --out once the new run finishes "
        "(a folder with other files is refused)",
    )
    _add_tracking_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "auto",
        help="diagnose, repair and search a network within a time budget, then test once",
    )
    _add_training_flags(p)  # they set the start configuration
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
    _add_tracking_flags(p)
    p.set_defaults(func=cmd_auto)
    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run_dir", help="the run directory of the interrupted `fitwell train`")
    _add_training_flags(p)  # given flags must match the run's; the data file may have moved
    _add_tracking_flags(p)
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
    _add_training_flags(p)
    g = p.add_argument_group("selection")
    g.add_argument("--lambdas", help="comma-separated l1_inputs grid (default 0,1e-4,...,0.3)")
    g.add_argument(
        "--tolerance",
        type=float,
        help="choose the largest λ whose val score is within this of the best (default 0.01)",
    )
    p.set_defaults(func=cmd_select)
    return parser


def _default_out(settings: dict[str, Any]) -> Path:
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

    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    _check_not_empty(args, "out", "tensorboard", "mlflow", "mlflow_experiment")
    cfg = make_config(args.config, **settings)
    out = Path(args.out) if args.out is not None else _default_out(cfg.to_dict())
    if args.tensorboard is not None and _is_within(Path(args.tensorboard), out):
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
        raise _write_failure(exc, out, created=not existed) from None
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


def _check_not_empty(args: argparse.Namespace, *names: str) -> None:
    """``--out ""`` is a mistake (an unset variable in a script), not a request for the default."""
    from fitwell.errors import InputError

    for name in names:
        value = getattr(args, name, None)
        if value is not None and str(value).strip() == "":
            raise InputError(
                f"--{name} is empty; give a path, or leave --{name} out for the default."
            )


def _is_within(path: Path, folder: Path) -> bool:
    inner, outer = path.resolve(), folder.resolve()
    return inner == outer or outer in inner.parents


def _write_failure(exc: OSError, out: Path, *, created: bool) -> Exception:
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


def _metric(m: dict[str, Any]) -> str:
    """The run's headline metric (runs saved before ``metric`` existed: their score)."""
    return str(m.get("metric") or m["score_name"])


def summary_json(m: dict[str, Any]) -> dict[str, Any]:
    """The stable ``--json`` contract of ``fitwell train``."""
    from fitwell.runs import json_safe

    return json_safe(
        {
            "run_dir": m.get("run_dir"),
            "task": m["task"],
            "metric": _metric(m),
            "test_score": m.get("test_score"),
            "test": m["test"],
            "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"],
            "stop_reason": m["stop_reason"],
            "restarts": {"val_scores": m["restarts"]["val_scores"], "best": m["restarts"]["best"]},
            "ensemble": m.get("ensemble", {}).get("members", [m["restarts"]["best"]]),
            "l1_zeroed_features": m["l1_zeroed_features"],
            "findings": m["findings"],
            "target_score": m["target_score"],
            "target_met": m["target_met"],
        }
        | ({"mlflow": m["mlflow"]} if m.get("mlflow") else {})
    )


def print_summary(m: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    d = m["data"]
    rows = d["rows"]
    console.print(
        f"[bold]fitwell[/] · {d['source']} · {m['task']} · target {d['target']!r} · "
        f"{rows['train']} train / {rows['val']} val / {rows['test']} test rows"
    )
    score = m["score_name"]
    test = m["test"]
    metric = _metric(m)
    headline = m.get("test_score")
    shown = "undefined" if headline is None or headline != headline else f"{headline:.4f}"
    line = f"test {metric} [bold]{shown}[/]"
    if m["task"] == "classification":
        others = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")]
        others += [("macro_f1", "macro-F1")]
        if metric != "log_loss":  # the same number twice otherwise
            line += f" (loss {test['loss']:.4f})"
        for key, label in others:
            # runs saved before balanced accuracy and macro-F1 were measured lack them
            if key != metric and test.get(key) is not None:
                line += f" · {label} {test[key]:.4f}"
    else:
        for key in ("r2", "rmse", "mae"):
            if key != metric:
                line += f" · {key} {test[key]:.4g}"
    if m["target_score"] is not None:
        ok = "[green]met[/]" if m["target_met"] else "[red]missed[/]"
        bound = "at least" if m.get("metric_higher_is_better", True) else "at most"
        line += f" · target {bound} {m['target_score']:g} {ok}"
    console.print(line)
    console.print(
        f"train {score} {m['train'][score]:.4f} · val {score} {m['val'][score]:.4f} at epoch "
        f"{m['best_epoch']} of {m['epochs_run']} · {m['stop_reason']}"
        + (" · best weights restored" if m["restored_best_weights"] else "")
    )
    # With a chosen metric the members were ranked by it: show it where the score was.
    by_metric = f"val_{metric}" in m["restarts"]
    ranked = m["restarts"][f"val_{metric}"] if by_metric else m["restarts"]["val_scores"]
    scores = [s for s in ranked if s is not None and s == s]
    if len(m["restarts"]["val_scores"]) > 1 and scores:
        console.print(
            f"restarts: {len(m['restarts']['val_scores'])} members, "
            f"val {metric if by_metric else score} "
            f"{min(scores):.4f}–{max(scores):.4f}, "
            + ("best" if len(m.get("ensemble", {}).get("members", [])) > 1 else "kept")
            + f" member {m['restarts']['best']}"
        )
    members = m.get("ensemble", {}).get("members", [])
    if len(members) > 1:
        val = m["ensemble"]["val"]
        shown_score = metric if metric in val else score
        console.print(
            f"ensemble: predictions averaged over members {', '.join(map(str, members))} · "
            f"val {shown_score} {val[shown_score]:.4f} (loss {val['loss']:.4f})"
        )
    if m["l1_zeroed_features"]:
        names = ", ".join(m["l1_zeroed_features"][:20])
        more = len(m["l1_zeroed_features"]) - 20
        console.print(
            f"not read by the model: {len(m['l1_zeroed_features'])} input column(s) "
            f"switched off in every member: {names}" + (f" … (+{more})" if more > 0 else "")
        )
    print_findings(m.get("findings", []))
    if m.get("run_dir"):
        console.print(f"run directory: {m['run_dir']}")
    if m.get("mlflow"):
        t = m["mlflow"]
        console.print(
            f"mlflow: run {t['run_id']} in experiment {t['experiment']!r} at {t['tracking_uri']}"
            + (f" · {t['url']}" if t.get("url") else "")
        )


def cmd_select(args: argparse.Namespace) -> int:
    from fitwell.api import make_config
    from fitwell.errors import InputError
    from fitwell.selection import DEFAULT_LAMBDAS, DEFAULT_TOLERANCE, select_features

    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
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
    return EXIT_OK


_AUTO_ONLY = {
    "time_budget",
    "trials",
    "repair",
    "search",
    "storage",
    "study_name",
    "resume",
    "overwrite",
    "executor",
    "address",
    "parallel",
    "population_size",
}


def cmd_auto(args: argparse.Namespace) -> int:
    settings = {
        k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS | _AUTO_ONLY and v is not None
    }
    if args.tensorboard:
        from fitwell.errors import InputError

        raise InputError("--tensorboard is not supported by `fitwell auto`; use `fitwell train`.")
    show = not (args.quiet or args.json)
    if args.resume and not args.out:
        from fitwell.errors import InputError

        raise InputError("--resume needs the --out of the search to continue.")
    out = Path(args.out) if args.out else _default_out(settings)

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
    _check_not_empty(args, "mlflow", "mlflow_experiment")

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


def print_auto_summary(m: dict[str, Any]) -> None:
    """What auto did: leakage first, then repairs kept, the search, and the winner."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    record = m["auto"]
    if any(
        f.get("code") == "leakage" and f.get("severity") in ("error", "warning")
        for f in m.get("findings", [])
    ):
        console.print(
            "[red]error[/] [bold]leakage[/]: test rows also occur in the training "
            "rows; the test score below overstates what the model does on new data"
        )
    kept = [r for r in record["repairs"] if r.get("kept")]
    # Several changes of one round may pass the rule; only the best of them is applied.
    applied = [r for r in kept if r.get("chosen") or r.get("reason", "").startswith("applied")]
    tried = len(record["repairs"])
    console.print(
        f"[bold]auto[/] · {record.get('seconds_used', 0):.0f} s of "
        + (f"{record['budget_seconds']:.0f} s" if record.get("budget_seconds") else "no time limit")
        + f" · repairs tried {tried}, passed {len(kept)}, applied {len(applied)}"
        + "".join(f" · {r['finding']} → {r['change']}" for r in applied)
    )
    s = record.get("search") or {}
    if s:
        console.print(
            f"search: {s['trials']} trials in {s['populations']} populations "
            f"({s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed) · "
            + (
                f"best trial {s['best_trial']} val loss {s['best_val_loss']:.4g}"
                if s.get("best_trial") is not None
                else "no completed trial"
            )
        )
    console.print(f"winner: {record['winner']}")


def cmd_resume(args: argparse.Namespace) -> int:
    from fitwell.resume import resume

    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in _NOT_SETTINGS | {"run_dir", "data"} and v is not None
    }
    _check_not_empty(args, "mlflow", "mlflow_experiment")
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
        raise _write_failure(exc, Path(args.run_dir), created=False) from None
    m = run.metrics
    if args.json:
        print(json.dumps(summary_json(m), default=str))
    elif not args.quiet:
        print_summary(m)
    return EXIT_TARGET_MISSED if m.get("target_met") is False else EXIT_OK


def print_findings(findings: list[dict[str, Any]], *, stderr: bool = False) -> None:
    """One line per finding: severity, code, where, advice, and the evidence that triggered it."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True, stderr=stderr)
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        severity = str(f.get("severity", "info"))
        where = ", ".join(
            f"{k} {f[k]}" for k in ("epoch", "layer", "member") if f.get(k) is not None
        )
        evidence = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (f.get("evidence") or {}).items()
            if not isinstance(v, list)
        )
        console.print(
            f"[{colour.get(severity, 'yellow')}]{severity}[/] [bold]{f.get('code')}[/]"
            + (f" ({where})" if where else "")
            + f": {f.get('advice', '')}"
            + (f" [dim]· {evidence}[/]" if evidence else "")
        )


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
        if Path(args.data).exists() and _is_within(out, Path(args.data)):
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


if __name__ == "__main__":
    raise SystemExit(main())
