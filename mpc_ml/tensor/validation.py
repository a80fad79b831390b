"""Validation mode (Config(validate=True)): after every op, decrypt and compare with torch.

A debugging aid, never for production: every party decrypts the op's private inputs
and its output (so everything is revealed, and each op costs extra rounds), computes
the same op in plaintext float64 on those inputs, and raises ValidationError naming the
first op whose error exceeds its stated bound:

- local ops (add, reshape, comparisons, relu, max, ...): exact;
- one truncated product (mul, matmul, conv): 1 unit in the last place (2^-f);
- division by a public value: 1 ulp plus the encoding error of 1/p;
- approximations: their ERROR_BOUNDS entry (primitives/approximations.py).

Public operands enter the reference as the parties use them (encoded, then decoded).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..core import ring
from ..core.encoding import decode, encode
from ..core.ops import BILINEAR_OPS, Op
from ..primitives import reveal
from ..primitives.approximations import ERROR_BOUNDS


class ValidationError(RuntimeError):
    """A private op's result differs from plaintext by more than its stated bound."""


def _plain(t, bits: int) -> torch.Tensor:
    """A private input decrypted, or a public one as the parties encoded it (float64)."""
    if hasattr(t, "_pending"):  # an MPCTensor, decoded at its own scale (pending or not)
        scale = bits + t._pending  # read before the opening: a rider in it may settle t
        return decode(reveal(t.session, t._data), scale, torch.float64)
    p = torch.as_tensor(t)
    if p.dtype == torch.bool:
        return p
    return decode(encode(p, bits), bits, torch.float64)


def _as_used(value, bits: int):
    """A public scalar bound (clamp, pad) as the parties encoded it."""
    return None if value is None else float(decode(encode(torch.as_tensor(value, dtype=torch.float64),
                                                            bits), bits, torch.float64))


def _max(a, ctx, out, bits):
    x = a[0] * ctx["sign"]
    top = x.amax() if ctx["dim"] is None else x.amax(ctx["dim"], keepdim=ctx["keepdim"])
    return top * ctx["sign"]


def _argmax(a, ctx, out, bits):
    x = a[0] * ctx["sign"]
    dim = ctx["dim"]
    if not ctx["one_hot"]:
        return (x.reshape(-1).argmax() if dim is None else x.argmax(dim, keepdim=ctx["keepdim"])).double()
    moved = x.reshape(-1) if dim is None else x.movedim(dim, -1)
    hot = F.one_hot(moved.argmax(-1), moved.shape[-1]).double()
    return hot.reshape(x.shape) if dim is None else hot.movedim(-1, dim)


def _window_sum(a, ctx, out, bits):
    g = ctx["geometry"]
    return F.avg_pool2d(a[0], g["kernel_size"], g["stride"], g["padding"], g["ceil_mode"],
                        count_include_pad=True, divisor_override=1)


def _pool_indices(a, ctx, out, bits):
    if "geometry" in ctx:
        return F.max_pool2d(a[0], **ctx["geometry"], return_indices=True)[1].double()
    size = ctx["output_size"]
    pool = F.adaptive_max_pool2d if len(size) == 2 else F.adaptive_max_pool1d
    return pool(a[0], size, return_indices=True)[1].double()


