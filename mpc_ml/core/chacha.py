"""ChaCha20 (RFC 8439) written with torch integer ops, so that a keystream is made on the
device its tensor lives on (a GPU has no AES instructions to call; ChaCha is add, rotate
and xor, which any device does).

32-bit words are held in int32: addition wraps mod 2^32 as two's complement does, and a
rotation is (x << n) | ((x >> (32 - n)) & (2^n - 1)), the mask undoing the sign
extension of the arithmetic right shift. (int64 words masked to 32 bits give the same
values with twice the memory traffic and more ops: 1.5x to 3x slower here.)

The block function maps (key: 8 words, counter: 1 word, nonce: 3 words) to 16 words:
the state (constants, key, counter, nonce) after 10 double rounds of quarter rounds,
plus the state. Many blocks are computed at once: one per counter value under one key
(blocks, the keystream), or block 0 under one key per element (keyed_blocks, the PRG
of the DCF's tree, core/dcf.py).
"""
from __future__ import annotations

import struct

import torch

MASK = 0xFFFFFFFF
CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
KEY_BYTES, NONCE_BYTES = 32, 12


def _signed(word: int) -> int:
    """A 32-bit word as the int32 with its bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _rotl(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x << n) | ((x >> (32 - n)) & ((1 << n) - 1))


def _quarter(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
             d: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The quarter round on rows of words: four quarter rounds at once when a, b, c, d
    are (4, blocks) (a column or a diagonal each)."""
    a = a + b
    d = _rotl(d ^ a, 16)
    c = c + d
    b = _rotl(b ^ c, 12)
    a = a + b
    d = _rotl(d ^ a, 8)
    c = c + d
    b = _rotl(b ^ c, 7)
    return a, b, c, d


def _permute(start: list[torch.Tensor]) -> torch.Tensor:
    """The block function on 16 int32 start words (each a tensor of one word per block):
    10 double rounds, plus the start; (blocks, 16) int32 words. The state is 4 rows of 4
    words, so a column round is one quarter round on the rows, and a diagonal round one
    on the rows rotated by 0, 1, 2 and 3 (a few large ops, not 16 small ones a round)."""
    first = torch.stack(start)  # (16, blocks)
    a, b, c, d = first.view(4, 4, -1).unbind(0)
    for _ in range(10):
        a, b, c, d = _quarter(a, b, c, d)  # columns (0, 4, 8, 12), (1, 5, 9, 13), ...
        a, b, c, d = _quarter(a, b.roll(-1, 0), c.roll(-2, 0), d.roll(-3, 0))  # diagonals
        b, c, d = b.roll(1, 0), c.roll(2, 0), d.roll(3, 0)
    return (torch.cat([a, b, c, d]) + first).t()


def _words64(words: torch.Tensor) -> torch.Tensor:
    """(..., 2k) int32 words as (..., k) int64: word 2i the low half, 2i + 1 the high."""
    low, high = words[..., 0::2].to(torch.int64) & MASK, words[..., 1::2].to(torch.int64)
    return low | (high << 32)


def _start(key_words: list, nonce_words: list, counter: torch.Tensor) -> list[torch.Tensor]:
    """The 16 start words, ints broadcast to counter's shape and device."""
    def word(w):
        return w if isinstance(w, torch.Tensor) else torch.full_like(counter, _signed(w))
    return [word(w) for w in (*CONSTANTS, *key_words)] + [counter] + [word(w) for w in nonce_words]


def blocks(key: bytes, nonce: bytes, counter: int, count: int,
           device: torch.device | str | None = None) -> torch.Tensor:
    """`count` keystream blocks from block `counter` on: (count, 16) int64 words in
    [0, 2^32), each block's words in keystream order (little-endian bytes)."""
    return _keystream(key, nonce, counter, count, device).to(torch.int64) & MASK


def _keystream(key: bytes, nonce: bytes, counter: int, count: int,
               device: torch.device | str | None) -> torch.Tensor:
    """blocks() as int32 words."""
    if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"ChaCha20 takes a {KEY_BYTES}-byte key and a {NONCE_BYTES}-byte nonce")
    if counter < 0 or counter + count > 1 << 32:
        raise ValueError("ChaCha20's 32-bit block counter would wrap: take a new nonce")
    # int64 to int32 keeps the low 32 bits (as keyed_blocks' key halves rely on too)
    counters = torch.arange(counter, counter + count, dtype=torch.int64, device=device).to(torch.int32)
    return _permute(_start(list(struct.unpack("<8I", key)), list(struct.unpack("<3I", nonce)),
                           counters))


def keyed_blocks(keys: torch.Tensor) -> torch.Tensor:
    """Block 0 (nonce 0) under each of many keys at once: keys is (N, 2) int64, each row a
    128-bit key (two little-endian 64-bit halves) taken as the 256-bit key k || 0^128.
    (N, 8) int64: the block's 64 bytes as little-endian int64 words."""
    halves = [keys[:, 0].to(torch.int32), (keys[:, 0] >> 32).to(torch.int32),
              keys[:, 1].to(torch.int32), (keys[:, 1] >> 32).to(torch.int32)]
    zero = torch.zeros_like(halves[0])
    return _words64(_permute(_start(halves + [zero] * 4, [0, 0, 0], zero)))


def ring_elements(key: bytes, nonce: bytes, counter: int, numel: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """numel int64 words from the keystream at block `counter`: 8 keystream bytes each,
    little-endian (word 2i low, word 2i + 1 high), as the bytes would read on a host."""
    return _words64(_keystream(key, nonce, counter, -(-numel // 8), device).reshape(-1))[:numel]
