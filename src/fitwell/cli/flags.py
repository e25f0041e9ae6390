"""The command line's flags and exit codes: what each subcommand accepts, in one place."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
    RECIPES,
    REGULARIZATION_SCHEDULES,
    TASKS,
)

EXIT_OK, EXIT_TARGET_MISSED, EXIT_INPUT, EXIT_TRAINING = 0, 1, 2, 3


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line with exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_INPUT)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="?", help="CSV, Parquet or .npz file")
    g.add_argument("--dataset", help=f"built-in dataset: {', '.join(BUILTIN_DATASETS)}")
    g.add_argument("--target", help="target column")
    g.add_argument("--task", help=f"{' | '.join(TASKS)} (default auto)")
    g.add_argument("--split", help="train,val,test fractions (default 0.7,0.15,0.15)")
    g.add_argument(
        "--recipe",
        help=" | ".join(RECIPES) + " (default classic): a named set of defaults; flags given "
        "explicitly win. realmlp: RealMLP-TD's (robust scaling, pbld + front scale, 3x256 ntk "
        "units, selu / mish by task with a learnable shape, dropout 0.15 and weight decay 0.02 "
        "on flat_cos, label smoothing 0.1, coslog4 at lr 0.04 / 0.2, Adam beta2 0.95, batch "
        "256, 256 epochs keeping the best, one network)",
    )
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
    g.add_argument(
        "--bias-init-mode",
        help="constant (--bias-init) or he+5: biases from the training rows (RealMLP's)",
    )
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
    g.add_argument(
        "--best-epoch-by",
        help="loss (default) or score: the best validation epoch by loss or by accuracy / R^2",
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


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
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


# Flags that steer the command, not the training configuration.
NOT_SETTINGS = {
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


# `fitwell auto`'s own flags: not part of the start configuration.
AUTO_ONLY = {
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
