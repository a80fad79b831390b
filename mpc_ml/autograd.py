"""Reverse-mode autograd for MPCTensor: a tape of recorded ops and their gradients.

MPCTensor ops report themselves through tensor._track (name, output, inputs, and what
the gradient needs, e.g. the private sign bits relu computed). When an input requires
grad and grad mode is on (per party thread), the output gets a Node. backward() walks
the graph in reverse topological order under no_grad, so gradients are themselves
private tensors computed with the ordinary MPCTensor ops. Public operands (torch
tensors) get no gradient.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable

import torch

from . import ring, tensor
from .primitives import mul_bits
from .tensor import MPCTensor

_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether this party thread records ops for autograd."""
    return getattr(_mode, "enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.previous = is_grad_enabled()
        _mode.enabled = self.enabled

    def __exit__(self, *exc):
        _mode.enabled = self.previous
        return False


def no_grad() -> _GradMode:
    """Context manager / decorator: record nothing (inference, optimizer steps)."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    """Context manager / decorator: record ops again inside a no_grad block."""
    return _GradMode(True)


class Node:
    """How an output was made: op name, inputs, and saved context."""

    __slots__ = ("name", "inputs", "ctx")

    def __init__(self, name: str, inputs: tuple, ctx: dict):
        self.name, self.inputs, self.ctx = name, inputs, ctx

    def __repr__(self) -> str:
        return f"<{self.name}Backward>"


class _Tape:
    """The recorder tensor.py reports to."""

    @staticmethod
    def wants(inputs) -> bool:
        return is_grad_enabled() and any(isinstance(t, MPCTensor) and t.requires_grad
                                         for t in inputs)

    def record(self, name: str, out: MPCTensor, inputs: tuple, ctx: dict) -> None:
        if self.wants(inputs):
            if name not in GRADIENTS:
                raise NotImplementedError(f"{name} of a tensor that requires grad: no gradient "
                                          "is implemented (use mpc.no_grad())")
            out.requires_grad = True
            out.grad_fn = Node(name, inputs, ctx)


def _private(t) -> bool:
    return isinstance(t, MPCTensor) and t.requires_grad


def _topological(root: MPCTensor) -> list[MPCTensor]:
    """Tensors that need gradients, each after every tensor computed from it... reversed."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t.grad_fn is not None:
            stack.extend((i, False) for i in t.grad_fn.inputs if _private(i) and id(i) not in seen)
    return order[::-1]


def backward(root: MPCTensor, grad=None) -> None:
    """Accumulate gradients of root into the .grad of every leaf that requires grad."""
    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad")
    if grad is None:
        if root.numel() != 1:
            raise RuntimeError("grad can be implicitly created only for single-element outputs")
        grad = root._new(root._public_share(1.0, root.shape))
    elif not isinstance(grad, MPCTensor):
        grad = root._new(root._public_share(torch.as_tensor(grad), root.shape))
    if tuple(grad.shape) != tuple(root.shape):
        raise ValueError(f"grad of shape {tuple(grad.shape)} for an output of shape "
                         f"{tuple(root.shape)}")
    grads = {id(root): grad}
    with no_grad():
        for t in _topological(root):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t.grad_fn is None:
                t.grad = g if t.grad is None else t.grad + g
                continue
            node = t.grad_fn
            for inp, ig in zip(node.inputs, GRADIENTS[node.name](node, t, g)):
                if ig is None or not _private(inp):
                    continue
                if tuple(ig.shape) != tuple(inp.shape):
                    raise AssertionError(f"{node.name} gradient shape {tuple(ig.shape)} != "
                                         f"{tuple(inp.shape)}")
                prev = grads.get(id(inp))
                grads[id(inp)] = ig if prev is None else prev + ig


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


GradFn = Callable[[Node, MPCTensor, MPCTensor], tuple]
GRADIENTS: dict[str, GradFn] = {}


def gradient(name: str):
    """Register the gradient function of a recorded op."""
    def register(fn: GradFn) -> GradFn:
        GRADIENTS[name] = fn
        return fn
    return register


# -- arithmetic --------------------------------------------------------------------------
@gradient("add")
def _add(node, out, g):
    x, y = node.inputs
    return _unbroadcast(g, x.shape), (_unbroadcast(g, y.shape) if _private(y) else None)


@gradient("neg")
def _neg(node, out, g):
    return (g.neg(),)


@gradient("sum")
def _sum(node, out, g):
    (x,) = node.inputs
    dim, keepdim = node.ctx["dim"], node.ctx["keepdim"]
    if dim is not None and not keepdim:
        for d in sorted((dim,) if isinstance(dim, int) else dim, key=lambda d: d % x.dim()):
            g = g.unsqueeze(d % x.dim())
    return (g.expand(x.shape).clone(),)


@gradient("div_public")
def _div_public(node, out, g):
    (x,) = node.inputs
    return (_unbroadcast(g.div(node.ctx["divisor"]), x.shape),)


@gradient("mul")
def _mul(node, out, g):
    x, y = node.inputs
    gx = _unbroadcast(g * y, x.shape) if _private(x) else None
    gy = _unbroadcast(g * x, y.shape) if _private(y) else None
    return gx, gy


def _t(v):
    return v.transpose(-1, -2)


@gradient("matmul")
def _matmul(node, out, g):
    x, y = node.inputs
    xs, ys = _shape_of(x), _shape_of(y)
    if len(xs) == 1 and len(ys) == 1:
        return (g * y if _private(x) else None), (g * x if _private(y) else None)
    xm = x.unsqueeze(0) if len(xs) == 1 else x
    ym = y.unsqueeze(-1) if len(ys) == 1 else y
    gm = g.unsqueeze(-2) if len(xs) == 1 else g
    gm = gm.unsqueeze(-1) if len(ys) == 1 else gm
    gx = gy = None
    if _private(x):
        gx = _unbroadcast(gm @ _t(ym), _shape_of(xm)).reshape(xs)
    if _private(y):
        gy = _unbroadcast(_t(xm) @ gm, _shape_of(ym)).reshape(ys)
    return gx, gy


@gradient("conv2d")
def _conv2d(node, out, g):
    x, w = node.inputs
    kw = {k: node.ctx[k] for k in ("stride", "padding", "dilation", "groups")}
    gx = gw = None
    if _private(x):
        gx = tensor._bilinear("conv2d_input", g, w, input_shape=list(_shape_of(x)),
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    if _private(w):
        gw = tensor._bilinear("conv2d_weight", x, g, weight_shape=list(_shape_of(w)),
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    return gx, gw


# -- shape ----------------------------------------------------------------------------------
@gradient("reshape")
def _reshape(node, out, g):
    return (g.reshape(node.ctx["shape"]),)


@gradient("transpose")
def _transpose(node, out, g):
    return (g.transpose(node.ctx["dim0"], node.ctx["dim1"]),)


@gradient("permute")
def _permute(node, out, g):
    dims = [d % out.dim() for d in node.ctx["dims"]]
    inverse = [dims.index(i) for i in range(len(dims))]
    return (g.permute(*inverse),)


@gradient("expand")
def _expand(node, out, g):
    return (_unbroadcast(g, node.ctx["shape"]),)


@gradient("flip")
def _flip(node, out, g):
    return (g.flip(node.ctx["dims"]),)


@gradient("getitem")
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


@gradient("pad")
def _pad(node, out, g):
    pad = node.ctx["pad"]
    index = [slice(None)] * g.dim()
    for i in range(len(pad) // 2):
        d = g.dim() - 1 - i
        index[d] = slice(pad[2 * i], g.shape[d] - pad[2 * i + 1])
    return (g[tuple(index)],)


@gradient("cat")
def _cat(node, out, g):
    dim, offset, grads = node.ctx["dim"], 0, []
    for t in node.inputs:
        size = _shape_of(t)[dim]
        grads.append(g.narrow(dim, offset, size) if _private(t) else None)
        offset += size
    return tuple(grads)


@gradient("stack")
def _stack(node, out, g):
    dim = node.ctx["dim"]
    return tuple(g[(slice(None),) * (dim % g.dim()) + (i,)] if _private(t) else None
                 for i, t in enumerate(node.inputs))


@gradient("where")
def _where(node, out, g):
    a, b = node.inputs
    cond = node.ctx["condition"]
    zero = g._new(torch.zeros_like(g.share))
    ga = _unbroadcast(tensor.where(cond, g, zero), a.shape) if _private(a) else None
    gb = _unbroadcast(tensor.where(cond, zero, g), b.shape) if _private(b) else None
    return ga, gb


# -- comparisons and pooling -----------------------------------------------------------------
@gradient("relu")
def _relu(node, out, g):
    return (g - _mul_bit(g, node.ctx["negative"]),)


@gradient("abs")
def _abs(node, out, g):
    return (g - _mul_bit(g, node.ctx["negative"]) * 2,)


@gradient("clamp")
def _clamp(node, out, g):
    return (_mul_bit(g, node.ctx["inside"]),)


@gradient("select_max")
def _select_max(node, out, g):
    (x,) = node.inputs
    dim, keepdim = node.ctx["dim"], node.ctx["keepdim"]
    if dim is not None and not keepdim:
        g = g.unsqueeze(dim)
    return (_mul_bit(g, node.ctx["mask"]),)


@gradient("max_pool2d")
def _max_pool2d(node, out, g):
    per_window = _mul_bit(g.unsqueeze(-1), node.ctx["mask"])
    return (g._new(ring.fold_windows(per_window.share, node.ctx["input_shape"],
                                     **node.ctx["geometry"])),)


@gradient("window_sum")
def _window_sum(node, out, g):
    k = math.prod(ring._pair(node.ctx["geometry"]["kernel_size"], 2))
    spread = g.share.unsqueeze(-1).expand(*g.shape, k)
    return (g._new(ring.fold_windows(spread, node.ctx["input_shape"], **node.ctx["geometry"])),)


# -- nonlinear functions (from the output where it is cheaper) --------------------------------
@gradient("exp")
def _exp(node, out, g):
    return (g * out,)


@gradient("log")
def _log(node, out, g):
    return (g * node.inputs[0].reciprocal(),)


@gradient("reciprocal")
def _reciprocal(node, out, g):
    return (g * (out * out).neg(),)


@gradient("sqrt")
def _sqrt(node, out, g):
    return (g * node.inputs[0].inv_sqrt() * 0.5,)


@gradient("inv_sqrt")
def _inv_sqrt(node, out, g):
    return (g * (out * out * out) * -0.5,)


@gradient("sigmoid")
def _sigmoid(node, out, g):
    return (g * (out * (1.0 - out)),)


@gradient("tanh")
def _tanh(node, out, g):
    return (g * (1.0 - out * out),)


@gradient("erf")
def _erf(node, out, g):
    x = node.inputs[0]
    return (g * ((x * x).neg().exp() * (2 / math.sqrt(math.pi))),)


@gradient("softmax")
def _softmax(node, out, g):
    dim = node.ctx["dim"]
    return (out * (g - (g * out).sum(dim, keepdim=True)),)


@gradient("log_softmax")
def _log_softmax(node, out, g):
    dim = node.ctx["dim"]
    return (g - out.exp() * g.sum(dim, keepdim=True),)


tensor._recorder = _Tape()

