"""fitwell's training loop vs. a hand-written PyTorch loop and scikit-learn's MLPClassifier.

Same data (fitwell's own train/val/test split of digits and MNIST-1D), same MLP (hidden widths,
ReLU), same optimizer (Adam, lr 1e-3), batch size and number of epochs (early stopping off so the
epoch count is fixed). The hand-written loop is what a careful practitioner writes: ``randperm``
shuffling of in-memory tensors, ``nn.Sequential`` of ``nn.Linear``, fused Adam, and — because
fitwell always records learning curves — train and validation loss in eval mode every epoch.
A second hand-written variant without the per-epoch evaluation is shown for transparency.
All runs use one torch thread (and one BLAS thread for scikit-learn). Runs are interleaved
(alternating order), medians reported; ``ratio`` is the ratio of medians to the hand-written
loop, ``paired`` the median of per-repeat ratios (each run against the hand-written run next to
it), which is steadier on a shared machine whose speed drifts by tens of percent; ``min`` the
ratio of the fastest runs (interference only ever adds time) and ``CPU`` the ratio of median
process CPU times (time spent waiting for the core excluded).

    python benchmarks/loop_overhead.py [--repeats 15] [--epochs 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fitwell.data import load_table, prepare  # noqa: E402
from fitwell.models import Architecture  # noqa: E402
from fitwell.training import LoopSettings, MemberSettings, Trainer  # noqa: E402


def hand_written(data, hidden, epochs, batch_size, lr, seed, *, eval_each_epoch: bool):
    torch.manual_seed(seed)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    xv, yv = torch.as_tensor(data.x_val), torch.as_tensor(data.y_val)
    dims = [x.shape[1], *hidden]
    layers: list[nn.Module] = []
    for i, o in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(i, o), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], int(data.y_train.max()) + 1))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    curves = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if eval_each_epoch:
            model.eval()
            with torch.no_grad():
                curves.append((float(loss_fn(model(x), y)), float(loss_fn(model(xv), yv))))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    x_test, y_test = data.test_arrays
    with torch.no_grad():
        acc = float((model(torch.as_tensor(x_test)).argmax(1).numpy() == y_test).mean())
    return seconds, cpu, acc


def fitwell_loop(data, hidden, epochs, batch_size, lr, seed):
    arch = Architecture(data.n_features, tuple(hidden), int(data.y_train.max()) + 1)
    trainer = Trainer(
        arch,
        [MemberSettings(seed=seed, lr=lr, dropout=tuple(0.0 for _ in hidden))],
        LoopSettings(batch_size=batch_size, max_epochs=epochs, patience=0),
        task="classification",
        x_train=data.x_train,
        y_train=data.y_train,
        x_val=data.x_val,
        y_val=data.y_val,
        device=torch.device("cpu"),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    fit = trainer.fit()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    from fitwell.api import _model_from_state

    model = _model_from_state(arch, fit.best_member.state)
    x_test, y_test = data.test_arrays
    with torch.no_grad():
        out = model.predict_chunks(torch.as_tensor(x_test))[0]
    return seconds, cpu, float((out.argmax(1).numpy() == y_test).mean())


def sklearn_mlp(data, hidden, epochs, batch_size, lr, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=tuple(hidden),
        batch_size=batch_size,
        learning_rate_init=lr,
        max_iter=epochs,
        alpha=0.0,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        random_state=seed,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data.x_train, data.y_train)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    x_test, y_test = data.test_arrays
    return seconds, cpu, float((model.predict(x_test) == y_test).mean())


def load(name: str):
    data = prepare(
        load_table(dataset=name), task="auto", split=(0.7, 0.15, 0.15), seed=0, scale=True
    )
    data.test_arrays = data.test.open()  # benchmark only: no model choice is made from it
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 3 epochs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/loop_overhead.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 2, 3
    hidden = [int(h) for h in args.hidden.split(",")]
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    contenders = {
        "hand-written": lambda d, s: hand_written(
            d, hidden, args.epochs, args.batch_size, 1e-3, s, eval_each_epoch=True
        ),
        "fitwell": lambda d, s: fitwell_loop(d, hidden, args.epochs, args.batch_size, 1e-3, s),
        "hand-written, no curves": lambda d, s: hand_written(
            d, hidden, args.epochs, args.batch_size, 1e-3, s, eval_each_epoch=False
        ),
        "scikit-learn MLP": lambda d, s: sklearn_mlp(
            d, hidden, args.epochs, args.batch_size, 1e-3, s
        ),
    }
    results = []
    for name in args.datasets.split(","):
        data = load(name)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        cpu_times: dict[str, list[float]] = {k: [] for k in contenders}
        accs: dict[str, list[float]] = {k: [] for k in contenders}
        with threadpool_limits(limits=1):
            for rep in range(args.repeats):
                order = list(contenders)
                if rep % 2:
                    order.reverse()  # interleave, alternating order
                for key in order:
                    sec, cpu, acc = contenders[key](data, rep)
                    times[key].append(sec)
                    cpu_times[key].append(cpu)
                    accs[key].append(acc)
        base = statistics.median(times["hand-written"])
        cpu_base = statistics.median(cpu_times["hand-written"])
        rows_per_run = len(data.y_train) * args.epochs
        for key in contenders:
            med = statistics.median(times[key])
            # Each repeat's time over the hand-written loop's time in the same repeat (run next
            # to it): slow drifts of a shared machine cancel out of these.
            paired = [t / h for t, h in zip(times[key], times["hand-written"], strict=True)]
            results.append(
                {
                    "dataset": name,
                    "contender": key,
                    "median_seconds": med,
                    "samples_per_second": rows_per_run / med,
                    "ratio_to_hand_written": med / base,
                    "median_paired_ratio": statistics.median(paired),
                    # Interference on a shared machine only ever adds time: the fastest run is
                    # the steadiest estimate of a loop's own cost, CPU time excludes waiting.
                    "min_ratio": min(times[key]) / min(times["hand-written"]),
                    "cpu_ratio": statistics.median(cpu_times[key]) / cpu_base,
                    "cpu_seconds": cpu_times[key],
                    "paired_ratios": paired,
                    "test_accuracy_median": statistics.median(accs[key]),
                    "seconds": times[key],
                    "accuracies": accs[key],
                }
            )
    print(
        f"{'dataset':<9}{'contender':<26}{'wall s':>8}{'samples/s':>11}{'ratio':>7}"
        f"{'paired':>8}{'min':>7}{'CPU':>7}{'test acc':>10}"
    )
    for r in results:
        print(
            f"{r['dataset']:<9}{r['contender']:<26}{r['median_seconds']:>8.2f}"
            f"{r['samples_per_second']:>11.0f}{r['ratio_to_hand_written']:>7.3f}"
            f"{r['median_paired_ratio']:>8.3f}{r['min_ratio']:>7.3f}{r['cpu_ratio']:>7.3f}"
            f"{r['test_accuracy_median']:>10.4f}"
        )
    meta = {
        "repeats": args.repeats,
        "epochs": args.epochs,
        "hidden": hidden,
        "batch_size": args.batch_size,
        "threads": 1,
        "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps({"settings": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
