"""mpc_ml: secure multi-party computation for machine learning on PyTorch.

Semi-honest parties compute on additive secret shares over Z_2^64 with fixed-point
encoding. See README.md for the threat model and DESIGN.md for the layers.
"""
from __future__ import annotations

from . import autograd  # installs the autograd recorder on MPCTensor ops
from .autograd import enable_grad, is_grad_enabled, no_grad
from .config import Config
from .launch import PartyError, init, run, shutdown
from .session import current as _current
from .tensor import MPCTensor, cat, conv1d, conv2d, encrypt, stack, where
from . import nn, optim  # noqa: E402  (after the tensor layer they build on)

__version__ = "0.1.0"


def rank() -> int:
    """This party's rank."""
    return _current().rank


def world_size() -> int:
    """The number of compute parties."""
    return _current().world_size


def stats() -> dict:
    """This party's traffic since the last reset: rounds, bytes_sent, bytes_received,
    messages (party to party), plus dealer_* counters under the dealer provider."""
    return _current().stats()


def reset_stats() -> None:
    """Zero this party's traffic counters."""
    _current().reset_stats()


__all__ = ["Config", "autograd", "nn", "optim", "enable_grad", "is_grad_enabled", "no_grad", "MPCTensor", "PartyError", "cat", "conv1d", "conv2d", "encrypt", "init",
           "rank", "reset_stats", "run", "shutdown", "stack", "stats", "where", "world_size"]
