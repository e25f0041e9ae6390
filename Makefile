# The README's two commands: `make demo` and `make test`. Each creates the environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup chromium demo test lint bench clean

$(BIN)/fitwell: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/fitwell

setup: $(BIN)/fitwell

demo: setup
	mkdir -p runs
	$(BIN)/fitwell train --dataset digits --out runs/digits-demo --overwrite

# The report's browser test opens report.html in headless Chromium: installed from Debian's
# packages when missing and running as root, otherwise one line says what to install.
chromium:
	@if command -v chromium || command -v chromium-browser || command -v google-chrome; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "error: make test needs Chromium for the report's browser test; install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun make test" >&2; \
		exit 1; \
	fi >/dev/null

test: setup chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/loop_overhead.py

clean:
	rm -rf $(VENV) runs
