"""Reverse-mode autograd: grad mode, the tape observer, and backward().

Every MPCTensor op reaches the recording point (mpctensor.record) with its Op, output,
inputs and what its gradient needs (e.g. the private sign bits relu computed). When an
input requires grad and grad mode is on (per party thread), the tape gives the output a
Node. backward() walks the graph in reverse topological order under no_grad, so
gradients are themselves private tensors computed with the ordinary MPCTensor ops
(gradients.py, keyed by Op). Public operands (torch tensors) get no gradient.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterable, Literal

import torch

from ..core.ops import Op

_mode = threading.local()


def in_backward() -> bool:
    """Whether this party thread is computing gradients (backward())."""
    return getattr(_mode, "backward", 0) > 0


def is_grad_enabled() -> bool:
    """Whether this party thread records ops for autograd."""
    return getattr(_mode, "enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> None:
        self.previous = is_grad_enabled()
        _mode.enabled = self.enabled

    def __exit__(self, *exc) -> Literal[False]:
        _mode.enabled = self.previous
        return False


def no_grad() -> _GradMode:
    """Context manager / decorator: record nothing (inference, optimizer steps)."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    """Context manager / decorator: record ops again inside a no_grad block."""
    return _GradMode(True)


class Node:
    """How an output was made: its Op, inputs, saved context, and the inputs' versions
    (their count of in-place ops when recorded: backward refuses a changed one, as torch)."""

    __slots__ = ("op", "inputs", "ctx", "versions")

    def __init__(self, op: Op, inputs: tuple, ctx: dict):
        self.op, self.inputs, self.ctx = op, inputs, ctx
        self.versions = tuple(getattr(t, "_version", 0) for t in inputs)

    def __repr__(self) -> str:
        return f"<{self.op.value}Backward>"


GradFn = Callable[[Node, Any, Any], tuple]
GRADIENTS: dict[Op, GradFn] = {}
"""Op -> gradient function (node, output, grad of output) -> grads of the inputs."""


def gradient(op: Op) -> Callable[[GradFn], GradFn]:
    """Register the gradient function of an Op (gradients.py)."""
    def register(fn: GradFn) -> GradFn:
        GRADIENTS[op] = fn
        return fn
    return register


def missing_gradients() -> list[Op]:
    """Differentiable ops with no registered gradient (empty once gradients.py is imported)."""
    return [op for op in Op if op.differentiable and op not in GRADIENTS]


def requires_grad(t: Any) -> bool:
    """A private tensor that autograd tracks (public operands never are). (Tested by
    hasattr(t, "_pending"), not "share": reading share settles a pending tensor.)"""
    return getattr(t, "requires_grad", False) and hasattr(t, "_pending")


def wants(inputs: Iterable[Any]) -> bool:
    """Will the tape record an op on these inputs? (to compute extra state only then)"""
    return is_grad_enabled() and any(requires_grad(t) for t in inputs)


def record(op: Op, out: Any, inputs: tuple, ctx: dict) -> None:
    """The tape observer: give `out` a Node when autograd must reach through it."""
    if not op.differentiable or not wants(inputs):
        return
    if op not in GRADIENTS:
        raise NotImplementedError(f"{op} of a tensor that requires grad: no gradient "
                                  "is implemented (use mpc.no_grad())")
    out.requires_grad = True
    out.grad_fn = Node(op, inputs, ctx)


def _topological(root) -> list:
    """Tensors that need gradients, each before every tensor it was computed from."""
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
            stack.extend((i, False) for i in t.grad_fn.inputs
                         if requires_grad(i) and id(i) not in seen)
    return order[::-1]


def _check_versions(node: Node) -> None:
    """Refuse a node whose private input was changed in place after it was recorded: the
    gradient would use the new value (or route through the new op), as torch refuses."""
    for i, (t, version) in enumerate(zip(node.inputs, node.versions)):
        if requires_grad(t) and getattr(t, "_version", 0) != version:
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by "
                f"an inplace operation: input {i} of {node.op.value}Backward is at version "
                f"{t._version}; expected version {version} instead")


def backward(root: Any, grad: Any = None) -> None:
    """Accumulate gradients of root into the .grad of every leaf that requires grad.

    root is an MPCTensor (this module sits below mpctensor, hence Any); grad an MPCTensor,
    or a public tensor or number of root's shape (default 1 for a single-element root).
    """
    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad")
    if grad is None:
        if root.numel() != 1:
            raise RuntimeError("grad can be implicitly created only for single-element outputs")
        grad = root._new(root._public_share(1.0, root.shape))
    elif not hasattr(grad, "_pending"):
        grad = root._new(root._public_share(torch.as_tensor(grad), root.shape))
    if tuple(grad.shape) != tuple(root.shape):
        raise ValueError(f"grad of shape {tuple(grad.shape)} for an output of shape "
                         f"{tuple(root.shape)}")
    grads = {id(root): grad}
    _mode.backward = getattr(_mode, "backward", 0) + 1
    try:
        with no_grad():
            for t in _topological(root):
                g = grads.pop(id(t), None)
                if g is None:
                    continue
                if t.grad_fn is None:
                    t.grad = g if t.grad is None else t.grad + g
                    continue
                node = t.grad_fn
                _check_versions(node)
                for inp, ig in zip(node.inputs, GRADIENTS[node.op](node, t, g)):
                    if ig is None or not requires_grad(inp):
                        continue
                    if tuple(ig.shape) != tuple(inp.shape):
                        raise AssertionError(f"{node.op} gradient shape {tuple(ig.shape)} != "
                                             f"{tuple(inp.shape)}")
                    prev = grads.get(id(inp))
                    grads[id(inp)] = ig if prev is None else prev + ig
    finally:
        _mode.backward -= 1
