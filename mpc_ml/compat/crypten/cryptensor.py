"""CrypTensor: an MPCTensor with CrypTen's semantics where CrypTen differs from torch.

Only what crypten.cryptensor (and what is computed from it) makes is one; mpc_ml's own
MPCTensor keeps torch's semantics. The differences (docs/migrating-from-crypten.md):

- argmax / argmin return the private one-hot mask by default (one_hot=True), as CrypTen;
- max / min along a dim return (values, one-hot mask), as CrypTen's (torch: indices);
- new(tensor) shares a tensor from party 0 (CrypTen's CrypTensor.new);
- to(ptype) converts to the binary (XOR) type and back; to(device) moves as MPCTensor;
- src: the party a loaded tensor came from (load_from_party sets it).
"""
from __future__ import annotations

from typing import Any

import torch

from ...core.ops import Op
from ...tensor import MPCTensor, encrypt, record
from ...tensor.binary_tensor import BinaryTensor
from .mpc import ptype


class CrypTensor(MPCTensor):
    """See the module docstring."""

    src: int | None = None

    def argmax(self, dim: int | None = None, keepdim: bool = False,
               one_hot: bool = True) -> MPCTensor:
        """The (first) maximum's private one-hot mask (one_hot=False: its index)."""
        return super().argmax(dim, keepdim, one_hot)

    def argmin(self, dim: int | None = None, keepdim: bool = False,
               one_hot: bool = True) -> MPCTensor:
        """The (first) minimum's private one-hot mask (one_hot=False: its index)."""
        return super().argmin(dim, keepdim, one_hot)

    def _extreme(self, dim: int | None, keepdim: bool, one_hot: bool, sign: int):
        if dim is None:
            return super().max() if sign > 0 else super().min()
        if not one_hot:
            return super().max(dim, keepdim) if sign > 0 else super().min(dim, keepdim)
        values, _, mask = self._reduce_max(dim, keepdim, sign, one_hot=True)
        hot = record(Op.ARGMAX, self._bit(mask), (self,), one_hot=True, dim=dim,
                     keepdim=keepdim, sign=sign)
        return values, hot

    def max(self, dim: int | None = None, keepdim: bool = False,
            one_hot: bool = True) -> Any:
        """Max of all elements, or (values, one-hot mask) along dim, as CrypTen's."""
        return self._extreme(dim, keepdim, one_hot, 1)

    def min(self, dim: int | None = None, keepdim: bool = False,
            one_hot: bool = True) -> Any:
        """Min of all elements, or (values, one-hot mask) along dim, as CrypTen's."""
        return self._extreme(dim, keepdim, one_hot, -1)

    def new(self, *args: Any, **kwargs: Any) -> "CrypTensor":
        """crypten.cryptensor(*args, **kwargs): a tensor shared from party 0 by default."""
        return as_cryptensor(encrypt(_as_tensor(args[0] if args else kwargs.pop("tensor")),
                                     src=kwargs.get("src", 0)))

    def to(self, target: Any) -> Any:
        """ptype.binary: the XOR-shared BinaryTensor; ptype.arithmetic: self; else a device."""
        if target is ptype.binary:
            return BinaryTensor.from_arithmetic(self)
        if target is ptype.arithmetic:
            return self
        return super().to(target)


def _as_tensor(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def as_cryptensor(t: MPCTensor) -> CrypTensor:
    """The same tensor (the same object) with CrypTen's semantics."""
    t.__class__ = CrypTensor
    return t
