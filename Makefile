# The README's two commands: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	@echo "==> creating virtual environment $(VENV) and installing the project (first run: ~2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

## setup: virtual environment, llama-server build (cached, ~10 min once), models (cached)
setup: $(STAMP)
	$(BIN)/rag runtime prepare

## run: everything embedded on this machine, sample documents ingested
run: setup
	$(BIN)/rag run --samples

## test: the whole test suite against the real llama-server, Qdrant local mode, SQLite, PostgreSQL
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

## lint: the quality gates CI runs
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .rag-data .mypy_cache .ruff_cache .pytest_cache
