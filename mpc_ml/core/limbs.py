"""Exact Z_2^64 matmul and convolutions from float64 products of limbs: the GPU path.

CUDA has no int64 GEMM or convolution, but float64 ones. Split each int64 operand into
L limbs of w bits, x = sum_i x_i 2^(w i) with 0 <= x_i < 2^w (two's complement: the
limbs of the word's bits, the top one shorter). A bilinear op is then

    op(a, b) = sum_{i, j} op(a_i, b_j) 2^(w (i + j))   (mod 2^64),

and a pair with w (i + j) >= 64 vanishes mod 2^64, so only the pairs below are computed.

Exactness. One output element of op(a_i, b_j) is a sum of k products of limbs (k: the
reduction size, e.g. the inner dimension of a matmul), each in [0, (2^w - 1)^2]. Every
partial sum of non-negative integers up to 2^53 is exact in float64, in any order of
summation, so the float64 result is the exact integer when

    k (2^w - 1)^2 <= 2^53,   i.e.  k <= max_reduction(w) = floor(2^53 / (2^w - 1)^2),

and it converts to int64 exactly; the shifts and the sum of the pairs are then int64
arithmetic, exact mod 2^64. A longer reduction is split into chunks of at most
max_reduction(w) terms whose int64 results are added. The library call must itself sum
exactly: a GEMM does, but cuDNN may pick an FFT or Winograd convolution, which rounds, so
on CUDA the convolutions run with cuDNN off (exact_convolutions).

The plan (limb_plan): 3 limbs of 22 bits need only 6 pair products (i + j <= 2) but
allow k <= 512; 4 limbs of 16 bits need 10 (i + j <= 3) and allow k <= 2^21 + 64 per
chunk. Widths 17..21 also need 4 limbs and 10 products with shorter chunks, and narrower
widths need more products, so those two are the only plans worth having. The pairs are
stacked into one batched library call: a broadcast matmul over a leading pair dimension
(with the chunks as a further batch dimension), or one grouped convolution whose groups
are the pairs (chunks of a long reduction are a loop of such calls).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

IntOrTuple = int | tuple[int, ...] | list[int]

FLOAT64_EXACT = 1 << 53


def max_reduction(width: int) -> int:
    """The longest reduction whose float64 sums of w-bit limb products are all exact."""
    return FLOAT64_EXACT // ((1 << width) - 1) ** 2


@dataclass(frozen=True)
class LimbPlan:
    """How one bilinear op is computed: limb width and count, the limb pairs computed, and
    the chunk length the reduction is split into (the whole reduction if it fits)."""

    width: int
    count: int
    pairs: tuple[tuple[int, int], ...]
    chunk: int

    def chunks(self, k: int) -> int:
        """How many chunks a reduction of k terms takes."""
        return max(1, -(-k // self.chunk))


def limb_plan(k: int) -> LimbPlan:
    """The plan for a reduction of k terms: 22-bit limbs (6 products) when k <= 512,
    else 16-bit limbs (10 products) in chunks of at most max_reduction(16) terms."""
    width = 22 if k <= max_reduction(22) else 16
    count = -(-64 // width)
    pairs = tuple((i, j) for i in range(count) for j in range(count) if width * (i + j) < 64)
    return LimbPlan(width, count, pairs, min(max(k, 1), max_reduction(width)))


def split(x: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The limbs of each int64 element as float64, stacked on a new leading dim (little
    end first): ((x >> w i) & (2^w - 1)) for i < count."""
    shifts = torch.arange(count, device=x.device).mul_(width).view(-1, *([1] * x.dim()))
    return ((x.unsqueeze(0) >> shifts) & ((1 << width) - 1)).to(torch.float64)


