# Two entry points: `make demo` (the embedded-default experiment) and `make test` (lint + test suite).
# Both create .venv and install diffmem into it. Where a local CPU wheel of torch $(TORCH_LOCAL) is
# reachable without an index (pip's find-links), it is used; elsewhere pip resolves torch normally.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_LOCAL ?= 2.13.0
PIP         := $(VENV)/bin/pip
PY          := $(VENV)/bin/python
DEMO_OUT    ?= out/digits-emm

.PHONY: demo test lint install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# install torch first: from a local wheel when one is there, so nothing pulls a multi-GB CUDA build.
# Only its metadata is checked here: importing torch before NumPy is installed prints torch's
# "Failed to initialize NumPy" warning; the import is checked once NumPy is there (.base).
$(VENV)/.torch: | $(VENV)/bin/python
	@if $(PIP) install -q --no-index --no-deps "torch==$(TORCH_LOCAL)" 2>/dev/null; then \
	  echo "torch $(TORCH_LOCAL) from a local wheel"; \
	  $(PIP) install -q "torch==$(TORCH_LOCAL)" 2>&1 | grep -v '^WARNING: Location' || true; \
	else \
	  $(PIP) install -q torch 2>&1 | grep -v '^WARNING: Location' || true; \
	fi
	@$(PY) -c "import importlib.metadata as m; m.version('torch')" && touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e . 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c "import numpy, torch, diffmem" && touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e ".[dev,faiss,ray,onnx,diffusers]" 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c "import pytest, ruff" && touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

demo: $(VENV)/.base
	$(VENV)/bin/diffmem emm --preset digits --out $(DEMO_OUT)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks

test: $(VENV)/.dev lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
