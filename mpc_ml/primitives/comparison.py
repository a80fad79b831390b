"""Comparisons on additive shares, by the sign bit.

x < 0 is the top bit of x as a 64-bit word (values stay below 2^62 in magnitude, so
differences of two encoded values never wrap). The bit is computed in binary (msb: a
carry tree on bit-sliced words) and brought back as an additive 0/1 *integer* share
(B2A of one bit), so that multiplying by it needs no truncation:
relu(x) = x - x * [x < 0].

Costs for n = 2 (protocols/comparison.toml has every formula): ltz 8 rounds, 46.5 + 1/8
bytes per element to each peer (paid in whole words of 64 elements, 2976 bytes each);
relu adds one Beaver product (16 bytes, 1 round): 9 rounds, 62.6 bytes per element.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..session import Session
from .beaver import beaver_many
from .binary import b2a_bits, msb
from .fss import ltz_fss


def ltz(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Additive integer shares of [x < 0] (0 or 1) for additively shared x, by the
    method of config.comparison: the carry tree ('circuit') or an FSS key ('fss')."""
    if session.config.comparison == "fss":
        return ltz_fss(session, x)
    return b2a_bits(session, msb(session, x), [0])[..., 0]


def mul_bits(session: Session, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """x * bit for shared values and shared 0/1 integer bits: one round, no truncation."""
    return beaver_many(session, [("mul", x, b, {}) for x, b in pairs])


def select(session: Session, bit: torch.Tensor,
           pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """For each (a, b): bit ? a : b, i.e. b + bit * (a - b), in one round."""
    products = mul_bits(session, [(a - b, bit) for a, b in pairs])
    return [b + p for (_, b), p in zip(pairs, products)]


def negative_part(session: Session, x: torch.Tensor | Callable[[], torch.Tensor],
                  probe: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * [probe < 0], [probe < 0]), probe defaulting to x: what relu, abs and clamp are
    made of (a comparison, one product). x may be a callable, read after the comparison
    (a value that a rider on the comparison's opening settles)."""
    negative = ltz(session, x if probe is None else probe)
    (part,) = mul_bits(session, [(x() if callable(x) else x, negative)])
    return part, negative


def relu(session: Session, x: torch.Tensor) -> torch.Tensor:
    """max(x, 0): x - x * [x < 0]."""
    return x - negative_part(session, x)[0]


def max_along_last(session: Session, x: torch.Tensor, index_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last dim by a tournament: (max shares, index shares * index_scale);
    index_scale 0 skips the index.

    Each level compares elements 2i and 2i+1 (keeping the left one on ties, so the
    first maximum wins, as in torch) and halves the length: ceil(log2 k) levels, each
    one comparison plus one selection round.
    """
    k = x.shape[-1]
    if k == 0:
        raise ValueError("max of an empty dimension")
    idx = torch.arange(k, dtype=torch.int64, device=x.device).expand(x.shape) * index_scale
    idx = idx if session.rank == 0 else torch.zeros_like(idx)
    while x.shape[-1] > 1:
        m = x.shape[-1] // 2 * 2
        left, right = x[..., 0:m:2], x[..., 1:m:2]
        left_i, right_i = idx[..., 0:m:2], idx[..., 1:m:2]
        right_wins = ltz(session, left - right)
        pairs = [(right, left), (right_i, left_i)] if index_scale else [(right, left)]
        vals, *rest = select(session, right_wins, pairs)
        inds = rest[0] if index_scale else left_i
        if m < x.shape[-1]:  # odd length: the last element goes up a level unopposed
            vals = torch.cat([vals, x[..., m:]], -1)
            inds = torch.cat([inds, idx[..., m:]], -1)
        x, idx = vals, inds
    return x[..., 0], idx[..., 0]


def max_one_hot(session: Session, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last dim (k) and the one-hot mask of the first maximum (..., k), as
    integer bits: the tournament of max_along_last, each candidate carrying its one-hot
    vector (k wide, so meant for small k: pooling windows, class scores)."""
    k = x.shape[-1]
    if k == 0:
        raise ValueError("max of an empty dimension")
    eye = torch.eye(k, dtype=torch.int64, device=x.device).expand(*x.shape, k)
    hot = eye.clone() if session.rank == 0 else torch.zeros_like(eye)
    while x.shape[-1] > 1:
        m = x.shape[-1] // 2 * 2
        left, right = x[..., 0:m:2], x[..., 1:m:2]
        hot_left, hot_right = hot[..., 0:m:2, :], hot[..., 1:m:2, :]
        right_wins = ltz(session, left - right)
        d_val, d_hot = mul_bits(session, [(right - left, right_wins),
                                          (hot_right - hot_left, right_wins.unsqueeze(-1))])
        vals, hots = left + d_val, hot_left + d_hot
        if m < x.shape[-1]:  # odd length: the last candidate goes up unopposed
            vals = torch.cat([vals, x[..., m:]], -1)
            hots = torch.cat([hots, hot[..., m:, :]], -2)
        x, hot = vals, hots
    return x[..., 0], hot[..., 0, :]
