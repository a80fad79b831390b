"""Gradients of every differentiable Op, written with MPCTensor ops (so they run privately).

Each function takes (node, output, grad of output) and returns one gradient per input
(None for public inputs). Importing this module registers them in tape.GRADIENTS;
mpc_ml.tensor then checks that no differentiable Op lacks one.
"""
from __future__ import annotations

import math

import torch

from ..core import ring
from ..core.ops import Op
from ..primitives import mul_bits
from .mpctensor import MPCTensor, bilinear, where
from .tape import gradient, requires_grad


# -- helpers for gradient functions ------------------------------------------------------
def _unbroadcast(g: MPCTensor, shape) -> MPCTensor:
    """Sum g over the dims along which an input of `shape` was broadcast."""
    shape = tuple(shape)
    extra = g.dim() - len(shape)
    if extra:
        g = g.sum(tuple(range(extra)))
    dims = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    if dims:
        g = g.sum(dims, keepdim=True)
    return g.reshape(shape) if tuple(g.shape) != shape else g


def _mul_bit(g: MPCTensor, bits: torch.Tensor) -> MPCTensor:
    """g * b for 0/1 integer bit shares (one round, no truncation)."""
    g_share = g.share.expand(torch.broadcast_shapes(g.shape, bits.shape))
    (out,) = mul_bits(g.session, [(g_share, bits.expand(g_share.shape))])
    return g._new(out)


def _shape_of(t) -> tuple:
    return tuple(t.shape) if isinstance(t, (MPCTensor, torch.Tensor)) else ()


# -- arithmetic --------------------------------------------------------------------------
@gradient(Op.ADD)
def _add(node, out, g):
    x, y = node.inputs
    return _unbroadcast(g, x.shape), (_unbroadcast(g, y.shape) if requires_grad(y) else None)


@gradient(Op.NEG)
def _neg(node, out, g):
    return (g.neg(),)


@gradient(Op.SUM)
def _sum(node, out, g):
    (x,) = node.inputs
    dim, keepdim = node.ctx["dim"], node.ctx["keepdim"]
    if dim is not None and not keepdim:
        for d in sorted((dim,) if isinstance(dim, int) else dim, key=lambda d: d % x.dim()):
            g = g.unsqueeze(d % x.dim())
    return (g.expand(x.shape).clone(),)


@gradient(Op.DIV_PUBLIC)
def _div_public(node, out, g):
    (x,) = node.inputs
    return (_unbroadcast(g.div(node.ctx["divisor"]), x.shape),)


@gradient(Op.MUL)
def _mul(node, out, g):
    x, y = node.inputs
    gx = _unbroadcast(g * y, x.shape) if requires_grad(x) else None
    gy = _unbroadcast(g * x, y.shape) if requires_grad(y) else None
    return gx, gy


def _t(v):
    return v.transpose(-1, -2)


@gradient(Op.MATMUL)
def _matmul(node, out, g):
    x, y = node.inputs
    xs, ys = _shape_of(x), _shape_of(y)
    if len(xs) == 1 and len(ys) == 1:
        return (g * y if requires_grad(x) else None), (g * x if requires_grad(y) else None)
    xm = x.unsqueeze(0) if len(xs) == 1 else x
    ym = y.unsqueeze(-1) if len(ys) == 1 else y
    gm = g.unsqueeze(-2) if len(xs) == 1 else g
    gm = gm.unsqueeze(-1) if len(ys) == 1 else gm
    gx = gy = None
    if requires_grad(x):
        gx = _unbroadcast(gm @ _t(ym), _shape_of(xm)).reshape(xs)
    if requires_grad(y):
        gy = _unbroadcast(_t(xm) @ gm, _shape_of(ym)).reshape(ys)
    return gx, gy


