# The README's two commands: `make demo` and `make test`. Each creates the environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/fitwell: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/fitwell

setup: $(BIN)/fitwell

demo: setup
	rm -rf runs/digits-demo
	$(BIN)/fitwell train --dataset digits --out runs/digits-demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/loop_overhead.py

clean:
	rm -rf $(VENV) runs
