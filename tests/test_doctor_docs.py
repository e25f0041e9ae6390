"""The README example (docs/doctor.md) runs as written, and a healthy CNN gets no warning."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "doctor.md"


def test_cnn_example_runs_and_reports_no_warning(capsys: object) -> None:
    text = DOC.read_text()
    block = re.search(r"<!-- example:cnn[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)  # noqa: S102
    doc = namespace["doc"]
    assert len(doc.records) == 5 and doc.layers == ["0", "2", "5"]
    assert [f for f in doc.findings() if f["severity"] != "info"] == []
