"""Shared test settings: every configuration the public API promises."""
import itertools

import pytest
import torch

WORLD_SIZES = (2, 3, 4)
BACKENDS = ("inproc", "tcp", "mpi")  # make test installs mpi4py and mpich
PROVIDERS = ("tfp", "dealer")

# (world_size, backend, provider) for the full matrix
CONFIGS = list(itertools.product(WORLD_SIZES, BACKENDS, PROVIDERS))

FIXED_POINT_UNIT = 2.0 ** -16


def config_id(cfg) -> str:
    n, backend, provider = cfg
    return f"n{n}-{backend}-{provider}"


def seeded(name: str) -> torch.Generator:
    """A generator seeded by a name: the same data in every party thread or process."""
    g = torch.Generator()
    g.manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(name)))
    return g


@pytest.fixture(params=CONFIGS, ids=config_id)
def matrix_config(request):
    return request.param
