"""Z_2^64 kernels on int64 tensors: wrap-around of int64 arithmetic is the modulus.

Bilinear ops (mul, matmul, conv1d, conv2d) are computed exactly mod 2^64:
- on CPU with torch's int64 kernels (conv via an im2col + int64 matmul, which is
  several times faster than torch's int64 direct convolution);
- on CUDA, where torch has no int64 matmul/conv, from float64 products of limbs
  (core/limbs.py: 3 limbs of 22 bits or 4 of 16, only the pairs that reach below 2^64,
  batched into one library call, the reduction split where float64 would round). The
  same limb path can be forced on CPU (``force_limbs``) so that CI exercises it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import limbs
from .ops import BILINEAR_OPS, Op

Shape = Sequence[int]
"""A tensor shape: a torch.Size, tuple or list of ints."""
IntOrTuple = int | tuple[int, ...] | list[int]
"""One int for every spatial dimension, or one per dimension (what ``pair`` accepts)."""
Padding = int | tuple[int, ...] | list[int] | str
"""An IntOrTuple, or torch's 'valid' / 'same'."""


def pair(v: IntOrTuple, n: int) -> tuple[int, ...]:
    """v as an n-tuple: a tuple or list as a tuple, a single value repeated n times."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def conv_output_shape(input_shape: Shape, weight_shape: Shape, stride: IntOrTuple = 1,
                      padding: Padding = 0, dilation: IntOrTuple = 1, nd: int = 2) -> tuple[int, ...]:
    """Output shape of torch's convNd for these shapes and arguments."""
    stride, dilation = pair(stride, nd), pair(dilation, nd)
    padding = resolve_padding(padding, weight_shape[2:], dilation, stride, nd)
    spatial = []
    for i in range(nd):
        size = input_shape[2 + i] + 2 * padding[i] - dilation[i] * (weight_shape[2 + i] - 1) - 1
        if size < 0:
            raise ValueError(f"conv{nd}d: kernel larger than padded input ({tuple(input_shape)}, "
                             f"{tuple(weight_shape)})")
        spatial.append(size // stride[i] + 1)
    return (input_shape[0], weight_shape[0], *spatial)


def resolve_padding(padding: Padding, kernel: Shape, dilation: Sequence[int], stride: Sequence[int],
                    nd: int) -> tuple[int, ...]:
    """Per-dimension padding of a convNd: 'valid', 'same' (stride 1 only) or given ints."""
    if padding == "valid":
        return (0,) * nd
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even effective kernel is not supported")
        return tuple(t // 2 for t in total)
    return pair(padding, nd)


def _im2col(x: torch.Tensor, kernel, stride, padding, dilation, groups: int):
    """(groups, n*oh*ow, kh*kw*cg) rows of conv windows, channels-last, and (oh, ow).

    The input goes channels-last first, so each window row (kh, kw, c) is copied from
    contiguous memory.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    cg = c // groups
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # n, H, W, c
    s = xp.stride()
    win = xp.as_strided((n, oh, ow, kh, kw, groups, cg),
                        (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, cg * s[3], s[3]))
    return win.permute(5, 0, 1, 2, 3, 4, 6).reshape(groups, n * oh * ow, kh * kw * cg), (oh, ow)


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    stride, dilation = pair(stride, 2), pair(dilation, 2)
    padding = resolve_padding(padding, w_shape[2:], dilation, stride, 2)
    if x_shape[1] != w_shape[1] * groups or w_shape[0] % groups:
        raise ValueError(f"conv2d: input channels {x_shape[1]} and weight {tuple(w_shape)} do not "
                         f"fit groups={groups}")
    conv_output_shape(x_shape, w_shape, stride, padding, dilation)  # checks the kernel fits
    return tuple(w_shape[2:]), stride, padding, dilation


def _weight_matrix(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, kh*kw*cg, o/groups), rows ordered as _im2col's columns."""
    o, cg, kh, kw = w.shape
    return (w.reshape(groups, o // groups, cg, kh, kw).permute(0, 3, 4, 2, 1)
            .reshape(groups, kh * kw * cg, o // groups))


def conv2d_int64(x: torch.Tensor, w: torch.Tensor, stride: IntOrTuple = 1, padding: Padding = 0,
                 dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """conv2d mod 2^64 via im2col windows and a batched int64 matmul (about as fast as
    torch's int64 direct convolution on one thread)."""
    geometry = _conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    cols, (oh, ow) = _im2col(x, *geometry, groups)
    out = torch.bmm(cols, _weight_matrix(w, groups))  # (groups, n*oh*ow, o/groups)
    n, o = x.shape[0], w.shape[0]
    return (out.reshape(groups, n, oh, ow, o // groups).permute(1, 0, 4, 2, 3)
            .reshape(n, o, oh, ow))


def _grad_matrix(g: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, n*oh*ow, o/groups) view of a conv output gradient."""
    n, o, oh, ow = g.shape
    return g.reshape(n, groups, o // groups, oh, ow).permute(1, 0, 3, 4, 2).reshape(
        groups, n * oh * ow, o // groups)


def conv2d_input_int64(g: torch.Tensor, w: torch.Tensor, input_shape: Shape, stride: IntOrTuple = 1,
                       padding: Padding = 0, dilation: IntOrTuple = 1,
                       groups: int = 1) -> torch.Tensor:
    """d conv2d / d input applied to g (conv_transpose2d), mod 2^64: g W^T, then col2im."""
    (kh, kw), stride, padding, dilation = _conv_geometry(input_shape, w.shape, stride, padding,
                                                         dilation, groups)
    n, c, _, _ = input_shape
    oh, ow = g.shape[2:]
    cols = torch.bmm(_grad_matrix(g, groups), _weight_matrix(w, groups).transpose(1, 2))
    cg = c // groups
    cols = (cols.reshape(groups, n, oh, ow, kh, kw, cg).permute(1, 0, 6, 2, 3, 4, 5)
            .reshape(n, c, oh, ow, kh * kw))
    return fold_windows(cols, input_shape, (kh, kw), stride, padding, dilation)


def conv2d_weight_int64(x: torch.Tensor, g: torch.Tensor, weight_shape: Shape, stride: IntOrTuple = 1,
                        padding: Padding = 0, dilation: IntOrTuple = 1,
                        groups: int = 1) -> torch.Tensor:
    """d conv2d / d weight applied to g, mod 2^64: im2col(x)^T g."""
    geometry = _conv_geometry(x.shape, weight_shape, stride, padding, dilation, groups)
    cols, _ = _im2col(x, *geometry, groups)
    grad = torch.bmm(cols.transpose(1, 2), _grad_matrix(g, groups))  # (G, kh*kw*cg, o/G)
    o, cg, kh, kw = weight_shape
    return (grad.reshape(groups, kh, kw, cg, o // groups).permute(0, 4, 3, 1, 2)
            .reshape(o, cg, kh, kw))


def _window_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode):
    """kernel, stride, padding, dilation, output size and extra bottom/right padding of
    torch's pool2d windows over an (N, C, H, W) shape."""
    kernel = pair(kernel_size, 2)
    stride = pair(stride if stride is not None else kernel_size, 2)
    padding, dilation = pair(padding, 2), pair(dilation, 2)
    out, extra = [], []
    for size, k, s, p, d in zip(shape[2:], kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        if span < 0:
            raise ValueError(f"pooling window larger than padded input ({tuple(shape)})")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + p:  # torch: the last window starts inside
            o -= 1
        out.append(o)
        extra.append(max(0, (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p)))
    return kernel, stride, padding, dilation, tuple(out), tuple(extra)


def sliding_windows(x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                    padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                    fill: int = 0, ceil_mode: bool = False) -> torch.Tensor:
    """(N, C, OH, OW, kh * kw) windows of an (N, C, H, W) tensor, as torch's pool2d sees them."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), (eh, ew) = _window_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError("pad should be at most half of the kernel size")
    n, c = x.shape[:2]
    xp = F.pad(x, (pw, pw + ew, ph, ph + eh), value=fill).contiguous()
    st = xp.stride()
    win = xp.as_strided((n, c, oh, ow, kh, kw),
                        (st[0], st[1], st[2] * sh, st[3] * sw, st[2] * dh, st[3] * dw))
    return win.reshape(n, c, oh, ow, kh * kw)


def fold_windows(cols: torch.Tensor, input_shape: Shape, kernel_size: IntOrTuple,
                 stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                 ceil_mode: bool = False) -> torch.Tensor:
    """The adjoint of sliding_windows: add each window's values back where they came from."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), (eh, ew) = _window_geometry(
        input_shape, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = input_shape
    out = torch.zeros(n, c, h + 2 * ph + eh, w + 2 * pw + ew, dtype=cols.dtype, device=cols.device)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                j * dw:j * dw + sw * (ow - 1) + 1:sw] += cols[..., i * kw + j]
    return out[:, :, ph:ph + h, pw:pw + w]


def conv1d_int64(x: torch.Tensor, w: torch.Tensor, stride: IntOrTuple = 1, padding: Padding = 0,
                 dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """conv1d mod 2^64 as a conv2d over a height-1 image."""
    if isinstance(padding, str):
        padding = resolve_padding(padding, w.shape[2:], pair(dilation, 1), pair(stride, 1), 1)
    out = conv2d_int64(x.unsqueeze(2), w.unsqueeze(2), (1, pair(stride, 1)[0]),
                       (0, pair(padding, 1)[0]), (1, pair(dilation, 1)[0]), groups)
    return out.squeeze(2)


def on_host(t: torch.Tensor) -> bool:
    """Whether t is in host memory, where the host-only fast paths (numpy, int64 GEMM)
    may run. Every such path asks this one function, so a test can make CPU tensors take
    the device paths (tests/test_device_path.py)."""
    return t.device.type == "cpu"


def bits_at(word: torch.Tensor, positions: Iterable[int]) -> torch.Tensor:
    """Bits of each element at these positions, as a trailing dim of 0/1 int64."""
    positions = list(positions)
    if positions == list(range(64)) and on_host(word) and word.numel():
        # all 64 bits: unpack the bytes (several times faster than 64 shifts per element)
        raw = word.contiguous().reshape(-1).view(torch.uint8).reshape(-1, 8).numpy()
        bits = np.unpackbits(raw, axis=1, bitorder="little")
        return torch.from_numpy(bits).to(torch.int64).reshape(*word.shape, 64)
    pos = torch.as_tensor(positions, dtype=torch.int64, device=word.device)
    return (word.unsqueeze(-1) >> pos) & 1


def _conv2d_input_float(g, w, input_shape, **kwargs):
    return torch.nn.grad.conv2d_input(list(input_shape), w, g, **kwargs)


def _conv2d_weight_float(x, g, weight_shape, **kwargs):
    return torch.nn.grad.conv2d_weight(x, list(weight_shape), g, **kwargs)


FLOAT_BILINEAR: dict[Op, Callable] = {
    Op.MUL: torch.mul, Op.MATMUL: torch.matmul, Op.CONV1D: F.conv1d, Op.CONV2D: F.conv2d,
    Op.CONV2D_INPUT: _conv2d_input_float, Op.CONV2D_WEIGHT: _conv2d_weight_float}
"""Each bilinear op in floating point: the limb path's products, and plaintext references."""

_INT_BILINEAR: dict[Op, Callable] = {
    Op.MUL: torch.mul, Op.MATMUL: torch.matmul, Op.CONV1D: conv1d_int64, Op.CONV2D: conv2d_int64,
    Op.CONV2D_INPUT: conv2d_input_int64, Op.CONV2D_WEIGHT: conv2d_weight_int64}


def bilinear_output_shape(op: str, a_shape: Shape, b_shape: Shape,
                          kwargs: dict | None = None) -> tuple[int, ...]:
    """Shape of op(a, b) by torch's rules, computed without touching data."""
    kwargs = kwargs or {}
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if op == "mul":
        return tuple(torch.broadcast_shapes(a_shape, b_shape))
    if op == "matmul":
        if not a_shape or not b_shape:
            raise ValueError("matmul: both operands need at least one dimension")
        a = (1, *a_shape) if len(a_shape) == 1 else a_shape
        b = (*b_shape, 1) if len(b_shape) == 1 else b_shape
        if a[-1] != b[-2]:
            raise ValueError(f"matmul: shapes {a_shape} and {b_shape} cannot be multiplied")
        out = [*torch.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1]]
        if len(b_shape) == 1:
            out.pop(-1)
        if len(a_shape) == 1:
            out.pop(-2 if len(b_shape) > 1 else -1)
        return tuple(out)
    if op == "conv2d_input":
        return tuple(kwargs["input_shape"])
    if op == "conv2d_weight":
        return tuple(kwargs["weight_shape"])
    nd = 1 if op == "conv1d" else 2
    if len(a_shape) != nd + 2 or len(b_shape) != nd + 2:
        raise ValueError(f"{op}: expected {nd + 2}-d input and weight, got {a_shape} and {b_shape}")
    groups = kwargs.get("groups", 1)
    if a_shape[1] != b_shape[1] * groups or b_shape[0] % groups:
        raise ValueError(f"{op}: input {a_shape} and weight {b_shape} do not fit groups={groups}")
    return tuple(conv_output_shape(a_shape, b_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                                   kwargs.get("dilation", 1), nd))


def reduction_size(op: str, a_shape: Shape, b_shape: Shape, groups: int = 1) -> int:
    """Number of products summed into one output element (bounds the limb path)."""
    if op == "mul":
        return 1
    if op == "matmul":
        return a_shape[-1] if len(a_shape) else 1
    if op == "conv2d_input":  # sum over output channels of a group and kernel positions
        return (b_shape[0] // groups) * int(torch.tensor(b_shape[2:]).prod())
    if op == "conv2d_weight":  # sum over the batch and output positions
        return b_shape[0] * int(torch.tensor(b_shape[2:]).prod())
    return (a_shape[1] // groups) * int(torch.tensor(b_shape[2:]).prod())


def bilinear(op: str, a: torch.Tensor, b: torch.Tensor, force_limbs: bool = False,
             **kwargs) -> torch.Tensor:
    """op(a, b) exactly mod 2^64 for a bilinear op in BILINEAR_OPS."""
    if op not in BILINEAR_OPS:
        raise ValueError(f"unknown bilinear op {op!r}")
    needs_limbs = op != "mul" and (not on_host(a) or force_limbs)
    if not needs_limbs:
        return _INT_BILINEAR[op](a, b, **kwargs)
    return limb_bilinear(op, a, b, **kwargs)


_LIMB_BILINEAR: dict[Op, Callable] = {
    Op.MATMUL: limbs.matmul, Op.CONV1D: limbs.conv1d, Op.CONV2D: limbs.conv2d,
    Op.CONV2D_INPUT: limbs.conv2d_input, Op.CONV2D_WEIGHT: limbs.conv2d_weight}


def limb_bilinear(op: str, a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    """op(a, b) mod 2^64 from float64 limb products (the CUDA path, core/limbs.py)."""
    if op == Op.CONV1D and isinstance(kwargs.get("padding"), str):
        kwargs["padding"] = resolve_padding(kwargs["padding"], b.shape[2:],
                                            pair(kwargs.get("dilation", 1), 1),
                                            pair(kwargs.get("stride", 1), 1), 1)
    if op == Op.CONV2D and isinstance(kwargs.get("padding"), str):
        kwargs["padding"] = resolve_padding(kwargs["padding"], b.shape[2:],
                                            pair(kwargs.get("dilation", 1), 2),
                                            pair(kwargs.get("stride", 1), 2), 2)
    if op == Op.MUL:
        return a * b
    return _LIMB_BILINEAR[op](a, b, **kwargs)
