# The README's commands. `make demo` and `make test` create the virtualenv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv demo test test-fast lint clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

venv: $(BIN)/.installed  ## create .venv with the provider, its extras and the test tools

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,javascript]'
	touch $@

demo: venv       ## a real sync: sample SQLite warehouse → Airflow → localstripe, run twice
	$(BIN)/python scripts/demo.py

test: venv       ## the whole test suite (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv  ## everything but the slow end-to-end DAG runs
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: venv       ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy krenalis_airflow dags

clean:           ## remove the demo's files and caches (keeps .venv)
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