Reference = Callable[[list, dict, Any, int], torch.Tensor]
REFERENCES: dict[Op, Reference] = {
    Op.ADD: lambda a, c, o, b: a[0] + a[1],
    Op.NEG: lambda a, c, o, b: -a[0],
    Op.SUM: lambda a, c, o, b: a[0].sum() if c["dim"] is None else a[0].sum(c["dim"], keepdim=c["keepdim"]),
    Op.DIV_PUBLIC: lambda a, c, o, b: a[0] / c["divisor"],
    Op.RESHAPE: lambda a, c, o, b: a[0].reshape(o.shape),
    Op.TRANSPOSE: lambda a, c, o, b: a[0].transpose(c["dim0"], c["dim1"]),
    Op.PERMUTE: lambda a, c, o, b: a[0].permute(*c["dims"]),
    Op.EXPAND: lambda a, c, o, b: a[0].expand(o.shape),
    Op.FLIP: lambda a, c, o, b: a[0].flip(c["dims"]),
    Op.GETITEM: lambda a, c, o, b: a[0][c["index"]],
    Op.PAD: lambda a, c, o, b: F.pad(a[0], c["pad"], value=_as_used(c["value"], b)),
    Op.CAT: lambda a, c, o, b: torch.cat(a, c["dim"]),
    Op.STACK: lambda a, c, o, b: torch.stack(a, c["dim"]),
    Op.WHERE: lambda a, c, o, b: torch.where(c["condition"], a[0], a[1]),
    Op.RELU: lambda a, c, o, b: a[0].relu(),
    Op.ABS: lambda a, c, o, b: a[0].abs(),
    Op.CLAMP: lambda a, c, o, b: a[0].clamp(_as_used(c["min"], b), _as_used(c["max"], b)),
    Op.MAX: _max,
    Op.ARGMAX: _argmax,
    Op.MAX_POOL2D: lambda a, c, o, b: F.max_pool2d(a[0].relu() if c.get("relu") else a[0],
                                                    **c["geometry"]),
    Op.WINDOW_SUM: _window_sum,
    Op.LT: lambda a, c, o, b: (a[0] < a[1]).double(),
    Op.GT: lambda a, c, o, b: (a[0] > a[1]).double(),
    Op.EQ: lambda a, c, o, b: (a[0] == a[1]).double(),
    Op.NE: lambda a, c, o, b: (a[0] != a[1]).double(),
    Op.SIGN: lambda a, c, o, b: a[0].sign(),
    Op.EXP: lambda a, c, o, b: a[0].exp(),
    Op.LOG: lambda a, c, o, b: a[0].log(),
    Op.RECIPROCAL: lambda a, c, o, b: a[0].reciprocal(),
    Op.SQRT: lambda a, c, o, b: a[0].sqrt(),
    Op.INV_SQRT: lambda a, c, o, b: a[0].rsqrt(),
    Op.SIGMOID: lambda a, c, o, b: a[0].sigmoid(),
    Op.TANH: lambda a, c, o, b: a[0].tanh(),
    Op.ERF: lambda a, c, o, b: torch.special.erf(a[0]),
    Op.GELU: lambda a, c, o, b: torch.nn.functional.gelu(a[0]),
    Op.SOFTMAX: lambda a, c, o, b: a[0].softmax(c["dim"]),
    Op.LOG_SOFTMAX: lambda a, c, o, b: a[0].log_softmax(c["dim"]),
    Op.COS: lambda a, c, o, b: a[0].cos(),
    Op.SIN: lambda a, c, o, b: a[0].sin(),
    Op.CUMSUM: lambda a, c, o, b: a[0].cumsum(c["dim"]),
    Op.ROLL: lambda a, c, o, b: a[0].roll(c["shifts"], c["dims"]),
    Op.GATHER: lambda a, c, o, b: a[0].gather(c["dim"], c["index"]),
    Op.SCATTER: lambda a, c, o, b: a[0].scatter(c["dim"], c["index"], a[1].to(a[0].dtype)),
    Op.SCATTER_ADD: lambda a, c, o, b: a[0].scatter_add(c["dim"], c["index"], a[1].to(a[0].dtype)),
    Op.INDEX_SELECT: lambda a, c, o, b: a[0].index_select(c["dim"], c["index"]),
    Op.INDEX_ADD: lambda a, c, o, b: a[0].index_add(c["dim"], c["index"], a[1].to(a[0].dtype)),
    Op.CONV_TRANSPOSE2D: lambda a, c, o, b: F.conv_transpose2d(
        a[0], a[1], None, c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"]),
    Op.MAX_POOL2D_INDICES: _pool_indices,
    **{op: (lambda op: lambda a, c, o, b: ring.FLOAT_BILINEAR[op](a[0], a[1], **c))(op)
       for op in BILINEAR_OPS},
}
"""Op -> the same op in plaintext: (decrypted inputs, recorded context, output, f)."""


def _allowed(op: Op, inputs: list, want: torch.Tensor, bits: int) -> torch.Tensor:
    ulp = 2.0 ** -bits
    if op.value in ERROR_BOUNDS:
        return ERROR_BOUNDS[op.value].allowed(inputs[0], want)
    if op in BILINEAR_OPS or op == Op.CONV_TRANSPOSE2D:
        return torch.full_like(want, ulp) + 1e-12 * want.abs()
    if op == Op.DIV_PUBLIC:  # 1/p is encoded at f + log2|p| bits: |x| 2^-(f+1) / |p| <= |y| 2^-(f+1)
        return ulp + want.abs() * 2.0 ** -(bits + 1)
    return torch.full_like(want, 1e-9)  # local ops and comparisons are exact


def _shapes(inputs: tuple) -> str:
    return ", ".join(f"{'private' if hasattr(t, 'share') else 'public'} "
                     f"{tuple(t.shape) if hasattr(t, 'shape') else '()'}" for t in inputs)


def validate(op: Op, out: Any, inputs: tuple, ctx: dict) -> None:
    """The validation observer: raise ValidationError if `out` drifted from plaintext."""
    bits = out.session.config.precision_bits
    plain = [_plain(t, bits) for t in inputs]
    want = REFERENCES[op](plain, ctx, out, bits).to(torch.float64)
    got = _plain(out, bits)
    err = (got - want).abs()
    allowed = _allowed(op, plain, want, bits)
    over = err > allowed
    if bool(over.any()):
        at = int(torch.nonzero(over.reshape(-1))[0])
        worst = float(err.max())
        outside = ""
        if op.value in ERROR_BOUNDS and not bool(ERROR_BOUNDS[op.value].in_domain(plain[0]).all()):
            outside = f"; some inputs lie outside its domain {ERROR_BOUNDS[op.value].domain}"
        raise ValidationError(
            f"validation: {op} of ({_shapes(inputs)}) -> {tuple(out.shape)} differs from plaintext "
            f"by {worst:.3g} (at flat index {at}: got {float(got.reshape(-1)[at]):.6g}, want "
            f"{float(want.reshape(-1)[at]):.6g}, bound {float(allowed.reshape(-1)[at]):.3g})"
            f"{outside}")
