# `make demo` and `make test` each set up what they need from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned here: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a CPU wheel.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-deps lint bench venv clean

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,bench,mpi]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mpc-ml demo

# The deployment tests start an sshd (Debian's openssh-server) and network namespaces
# (iproute2's ip and tc); both need root, as on the CI machine.
test-deps:
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2)

# ruff is pinned in the dev extra (setup.cfg); its rules are in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check mpc_ml tests benchmarks launchers

test: venv test-deps lint
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/ops.py

clean:
	rm -rf $(VENV) build *.egg-info
