# Two commands for a newcomer: `make serve` (run a broker) and `make test` (run every test);
# `make lint` runs every static check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

serve: $(VENV)/.installed-run
	$(BIN)/streamd serve --config config/streamd.toml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

# ruff, the layer contracts and mypy (strict on streamd/log, streamd/groups and streamd/kafka;
# the per-package strictness lives in pyproject.toml).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check streamd tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) data
