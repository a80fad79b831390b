"""from_pytorch: a torch model through torch.export (nn/export.py) or, where export
cannot, traced with torch.fx and rebuilt from mpc_ml layers (this file).

Along fx, leaf torch modules become the mpc_ml layer of the same kind (same values), stored
under the same qualified names, so state_dict keys are the torch module's own. The
traced graph is kept and interpreted node by node, so residual additions, flatten,
view and other functional calls work as in the source model. Anything without an
mpc_ml counterpart is an error naming the op and the node where it occurs.
"""
from __future__ import annotations

import operator
import sys
import threading
from typing import Any

import torch
import torch.fx
import torch.nn.functional as TF

from .. import tensor as T
from ..tensor import MPCTensor
from . import functional as F
from . import layers as L
from .export import _holder, _ReluOf, _where
from .export import _pool_of_relu as relu_then_pool
from .export import export as exported_module
from .module import Module

_COPIED = {torch.nn.Linear: L.Linear, torch.nn.Conv1d: L.Conv1d, torch.nn.Conv2d: L.Conv2d,
           torch.nn.BatchNorm1d: L.BatchNorm1d, torch.nn.BatchNorm2d: L.BatchNorm2d}

_STATELESS = {
    torch.nn.ReLU: lambda m: L.ReLU(),
    torch.nn.Sigmoid: lambda m: L.Sigmoid(),
    torch.nn.Tanh: lambda m: L.Tanh(),
    torch.nn.GELU: lambda m: L.GELU(m.approximate),
    torch.nn.Softmax: lambda m: L.Softmax(m.dim),
    torch.nn.LogSoftmax: lambda m: L.LogSoftmax(m.dim),
    torch.nn.Flatten: lambda m: L.Flatten(m.start_dim, m.end_dim),
    torch.nn.Dropout: lambda m: L.Dropout(m.p),
    torch.nn.Identity: lambda m: L.Identity(),
    torch.nn.MaxPool2d: lambda m: L.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation,
                                              m.return_indices, m.ceil_mode),
    torch.nn.AvgPool2d: lambda m: L.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                              m.count_include_pad, m.divisor_override),
    torch.nn.AdaptiveAvgPool2d: lambda m: L.AdaptiveAvgPool2d(m.output_size),
    torch.nn.AdaptiveMaxPool2d: lambda m: L.AdaptiveMaxPool2d(m.output_size, m.return_indices),
    torch.nn.AdaptiveMaxPool1d: lambda m: L.AdaptiveMaxPool1d(m.output_size, m.return_indices),
}


def _any_private(values) -> bool:
    return any(isinstance(v, MPCTensor) for v in values)


def _cat(tensors, dim=0):
    return T.cat(tensors, dim) if _any_private(tensors) else torch.cat(tensors, dim)


def _stack(tensors, dim=0):
    return T.stack(tensors, dim) if _any_private(tensors) else torch.stack(tensors, dim)


def _drop(*names):
    """Wrap fn so that keyword arguments torch adds when tracing (dtype, _stacklevel) vanish."""
    def wrap(fn):
        def call(*args, **kwargs):
            for name in names:
                value = kwargs.pop(name, None)
                if name == "dtype" and value is not None:
                    raise ValueError("softmax(dtype=...) is not supported")
            return fn(*args, **kwargs)
        return call
    return wrap


_FUNCTIONS = {
    operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
    operator.truediv: operator.truediv, operator.matmul: operator.matmul,
    operator.neg: operator.neg, operator.getitem: operator.getitem,
    torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul,
    torch.matmul: operator.matmul,
    torch.flatten: lambda x, start_dim=0, end_dim=-1: x.flatten(start_dim, end_dim),
    torch.reshape: lambda x, shape: x.reshape(shape),
    torch.transpose: lambda x, d0, d1: x.transpose(d0, d1),
    torch.cat: _cat, torch.concat: _cat, torch.stack: _stack,
    torch.relu: F.relu, TF.relu: F.relu, torch.sigmoid: F.sigmoid, TF.sigmoid: F.sigmoid,
    torch.tanh: F.tanh, TF.tanh: F.tanh, TF.gelu: F.gelu,
    TF.softmax: _drop("_stacklevel", "dtype")(F.softmax),
    TF.log_softmax: _drop("_stacklevel", "dtype")(F.log_softmax),
    torch.softmax: _drop("dtype")(F.softmax), torch.log_softmax: _drop("dtype")(F.log_softmax),
    TF.max_pool2d: F.max_pool2d, TF.max_pool2d_with_indices: F.max_pool2d, TF.avg_pool2d: F.avg_pool2d,
    # torch's boolean dispatch: fx records the _with_indices form for return_indices=True
    TF.adaptive_max_pool2d: F.adaptive_max_pool2d, TF.adaptive_max_pool2d_with_indices: F.adaptive_max_pool2d,
    TF.adaptive_max_pool1d: F.adaptive_max_pool1d, TF.adaptive_max_pool1d_with_indices: F.adaptive_max_pool1d,
    TF.adaptive_avg_pool2d: F.adaptive_avg_pool2d, TF.linear: F.linear, TF.conv2d: F.conv2d,
    TF.conv1d: F.conv1d, TF.dropout: F.dropout, TF.batch_norm: None,
}
_FUNCTIONS = {k: v for k, v in _FUNCTIONS.items() if v is not None}

