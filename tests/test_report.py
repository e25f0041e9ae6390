"""report.html: built from a finished run directory, every section shown or marked not recorded."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fitwell
from fitwell import runs
from fitwell.report import REPORT_FILE, write_report
from tests.conftest import run_cli

FAST = {"hidden": (8,), "max_epochs": 6, "lr": 0.01, "batch_size": 32}


class _Page(HTMLParser):
    """Collects tags, attributes, section ids and visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def section_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _images(page: _Page) -> dict[str, str]:
    return {str(a.get("alt")): str(a.get("src")) for t, a in page.tags if t == "img"}


@pytest.fixture(scope="module")
def l1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classification run with restarts and L1 strong enough to switch a column off."""
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {"signal": rng.normal(size=n), "noise_a": rng.normal(size=n), "noise_b": rng.normal(size=n)}
    )
    frame["label"] = np.where(frame["signal"] > 0, "a", "b")
    folder = tmp_path_factory.mktemp("l1")
    frame.to_csv(folder / "l1.csv", index=False)
    out = folder / "run"
    fitwell.train(
        folder / "l1.csv",
        target="label",
        out=out,
        restarts=3,
        l1=0.1,
        **{**FAST, "max_epochs": 20},
    )
    return out


def test_run_writes_a_self_contained_report(l1_run: Path) -> None:
    html = (l1_run / REPORT_FILE).read_text(encoding="utf-8")
    page = parse(l1_run / REPORT_FILE)
    ids = {a.get("id") for _, a in page.tags}
    assert {"verdict", "curves", "gradients", "restarts", "l1", "findings", "test", "setup"} <= ids
    # Self-contained: no script, no stylesheet link, no remote URL anywhere in the markup.
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.replace("data:image", ""))
    images = _images(page)
    assert all(src.startswith("data:image/svg+xml;base64,") for src in images.values())
    assert any("loss" in alt for alt in images)  # learning curves
    assert any("every member" in alt for alt in images)  # restarts
    assert any("confusion" in alt for alt in images)
    assert any("first-layer" in alt for alt in images)


def test_report_lists_l1_switched_off_columns_and_restarts(l1_run: Path) -> None:
    metrics = json.loads((l1_run / runs.METRICS_FILE).read_text())
    zeroed = metrics["l1_zeroed_features"]
    assert zeroed and "signal" not in zeroed
    html = (l1_run / REPORT_FILE).read_text(encoding="utf-8")
    l1_section = html[html.index('id="l1"') : html.index('id="findings"')]
    listed = re.findall(r"<li><code>(.*?)</code></li>", l1_section)
    assert listed == zeroed
    text = parse(l1_run / REPORT_FILE).section_text()
    assert f"L1 set every first-layer weight of {len(zeroed)} input column(s)" in text
    assert f"Member {metrics['restarts']['best']} has the lowest validation loss" in text
    members = ", ".join(map(str, metrics["ensemble"]["members"]))
    assert f"The saved model averages the predictions of members {members}" in text
    # The doctor's signals are recorded on every run, so the gradient-flow section is drawn.
    assert (l1_run / "signals.json").exists()
    assert "Not recorded: this run has no signals.json" not in text
    assert any("gradient" in alt for alt in _images(parse(l1_run / REPORT_FILE)))


def test_cli_rebuild_is_identical(l1_run: Path, tmp_path: Path) -> None:
    before = (l1_run / REPORT_FILE).read_bytes()
    (l1_run / REPORT_FILE).unlink()
    result = run_cli("report", str(l1_run))
    assert result.returncode == 0, result.stderr
    assert (l1_run / REPORT_FILE).read_bytes() == before


def test_report_shows_doctor_signals_and_findings(l1_run: Path, tmp_path: Path) -> None:
    """Synthetic doctor output in the shared format is drawn and listed with evidence."""
    folder = tmp_path / "doctored"
    folder.mkdir()
    for name in (
        runs.METRICS_FILE,
        runs.HISTORY_FILE,
        runs.MODEL_FILE,
        runs.MODEL_META,
        runs.CONFIG_FILE,
    ):
        (folder / name).write_bytes((l1_run / name).read_bytes())
    metrics = json.loads((folder / runs.METRICS_FILE).read_text())
    best = metrics["restarts"]["best"]
    metrics["findings"] = [
        {
            "code": "vanishing_gradients",
            "severity": "warning",
            "epoch": 2,
            "layer": "hidden1",
            "member": best,
            "evidence": {"grad_ratio_first_last": 3.2e-5, "layers": [1e-6, 0.03]},
            "advice": "Use ReLU and Kaiming initialisation.",
        },
        {
            "code": "overfitting",
            "severity": "info",
            "epoch": 5,
            "layer": None,
            "member": None,
            "evidence": {"gap": 0.12},
            "advice": "Early stopping restored the best weights.",
        },
    ]
    runs.write_json(folder / runs.METRICS_FILE, metrics)
    records = [
        {
            "epoch": e,
            "member": best,
            "grad_norm": [1e-6 * e, 0.03],
            "weight_norm": [1.0, 2.0],
            "update_ratio": [1e-4, 1e-3],
            "dead_fraction": [0.1 * e],
            "saturated_fraction": None,
            "nonfinite_steps": 1 if e == 3 else 0,
        }
        for e in range(1, 6)
    ]
    runs.write_json(
        folder / "signals.json", {"version": 1, "layers": ["hidden1", "output"], "records": records}
    )
    page = parse(write_report(folder))
    text = page.section_text()
    assert "vanishing_gradients" in text and "overfitting" in text
    assert "Use ReLU and Kaiming initialisation." in text
    assert "grad_ratio_first_last" in text and "3.2e-05" in text
    assert "1 error" not in text and "1 warn" in text and "1 info" in text
    assert "Non-finite steps: 1." in text
    alts = _images(page)
    assert "per-layer gradient norm per epoch" in alts
    assert "dead and saturated unit fractions per epoch" in alts
    # The warning is listed before the info note.
    assert text.index("vanishing_gradients") < text.index("overfitting")


def test_missing_optional_files_are_marked_not_recorded(l1_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    metrics = json.loads((l1_run / runs.METRICS_FILE).read_text())
    metrics.pop("findings")
    runs.write_json(folder / runs.METRICS_FILE, metrics)
    text = parse(write_report(folder)).section_text()
    assert "Not recorded: the run directory has no history.csv." in text
    assert "Not recorded: this run has no findings" in text
    assert "Not recorded: no config.toml." in text
    assert "Not recorded: the model files are missing." in text


def test_regression_report_has_predicted_vs_true(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame["price"] = 3 * frame["a"] - frame["b"] + rng.normal(scale=0.1, size=200)
    frame.to_csv(tmp_path / "reg.csv", index=False)
    fitwell.train(tmp_path / "reg.csv", target="price", out=tmp_path / "run", ensemble=1, **FAST)
    page = parse(tmp_path / "run" / REPORT_FILE)
    alts = _images(page)
    assert "predicted vs true values on the test split" in alts
    assert not any("confusion" in a for a in alts)
    assert not any("every member" in a for a in alts)  # one member: a sentence, not a chart
    assert "One member, no restarts: validation r2" in page.section_text()


def test_report_of_a_missing_folder_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_first_layer_magnitudes_sum_every_averaged_member(l1_run: Path) -> None:
    from safetensors.numpy import load

    from fitwell.report.build import _first_layer_magnitudes

    first = load((l1_run / runs.MODEL_FILE).read_bytes())["weights.0"]
    assert first.shape[0] == 3  # restarts 3, ensemble 3: three stacked members
    got = _first_layer_magnitudes(l1_run)
    assert got is not None
    names, values = got
    # Per input column: its raw row plus (under the default recipe) its embedding rows.
    import torch

    from fitwell.embeddings import per_input

    arch = fitwell.load_run(l1_run).model.arch
    rows = torch.as_tensor(np.abs(first).sum(axis=(0, 2)))
    expected = per_input(rows, arch.first_layer_sources, arch.n_inputs).numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert names == ["signal", "noise_a", "noise_b"]


def _l1_section(folder: Path) -> str:
    html = (folder / REPORT_FILE).read_text(encoding="utf-8")
    return html[html.index('id="l1"') : html.index('id="findings"')]


def test_l1_section_is_one_line_when_l1_is_off(tmp_path: Path) -> None:
    fitwell.train(dataset="iris", out=tmp_path / "run", ensemble=1, **FAST)
    section = _l1_section(tmp_path / "run")
    assert "<img" not in section  # no bar per input column
    assert section.count("<p") == 1
    assert "L1 was off" in section


def test_l1_section_keeps_the_chart_when_l1_is_on(l1_run: Path) -> None:
    section = _l1_section(l1_run)
    assert "L1 was off" not in section
    assert 'alt="first-layer weight magnitude per input column"' in section


def test_l1_strengths_come_from_the_population_or_the_config(tmp_path: Path) -> None:
    from fitwell.report.build import _l1_strengths

    assert _l1_strengths(tmp_path, {"population": [{"l1": 0.0}, {"l1": 0.1}]}) == [0.0, 0.1]
    assert _l1_strengths(tmp_path, {}) is None  # no config.toml: not known, not "off"
    (tmp_path / runs.CONFIG_FILE).write_text("l1 = 0.0\n", encoding="utf-8")
    assert _l1_strengths(tmp_path, {}) == [0.0]
