"""Z_2^64 kernels on int64 tensors: wrap-around of int64 arithmetic is the modulus.

Bilinear ops (mul, matmul, conv1d, conv2d) are computed exactly mod 2^64:
- on CPU with torch's int64 kernels (conv via an im2col + int64 matmul, which is
  several times faster than torch's int64 direct convolution);
- on CUDA, where torch has no int64 matmul/conv, by splitting each operand into four
  16-bit limbs held in float64 and summing the ten limb products that reach below
  2^64. Each limb product is a sum of k terms below 2^32, exact in float64 while
  k < 2^21. The same limb path can be forced on CPU (``force_limbs``) so that CI
  exercises it.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F

LIMB_BITS = 16
N_LIMBS = 4
MAX_LIMB_REDUCTION = 1 << 21

BILINEAR_OPS = ("mul", "matmul", "conv1d", "conv2d")


def _pair(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def conv_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, nd=2):
    """Output shape of torch's convNd for these shapes and arguments."""
    stride, dilation = _pair(stride, nd), _pair(dilation, nd)
    padding = _resolve_padding(padding, weight_shape[2:], dilation, stride, nd)
    spatial = []
    for i in range(nd):
        size = input_shape[2 + i] + 2 * padding[i] - dilation[i] * (weight_shape[2 + i] - 1) - 1
        if size < 0:
            raise ValueError(f"conv{nd}d: kernel larger than padded input ({tuple(input_shape)}, "
                             f"{tuple(weight_shape)})")
        spatial.append(size // stride[i] + 1)
    return (input_shape[0], weight_shape[0], *spatial)


def _resolve_padding(padding, kernel, dilation, stride, nd) -> tuple:
    if padding == "valid":
        return (0,) * nd
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even effective kernel is not supported")
        return tuple(t // 2 for t in total)
    return _pair(padding, nd)


def conv2d_int64(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> torch.Tensor:
    """conv2d mod 2^64 via im2col windows and a batched int64 matmul.

    The input goes channels-last first, so each window row (kh, kw, c) is copied
    from contiguous memory; about as fast as torch's int64 direct convolution on one
    thread, and it threads and batches over groups the same way.
    """
    (sh, sw), (dh, dw) = _pair(stride, 2), _pair(dilation, 2)
    ph, pw = _resolve_padding(padding, w.shape[2:], (dh, dw), (sh, sw), 2)
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    if c != cg * groups or o % groups:
        raise ValueError(f"conv2d: input channels {c} and weight {tuple(w.shape)} do not fit "
                         f"groups={groups}")
    _, _, oh, ow = conv_output_shape(x.shape, w.shape, (sh, sw), (ph, pw), (dh, dw))
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # n, H, W, c
    s = xp.stride()
    win = xp.as_strided((n, oh, ow, kh, kw, groups, cg),
                        (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, cg * s[3], s[3]))
    cols = win.permute(5, 0, 1, 2, 3, 4, 6).reshape(groups, n * oh * ow, kh * kw * cg)
    wmat = (w.reshape(groups, o // groups, cg, kh, kw).permute(0, 3, 4, 2, 1)
            .reshape(groups, kh * kw * cg, o // groups))
    out = torch.bmm(cols, wmat)  # (groups, n*oh*ow, o/groups)
    return (out.reshape(groups, n, oh, ow, o // groups).permute(1, 0, 4, 2, 3)
            .reshape(n, o, oh, ow))


def sliding_windows(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                    fill: int = 0, ceil_mode: bool = False) -> torch.Tensor:
    """(N, C, OH, OW, kh * kw) windows of an (N, C, H, W) tensor, as torch's pool2d sees them."""
    (kh, kw) = _pair(kernel_size, 2)
    (sh, sw) = _pair(stride if stride is not None else kernel_size, 2)
    (ph, pw), (dh, dw) = _pair(padding, 2), _pair(dilation, 2)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError("pad should be at most half of the effective kernel size")
    n, c, h, w = x.shape
    sizes = []
    for size, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw)):
        span = size + 2 * p - d * (k - 1) - 1
        if span < 0:
            raise ValueError(f"pooling window larger than padded input ({tuple(x.shape)})")
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + p:  # torch: last window must start inside
            out -= 1
        sizes.append(out)
    oh, ow = sizes
    extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    xp = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=fill).contiguous()
    st = xp.stride()
    win = xp.as_strided((n, c, oh, ow, kh, kw),
                        (st[0], st[1], st[2] * sh, st[3] * sw, st[2] * dh, st[3] * dw))
    return win.reshape(n, c, oh, ow, kh * kw)


def conv1d_int64(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> torch.Tensor:
    """conv1d mod 2^64 as a conv2d over a height-1 image."""
    if isinstance(padding, str):
        padding = _resolve_padding(padding, w.shape[2:], _pair(dilation, 1), _pair(stride, 1), 1)
    out = conv2d_int64(x.unsqueeze(2), w.unsqueeze(2), (1, _pair(stride, 1)[0]),
                       (0, _pair(padding, 1)[0]), (1, _pair(dilation, 1)[0]), groups)
    return out.squeeze(2)


def bits_at(word: torch.Tensor, positions) -> torch.Tensor:
    """Bits of each element at these positions, as a trailing dim of 0/1 int64."""
    pos = torch.as_tensor(list(positions), dtype=torch.int64, device=word.device)
    return (word.unsqueeze(-1) >> pos) & 1


def _float_op(op: str) -> Callable:
    return {"mul": torch.mul, "matmul": torch.matmul, "conv1d": F.conv1d, "conv2d": F.conv2d}[op]


def _int_op(op: str) -> Callable:
    return {"mul": torch.mul, "matmul": torch.matmul, "conv1d": conv1d_int64,
            "conv2d": conv2d_int64}[op]


def bilinear_output_shape(op: str, a_shape, b_shape, kwargs: dict | None = None) -> tuple:
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
    nd = 1 if op == "conv1d" else 2
    if len(a_shape) != nd + 2 or len(b_shape) != nd + 2:
        raise ValueError(f"{op}: expected {nd + 2}-d input and weight, got {a_shape} and {b_shape}")
    groups = kwargs.get("groups", 1)
    if a_shape[1] != b_shape[1] * groups or b_shape[0] % groups:
        raise ValueError(f"{op}: input {a_shape} and weight {b_shape} do not fit groups={groups}")
    return tuple(conv_output_shape(a_shape, b_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                                   kwargs.get("dilation", 1), nd))


def reduction_size(op: str, a_shape, b_shape, groups: int = 1) -> int:
    """Number of products summed into one output element (bounds the limb path)."""
    if op == "mul":
        return 1
    if op == "matmul":
        return a_shape[-1] if len(a_shape) else 1
    return (a_shape[1] // groups) * int(torch.tensor(b_shape[2:]).prod())


def bilinear(op: str, a: torch.Tensor, b: torch.Tensor, force_limbs: bool = False,
             **kwargs) -> torch.Tensor:
    """op(a, b) exactly mod 2^64 for a bilinear op in BILINEAR_OPS."""
    if op not in BILINEAR_OPS:
        raise ValueError(f"unknown bilinear op {op!r}")
    needs_limbs = op != "mul" and (a.is_cuda or force_limbs)
    if not needs_limbs:
        return _int_op(op)(a, b, **kwargs)
    return limb_bilinear(op, a, b, **kwargs)


def split_limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """Four 16-bit limbs of each int64 element, as float64 (little end first)."""
    mask = (1 << LIMB_BITS) - 1
    return [((x >> (LIMB_BITS * i)) & mask).to(torch.float64) for i in range(N_LIMBS)]


def limb_bilinear(op: str, a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    """op(a, b) mod 2^64 from float64 limb products (the CUDA path)."""
    k = reduction_size(op, a.shape, b.shape, kwargs.get("groups", 1))
    if k >= MAX_LIMB_REDUCTION:
        raise ValueError(f"{op}: reduction of {k} terms is too long for exact limb products")
    fop = _float_op(op)
    al, bl = split_limbs(a), split_limbs(b)
    out = None
    for i, j in itertools.product(range(N_LIMBS), repeat=2):
        if i + j >= N_LIMBS:
            continue
        term = fop(al[i], bl[j], **kwargs).to(torch.int64) << (LIMB_BITS * (i + j))
        out = term if out is None else out + term
    return out
