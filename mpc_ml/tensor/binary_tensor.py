"""BinaryTensor: a fixed-point tensor XOR-shared over 64-bit words (CrypTen's
ptype.binary).

Each party holds `share`, an int64 word; the encoded value is the XOR of every party's
word, and the plaintext is that value / 2^f. XOR, NOT and shifts are local; AND is one
round (primitives.binary.and_many: a Beaver triple over GF(2)^64); + is the
carry-lookahead adder of primitives.binary (4 rounds). Conversions cost what their
protocols do: from an MPCTensor (a2b: 4 rounds for 2 parties, carry-save adders first
for more) and back (b2a: 1 round). No autograd: bitwise ops have no gradient.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.encoding import decode, encode
from ..primitives.binary import a2b, and_many, b2a, binary_add, open_words, public_word
from ..session import Session, current
from .mpctensor import MPCTensor, Public


class BinaryTensor:
    """XOR shares of fixed-point values (see the module docstring)."""

    def __init__(self, share: torch.Tensor, session: Session | None = None,
                 dtype: torch.dtype | None = None):
        if share.dtype != torch.int64:
            raise TypeError(f"a BinaryTensor's share is int64, got {share.dtype}")
        self.share, self.session = share, session or current()
        self.dtype = dtype or torch.get_default_dtype()

    # -- conversions --------------------------------------------------------------------------
    @classmethod
    def from_arithmetic(cls, x: MPCTensor) -> "BinaryTensor":
        """XOR shares of x's encoded value (a2b)."""
        return cls(a2b(x.session, x.share), x.session, x.dtype)

    def to_arithmetic(self) -> MPCTensor:
        """Additive shares of the same value (b2a)."""
        return MPCTensor(b2a(self.session, self.share), self.session, self.dtype)

    def decrypt(self, dst: int | None = None) -> torch.Tensor | None:
        """The plaintext on every party (dst=None) or on dst only."""
        if dst is None:
            word = open_words(self.session, [self.share])[0]
        else:
            parts = self.session.comm.gather(self.share, dst)
            if parts is None:
                return None
            word = parts[0].clone()
            for p in parts[1:]:
                word ^= p
        return decode(word, self.session.config.precision_bits, self.dtype)

    def get_plain_text(self, dst: int | None = None) -> torch.Tensor | None:
        """decrypt(dst), by CrypTen's name."""
        return self.decrypt(dst)

    # -- bitwise operations ---------------------------------------------------------------------
    def _word(self, other: Public) -> torch.Tensor:
        return encode(other, self.session.config.precision_bits, self.share.device)

    def _new(self, share: torch.Tensor) -> "BinaryTensor":
        return BinaryTensor(share, self.session, self.dtype)

    def __xor__(self, other: "BinaryTensor | Public") -> "BinaryTensor":
        if isinstance(other, BinaryTensor):
            return self._new(self.share ^ other.share)
        return self._new(self.share ^ public_word(self.session, self._word(other)))

    def __and__(self, other: "BinaryTensor | Public") -> "BinaryTensor":
        if isinstance(other, BinaryTensor):
            a, b = torch.broadcast_tensors(self.share, other.share)
            return self._new(and_many(self.session, [(a, b)])[0])
        return self._new(self.share & self._word(other))

    def __or__(self, other: "BinaryTensor | Public") -> "BinaryTensor":
        return self ^ other ^ (self & other)

    def __invert__(self) -> "BinaryTensor":
        return self._new(~self.share if self.session.rank == 0 else self.share.clone())

    def __lshift__(self, bits: int) -> "BinaryTensor":
        return self._new(self.share << bits)

    def __rshift__(self, bits: int) -> "BinaryTensor":
        """Arithmetic shift of the encoded word (shifts are linear over XOR)."""
        return self._new(self.share >> bits)

    def __add__(self, other: "BinaryTensor | Public") -> "BinaryTensor":
        o = other.share if isinstance(other, BinaryTensor) else \
            public_word(self.session, self._word(other))
        a, b = torch.broadcast_tensors(self.share, o)
        return self._new(binary_add(self.session, a, b))

    __rxor__, __rand__, __ror__, __radd__ = __xor__, __and__, __or__, __add__

    # -- shape ----------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The plaintext's shape."""
        return self.share.shape

    def size(self, dim: int | None = None) -> torch.Size | int:
        """torch's size()."""
        return self.share.size() if dim is None else self.share.size(dim)

    def dim(self) -> int:
        """The number of dimensions."""
        return self.share.dim()

    def numel(self) -> int:
        """The number of elements."""
        return self.share.numel()

    def reshape(self, *shape: int | Sequence[int]) -> "BinaryTensor":
        """torch's reshape."""
        return self._new(self.share.reshape(*shape))

    view = reshape

    def __getitem__(self, index) -> "BinaryTensor":
        return self._new(self.share[index])

    def __len__(self) -> int:
        return len(self.share)

    def __repr__(self) -> str:
        return f"BinaryTensor(shape={tuple(self.shape)}, party {self.session.rank}'s share)"


def encrypt_binary(tensor: torch.Tensor | None, src: int = 0,
                   shape: Sequence[int] | None = None) -> BinaryTensor:
    """src's tensor as XOR shares (shared arithmetically, then a2b: the shares are random)."""
    from .mpctensor import encrypt
    return BinaryTensor.from_arithmetic(encrypt(tensor, src=src, shape=shape))
