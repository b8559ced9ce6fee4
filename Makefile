# The README's commands. `make demo` and `make test` create the virtualenv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv demo test test-fast lint clean e2e e2e-deps

help:            ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

venv: $(BIN)/.installed  ## create .venv with the provider, its extras and the test tools

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,javascript]'
	touch $@

demo: venv       ## a real sync: sample SQLite warehouse → Airflow → localstripe, run twice
	$(BIN)/python scripts/demo.py

test: venv e2e-deps  ## the whole test suite (what CI runs), end-to-end tests included
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv  ## everything but the slow end-to-end DAG runs
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

e2e: venv e2e-deps  ## only the tests that start a real Airflow (UI/REST, browser, Celery + S3)
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

# Python packages of the end-to-end tests; Debian's chromium and chromium-driver come from
# apt-get (.ci/run installs them; without them the browser test skips, except in CI).
e2e-deps: $(BIN)/.installed-e2e
$(BIN)/.installed-e2e: $(BIN)/.installed setup.cfg
	$(BIN)/pip install -q -e '.[dev,javascript,e2e]'
	touch $@

lint: venv       ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy krenalis_airflow dags benchmarks support

.PHONY: bench
bench: venv      ## benchmarks → benchmarks/REPORT.md and chart.png (~20 min; BENCH_ARGS=--quick: ~3 min)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:           ## remove the demo's files and caches (keeps .venv)
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
