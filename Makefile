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

# The wheels a lent GPU machine lacks (its python3 3.12 has torch, pytest, pytest-xdist,
# numpy, matplotlib, ... but no `cryptography`, and no internet): downloaded here into .whl
# for CPython 3.12 on manylinux x86_64, pinned to the versions in $(VENV) where it has
# them. The device run carries .whl and benchmarks/gpu_check.sh installs it
# (benchmarks/README.md, "On a lent GPU").
GPU_WHEELS ?= cryptography cffi pycparser dcap-qvl
.PHONY: gpu-wheels
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	pins=$$( { test -x $(PY) && $(PY) -c 'import importlib.metadata as m, sys; print(" ".join( \
		p + ("==" + m.version(p) if list(m.distributions(name=p)) else "") for p in sys.argv[1:]))' \
		$(GPU_WHEELS); } || echo $(GPU_WHEELS) ) && echo "gpu-wheels: $$pins" && \
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $$pins
	@ls -l .whl
