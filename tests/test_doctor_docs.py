"""The doctor examples in README.md and docs/doctor.md run as written; no warning when healthy."""

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


def test_readme_loop_example_runs_and_reports_no_warning() -> None:
    readme = DOC.parents[1] / "README.md"
    block = re.search(r"<!-- example:loop[^>]*-->\n```python\n(.*?)```", readme.read_text(), re.S)
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), str(readme), "exec"), namespace)  # noqa: S102
    doc = namespace["doc"]
    assert len(doc.records) == 5 and doc.layers == ["0", "2"]
    assert [f for f in doc.findings() if f["severity"] != "info"] == []
