"""Seeded cryptographic PRG: AES-128 in counter mode (the `cryptography` package).

A PRG is a keystream: two parties holding the same seed draw identical tensors as
long as they draw in the same order, which SPMD programs guarantee. Derived streams
(``PRG.derive``) give independent keystreams from one seed for different purposes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16


def new_seed() -> bytes:
    """A fresh 128-bit seed from the OS."""
    return os.urandom(SEED_BYTES)


class PRG:
    """AES-128-CTR keystream that fills int64 tensors."""

    def __init__(self, seed: bytes):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self.seed = seed
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
        self._zeros = np.zeros(0, dtype=np.uint8)

    def derive(self, label: str) -> "PRG":
        """An independent PRG keyed by H(seed || label)."""
        return PRG(hashlib.sha256(self.seed + label.encode()).digest()[:SEED_BYTES])

    def random_bytes(self, n: int) -> np.ndarray:
        """The next n keystream bytes, as a uint8 array."""
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
        t = torch.from_numpy(self.random_bytes(8 * numel).view(np.int64)).reshape(shape)
        return t if device is None else t.to(device)

    def random_bits(self, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform 0/1 int64 elements of the given shape."""
        return self.random_ring(shape, device) & 1
