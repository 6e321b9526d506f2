# Every target sets up .venv idempotently (CPU torch 2.13.0 from local disk, the compiled engine), then acts.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
NATIVE_SOURCES := $(wildcard engine/csrc/*.cpp engine/csrc/*.h) CMakeLists.txt pyproject.toml
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: setup test serve bench lint clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==2.13.0"
	$(PIP) install "scikit-build-core>=0.10" "nanobind>=2.0"
	touch $@

$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PIP) install --no-build-isolation -e ".[dev,ray]"
	touch $@

setup: $(VENV)/.built

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

serve: setup
	$(VENV)/bin/binpose serve --port $(PORT)

bench: setup
	$(VENV)/bin/binpose bench

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache
