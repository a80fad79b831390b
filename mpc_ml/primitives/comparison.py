"""Comparisons on additive shares, by the sign bit.

x < 0 is the top bit of x as a 64-bit word (values stay below 2^62 in magnitude, so
differences of two encoded values never wrap). The bit is computed in binary (msb: a
fan-in-4 carry tree on bit-sliced words) and brought back as an additive 0/1 *integer*
share (B2A of one bit), so that multiplying by it needs no truncation:
relu(x) = x - x * [x < 0]. Where the bit is wanted only to multiply values by it (relu,
abs, clamp, max), the B2A and the products share one round (ltz_times).

Costs for n = 2 (protocols/comparison.toml has every formula): ltz 5 rounds, 26.2 + 1/8
bytes per element to each peer (paid in whole words of 64 elements, 1672 bytes each);
relu 5 rounds too, 8 bytes more per element (the product rides on the B2A's opening).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..session import Session
from .beaver import beaver_many
from ..providers.base import MAX_MONOMIAL_DEGREE
from .binary import and_monomials, b2a_bits, bit_products, msb
from .fss import ltz_fss

Value = torch.Tensor | Callable[[], torch.Tensor]
"""A share, or a callable giving it, read after the comparison's first opening (a value
that a rider on that opening settles)."""


def ltz(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Additive integer shares of [x < 0] (0 or 1) for additively shared x, by the
    method of config.comparison: the carry tree ('circuit') or an FSS key ('fss')."""
    if session.config.comparison == "fss":
        return ltz_fss(session, x)
    return b2a_bits(session, msb(session, x), [0])[..., 0]


