"""``fitwell predict`` loads only what predicting needs: its resident memory is mostly libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fitwell.api import train

SCRIPT = """
import sys
from fitwell.cli import main
code = main(["predict", sys.argv[1], sys.argv[2], "--out", sys.argv[3]])
print(code, "sklearn.model_selection" in sys.modules)
"""


def test_predict_does_not_import_the_splitting_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame["a"] > 0).astype(int)
    data = tmp_path / "t.csv"
    frame.to_csv(data, index=False)
    train(data, target="y", max_epochs=1, ensemble=1, out=tmp_path / "run")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), str(data), str(tmp_path / "p.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    # scikit-learn's model_selection (~80 MB resident) is the split's; predict never splits.
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout
    assert len(pd.read_csv(tmp_path / "p.csv")) == 200
