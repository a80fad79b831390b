"""Leading-bit normalisation: the bits that say where x's magnitude lies.

For the reciprocal, square root and logarithm, x = m * 2^e with 0.5 <= |m| <= 1 is
the classic range reduction (Catrina & Saxena, "Secure computation with fixed-point
numbers", FC 2010). Here, in csa_rounds + 8 rounds (8 for n = 2), on whole words below
SLICED_FROM elements:
1. w = A2B(x) (csa_rounds + 4 rounds);
2. w' = w ^ (w >> 63): the ones' complement of negative x, |x| - 1, whose leading bit
   is |x|'s except at exact powers of two (then |m| = 1 instead of 0.5, still fine);
   local, since an arithmetic shift of each XOR share broadcasts its sign bit;
3. prefix OR from the top, s |= (s >> t) | (s >> 2t) | (s >> 3t) for t = 1, 4, 16 (3
   rounds: OR of four words is the complement of one 4-input AND of their complements,
   binary.and_monomials), then the one-hot leading bit lead = s ^ (s >> 1);
4. one B2A of 64 bits (1 round): bits 0..62 of lead and the sign bit 63 of w, each
   weighted by the caller's public columns (sum_j bit_j * weight_j) in one int64 matmul.
From SLICED_FROM elements on, the same steps on bit slices (64 rows of 64 elements a
word): binary.sliced_sum (the radix-4 Kogge-Stone prefix over the rows, 4 rounds), the
rows flipped by the sign row, the suffix OR over the rows (3 rounds), the one-hot rows
unsliced, then the same B2A. protocols/approximations.toml [normalisation] has the costs.
"""
from __future__ import annotations

import torch

from ..session import Session
from ..providers.base import shift_rows
from .binary import SPANS, WORD_BITS, a2b, and_monomials, b2a_weighted, sliced_sum, unslice

SIGN_BIT = 63


SLICED_FROM = 21
"""Below 21 elements the whole-word adder and prefix OR (272 bytes per element to each peer,
264 for 2 parties) are cheaper than bit slices (5632 bytes per block of 64, 5120)."""


def leading_bit_weighted(session: Session, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Additive shares (..., k) of sum_j weights[j, k] * bit_j, where bits 0..62 are the
    one-hot leading bit of |x| and bit 63 is the sign of x (weights: public int64 (64, k))."""
    ones = -1 if session.rank == 0 else 0  # XOR with a public all-ones word: NOT
    if x.numel() < SLICED_FROM:
        w = a2b(session, x)
        s = w ^ (w >> SIGN_BIT)  # bit 63 is now 0 in the shared value
        for t in SPANS:  # bit 63 of s is 0, so the arithmetic shifts are logical ones
            (none,) = and_monomials(session, [(s >> (k * t)) ^ ones for k in range(4)], [(0, 1, 2, 3)])
            s = none ^ ones
        lead = s ^ (s >> 1)
        word = lead ^ (w & torch.tensor(-(1 << 63), dtype=torch.int64, device=w.device))
        return b2a_weighted(session, word, list(range(WORD_BITS)), weights)
    rows = sliced_sum(session, x)
    sign = rows[SIGN_BIT]
    s = torch.cat([rows[:SIGN_BIT] ^ sign, torch.zeros_like(rows[SIGN_BIT:])])  # |x| - 1 for x < 0
    for t in SPANS:  # suffix OR: row r |= rows r + t, r + 2t, r + 3t (rows past 63 are 0)
        (none,) = and_monomials(session, [s ^ ones], [((0, -3 * t), (0, -2 * t), (0, -t), 0)],
                                ones_outside=(0,))
        s = none ^ ones
    lead = s ^ shift_rows(s, -1)
    lead[SIGN_BIT] = sign
    word = unslice(lead, x.numel()).reshape(x.shape)
    return b2a_weighted(session, word, list(range(WORD_BITS)), weights)
