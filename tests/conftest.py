"""Shared test settings (every configuration the public API promises) and helpers."""
import itertools
import json

import pytest
import torch

import mpc_ml as mpc
from mpc_ml.core.encoding import encode

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


def rnd(name: str, *shape, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Seeded float32 uniform data in [lo, hi)."""
    return torch.rand(tuple(shape), generator=seeded(name), dtype=torch.float32) * (hi - lo) + lo


def enc(t: torch.Tensor, src: int) -> "mpc.MPCTensor":
    """src's t, secret-shared (every party generated the same t; only src's copy is used)."""
    return mpc.encrypt(t if mpc.rank() == src else None, src=src, shape=t.shape)


def rounded(t: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """t as the parties see it after fixed-point encoding."""
    return encode(t, bits).to(torch.float64) / 2 ** bits


def measured(fn):
    """(fn(), this party's stats for exactly that call)."""
    mpc.reset_stats()
    out = fn()
    return out, mpc.stats()


def request_bytes(kind: str, **params) -> int:
    """Length of a correlation request as the specs define it (compact sorted JSON)."""
    return len(json.dumps({"kind": kind, "params": params}, separators=(",", ":"),
                          sort_keys=True))
