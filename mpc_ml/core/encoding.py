"""Fixed-point codec: a real x is the ring element round(x * 2^f) in int64.

Encodable values satisfy |x| * 2^f < 2^62 (about 7e13 at f = 16). Two more bits
of headroom are what the exact truncation protocol needs: a product of two encoded
values must stay below 2^62 before truncation, i.e. |x * y| < 2^(62 - 2f).
Decoding divides in float64 so negative values round correctly (no floor bias).
"""
from __future__ import annotations

from typing import Any

import torch

ENCODE_BOUND_BITS = 62


def scale(precision_bits: int) -> int:
    """The integer 2^f."""
    return 1 << precision_bits


def max_encodable(precision_bits: int) -> float:
    """Largest magnitude encode() accepts."""
    return float(2 ** (ENCODE_BOUND_BITS - precision_bits))


def encode(x: Any, precision_bits: int, device: torch.device | str | None = None) -> torch.Tensor:
    """round(x * 2^f) as int64; raises ValueError on non-finite or out-of-range values."""
    t = torch.as_tensor(x, device=device)
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if not t.is_floating_point() and not t.is_complex():
        bound = 1 << (ENCODE_BOUND_BITS - precision_bits)
        if t.numel() and int(t.abs().max()) >= bound:
            raise ValueError(f"cannot encode integers of magnitude >= 2^{ENCODE_BOUND_BITS - precision_bits} "
                             f"with {precision_bits} fractional bits")
        return t.to(torch.int64) << precision_bits
    if t.is_complex():
        raise TypeError("complex tensors cannot be secret-shared")
    t = t.to(torch.float64)
    if t.numel():
        if not bool(torch.isfinite(t).all()):
            raise ValueError("cannot encode NaN or infinite values")
        biggest = float(t.abs().max())
        if biggest >= max_encodable(precision_bits):
            raise ValueError(f"value {biggest:g} is outside the fixed-point range "
                             f"|x| < {max_encodable(precision_bits):g} "
                             f"({precision_bits} fractional bits)")
    return torch.round(t * scale(precision_bits)).to(torch.int64)


def decode(x: torch.Tensor, precision_bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x / 2^f as a float tensor of the given dtype."""
    return (x.to(torch.float64) / scale(precision_bits)).to(dtype)
