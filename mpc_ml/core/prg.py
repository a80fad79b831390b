"""Seeded cryptographic PRG: AES-128 in counter mode (the `cryptography` package), or
ChaCha20 in torch integer ops (core/chacha.py) that draws on the tensor's device.

A PRG is a keystream: two parties holding the same seed draw identical tensors as
long as they draw in the same order, which SPMD programs guarantee (and the same
algorithm, which the handshake agrees: Config.prg). Derived streams (``PRG.derive``)
give independent keystreams from one seed for different purposes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import chacha

SEED_BYTES = 16
ALGORITHMS = ("aes", "chacha20")
CHACHA_AHEAD = 1 << 16
"""Keystream words the ChaCha20 stream makes at least at a time (512 KiB)."""


def new_seed() -> bytes:
    """A fresh 128-bit seed from the OS."""
    return os.urandom(SEED_BYTES)


class PRG:
    """A keystream that fills int64 tensors: AES-128-CTR keyed by the seed, or ChaCha20
    keyed by SHA-256(seed || "chacha20") whose blocks are computed where the tensor lives."""

    def __init__(self, seed: bytes, algorithm: str = "aes"):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown PRG algorithm {algorithm!r}; choose one of {ALGORITHMS}")
        self.seed, self.algorithm = seed, algorithm
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
        self._zeros = np.zeros(0, dtype=np.uint8)
        self._key = hashlib.sha256(seed + b"chacha20").digest()
        self._block = 0  # the next ChaCha20 block: counter (low 32 bits) and nonce (high)
        self._ahead = torch.empty(0, dtype=torch.int64)  # keystream words made, not yet drawn

    def derive(self, label: str) -> "PRG":
        """An independent PRG keyed by H(seed || label), of the same algorithm."""
        return PRG(hashlib.sha256(self.seed + label.encode()).digest()[:SEED_BYTES],
                   self.algorithm)

    def _chacha_blocks(self, blocks: int, device: torch.device | str | None) -> torch.Tensor:
        """The words of the next `blocks` ChaCha20 blocks, made on device."""
        out = []
        while blocks:  # a new nonce where the 32-bit block counter would wrap
            counter, nonce = self._block & 0xFFFFFFFF, self._block >> 32
            take = min(blocks, (1 << 32) - counter)
            out.append(chacha.ring_elements(self._key, nonce.to_bytes(12, "little"), counter,
                                            8 * take, device))
            self._block += take
            blocks -= take
        return out[0] if len(out) == 1 else torch.cat(out)

    def _chacha_words(self, numel: int, device: torch.device | str | None) -> torch.Tensor:
        """The next numel int64 words of the ChaCha20 stream, on device. Blocks are made
        CHACHA_AHEAD words at a time at least (one launch of each op for many small draws)
        and handed out in keystream order, whatever the sizes of the draws."""
        device = torch.device(device or "cpu")
        if self._ahead.device != device:
            self._ahead = self._ahead.to(device)
        if self._ahead.numel() < numel:
            more = max(numel - self._ahead.numel(), CHACHA_AHEAD)
            self._ahead = torch.cat([self._ahead, self._chacha_blocks(-(-more // 8), device)])
        words, self._ahead = self._ahead[:numel], self._ahead[numel:]
        return words

    def random_bytes(self, n: int) -> np.ndarray:
        """The next n keystream bytes, as a uint8 array."""
        if self.algorithm == "chacha20":
            words = self._chacha_words(-(-n // 8), None)
            return words.numpy().view(np.uint8)[:n]
        if self._zeros.size < n:
            self._zeros = np.zeros(max(n, 2 * self._zeros.size), dtype=np.uint8)
        out = np.empty(n + 15, dtype=np.uint8)  # CTR's update_into wants block_size-1 slack
        written = self._enc.update_into(memoryview(self._zeros)[:n], out)
        assert written == n
        return out[:n]

    def random_ring(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform elements of Z_2^64 (int64) of the given shape."""
        shape = tuple(shape)
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if self.algorithm == "chacha20":  # made where it is used: no host round trip
            return self._chacha_words(numel, device).reshape(shape)
        t = torch.from_numpy(self.random_bytes(8 * numel).view(np.int64)).reshape(shape)
        return t if device is None else t.to(device)

    def random_bits(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform 0/1 int64 elements of the given shape."""
        return self.random_ring(shape, device) & 1
