# Two commands do all set-up on a fresh machine:
#   make demo   - installs into .venv and runs the embedded default end to end
#   make test   - installs into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/sftkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on disk (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,peft]"
	touch $(BIN)/sftkit

demo: $(BIN)/sftkit
	$(BIN)/sftkit demo

test: $(BIN)/sftkit
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(BIN)/sftkit
	$(BIN)/python benchmarks/bench_format.py
	$(BIN)/python benchmarks/bench_compose.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_registry.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
