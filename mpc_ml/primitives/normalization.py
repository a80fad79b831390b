"""Leading-bit normalisation: the bits that say where x's magnitude lies.

For the reciprocal, square root and logarithm, x = m * 2^e with 0.5 <= |m| <= 1 is
the classic range reduction (Catrina & Saxena, "Secure computation with fixed-point
numbers", FC 2010). Here, in 14 rounds for n = 2:
1. w = A2B(x) (7 rounds);
2. w' = w ^ (w >> 63): the ones' complement of negative x, |x| - 1, whose leading bit
   is |x|'s except at exact powers of two (then |m| = 1 instead of 0.5, still fine);
   local, since an arithmetic shift of each XOR share broadcasts its sign bit;
3. prefix OR from the top, s |= s >> 2^k for k < 6 (6 AND rounds), then the one-hot
   leading bit lead = s ^ (s >> 1);
4. one B2A of 64 bits (1 round): bits 0..62 of lead and the sign bit 63 of w.
Callers then form any public weighting sum_j bit_j * weight_j locally.
"""
from __future__ import annotations

import torch

from ..session import Session
from .binary import LOG_WORD_BITS, WORD_BITS, a2b, and_many, b2a_bits

SIGN_BIT = 63


def leading_bit_and_sign(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Additive 0/1 integer shares (..., 64): one-hot leading bit of |x| in 0..62, sign at 63."""
    w = a2b(session, x)
    s = w ^ (w >> SIGN_BIT)  # bit 63 is now 0 in the shared value
    for k in range(LOG_WORD_BITS):
        shifted = s >> (1 << k)  # bit 63 of s is 0, so arithmetic = logical shift
        (both,) = and_many(session, [(s, shifted)])
        s = s ^ shifted ^ both  # s | shifted
    lead = s ^ (s >> 1)
    word = lead ^ (w & torch.tensor(-(1 << 63), dtype=torch.int64, device=w.device))
    return b2a_bits(session, word, list(range(WORD_BITS)))
