"""Distributed comparison functions (DCF): two keys that share f(x) = beta [x < alpha].

Boyle, Chandran, Gilboa, Gupta, Ishai, Kohli, Lai: "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021, Figure 3 (Gen and Eval
of the DCF), for inputs of BITS = 63 bits and outputs in Z_2^64. Given the keys k_0, k_1,
eval(0, k_0, x) + eval(1, k_1, x) = beta if x < alpha, else 0 (mod 2^64); either key
alone is pseudorandom and says nothing about alpha or beta.

A key is walked from the top bit of x down. Each level expands a 128-bit seed with
G(s) = (s_L, t_L, s_R, t_R, v_L, v_R); the correction word of the level (common to both
keys: s_CW, v_CW and the two t_CW bits) makes the two parties' seeds equal off alpha's
path, and the v_CW terms add up to beta exactly where x leaves the path to the left of
alpha (x_i = 0 < alpha_i = 1). G is fixed-key AES-128 in the Matyas-Meyer-Oseas mode,
G_j(s) = AES_K(s ^ j) ^ s ^ j for blocks j = 0, 1, 2 (a correlation-robust hash, as in
the FSS implementations of Boyle et al. and Sigma/Orca): block 0 gives s_L and t_L (its
low bit), block 1 s_R and t_R, block 2 v_L and v_R.

Everything is vectorised over N elements at once; seeds are (N, 2) int64 arrays (two
64-bit halves). Arithmetic is in int64, wrapping mod 2^64.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BITS = 63
"""The input width: comparisons of the low 63 bits of a masked 64-bit word."""

_KEY = bytes(range(16))  # the fixed, public AES key of G (its security needs none secret)
_LOW_BIT_CLEAR = np.int64(-2)


@dataclass
class PublicKeyPart:
    """The correction words, common to both keys (level-major arrays over N elements)."""

    s_cw: np.ndarray  # (BITS, N, 2) int64: the seed correction of each level
    v_cw: np.ndarray  # (BITS, N) int64: the value correction of each level
    t_left: np.ndarray  # (N,) int64: bit i is level i's t_CW^L
    t_right: np.ndarray  # (N,) int64: bit i is level i's t_CW^R
    last: np.ndarray  # (N,) int64: the final correction CW^(n+1)


def _mask(bit: np.ndarray, width: int = 1) -> np.ndarray:
    """All-ones where bit is 1, for 0/1 int64 bits; width 2 repeats it for (N, 2) seeds
    (materialised: numpy is much slower broadcasting an (N, 1) mask)."""
    return -bit if width == 1 else np.repeat(-bit, width).reshape(-1, width)


def _choose(mask: np.ndarray, if_zero: np.ndarray, if_one: np.ndarray) -> np.ndarray:
    """Elementwise mask ? if_one : if_zero, for an all-ones/zeros mask of the same shape."""
    return if_zero ^ ((if_zero ^ if_one) & mask)


_local = threading.local()  # one encryptor per thread (in-process parties are threads)


def _hash(blocks: np.ndarray) -> np.ndarray:
    """AES_K(b) ^ b for every 128-bit block of an (..., 2) int64 array (the MMO hash)."""
    if not hasattr(_local, "encrypt"):
        _local.encrypt = Cipher(algorithms.AES(_KEY), modes.ECB()).encryptor()
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(-1)
    out = np.empty(raw.size + 15, dtype=np.uint8)
    _local.encrypt.update_into(raw, out)
    return out[:raw.size].view(np.int64).reshape(blocks.shape) ^ blocks


def _seed_and_bit(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hashed (N, 2) block as (seed with its low bit cleared, that bit)."""
    t = block[:, 0] & 1
    block[:, 0] &= _LOW_BIT_CLEAR
    return block, t


def expand(seeds: np.ndarray) -> tuple[np.ndarray, ...]:
    """G on every seed (N, 2): (s_L, t_L, s_R, t_R, v_L, v_R), seeds with their low bit
    cleared (it became t), t as 0/1 int64, v as int64. Blocks are laid out block-major
    (3, N, 2), so that each output is contiguous."""
    blocks = np.repeat(seeds[None], 3, axis=0)
    blocks[1, :, 0] ^= 1
    blocks[2, :, 0] ^= 2
    hashed = _hash(blocks)
    (s_left, t_left), (s_right, t_right) = _seed_and_bit(hashed[0]), _seed_and_bit(hashed[1])
    v = np.ascontiguousarray(hashed[2].T)
    return s_left, t_left, s_right, t_right, v[0], v[1]


