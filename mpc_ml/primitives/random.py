"""Private uniform randomness: additive shares of a fixed-point value in [0, 1) that no
party knows (protocols/random.toml). mpc.rand, and randn and bernoulli through it.

At scale 2^f (f = precision_bits) a value in [0, 1) on the 2^-f grid is an f-bit
integer u in {0, .., 2^f - 1} standing for u / 2^f. The protocol makes such a u
uniform and additively shared, with no party learning it:

1. party i draws an f-bit word u_i from its own cryptographic PRG (no other party
   can predict it); u = u_0 ^ u_1 ^ .. ^ u_{n-1} is then XOR-shared by construction.
   u is uniform on {0, 1}^f as soon as one party's u_i is uniform and independent of
   the rest: XOR with a fixed word is a bijection of {0, 1}^f, so u_i ^ (the others'
   XOR) takes every value with probability 2^-f whatever the others drew (a one-time
   pad). For the same reason each party's view (its own u_i) says nothing of u: the
   others' XOR, uniform and unknown to it, pads it.
2. B2A of the f bits with one daBit word r (binary.b2a_weighted, b2a.toml): open
   the bits c_j of u ^ r at positions 0 .. f-1 (packed, one round), then
   [u_j] = c_j + [r_j] - 2 c_j [r_j] and [u] = sum_{j < f} 2^j [u_j], one int64
   matmul of the bits by the public weights 2^j. c is uniform and independent of u
   (each r_j is uniform and used once), so the opening reveals nothing.

Each value k / 2^f, k = 0 .. 2^f - 1, has probability exactly 2^-f: mean
(1 - 2^-f) / 2, variance (1 - 2^-2f) / 12. Exact: no truncation, no approximation.
Summing additive shares drawn in [0, 2^f) instead would be neither uniform (an
Irwin-Hall sum) nor reducible mod 2^f without a wrap-around bit; the XOR sharing has
neither problem, at the price of the one B2A round.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..session import Session
from .binary import b2a_weighted


def uniform_share(session: Session, shape: Sequence[int],
                  device: torch.device | str | None = None) -> torch.Tensor:
    """This party's additive share (int64, scale 2^precision_bits) of uniform values on
    the 2^-f grid of [0, 1), one per element of shape, that no party knows: each party's
    own f random bits XORed together, then one B2A. One round; ceil(numel f / 8) bytes
    to each peer; one 'dabits' correlation of numel words at positions 0 .. f-1."""
    f = session.config.precision_bits
    word = session.own.random_ring(tuple(shape), device) & ((1 << f) - 1)
    weights = torch.tensor([[1 << k] for k in range(f)], dtype=torch.int64)
    return b2a_weighted(session, word, list(range(f)), weights)[..., 0]
