"""`.ci/run` runs exactly the README's two commands, so what CI checks is what a new user runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The only lines of .ci/run that are not commands: strict mode, and running from the clone's root.
CI_PREAMBLE = {"set -euo pipefail", 'cd "$(dirname "$0")/.."'}


def readme_commands(text: str) -> list[str]:
    """The commands of the README's first shell block, comments stripped."""
    block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert block is not None, "README.md has no ```bash block"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def ci_commands(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#") and line not in CI_PREAMBLE]


def test_ci_runs_exactly_the_readme_commands() -> None:
    readme = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme == ["make demo", "make test"]
    assert ci_commands((ROOT / ".ci" / "run").read_text(encoding="utf-8")) == readme


def test_the_parsers_see_a_drift() -> None:
    """An extra set-up step in .ci/run, or a changed README command, must not go unnoticed."""
    assert readme_commands("# t\n```bash\nmake demo  # hi\n\nmake check\n```\n") == [
        "make demo",
        "make check",
    ]
    ci = "#!/usr/bin/env bash\nset -euo pipefail\napt-get install -y chromium\nmake test\n"
    assert ci_commands(ci) == ["apt-get install -y chromium", "make test"]


def test_readme_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for command in readme_commands((ROOT / "README.md").read_text(encoding="utf-8")):
        target = command.removeprefix("make ")
        assert re.search(rf"^{target}:", makefile, re.M), f"no `{target}` target in the Makefile"
    # `make demo` writes into runs/: it creates the folder first, and can run twice.
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert demo is not None
    assert demo.group(1).index("mkdir -p runs") < demo.group(1).index("fitwell train")
    assert "--overwrite" in demo.group(1)