def _combine(products: torch.Tensor, plan: LimbPlan) -> torch.Tensor:
    """sum_p products[p] 2^(w (i_p + j_p)) mod 2^64, products exact float64 integers
    (rounded first, in place: a library that summed with an error below 1/2 would still
    give the exact result, where conversion alone truncates)."""
    products = products.round_()
    out = None
    for p, (i, j) in enumerate(plan.pairs):
        term = products[p].to(torch.int64) << (plan.width * (i + j))
        out = term if out is None else out.add_(term)
    return out


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul(a, b) mod 2^64 for int64 a and b (any shapes matmul takes): one
    batched float64 matmul of every limb pair and chunk."""
    squeeze_a, squeeze_b = a.dim() == 1, b.dim() == 1
    a = a.unsqueeze(0) if squeeze_a else a
    b = b.unsqueeze(-1) if squeeze_b else b
    k = a.shape[-1]
    if b.shape[-2] != k:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    batch = max(a.dim(), b.dim()) - 2  # align the batch dims (the pair dim goes in front)
    a = a.reshape((1,) * (batch + 2 - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (batch + 2 - b.dim()) + tuple(b.shape))
    plan = limb_plan(k)
    chunks = plan.chunks(k)
    pad = chunks * plan.chunk - k
    if pad:
        a = F.pad(a, (0, pad))
        b = F.pad(b.transpose(-1, -2), (0, pad)).transpose(-1, -2)
    ai = torch.tensor([i for i, _ in plan.pairs], device=a.device)
    bj = torch.tensor([j for _, j in plan.pairs], device=a.device)
    al = split(a, plan.width, plan.count)[ai]  # (P, ..., m, k)
    bl = split(b, plan.width, plan.count)[bj]  # (P, ..., k, n)
    # chunks as a batch dim: (P, ..., c, m, kc) @ (P, ..., c, kc, n)
    al = al.unflatten(-1, (chunks, plan.chunk)).movedim(-2, -3)
    bl = bl.unflatten(-2, (chunks, plan.chunk))
    products = torch.matmul(al, bl)  # (P, ..., c, m, n), one library call
    out = _combine(products, plan).sum(dim=-3)  # the chunks, in int64 (mod 2^64)
    if squeeze_b:
        out = out.squeeze(-1)
    if squeeze_a:
        out = out.squeeze(-1 if squeeze_b else -2)
    return out


_cudnn_off_lock = threading.Lock()
_cudnn_off_depth = 0  # limb convolutions in flight on CUDA, across threads
_cudnn_was_enabled = True


@contextlib.contextmanager
def _cudnn_off() -> Iterator[None]:
    """cuDNN off while any thread runs a limb convolution on CUDA: torch's flag is
    process-wide, so the first to enter turns it off and the last to leave restores it
    (torch.backends.cudnn.flags would let one party thread's exit turn it back on under
    another's convolution)."""
    global _cudnn_off_depth, _cudnn_was_enabled
    with _cudnn_off_lock:
        if _cudnn_off_depth == 0:
            _cudnn_was_enabled = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = False
        _cudnn_off_depth += 1
    try:
        yield
    finally:
        with _cudnn_off_lock:
            _cudnn_off_depth -= 1
            if _cudnn_off_depth == 0:
                torch.backends.cudnn.enabled = _cudnn_was_enabled


def exact_convolutions(device: torch.device) -> contextlib.AbstractContextManager:
    """Where convolutions are exact on integers: on CUDA with cuDNN off, since cuDNN may
    pick an FFT or Winograd algorithm, which rounds (and a float64 result that is off by
    any amount below an integer truncates wrongly); torch then computes them by im2col and
    cuBLAS GEMMs, whose sums of exact integers below 2^53 are exact. Elsewhere: as is."""
    return _cudnn_off() if device.type == "cuda" else contextlib.nullcontext()


def _pairs_conv(x: torch.Tensor, w: torch.Tensor, plan: LimbPlan, groups: int,
                conv, **kwargs) -> torch.Tensor:
    """conv(x, w) mod 2^64 for one chunk: the limb pairs as the groups of one grouped
    convolution (pair p's input channels next to pair p's output channels)."""
    xl = split(x, plan.width, plan.count)
    wl = split(w, plan.width, plan.count)
    xs = torch.cat([xl[i] for i, _ in plan.pairs], dim=1)   # (N, P C, ...)
    ws = torch.cat([wl[j] for _, j in plan.pairs], dim=0)   # (P O, C / g, ...)
    with exact_convolutions(xs.device):
        out = conv(xs, ws, groups=groups * len(plan.pairs), **kwargs)  # one library call
    return _combine(out.unflatten(1, (len(plan.pairs), -1)).movedim(1, 0), plan)


def _channel_chunks(channels_per_group: int, per_channel: int) -> tuple[LimbPlan, int]:
    """(plan, channels per chunk) for a reduction over channels_per_group x per_channel."""
    plan = limb_plan(channels_per_group * per_channel)
    if per_channel > plan.chunk:
        raise ValueError(f"a kernel of {per_channel} positions is too long for exact limb products")
    return plan, max(1, plan.chunk // per_channel)


def _group_slice(t: torch.Tensor, dim: int, groups: int, lo: int, hi: int) -> torch.Tensor:
    """Channels lo:hi of every group of t's dim (groups equal blocks)."""
    shape = list(t.shape)
    blocks = t.unflatten(dim, (groups, shape[dim] // groups))
    return blocks.narrow(dim + 1, lo, hi - lo).flatten(dim, dim + 1)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
           dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, w, ...) mod 2^64 for int64 x and w: one grouped float64 convolution per
    chunk of input channels (one chunk unless C / groups x kh x kw > max_reduction(16))."""
    per_group = w.shape[1]
    plan, step = _channel_chunks(per_group, w.shape[2] * w.shape[3])
    out = None
    for lo in range(0, per_group, step):
        hi = min(per_group, lo + step)
        part = _pairs_conv(_group_slice(x, 1, groups, lo, hi), w[:, lo:hi], plan, groups,
                           F.conv2d, stride=stride, padding=padding, dilation=dilation)
        out = part if out is None else out.add_(part)
    return out


def conv1d(x: torch.Tensor, w: torch.Tensor, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
           dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """F.conv1d mod 2^64, as a conv2d over a height-1 image."""
    def one(v):
        return (1, v if isinstance(v, int) else v[0])
    if isinstance(padding, str):
        raise ValueError("limb conv1d: resolve string padding first (ring.resolve_padding)")
    return conv2d(x.unsqueeze(2), w.unsqueeze(2), one(stride), (0, one(padding)[1]), one(dilation),
                  groups).squeeze(2)


def conv2d_input(g: torch.Tensor, w: torch.Tensor, input_shape: Sequence[int],
                 stride: IntOrTuple = 1, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                 groups: int = 1) -> torch.Tensor:
    """The gradient of conv2d with respect to its input (a transposed convolution) mod
    2^64: one grouped call per chunk of output channels of a group."""
    per_group = w.shape[0] // groups
    plan, step = _channel_chunks(per_group, w.shape[2] * w.shape[3])
    n, c, h, wd = input_shape
    out = None
    for lo in range(0, per_group, step):
        hi = min(per_group, lo + step)
        g_part, w_part = _group_slice(g, 1, groups, lo, hi), _group_slice(w, 0, groups, lo, hi)
        pairs = len(plan.pairs)

        def transposed(gs, ws, groups, **kw):
            return torch.nn.grad.conv2d_input([n, pairs * c, h, wd], ws, gs, groups=groups, **kw)
        part = _pairs_conv(g_part, w_part, plan, groups, transposed, stride=stride,
                           padding=padding, dilation=dilation)
        out = part if out is None else out.add_(part)
    return out


def conv2d_weight(x: torch.Tensor, g: torch.Tensor, weight_shape: Sequence[int],
                  stride: IntOrTuple = 1, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                  groups: int = 1) -> torch.Tensor:
    """The gradient of conv2d with respect to its weight mod 2^64: a reduction over the
    batch and the output positions, one grouped call per chunk of the batch."""
    per_sample = g.shape[2] * g.shape[3]
    plan = limb_plan(g.shape[0] * per_sample)
    if per_sample > plan.chunk:
        raise ValueError(f"an output of {per_sample} positions is too long for exact limb products")
    step = max(1, plan.chunk // per_sample)
    o, cg, kh, kw = weight_shape
    pairs = len(plan.pairs)
    out = None
    for lo in range(0, g.shape[0], step):
        xl = split(x[lo:lo + step], plan.width, plan.count)
        gl = split(g[lo:lo + step], plan.width, plan.count)
        xs = torch.cat([xl[i] for i, _ in plan.pairs], dim=1)
        gs = torch.cat([gl[j] for _, j in plan.pairs], dim=1)
        with exact_convolutions(xs.device):
            grads = torch.nn.grad.conv2d_weight(xs, [pairs * o, cg, kh, kw], gs, stride=stride,
                                                padding=padding, dilation=dilation,
                                                groups=groups * pairs)  # one library call
        part = _combine(grads.unflatten(0, (pairs, o)), plan)
        out = part if out is None else out.add_(part)
    return out
