# The entry points: `make run` and `make test` work on a fresh clone; CI calls the same targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run simulate test check format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@ $(VENV)/.run

## Serve the gateway as config.yaml says: 127.0.0.1:8000 with the built-in simulator.
run: $(VENV)/.run
	$(BIN)/sse-gateway serve

## Run the simulator alone on port 8001.
simulate: $(VENV)/.run
	$(BIN)/sse-gateway simulate --port 8001

## Install what the suite needs and run it.
test: $(VENV)/.test
	$(BIN)/pytest

## Format check, lint and type check.
check: $(VENV)/.test
	$(BIN)/ruff format --check gateway tests
	$(BIN)/ruff check gateway tests
	$(BIN)/mypy

format: $(VENV)/.test
	$(BIN)/ruff format gateway tests
	$(BIN)/ruff check --fix gateway tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