def ltz_times(session: Session, x: torch.Tensor,
              values: list[Value]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """([x < 0] as additive integer shares, and value * [x < 0] for each value): each
    value has x's shape, possibly with trailing dims over which the bit is broadcast.
    The circuit's msb, then its B2A and the products in one round (binary.bit_products);
    with 'fss', the FSS comparison, then one round of Beaver products."""
    if session.config.comparison == "fss":
        bit = ltz_fss(session, x)
        resolved = [v() if callable(v) else v for v in values]
        shaped = [bit.reshape(bit.shape + (1,) * (v.dim() - bit.dim())) for v in resolved]
        return bit, mul_bits(session, list(zip(resolved, shaped)))
    word = msb(session, x)
    return bit_products(session, word, [v() if callable(v) else v for v in values])


def mul_bits(session: Session, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """x * bit for shared values and shared 0/1 integer bits: one round, no truncation."""
    return beaver_many(session, [("mul", x, b, {}) for x, b in pairs])


def select(session: Session, bit: torch.Tensor,
           pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """For each (a, b): bit ? a : b, i.e. b + bit * (a - b), in one round."""
    products = mul_bits(session, [(a - b, bit) for a, b in pairs])
    return [b + p for (_, b), p in zip(pairs, products)]


def negative_part(session: Session, x: Value,
                  probe: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * [probe < 0], [probe < 0]), probe defaulting to x: what relu, abs and clamp are
    made of (ltz_times). x may be a callable, read after the comparison's first opening."""
    negative, (part,) = ltz_times(session, x if probe is None else probe, [x])
    return part, negative


def relu(session: Session, x: torch.Tensor) -> torch.Tensor:
    """max(x, 0): x - x * [x < 0]."""
    return x - negative_part(session, x)[0]


def max_along_last(session: Session, x: torch.Tensor, index_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last dim by a tournament: (max shares, index shares * index_scale);
    index_scale 0 skips the index.

    Each level compares elements 2i and 2i+1 (keeping the left one on ties, so the
    first maximum wins, as in torch) and halves the length: ceil(log2 k) levels, each
    one comparison whose last round also selects (ltz_times).
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
        moves = [right - left] + ([right_i - left_i] if index_scale else [])
        _, (d_val, *d_idx) = ltz_times(session, left - right, moves)
        vals, inds = left + d_val, (left_i + d_idx[0] if index_scale else left_i)
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
        _, (d_val, d_hot) = ltz_times(session, left - right, [right - left, hot_right - hot_left])
        vals, hots = left + d_val, hot_left + d_hot
        if m < x.shape[-1]:  # odd length: the last candidate goes up unopposed
            vals = torch.cat([vals, x[..., m:]], -1)
            hots = torch.cat([hots, hot[..., m:, :]], -2)
        x, hot = vals, hots
    return x[..., 0], hot[..., 0, :]


ALL_PAIRS_UP_TO = 10
"""max_all_pairs serves a last dim of at most this many elements (k (k - 1) / 2 comparisons)."""


def _pack(bits: torch.Tensor) -> torch.Tensor:
    """0/1 int64 bits (any shape) packed 64 to a word (linear over XOR: shares stay shares)."""
    flat = bits.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 64)]).view(-1, 64)
    return (flat << torch.arange(64, device=flat.device)).sum(-1)


def _unpack(words: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    bits = (words.unsqueeze(-1) >> torch.arange(64, device=words.device)) & 1
    return bits.reshape(-1)[:like.numel()].reshape(like.shape)


def and_all(session: Session, bits: list[torch.Tensor]) -> torch.Tensor:
    """The AND of XOR-shared 0/1 bits (equal shapes), packed 64 to a word:
    ceil(log5(len)) rounds of 5-input ANDs (binary.and_monomials)."""
    words = [_pack(b) for b in bits]
    while len(words) > 1:
        groups = [words[i:i + MAX_MONOMIAL_DEGREE] for i in range(0, len(words), MAX_MONOMIAL_DEGREE)]
        inputs = [w for g in groups for w in g]
        starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
        monomials = [tuple(range(a, a + len(g))) for a, g in zip(starts, groups)]
        words = and_monomials(session, inputs, monomials)
    return _unpack(words[0], bits[0])


def max_all_pairs(session: Session, x: torch.Tensor,
                  with_zero: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(max over a short last dim, integer one-hot of the first maximum (..., k)), in one
    comparison depth instead of ceil(log2 k); with_zero adds 0 as a first candidate, so that
    the max is max(relu(x)) (the one-hot is all zero where 0 wins, ties with 0 included).

    All c (c - 1) / 2 differences of the c candidates (c <= ALL_PAIRS_UP_TO) go through one
    msb; candidate i wins when it beats every j < i strictly and ties or beats every j > i
    (the first maximum wins, as in torch): the AND of its c - 1 oriented bits (and_all);
    one bit_products round gives the one-hot and sum_i win_i x_i. Rounds for n = 2:
    4 + ceil(log5(c - 1)) + 1.
    """
    k = x.shape[-1]
    c = k + int(with_zero)
    if not 1 <= k or c > ALL_PAIRS_UP_TO:
        raise ValueError(f"max_all_pairs: {c} candidates is not in 1..{ALL_PAIRS_UP_TO}")
    if c == 1:
        hot = torch.ones_like(x) if session.rank == 0 else torch.zeros_like(x)
        return x[..., 0], hot
    z = int(with_zero)  # 0 comes first: an element must beat it strictly (relu'(0) = 0)
    candidates = torch.cat([torch.zeros_like(x[..., :1]), x], -1) if with_zero else x
    pairs = [(i, j) for i in range(c) for j in range(i + 1, c)]
    left = torch.tensor([i for i, _ in pairs], device=x.device)
    right = torch.tensor([j for _, j in pairs], device=x.device)
    below = msb(session, candidates[..., left] - candidates[..., right])  # [x_i < x_j], i < j
    ones = 1 if session.rank == 0 else 0
    column = {pair: col for col, pair in enumerate(pairs)}
    beats = [[below[..., column[(j, i)]] if j < i else below[..., column[(i, j)]] ^ ones
              for j in range(c) if j != i] for i in range(z, c)]
    wins = and_all(session, [torch.stack([beats[i][m] for i in range(k)], -1) for m in range(c - 1)])
    hot, (chosen,) = bit_products(session, wins, [x])
    return chosen.sum(-1), hot