# torch.fx patches torch.nn.Module.__call__ process-wide while tracing, so parties that
# are threads of one process (the inproc backend) must not trace at the same time.
_TRACE_LOCK = threading.Lock()

_METHODS = {"view", "reshape", "flatten", "relu", "sigmoid", "tanh", "size", "dim", "permute",
            "transpose", "t", "mean", "sum", "softmax", "log_softmax", "unsqueeze", "squeeze",
            "contiguous", "exp", "add", "sub", "mul", "matmul", "expand", "expand_as", "neg",
            "chunk", "split", "narrow", "clone"}


def _is_relu(node: torch.fx.Node, module: torch.nn.Module) -> bool:
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) is torch.nn.ReLU
    return ((node.op == "call_function" and node.target in (torch.relu, TF.relu)
             and not node.kwargs.get("inplace")) or (node.op == "call_method" and node.target == "relu"))


def _is_max_pool(node: torch.fx.Node, module: torch.nn.Module) -> bool:
    """A max_pool2d that returns only the values (one with indices is not fused)."""
    if node.op == "call_module":
        pool = module.get_submodule(node.target)
        return type(pool) is torch.nn.MaxPool2d and not pool.return_indices
    return (node.op == "call_function" and node.target is TF.max_pool2d
            and not node.kwargs.get("return_indices", node.args[6] if len(node.args) > 6 else False))


def _relus_into_pools(graph: torch.fx.Graph, module: torch.nn.Module) -> set[str]:
    """The ReLU nodes whose only use is as the input of a MaxPool2d: those two run as one
    relu_max_pool2d (max(relu(x)) over a window is the max of the window and 0), in one
    comparison depth instead of two."""
    return {node.name for node in graph.nodes if _is_relu(node, module) and len(node.users) == 1
            and _is_max_pool(next(iter(node.users)), module)
            and next(iter(node.users)).args[:1] == (node,)}


def _pool_of_relu(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  return_indices=False):
    """max_pool2d's arguments, input a _ReluOf (export.py runs the pair); never one with
    return_indices (_is_max_pool leaves those unfused)."""
    assert not return_indices, "a max_pool2d with indices is not fused with its relu"
    return relu_then_pool(input.x, kernel_size, stride, padding, dilation, ceil_mode)


class ConvertedModule(Module):
    """A traced torch model rebuilt from mpc_ml layers; runs its fx graph."""

    def __init__(self, graph: torch.fx.Graph, fused_relus: set[str] = frozenset()):
        super().__init__()
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_fused_relus", set(fused_relus))

    def _attribute(self, target: str):
        module_name, _, name = target.rpartition(".")
        module = self.get_submodule(module_name)
        for table in (module._parameters, module._buffers):
            if name in table:
                return table[name]
        return getattr(module, name)

    def forward(self, *inputs) -> Any:
        """Run the traced graph on inputs (private or plaintext)."""
        env: dict[str, object] = {}
        inputs = list(inputs)

        def value(arg):
            return torch.fx.node.map_arg(arg, lambda n: env[n.name])

        for node in self._graph.nodes:
            args = value(node.args)
            if args[:1] and isinstance(args[0], _ReluOf):  # the MaxPool2d after a fused ReLU
                if node.op == "call_module":
                    pool = self.get_submodule(node.target)
                    env[node.name] = _pool_of_relu(args[0], pool.kernel_size, pool.stride,
                                                   pool.padding, pool.dilation, pool.ceil_mode)
                else:
                    env[node.name] = _pool_of_relu(*args, **value(node.kwargs))
            elif node.name in self._fused_relus:
                env[node.name] = _ReluOf(args[0])
            elif node.op == "placeholder":
                env[node.name] = inputs.pop(0) if inputs else node.args[0] if node.args else None
            elif node.op == "get_attr":
                env[node.name] = self._attribute(node.target)
            elif node.op == "call_module":
                env[node.name] = self.get_submodule(node.target)(*value(node.args),
                                                                 **value(node.kwargs))
            elif node.op == "call_function":
                env[node.name] = _FUNCTIONS[node.target](*value(node.args), **value(node.kwargs))
            elif node.op == "call_method":
                obj, *args = value(node.args)
                env[node.name] = getattr(obj, node.target)(*args, **value(node.kwargs))
            elif node.op == "output":
                return value(node.args[0])
        raise RuntimeError("traced graph has no output")


