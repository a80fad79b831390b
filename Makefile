# `make demo` and `make test` each set up what they need from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned here: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a CPU wheel.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test bench venv clean

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,bench,mpi]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mpc-ml demo

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/ops.py

clean:
	rm -rf $(VENV) build *.egg-info
