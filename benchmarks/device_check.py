"""The same runs on CPU and on CUDA, side by side: scores must agree, and CUDA's speed is shown.

Checks what unit tests on a CPU-only machine cannot: `--device cuda` trains, restores, scores,
saves and predicts; a population of many members trains as one batched model there; the doctor's
hooks and step buffer work on a CUDA loop; a run trained on CUDA predicts the same on CPU.
Prints a table and writes JSON.

    python benchmarks/device_check.py [--out benchmarks/results/device_check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import fitwell  # noqa: E402


def _train(device: str, folder: Path, **settings: object) -> dict:
    started = time.perf_counter()
    run = fitwell.train(
        out=folder / f"{device}-{len(list(folder.iterdir()))}",
        device=device,
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - started
    m = run.metrics
    return {
        "run": run,
        "seconds": seconds,
        "test": m["test_score"],
        "epochs": m["epochs_run"],
        "findings": sorted(f["code"] for f in m["findings"]),
    }


def _doctor_loop(device: str) -> dict:
    """A user's own loop, eight sigmoid layers deep: the doctor must name vanishing gradients."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(y, device=device)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, 32), torch.nn.Sigmoid()]
    for _ in range(7):
        layers += [torch.nn.Linear(32, 32), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(32, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    with fitwell.Doctor(model, opt) as doc:
        for _ in range(5):
            model.train()
            for i in range(0, 1400, 64):
                opt.zero_grad()
                loss = loss_fn(model(x[i : i + 64]), y[i : i + 64])
                loss.backward()
                opt.step()
                doc.step(loss, y[i : i + 64])
            model.eval()
            with torch.no_grad():
                train_loss = loss_fn(model(x[:1400]), y[:1400]).item()
                val_loss = loss_fn(model(x[1400:]), y[1400:]).item()
            doc.end_epoch(train_loss=train_loss, val_loss=val_loss)
    return {
        "seconds": time.perf_counter() - started,
        "findings": sorted({f["code"] for f in doc.findings()}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/device_check.json"))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = {
            "digits defaults": {"dataset": "digits"},
            "mnist1d pbld, 3x256": {
                "dataset": "mnist1d",
                "numeric_embedding": "pbld",
                "front_scale": True,
                "hidden": (256, 256, 256),
            },
            "digits 64 restarts": {
                "dataset": "digits",
                "restarts": 64,
                "ensemble": 1,
                "max_epochs": 30,
            },
        }
        for name, settings in cases.items():
            results = {d: _train(d, folder, **settings) for d in devices}
            row = {"case": name}
            for d, r in results.items():
                row[d] = {k: v for k, v in r.items() if k != "run"}
            if "cuda" in results:
                # A CUDA-trained run, loaded from its files, predicts on CPU what it predicted
                # in memory on CUDA: the saved model is device-free.
                from fitwell.data.datasets import load_builtin

                frame, target = load_builtin(str(settings["dataset"]))
                rows_in = frame.drop(columns=[target]).head(200)
                trained = results["cuda"]["run"]
                loaded = fitwell.load_run(trained.run_dir)
                gap = np.abs(
                    np.asarray(trained.predict_proba(rows_in), dtype=float)
                    - np.asarray(loaded.predict_proba(rows_in), dtype=float)
                ).max()
                row["cuda_over_cpu_seconds"] = (
                    results["cuda"]["seconds"] / results["cpu"]["seconds"]
                )
                row["score_gap"] = abs(results["cuda"]["test"] - results["cpu"]["test"])
                row["reload_max_proba_gap"] = float(gap)
            rows.append(row)
    doctor = {d: _doctor_loop(d) for d in devices}
    print(f"{'case':<22} " + " ".join(f"{d + ' score':>11} {d + ' s':>8}" for d in devices))
    for row in rows:
        print(
            f"{row['case']:<22} "
            + " ".join(f"{row[d]['test']:>11.4f} {row[d]['seconds']:>8.1f}" for d in devices)
        )
    for d, r in doctor.items():
        print(f"doctor loop on {d}: {r['seconds']:.2f} s, findings {r['findings']}")
    ok = all(
        r.get("score_gap", 0.0) <= 0.03 and r.get("reload_max_proba_gap", 0.0) <= 1e-4 for r in rows
    ) and all("vanishing_gradients" in r["findings"] for r in doctor.values())
    payload = {
        "devices": devices,
        "rows": rows,
        "doctor": doctor,
        "ok": ok,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy": np.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1, default=str))
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