def _convert_module(module: torch.nn.Module, node: torch.fx.Node) -> Module:
    if type(module) in _COPIED:
        return _COPIED[type(module)].from_torch(module)
    if type(module) in _STATELESS:
        return _STATELESS[type(module)](module)
    raise NotImplementedError(f"from_pytorch: unsupported layer {type(module).__name__} "
                              f"('{node.target}') at {_where(node)}")


def fresh_inputs(example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Seeded random tensors of the example's shapes and dtypes (the example itself may be
    uninitialised, as torch.empty makes it): floats standard normal, integers (token ids)
    0 or 1, booleans random."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    g = torch.Generator().manual_seed(0)
    out = []
    for t in inputs:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"from_pytorch: example inputs are tensors, got {type(t).__name__}")
        if t.is_floating_point():
            out.append(torch.randn(t.shape, generator=g).to(t.dtype))
        elif t.dtype == torch.bool:
            out.append(torch.rand(t.shape, generator=g) < 0.5)
        else:
            out.append(torch.randint(0, 2, t.shape, generator=g).to(t.dtype))
    return tuple(out)


def _fx_convert(module: torch.nn.Module) -> ConvertedModule:
    leaves = tuple(_COPIED) + tuple(_STATELESS)

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    with _TRACE_LOCK:
        graph = _Tracer().trace(module)
    converted = ConvertedModule(graph, _relus_into_pools(graph, module))
    for node in graph.nodes:
        if node.op == "call_module":
            owner, _, name = node.target.rpartition(".")
            _holder(converted, owner).add_module(
                name, _convert_module(module.get_submodule(node.target), node))
        elif node.op == "get_attr":
            owner, _, name = node.target.rpartition(".")
            value = operator.attrgetter(node.target)(module)
            table = ("register_parameter" if isinstance(value, torch.nn.Parameter)
                     else "register_buffer")
            getattr(_holder(converted, owner), table)(name, value.detach().clone())
        elif node.op == "call_function" and node.target not in _FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            raise NotImplementedError(f"from_pytorch: unsupported function {name} at {_where(node)}")
        elif node.op == "call_method" and node.target not in _METHODS:
            raise NotImplementedError(f"from_pytorch: unsupported method .{node.target}() at "
                                      f"{_where(node)}")
    converted.train(module.training)
    for name, sub in module.named_modules():
        if name and isinstance(sub, leaves):
            converted.get_submodule(name).train(sub.training)
    return converted


TRACERS = ("auto", "export", "fx")


def from_pytorch(module: torch.nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
                 tracer: str = "auto") -> Module:
    """A plaintext mpc_ml copy of a torch model (same weights, same state_dict keys).

    tracer 'export' runs torch.export and keeps the model's ATen graph (nn/export.py),
    in the mode (train or eval) the model is in; 'fx' rebuilds the model from mpc_ml
    layers along torch.fx's trace (whose layers .train() and .eval() switch); 'auto' (the
    default) takes export and falls back to fx where export cannot (a graph that updates
    state, such as batch norm in training mode, or export failing on the model's code).
    example_input (a tensor or a tuple of them) gives shapes and dtypes only: the
    conversion is traced and checked on fresh random inputs of that kind.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_pytorch needs a torch.nn.Module, got {type(module).__name__}")
    if tracer not in TRACERS:
        raise ValueError(f"from_pytorch: unknown tracer {tracer!r}; choose one of {TRACERS}")
    inputs = fresh_inputs(example_input)
    converted = None
    if tracer in ("auto", "export"):
        try:
            with _TRACE_LOCK, torch.random.fork_rng():
                converted = exported_module(module, inputs)
        except NotImplementedError:
            if tracer == "export":
                raise
            export_error = sys.exc_info()[1]
        except Exception as e:  # torch.export cannot trace this model's code
            if tracer == "export":
                raise RuntimeError(f"from_pytorch: torch.export failed: {e}") from e
            export_error = e
    if converted is None:
        try:
            converted = _fx_convert(module)
        except NotImplementedError as fx_error:
            if tracer == "auto" and isinstance(export_error, NotImplementedError):
                raise export_error from fx_error
            raise
    with _TRACE_LOCK:  # the check runs the torch model, which another thread may be tracing
        _check(module, converted, inputs)
    return converted


def _check(module: torch.nn.Module, converted: Module, example_input) -> None:
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    with torch.no_grad(), torch.random.fork_rng():
        state = {k: v.clone() for k, v in module.state_dict().items()}
        torch.manual_seed(0)  # the same dropout masks in both runs
        expected = module(*inputs)
        module.load_state_dict(state)  # undo batch-norm statistic updates of the check
        saved = {k: v.clone() for k, v in converted.state_dict().items()}
        torch.manual_seed(0)
        got = converted(*inputs)
        converted.load_state_dict(saved)
    if isinstance(expected, torch.Tensor) and not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise RuntimeError("from_pytorch: the converted model disagrees with the torch model on "
                           f"the example input (max difference "
                           f"{(got - expected).abs().max().item():.3g})")