@gradient(Op.CONV2D)
def _conv2d(node, out, g):
    x, w = node.inputs
    kw = {k: node.ctx[k] for k in ("stride", "padding", "dilation", "groups")}
    gx = gw = None
    if requires_grad(x):
        gx = bilinear(Op.CONV2D_INPUT, g, w, input_shape=list(_shape_of(x)),
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    if requires_grad(w):
        gw = bilinear(Op.CONV2D_WEIGHT, x, g, weight_shape=list(_shape_of(w)),
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    return gx, gw


# -- shape ----------------------------------------------------------------------------------
@gradient(Op.RESHAPE)
def _reshape(node, out, g):
    return (g.reshape(node.ctx["shape"]),)


@gradient(Op.TRANSPOSE)
def _transpose(node, out, g):
    return (g.transpose(node.ctx["dim0"], node.ctx["dim1"]),)


@gradient(Op.PERMUTE)
def _permute(node, out, g):
    dims = [d % out.dim() for d in node.ctx["dims"]]
    inverse = [dims.index(i) for i in range(len(dims))]
    return (g.permute(*inverse),)


@gradient(Op.EXPAND)
def _expand(node, out, g):
    return (_unbroadcast(g, node.ctx["shape"]),)


@gradient(Op.FLIP)
def _flip(node, out, g):
    return (g.flip(node.ctx["dims"]),)


@gradient(Op.GETITEM)
def _getitem(node, out, g):
    (x,) = node.inputs
    share = torch.zeros_like(x.share)
    index = node.ctx["index"]
    parts = index if isinstance(index, tuple) else (index,)
    if all(isinstance(p, torch.Tensor) for p in parts):
        share.index_put_(tuple(p.to(share.device) for p in parts), g.share, accumulate=True)
    else:
        share[index] = g.share
    return (x._new(share),)


@gradient(Op.PAD)
def _pad(node, out, g):
    pad = node.ctx["pad"]
    index = [slice(None)] * g.dim()
    for i in range(len(pad) // 2):
        d = g.dim() - 1 - i
        index[d] = slice(pad[2 * i], g.shape[d] - pad[2 * i + 1])
    return (g[tuple(index)],)


@gradient(Op.CAT)
def _cat(node, out, g):
    dim, offset, grads = node.ctx["dim"], 0, []
    for t in node.inputs:
        size = _shape_of(t)[dim]
        grads.append(g.narrow(dim, offset, size) if requires_grad(t) else None)
        offset += size
    return tuple(grads)


@gradient(Op.STACK)
def _stack(node, out, g):
    dim = node.ctx["dim"]
    return tuple(g[(slice(None),) * (dim % g.dim()) + (i,)] if requires_grad(t) else None
                 for i, t in enumerate(node.inputs))


@gradient(Op.WHERE)
def _where(node, out, g):
    a, b = node.inputs
    cond = node.ctx["condition"]
    zero = g._new(torch.zeros_like(g.share))
    ga = _unbroadcast(where(cond, g, zero), a.shape) if requires_grad(a) else None
    gb = _unbroadcast(where(cond, zero, g), b.shape) if requires_grad(b) else None
    return ga, gb


# -- comparisons and pooling -----------------------------------------------------------------
@gradient(Op.RELU)
def _relu(node, out, g):
    return (g - _mul_bit(g, node.ctx["negative"]),)


@gradient(Op.ABS)
def _abs(node, out, g):
    return (g - _mul_bit(g, node.ctx["negative"]) * 2,)


@gradient(Op.CLAMP)
def _clamp(node, out, g):
    return (_mul_bit(g, node.ctx["inside"]),)


@gradient(Op.MAX)
def _select_max(node, out, g):
    (x,) = node.inputs
    dim, keepdim = node.ctx["dim"], node.ctx["keepdim"]
    if dim is not None and not keepdim:
        g = g.unsqueeze(dim)
    return (_mul_bit(g, node.ctx["mask"]),)


@gradient(Op.MAX_POOL2D)
def _max_pool2d(node, out, g):
    per_window = _mul_bit(g.unsqueeze(-1), node.ctx["mask"])
    return (g._new(ring.fold_windows(per_window.share, node.ctx["input_shape"],
                                     **node.ctx["geometry"])),)


@gradient(Op.WINDOW_SUM)
def _window_sum(node, out, g):
    k = math.prod(ring.pair(node.ctx["geometry"]["kernel_size"], 2))
    spread = g.share.unsqueeze(-1).expand(*g.shape, k)
    return (g._new(ring.fold_windows(spread, node.ctx["input_shape"], **node.ctx["geometry"])),)


# -- nonlinear functions (from the output where it is cheaper) --------------------------------
@gradient(Op.EXP)
def _exp(node, out, g):
    return (g * out,)


@gradient(Op.LOG)
def _log(node, out, g):
    return (g * node.inputs[0].reciprocal(),)


@gradient(Op.RECIPROCAL)
def _reciprocal(node, out, g):
    return (g * (out * out).neg(),)


@gradient(Op.SQRT)
def _sqrt(node, out, g):
    return (g * node.inputs[0].inv_sqrt() * 0.5,)


@gradient(Op.INV_SQRT)
def _inv_sqrt(node, out, g):
    return (g * (out * out * out) * -0.5,)


@gradient(Op.SIGMOID)
def _sigmoid(node, out, g):
    return (g * (out * (1.0 - out)),)


@gradient(Op.TANH)
def _tanh(node, out, g):
    return (g * (1.0 - out * out),)


@gradient(Op.ERF)
def _erf(node, out, g):
    x = node.inputs[0]
    return (g * ((x * x).neg()._exp_wide() * (2 / math.sqrt(math.pi))),)


@gradient(Op.GELU)
def _gelu(node, out, g):
    x = node.inputs[0]  # gelu'(x) = Phi(x) + x phi(x); x phi(x) <= 5.4e-4 beyond |x| = 4
    cdf = ((x * (1 / math.sqrt(2))).erf() + 1.0) * 0.5
    near = _mul_bit(x, node.ctx["inside"])  # x on [-4, 4], else 0 (keeps the exp in range)
    density = (near * near * -0.5)._exp_wide() * (1 / math.sqrt(2 * math.pi))
    return (g * (cdf + near * density),)


@gradient(Op.SOFTMAX)
def _softmax(node, out, g):
    dim = node.ctx["dim"]
    return (out * (g - (g * out).sum(dim, keepdim=True)),)


@gradient(Op.LOG_SOFTMAX)
def _log_softmax(node, out, g):
    dim, probs = node.ctx["dim"], node.ctx.get("probs")
    # softmax from the forward's pieces (one round), or exp of out (<= 0, maybe far below -80)
    if probs is None:
        p = out._exp_wide()
    else:
        share, bits = probs()
        p = out._new(share, pending=bits)
    return (g - p * g.sum(dim, keepdim=True),)




# -- added ops: scans, index ops, transposed convolution, cos and sin --------------------------
@gradient(Op.CUMSUM)
def _cumsum(node, out, g):
    dim = node.ctx["dim"]
    return (g.flip(dim).cumsum(dim).flip(dim),)


@gradient(Op.ROLL)
def _roll(node, out, g):
    shifts = node.ctx["shifts"]
    back = -shifts if isinstance(shifts, int) else tuple(-s for s in shifts)
    return (g.roll(back, node.ctx["dims"]),)


def _into(shape, g: MPCTensor, index_shape) -> MPCTensor:
    """g (of index_shape) in the leading corner of zeros of `shape` (scatter's src may be
    larger than its index; only that corner was read)."""
    if tuple(index_shape) == tuple(shape):
        return g
    pad = []
    for have, want in zip(reversed(tuple(index_shape)), reversed(tuple(shape))):
        pad += [0, want - have]
    return g.pad(pad)


@gradient(Op.GATHER)
def _gather(node, out, g):
    (x,) = node.inputs
    zeros = x._new(torch.zeros_like(x._data))
    return (zeros.scatter_add(node.ctx["dim"], node.ctx["index"], g),)


@gradient(Op.SCATTER)
def _scatter(node, out, g):
    x, src = node.inputs
    dim, index = node.ctx["dim"], node.ctx["index"]
    gx = g.scatter(dim, index, 0.0) if requires_grad(x) else None
    gs = _into(src.shape, g.gather(dim, index), index.shape) if requires_grad(src) else None
    return gx, gs


@gradient(Op.SCATTER_ADD)
def _scatter_add(node, out, g):
    x, src = node.inputs
    dim, index = node.ctx["dim"], node.ctx["index"]
    gs = _into(src.shape, g.gather(dim, index), index.shape) if requires_grad(src) else None
    return (g if requires_grad(x) else None), gs


@gradient(Op.INDEX_SELECT)
def _index_select(node, out, g):
    (x,) = node.inputs
    zeros = x._new(torch.zeros_like(x._data))
    return (zeros.index_add(node.ctx["dim"], node.ctx["index"], g),)


@gradient(Op.INDEX_ADD)
def _index_add(node, out, g):
    x, source = node.inputs
    gs = g.index_select(node.ctx["dim"], node.ctx["index"]) if requires_grad(source) else None
    return (g if requires_grad(x) else None), gs


@gradient(Op.CONV_TRANSPOSE2D)
def _conv_transpose2d(node, out, g):
    x, w = node.inputs  # out = conv2d_input(x, w): conv2d(., w)'s adjoint applied to x
    kw = {k: list(node.ctx[k]) if isinstance(node.ctx[k], tuple) else node.ctx[k]
          for k in ("stride", "padding", "dilation", "groups")}
    gx = bilinear(Op.CONV2D, g, w, **kw) if requires_grad(x) else None
    gw = (bilinear(Op.CONV2D_WEIGHT, g, x, weight_shape=list(_shape_of(w)), **kw)
          if requires_grad(w) else None)
    return gx, gw


@gradient(Op.COS)
def _cos(node, out, g):
    return (g * node.inputs[0].sin().neg(),)


@gradient(Op.SIN)
def _sin(node, out, g):
    return (g * node.inputs[0].cos(),)
