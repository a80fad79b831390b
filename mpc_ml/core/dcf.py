"""Distributed comparison functions (DCF): two keys that share f(x) = beta [x < alpha].

Boyle, Chandran, Gilboa, Gupta, Ishai, Kohli, Lai: "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021, Figure 3 (Gen and Eval
of the DCF), for inputs of BITS = 63 bits and outputs in Z_2^64. Given the keys k_0, k_1,
eval(0, k_0, x) + eval(1, k_1, x) = beta if x < alpha, else 0 (mod 2^64); either key
alone is pseudorandom and says nothing about alpha or beta.

A key is walked from the top bit of x down. Each level expands a 128-bit seed with a
PRG G(s) = (s_L, t_L, s_R, t_R, v_L, v_R); the correction word of the level (common to
both keys: s_CW, v_CW and the two t_CW bits) makes the two parties' seeds equal off
alpha's path, and the v_CW terms add up to beta exactly where x leaves the path to the
left of alpha (x_i = 0 < alpha_i = 1). G is chosen with the session's PRG (Config.prg):

- "aes": fixed-key AES-128 in the Matyas-Meyer-Oseas mode, G_j(s) = AES_K(s ^ j) ^ s ^ j
  for blocks j = 0, 1, 2 (a correlation-robust hash, as in the FSS implementations of
  Boyle et al. and Sigma/Orca), on the host with AES-NI: block 0 gives s_L and t_L (its
  low bit), block 1 s_R and t_R, block 2 v_L and v_R.
- "chacha20": ChaCha20 keyed by the seed (key s || 0^128, nonce 0, block 0), in torch
  integer ops on the tensors' device (core/chacha.py): its 64-bit words 0-1 give s_L and
  t_L, 2-3 s_R and t_R, 4 v_L and 5 v_R. ChaCha20 is a PRF, so G is a PRG on a uniform
  seed, which is all the construction needs.

Everything is vectorised over N elements at once, in torch int64 (wrapping mod 2^64) on
the inputs' device; seeds are (N, 2) int64 tensors (two 64-bit halves).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, fields

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import chacha
from .prg import ALGORITHMS as PRGS

BITS = 63
"""The input width: comparisons of the low 63 bits of a masked 64-bit word."""
_KEY = bytes(range(16))  # the fixed, public AES key of G (its security needs none secret)
_LOW_BIT_CLEAR = -2


@dataclass
class PublicKeyPart:
    """The correction words, common to both keys (level-major tensors over N elements)."""

    s_cw: torch.Tensor  # (BITS, N, 2) int64: the seed correction of each level
    v_cw: torch.Tensor  # (BITS, N) int64: the value correction of each level
    t_left: torch.Tensor  # (N,) int64: bit i is level i's t_CW^L
    t_right: torch.Tensor  # (N,) int64: bit i is level i's t_CW^R
    last: torch.Tensor  # (N,) int64: the final correction CW^(n+1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The five tensors, in field order (what the dealer sends); not copies
        (dataclasses.astuple would deep-copy 1.5 KB of key per element)."""
        return tuple(getattr(self, f.name) for f in fields(self))


def _wide(mask: torch.Tensor) -> torch.Tensor:
    """An (N,) mask as an (N, 2) one for seeds, materialised (torch is several times slower
    broadcasting an (N, 1) operand against (N, 2) than reading a copy)."""
    return torch.stack((mask, mask), dim=1)


def _choose(mask: torch.Tensor, if_zero: torch.Tensor, if_one: torch.Tensor) -> torch.Tensor:
    """Elementwise mask ? if_one : if_zero, for an all-ones/zeros int64 mask (an (N,) mask
    applies to (N, 2) seeds as _wide(mask))."""
    if if_zero.dim() == 2 and mask.dim() == 1:
        mask = _wide(mask)
    return if_zero ^ ((if_zero ^ if_one) & mask)


_local = threading.local()  # one encryptor per thread (in-process parties are threads)


def _mmo(blocks: torch.Tensor) -> torch.Tensor:
    """AES_K(b) ^ b for every 128-bit block of an (..., 2) int64 tensor (the MMO hash),
    computed on the host."""
    if not hasattr(_local, "encrypt"):
        _local.encrypt = Cipher(algorithms.AES(_KEY), modes.ECB()).encryptor()
    host = blocks.cpu().contiguous()
    raw = host.numpy().view("uint8").reshape(-1)
    out = torch.empty(raw.size + 16, dtype=torch.uint8)
    _local.encrypt.update_into(raw, out.numpy())
    hashed = out[:raw.size].view(torch.int64).reshape(blocks.shape) ^ host
    return hashed.to(blocks.device)


