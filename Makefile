# dicom-node: `make run` starts the node on its embedded default; `make test` runs the whole suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# pytest-xdist workers (one per core, at most this many): most e2e time is waiting on subprocesses.
TEST_PROCESSES ?= 4

.PHONY: install system-deps run test lint typecheck bench bench-ingest bench-deid clean

install: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

run: install
	$(BIN)/dicom-node serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -p no:cacheprovider -n auto --maxprocesses=$(TEST_PROCESSES) --durations=20 \
		--cov --cov-report=term --cov-report=xml:coverage.xml

bench: bench-ingest bench-deid

bench-ingest: install
	$(BIN)/python bench/ingest.py

bench-deid: install
	$(BIN)/python bench/deid.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage* coverage.xml