def expand_toward(seeds: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, ...]:
    """One side of G per seed (right: 0/1 per element): (s, t, v) of that child, by two
    AES blocks instead of three (what evaluation needs)."""
    blocks = np.repeat(seeds[None], 2, axis=0)
    blocks[0, :, 0] ^= right
    blocks[1, :, 0] ^= 2
    hashed = _hash(blocks)
    s, t = _seed_and_bit(hashed[0])
    v = np.ascontiguousarray(hashed[1].T)
    return s, t, _choose(_mask(right), v[0], v[1])


def _sign(t: np.ndarray) -> np.ndarray:
    """(-1)^t for 0/1 t."""
    return 1 - 2 * t


def gen(alpha: np.ndarray, beta: np.ndarray, seed0: np.ndarray,
        seed1: np.ndarray) -> PublicKeyPart:
    """The correction words of the keys (seed_b, public part) for party b = 0, 1, sharing
    beta [x < alpha] for each element (alpha in [0, 2^63), beta any int64)."""
    n = alpha.shape[0]
    s0, s1 = seed0.copy(), seed1.copy()
    t0, t1 = np.zeros(n, np.int64), np.ones(n, np.int64)
    v_alpha = np.zeros(n, np.int64)
    part = PublicKeyPart(np.empty((BITS, n, 2), np.int64), np.empty((BITS, n), np.int64),
                         np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64))
    for i in range(BITS):
        a = (alpha >> (BITS - 1 - i)) & 1  # Keep = R where alpha_i = 1 (then Lose = L)
        m1, m2 = _mask(a), _mask(a, 2)
        sl0, tl0, sr0, tr0, vl0, vr0 = expand(s0)
        sl1, tl1, sr1, tr1, vl1, vr1 = expand(s1)
        s_cw = _choose(m2, sr0, sl0) ^ _choose(m2, sr1, sl1)
        sign1 = _sign(t1)
        v_cw = sign1 * (_choose(m1, vr1, vl1) - _choose(m1, vr0, vl0) - v_alpha) + (beta & m1) * sign1
        v_alpha = v_alpha - _choose(m1, vl1, vr1) + _choose(m1, vl0, vr0) + sign1 * v_cw
        t_cw_left, t_cw_right = tl0 ^ tl1 ^ a ^ 1, tr0 ^ tr1 ^ a
        t_cw_keep = _choose(m1, t_cw_left, t_cw_right)
        part.s_cw[i], part.v_cw[i] = s_cw, v_cw
        part.t_left |= t_cw_left << i
        part.t_right |= t_cw_right << i
        s0 = _choose(m2, sl0, sr0) ^ (s_cw & _mask(t0, 2))
        s1 = _choose(m2, sl1, sr1) ^ (s_cw & _mask(t1, 2))
        t0 = _choose(m1, tl0, tr0) ^ (t0 & t_cw_keep)
        t1 = _choose(m1, tl1, tr1) ^ (t1 & t_cw_keep)
    part.last = _sign(t1) * (s1[:, 0] - s0[:, 0] - v_alpha)
    return part


def evaluate(party: int, seed: np.ndarray, part: PublicKeyPart, x: np.ndarray) -> np.ndarray:
    """Party b's share (int64, N) of beta [x < alpha] at x in [0, 2^63): the sum along
    x's path, negated for party 1 (the paper's (-1)^b)."""
    n = x.shape[0]
    s, t = seed.copy(), np.full(n, party, np.int64)
    value = np.zeros(n, np.int64)
    for i in range(BITS):
        right = (x >> (BITS - 1 - i)) & 1
        s, t_next, v = expand_toward(s, right)
        on = _mask(t)
        s ^= part.s_cw[i] & _mask(t, 2)
        t_cw = _choose(_mask(right), part.t_left >> i, part.t_right >> i)
        value += v + (part.v_cw[i] & on)
        t = (t_next ^ (t & t_cw)) & 1
    value += s[:, 0] + (part.last & -t)
    return value if party == 0 else -value