def _seed_and_bit(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A freshly hashed (N, 2) block as (seed with its low bit cleared, that bit); the
    block is cleared in place."""
    t = block[:, 0] & 1
    block[:, 0] &= _LOW_BIT_CLEAR
    return block, t


def expand(seeds: torch.Tensor, prg: str = "aes") -> tuple[torch.Tensor, ...]:
    """G on every seed (N, 2): (s_L, t_L, s_R, t_R, v_L, v_R), seeds with their low bit
    cleared (it became t), t as 0/1 int64, v as int64."""
    if prg == "chacha20":
        words = chacha.keyed_blocks(seeds)
        hashed = [words[:, 0:2].clone(), words[:, 2:4].clone()]
        v_left, v_right = words[:, 4], words[:, 5]
    else:
        blocks = seeds.unsqueeze(0).repeat(3, 1, 1)
        blocks[1, :, 0] ^= 1
        blocks[2, :, 0] ^= 2
        out = _mmo(blocks)
        hashed, v_left, v_right = [out[0], out[1]], out[2, :, 0], out[2, :, 1]
    (s_left, t_left), (s_right, t_right) = _seed_and_bit(hashed[0]), _seed_and_bit(hashed[1])
    return s_left, t_left, s_right, t_right, v_left, v_right


def expand_toward(seeds: torch.Tensor, right: torch.Tensor, prg: str = "aes") -> tuple[torch.Tensor, ...]:
    """One side of G per seed (right: 0/1 per element): (s, t, v) of that child (AES: by
    two blocks instead of three, what evaluation needs)."""
    if prg == "chacha20":
        s_left, t_left, s_right, t_right, v_left, v_right = expand(seeds, prg)
        mask = -right
        s, t = _choose(mask, s_left, s_right), _choose(mask, t_left, t_right)
        return s, t, _choose(mask, v_left, v_right)
    blocks = seeds.unsqueeze(0).repeat(2, 1, 1)
    blocks[0, :, 0] ^= right
    blocks[1, :, 0] ^= 2
    hashed = _mmo(blocks)
    s, t = _seed_and_bit(hashed[0])
    return s, t, _choose(-right, hashed[1, :, 0], hashed[1, :, 1])


def _sign(t: torch.Tensor) -> torch.Tensor:
    """(-1)^t for 0/1 t."""
    return 1 - 2 * t


def _check_prg(prg: str) -> None:
    if prg not in PRGS:
        raise ValueError(f"unknown DCF PRG {prg!r}; choose one of {PRGS}")


def gen(alpha: torch.Tensor, beta: torch.Tensor, seed0: torch.Tensor, seed1: torch.Tensor,
        prg: str = "aes") -> PublicKeyPart:
    """The correction words of the keys (seed_b, public part) for party b = 0, 1, sharing
    beta [x < alpha] for each element (alpha in [0, 2^63), beta any int64), made on the
    seeds' device."""
    _check_prg(prg)
    n, device = alpha.shape[0], seed0.device
    alpha, beta = alpha.to(device), beta.to(device)
    s0, s1 = seed0.clone(), seed1.to(device).clone()
    t0 = torch.zeros(n, dtype=torch.int64, device=device)
    t1 = torch.ones_like(t0)
    v_alpha = torch.zeros_like(t0)
    s_cws, v_cws = [], []
    t_left, t_right = torch.zeros_like(t0), torch.zeros_like(t0)
    for i in range(BITS):
        a = (alpha >> (BITS - 1 - i)) & 1  # Keep = R where alpha_i = 1 (then Lose = L)
        m = -a
        both = expand(torch.cat([s0, s1]), prg)  # one PRG call for both trees' seeds
        sl0, tl0, sr0, tr0, vl0, vr0 = (t[:n] for t in both)
        sl1, tl1, sr1, tr1, vl1, vr1 = (t[n:] for t in both)
        s_cw = _choose(m, sr0, sl0) ^ _choose(m, sr1, sl1)
        sign1 = _sign(t1)
        v_cw = sign1 * (_choose(m, vr1, vl1) - _choose(m, vr0, vl0) - v_alpha) + (beta & m) * sign1
        v_alpha = v_alpha - _choose(m, vl1, vr1) + _choose(m, vl0, vr0) + sign1 * v_cw
        t_cw_left, t_cw_right = tl0 ^ tl1 ^ a ^ 1, tr0 ^ tr1 ^ a
        t_cw_keep = _choose(m, t_cw_left, t_cw_right)
        s_cws.append(s_cw)
        v_cws.append(v_cw)
        t_left |= t_cw_left << i
        t_right |= t_cw_right << i
        s0 = _choose(m, sl0, sr0) ^ (s_cw & _wide(-t0))
        s1 = _choose(m, sl1, sr1) ^ (s_cw & _wide(-t1))
        t0 = _choose(m, tl0, tr0) ^ (t0 & t_cw_keep)
        t1 = _choose(m, tl1, tr1) ^ (t1 & t_cw_keep)
    last = _sign(t1) * (s1[:, 0] - s0[:, 0] - v_alpha)
    return PublicKeyPart(torch.stack(s_cws), torch.stack(v_cws), t_left, t_right, last)


def evaluate(party: int, seed: torch.Tensor, part: PublicKeyPart, x: torch.Tensor,
             prg: str = "aes") -> torch.Tensor:
    """Party b's share (int64, N) of beta [x < alpha] at x in [0, 2^63): the sum along
    x's path, negated for party 1 (the paper's (-1)^b). Runs on x's device."""
    _check_prg(prg)
    s = seed.clone()
    t = torch.full_like(x, party)
    value = torch.zeros_like(x)
    t_differ = part.t_left ^ part.t_right
    for i in range(BITS):
        right = (x >> (BITS - 1 - i)) & 1
        s, t_next, v = expand_toward(s, right, prg)
        on = t.neg()
        s ^= part.s_cw[i] & _wide(on)
        value += v
        value += part.v_cw[i] & on
        t_cw = (part.t_left ^ (t_differ & right.neg_())) >> i  # level i's t_CW of x's side
        t = (t & t_cw).bitwise_xor_(t_next).bitwise_and_(1)
    value += s[:, 0] + (part.last & -t)
    return value if party == 0 else -value
