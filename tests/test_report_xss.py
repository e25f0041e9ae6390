"""Every user string in report.html is text: HTML/JS payloads as column names and class labels."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from fitwell.report import REPORT_FILE
from tests.conftest import run_cli
from tests.test_report import parse

PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "javascript:alert(3)",
    "{{7*7}}",
    "--><svg onload=alert(4)><!--",
    "température 温度 $x$",  # a script the font may lack, and mathtext dollars
]


def _assert_inert(tags: list[tuple[str, dict[str, str | None]]]) -> None:
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "link")]
    handlers = [(t, k) for t, attrs in tags for k in attrs if k.lower().startswith("on")]
    assert handlers == []
    for _, attrs in tags:
        for key in ("href", "src", "action", "xlink:href"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith("javascript:"), (key, value)


def test_payloads_in_columns_labels_and_file_name_stay_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 160
    frame = pd.DataFrame(
        {
            PAYLOADS[0]: rng.normal(size=n),
            PAYLOADS[2]: rng.normal(size=n),
            PAYLOADS[3]: rng.normal(size=n),
            PAYLOADS[4]: rng.normal(size=n),
            PAYLOADS[5]: rng.normal(size=n),
        }
    )
    labels = np.array([PAYLOADS[1], PAYLOADS[3]])
    frame["label"] = labels[(frame[PAYLOADS[0]] > 0).astype(int)]
    data = tmp_path / '"><b onclick=alert(5)>evil.csv'
    frame.to_csv(data, index=False)
    out = tmp_path / "run<svg onload=alert(6)>"
    result = run_cli(
        "train",
        str(data),
        "--target",
        "label",
        "--hidden",
        "8",
        "--max-epochs",
        "3",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr

    page = parse(out / REPORT_FILE)
    _assert_inert(page.tags)
    # The template has no script of its own; a Content-Security-Policy forbids any anyway.
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in str(csp[0].get("content"))
    text = page.section_text()
    for payload in PAYLOADS:
        assert payload in text, payload  # shown to the reader, as text
    assert '"><b onclick=alert(5)>evil.csv' in text  # file name
    assert "run<svg onload=alert(6)>" in text  # run name

    # The charts carry the names too (tick labels); inside the SVG they must be inert as well.
    for tag, attrs in page.tags:
        if tag != "img":
            continue
        src = str(attrs["src"])
        svg = base64.b64decode(src.split(",", 1)[1]).decode("utf-8")
        inner = parse_svg(svg)
        _assert_inert(inner)


def parse_svg(svg: str) -> list[tuple[str, dict[str, str | None]]]:
    from tests.test_report import _Page

    page = _Page()
    page.feed(svg)
    return page.tags
