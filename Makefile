# The README's two commands: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-packages run test lint bench clean

$(STAMP): pyproject.toml
	@echo "==> creating virtual environment $(VENV) and installing the project (first run: ~2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Debian packages the ingestion needs (docs/dependencies.md): LibreOffice converts legacy .doc
# files, Tesseract and its English model OCR PDF pages without a text layer
SYSTEM_PACKAGES ?= libreoffice-writer-nogui tesseract-ocr tesseract-ocr-eng

## setup: virtual environment, system packages (apt-get, when missing), llama-server build
## (cached, ~10 min once), models (cached)
setup: $(STAMP) system-packages
	$(BIN)/rag runtime prepare

system-packages:
	@if ! command -v soffice >/dev/null 2>&1 || ! command -v tesseract >/dev/null 2>&1 \
	  || [ -z "$$(ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata 2>/dev/null)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing $(SYSTEM_PACKAGES) with apt-get (legacy .doc, OCR; ~1 min once)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(SYSTEM_PACKAGES); \
	  else \
	    echo "==> note: legacy .doc and OCR need: sudo apt-get install $(SYSTEM_PACKAGES)"; \
	  fi; \
	fi

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
