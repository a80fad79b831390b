"""mpc_ml: secure multi-party computation for machine learning on PyTorch.

Semi-honest parties compute on additive secret shares over Z_2^64 with fixed-point
encoding. See README.md for the threat model and the layers (one folder each):

    cli/                                    the `mpc-ml` command
    serving/  compat/                       private inference; other frameworks' APIs
    nn/  optim/                             layers, losses, from_pytorch, checkpoints; SGD, Adam
    tensor/                                 MPCTensor, recording point, autograd, validation, trace
    primitives/                             protocols on shares
    launch/                                 mpc.run, mpc.init, runners, deployment files
    session.py                              one Session per party (comm, PRGs, provider)
    providers/                              correlated randomness: tfp, dealer
    comm/                                   links, frames, traffic counts
    core/  config.py                        ring kernels, codec, PRG, Op names; the Config
"""
from __future__ import annotations

import sys

from . import nn, optim, serving
from .config import Config
from .launch import PartyError, init, run, shutdown
from .session import current as _current
from .tensor import (MPCTensor, bernoulli, cat, conv1d, conv2d, enable_grad, encrypt,
                     is_grad_enabled, no_grad, rand, randn, stack, where)

__version__ = "0.1.0"

# `mpc_ml.inference` was the serving module's name before the layers had folders.
sys.modules[__name__ + ".inference"] = serving.inference
inference = serving.inference


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


__all__ = ["Config", "MPCTensor", "PartyError", "bernoulli", "cat", "conv1d", "conv2d", "enable_grad",
           "encrypt", "init", "inference", "is_grad_enabled", "nn", "no_grad", "optim", "rand", "randn",
           "rank", "reset_stats", "run", "serving", "shutdown", "stack", "stats", "where", "world_size"]
