"""report.html in a real headless Chromium: loads, no console errors, no network, a screenshot."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import fitwell
from fitwell.report import REPORT_FILE
from tests.browser import find_chromium, visit


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("FITWELL_NO_BROWSER"):
            pytest.skip("FITWELL_NO_BROWSER is set")
        pytest.fail("chromium is not installed; `.ci/run` installs it (apt-get install chromium)")
    return binary


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_checker_sees_errors_and_requests(chromium: str, tmp_path: Path) -> None:
    """The harness itself must catch what the real test asserts is absent."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><title>bad</title><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom'); missingFunction();</script>",
        encoding="utf-8",
    )
    page = visit(bad, binary=chromium, settle=0.5)
    assert page.loaded
    assert "http://127.0.0.1:9/x.png" in page.network_requests()
    assert any("boom" in e for e in page.console_errors)
    assert any("Uncaught" in e or "missingFunction" in e for e in page.console_errors)


def test_report_loads_offline_without_errors(chromium: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fitwell.train(dataset="iris", out=out, hidden=(8,), max_epochs=5, restarts=2, lr=0.01)
    page = visit(out / REPORT_FILE, binary=chromium)
    assert page.loaded
    assert page.title == "fitwell report · run"
    assert page.console_errors == []
    assert page.network_requests() == []
    assert any(u.startswith("data:image/svg+xml") for u in page.requests)  # the charts loaded
    width, height = _png_size(page.screenshot)
    assert width == 1200 and height > 1500  # the whole page, not only the first screen
    (tmp_path / "report.png").write_bytes(page.screenshot)
