"""from_pytorch through torch.export: a model's ATen graph, run node by node on private tensors.

torch.export traces current model code, Hugging Face transformers included, into a few
dozen ATen operators (linear, conv2d, layer_norm, embedding,
scaled_dot_product_attention, view, transpose, ...), where torch.fx's symbolic trace
stops at data-dependent Python. ExportedModule keeps that graph and the model's
parameters and buffers under their own names (so its state_dict keys are torch's) and
runs each operator: on plaintext arguments the ATen operator itself, on private ones the
mpc_ml function of the same meaning from ATEN_OPS. An operator missing there is an error
naming it and the line of the user's code it came from, raised at conversion, before any
party sends a byte.
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as TF

from .. import tensor as T
from ..tensor import MPCTensor
from . import functional as F
from .functional import TensorLike
from .module import Module


def _private(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_private(v) for v in value)
    return isinstance(value, MPCTensor)


def _index(x, dim: int, index) -> tuple:
    dim = dim % x.dim()
    return (slice(None),) * dim + (index,)


def _binary(op: Callable, alpha_scales_other: bool = False) -> Callable:
    def run(a, b, alpha=1):
        if alpha != 1:
            b = b * alpha
        if isinstance(b, MPCTensor) and not isinstance(a, MPCTensor):
            return {operator.add: lambda: b + a, operator.sub: lambda: -b + a,
                    operator.mul: lambda: b * a}[op]()
        return op(a, b)
    return run


def layer_norm(x: TensorLike, normalized_shape: list[int], weight: TensorLike | None = None,
               bias: TensorLike | None = None, eps: float = 1e-5, *_) -> TensorLike:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last len(normalized_shape)
    dims (the biased variance, as torch)."""
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    centred = x - x.mean(dims, keepdim=True)
    var = (centred * centred).mean(dims, keepdim=True)
    out = centred * (var + eps).inv_sqrt()
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _gelu(x, approximate: str = "none"):
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)
        return x * (inner.tanh() + 1.0) * 0.5
    return F.gelu(x)


def _embedding(weight, ids, padding_idx: int = -1, *_):
    """weight[ids] for public ids; for private ids, the one-hot of each id times weight
    (a comparison per id and row of the table)."""
    if not isinstance(ids, MPCTensor):
        return weight[ids]
    rows = torch.arange(weight.shape[0], dtype=torch.float64)
    return (ids.unsqueeze(-1) == rows) @ weight


MASKED = -500.0
"""The score of a masked position: e^-500 is 0 at any precision, and it stays within the
softmax's exp (which is exact down to -710; finfo.min, as models write masks, would wrap)."""


def attention(q: TensorLike, k: TensorLike, v: TensorLike, attn_mask: TensorLike | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> TensorLike:
    """softmax(q k^T * scale + mask) v, as torch's scaled_dot_product_attention: a boolean
    mask (or is_causal) keeps the True positions, a float mask is added."""
    if dropout_p:
        raise ValueError("scaled_dot_product_attention: dropout_p must be 0 for private inputs")
    if enable_gqa:
        raise ValueError("scaled_dot_product_attention: enable_gqa is not supported")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    lq, lk = q.shape[-2], k.shape[-2]
    if is_causal:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=torch.float64).masked_fill(~attn_mask, MASKED)
        elif not isinstance(attn_mask, MPCTensor):
            attn_mask = attn_mask.to(torch.float64).clamp(min=MASKED)  # finfo.min would wrap the ring
        scores = scores + attn_mask
    return scores.softmax(-1) @ v


def _cell_lstm(x_t, state, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step: the four gates in one matmul each, sigmoid of i, f, o and of 2g
    together (tanh g = 2 sigmoid(2g) - 1), then c = f c + i g and h = o tanh(c)."""
    h, c = state
    gates = F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, -1)
    s = T.cat([i, f, o, g * 2.0], -1).sigmoid()
    i, f, o, g2 = s.chunk(4, -1)
    c = f * c + i * (g2 * 2.0 - 1.0)
    return o * c.tanh(), c


def _cell_gru(x_t, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step (torch's gate order r, z, n): n = tanh(x W_in + b_in + r (h W_hn + b_hn)),
    h' = (1 - z) n + z h."""
    xi, hi = F.linear(x_t, w_ih, b_ih), F.linear(h, w_hh, b_hh)
    xr, xz, xn = xi.chunk(3, -1)
    hr, hz, hn = hi.chunk(3, -1)
    r, z = (T.cat([xr + hr, xz + hz], -1)).sigmoid().chunk(2, -1)
    n = (xn + r * hn).tanh()
    return n + z * (h - n)


def _recurrent(cell, gates: int, x, hx, params, has_biases, num_layers, dropout, train,
               bidirectional, batch_first):
    """aten.lstm / aten.gru: layers of cells over time (both directions if bidirectional),
    each direction's outputs concatenated; returns (output, final states...)."""
    if dropout and train:
        raise ValueError("recurrent dropout in training is not supported for private inputs")
    per = 4 if has_biases else 2
    directions = 2 if bidirectional else 1
    lstm = isinstance(hx, (list, tuple)) and len(hx) == 2 and gates == 4
    h0 = hx[0] if lstm else hx
    seq = x.transpose(0, 1) if batch_first else x  # (time, batch, features)
    finals_h, finals_c = [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(directions):
            k = layer * directions + d
            w = params[k * per:(k + 1) * per]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            state = (h0[k], hx[1][k]) if lstm else h0[k]
            steps = range(seq.shape[0] - 1, -1, -1) if d else range(seq.shape[0])
            hs = {}
            for t in steps:
                state = cell(seq[t], state, w_ih, w_hh, b_ih, b_hh)
                hs[t] = state[0] if lstm else state
            outputs.append(T.stack([hs[t] for t in range(seq.shape[0])], 0))
            finals_h.append(state[0] if lstm else state)
            if lstm:
                finals_c.append(state[1])
        seq = outputs[0] if directions == 1 else T.cat(outputs, -1)
    out = seq.transpose(0, 1) if batch_first else seq
    h_n = T.stack(finals_h, 0)
    return (out, h_n, T.stack(finals_c, 0)) if lstm else (out, h_n)


def group_norm(x: TensorLike, groups: int, weight: TensorLike | None = None,
               bias: TensorLike | None = None, eps: float = 1e-5, *_) -> TensorLike:
    """torch.nn.functional.group_norm: layer_norm over each group of channels, then the
    per-channel affine map."""
    n, c = x.shape[0], x.shape[1]
    grouped = x.reshape(n, groups, -1)
    out = layer_norm(grouped, [grouped.shape[-1]], None, None, eps).reshape(x.shape)
    channel = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(channel)
    return out if bias is None else out + bias.reshape(channel)


def conv_transpose(x: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
                   stride: int | list[int] = 1, padding: int | list[int] = 0,
                   output_padding: int | list[int] = 0, groups: int = 1,
                   dilation: int | list[int] = 1) -> TensorLike:
    """conv_transpose1d/2d (functional.conv_transpose1d/2d: one Beaver product)."""
    conv = F.conv_transpose2d if x.dim() == 4 else F.conv_transpose1d
    return conv(x, weight, bias, stride, padding, output_padding, groups, dilation)


def adaptive_avg_pool(x: TensorLike, output_size: int | list[int | None]) -> TensorLike:
    """Adaptive average pooling to any size: output cell i of a dim averages input
    positions floor(i L / out) .. ceil((i + 1) L / out) - 1, as torch; a public averaging
    matrix per spatial dim."""
    dims = len(output_size) if isinstance(output_size, (list, tuple)) else 1
    sizes = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size,)
    for d, out in enumerate(sizes):
        axis = x.dim() - dims + d
        length = x.shape[axis]
        out = length if out is None else out
        averaging = torch.zeros(out, length, dtype=torch.float64)
        for i in range(out):
            lo, hi = (i * length) // out, -(-((i + 1) * length) // out)
            averaging[i, lo:hi] = 1.0 / (hi - lo)
        x = (x.transpose(axis, -1) @ averaging.t()).transpose(axis, -1)
    return x


def adaptive_max_pool(x: TensorLike, output_size: int | list[int | None],
                      indices: bool = False) -> tuple:
    """Adaptive max pooling to any size (MPCTensor.adaptive_max_pool2d / 1d), as torch:
    (values, indices), the private indices made only where the graph reads them."""
    sizes = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size,)
    pool = x.adaptive_max_pool2d if len(sizes) == 2 else x.adaptive_max_pool1d
    return pool(sizes, True) if indices else (pool(sizes), None)


def max_pool_with_indices(x: TensorLike, k: list[int], stride: list[int] | None = None,
                          padding: int | list[int] = 0, dilation: int | list[int] = 1,
                          ceil_mode: bool = False, indices: bool = False) -> tuple:
    """aten.max_pool2d_with_indices: (values, indices), the indices only where read."""
    out = F.max_pool2d(x, k, _pool_stride(stride), padding, dilation, ceil_mode, indices)
    return out if indices else (out, None)


INDEX_READERS = {"aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default",
                 "aten.max_pool2d_with_indices.default"}
"""Ops whose second output is indices, computed (at a cost in comparisons) only if read:
the interpreter passes indices=True where a node reads output 1."""


def _batch_norm_eval(x, weight, bias, mean, var, momentum, eps):
    out, _, _ = F.batch_norm(x, mean, var, weight, bias, False, momentum, eps)
    return out, None, None


def _var(x, dims=None, correction=1, keepdim: bool = False):
    dims = tuple(range(x.dim())) if dims is None else tuple(dims)
    count = math.prod(x.shape[d] for d in dims)
    centred = x - x.mean(dims, keepdim=True)
    return (centred * centred).sum(dims, keepdim=keepdim) * (1 / (count - (correction or 0)))


def _squeeze(x, dims=None):
    if dims is None:
        dims = [d for d, s in enumerate(x.shape) if s == 1]
    for d in sorted((d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)), reverse=True):
        if x.shape[d] == 1:
            x = x.squeeze(d)
    return x


def _slice(x, dim=0, start=None, end=None, step=1):
    return x[_index(x, dim, slice(start, end, step))]


def _power(x, p):
    if float(p) == int(p) and p >= 0:
        return x ** int(p)
    roots = {0.5: x.sqrt, -0.5: x.inv_sqrt, -1.0: x.reciprocal}
    if float(p) not in roots:
        raise ValueError(f"pow: private x ** {p} is supported for whole p >= 0, 0.5, -0.5 and -1")
    return roots[float(p)]()


def _amax(x, dims, keepdim: bool):
    dims = sorted((d % x.dim() for d in ([dims] if isinstance(dims, int) else dims or
                                         range(x.dim()))), reverse=True)
    for d in dims:
        x = x.max(d, keepdim)[0]
    return x


def _pool_stride(stride):
    return None if stride in (None, [], ()) else stride


ATEN_OPS: dict[str, Callable] = {
    "aten.linear.default": F.linear,
    "aten.conv1d.default": F.conv1d,
    "aten.conv2d.default": F.conv2d,
    "aten.relu.default": F.relu,
    "aten.sigmoid.default": F.sigmoid,
    "aten.tanh.default": F.tanh,
    "aten.gelu.default": _gelu,
    "aten.silu.default": lambda x: x * x.sigmoid(),
    "aten.hardtanh.default": lambda x, lo=-1.0, hi=1.0: x.clamp(lo, hi),
    "aten.relu6.default": lambda x: x.clamp(0.0, 6.0),
    "aten.hardswish.default": lambda x: x * ((x + 3.0).clamp(0.0, 6.0) * (1 / 6)),
    "aten.leaky_relu.default": lambda x, slope=0.01: x.relu() * (1 - slope) + x * slope,
    "aten.elu.default": lambda x, alpha=1.0, scale=1.0, input_scale=1.0:
        (x.relu() + ((x - x.relu()) * input_scale)._exp_wide() * alpha - alpha) * scale,
    "aten.exp.default": lambda x: x.exp(),
    "aten.log.default": lambda x: x.log(),
    "aten.sqrt.default": lambda x: x.sqrt(),
    "aten.rsqrt.default": lambda x: x.inv_sqrt(),
    "aten.reciprocal.default": lambda x: x.reciprocal(),
    "aten.erf.default": lambda x: x.erf(),
    "aten.max_pool2d.default": lambda x, k, stride=None, padding=0, dilation=1, ceil_mode=False:
        F.max_pool2d(x, k, _pool_stride(stride), padding, dilation, ceil_mode),
    "aten.max_pool2d_with_indices.default": max_pool_with_indices,
    "aten.avg_pool2d.default": lambda x, k, stride=None, padding=0, ceil_mode=False,
        count_include_pad=True, divisor_override=None:
        F.avg_pool2d(x, k, _pool_stride(stride), padding, ceil_mode, count_include_pad),
    "aten.adaptive_avg_pool2d.default": adaptive_avg_pool,
    "aten.adaptive_avg_pool1d.default": adaptive_avg_pool,
    "aten._adaptive_avg_pool2d.default": adaptive_avg_pool,
    "aten.adaptive_max_pool2d.default": adaptive_max_pool,
    "aten.adaptive_max_pool1d.default": adaptive_max_pool,
    "aten.amax.default": lambda x, dims=(), keepdim=False: _amax(x, dims, keepdim),
    "aten.max.dim": lambda x, dim, keepdim=False: x.max(dim, keepdim),
    "aten.group_norm.default": group_norm,
    "aten.conv_transpose1d.default": conv_transpose,
    "aten.conv_transpose2d.input": conv_transpose,
    "aten._native_batch_norm_legit_no_training.default": _batch_norm_eval,
    "aten.layer_norm.default": layer_norm,
    "aten.embedding.default": _embedding,
    "aten.scaled_dot_product_attention.default": attention,
    "aten.lstm.input": lambda *a: _recurrent(_cell_lstm, 4, *a),
    "aten.gru.input": lambda *a: _recurrent(_cell_gru, 3, *a),
    "aten._softmax.default": lambda x, dim, half=False: x.softmax(dim),
    "aten.softmax.int": lambda x, dim, dtype=None: x.softmax(dim),
    "aten._log_softmax.default": lambda x, dim, half=False: x.log_softmax(dim),
    "aten.log_softmax.int": lambda x, dim, dtype=None: x.log_softmax(dim),
    "aten.add.Tensor": _binary(operator.add), "aten.add.Scalar": _binary(operator.add),
    "aten.sub.Tensor": _binary(operator.sub), "aten.sub.Scalar": _binary(operator.sub),
    "aten.rsub.Scalar": lambda x, other, alpha=1: -(x * alpha) + other,
    "aten.mul.Tensor": _binary(operator.mul), "aten.mul.Scalar": _binary(operator.mul),
    "aten.div.Tensor": lambda a, b: a / b, "aten.div.Scalar": lambda a, b: a / b,
    "aten.neg.default": lambda x: -x,
    "aten.pow.Tensor_Scalar": lambda x, p: _power(x, p),
    "aten.matmul.default": lambda a, b: a @ b, "aten.mm.default": lambda a, b: a @ b,
    "aten.bmm.default": lambda a, b: a @ b,
    "aten.addmm.default": lambda bias, a, b, beta=1, alpha=1: (a @ b) * alpha + bias * beta,
    "aten.mean.dim": lambda x, dims=None, keepdim=False, dtype=None: x.mean(dims, keepdim),
    "aten.mean.default": lambda x, dtype=None: x.mean(),
    "aten.sum.dim_IntList": lambda x, dims=None, keepdim=False, dtype=None: x.sum(dims, keepdim),
    "aten.sum.default": lambda x, dtype=None: x.sum(),
    "aten.var.correction": _var,
    "aten.var.dim": lambda x, dims=None, unbiased=True, keepdim=False:
        _var(x, dims, 1 if unbiased else 0, keepdim),
    "aten.flip.default": lambda x, dims: x.flip(dims),
    "aten.view.default": lambda x, shape: x.reshape(shape),
    "aten._unsafe_view.default": lambda x, shape: x.reshape(shape),
    "aten.reshape.default": lambda x, shape: x.reshape(shape),
    "aten.flatten.using_ints": lambda x, start=0, end=-1: x.flatten(start, end),
    "aten.transpose.int": lambda x, a, b: x.transpose(a, b),
    "aten.permute.default": lambda x, dims: x.permute(*dims),
    "aten.t.default": lambda x: x.t(),
    "aten.unsqueeze.default": lambda x, d: x.unsqueeze(d),
    "aten.squeeze.dim": _squeeze, "aten.squeeze.dims": _squeeze, "aten.squeeze.default": _squeeze,
    "aten.expand.default": lambda x, size, implicit=False: x.expand(*size),
    "aten.contiguous.default": lambda x, memory_format=None: x,
    "aten.clone.default": lambda x, memory_format=None: x.clone(),
    "aten.alias.default": lambda x: x,
    "aten.detach.default": lambda x: x.detach(),
    "aten.dropout.default": lambda x, p, train: F.dropout(x, p, train),
    "aten.select.int": lambda x, dim, i: x[_index(x, dim, i)],
    "aten.slice.Tensor": _slice,
    "aten.cat.default": lambda tensors, dim=0: T.cat(list(tensors), dim),
    "aten.stack.default": lambda tensors, dim=0: T.stack(list(tensors), dim),
    "aten.split.Tensor": lambda x, size, dim=0: x.split(size, dim),
    "aten.split_with_sizes.default": lambda x, sizes, dim=0: x.split(list(sizes), dim),
    "aten.chunk.default": lambda x, chunks, dim=0: x.chunk(chunks, dim),
    "aten.pad.default": lambda x, pad, mode="constant", value=None: x.pad(pad, mode, value or 0.0),
    "aten.constant_pad_nd.default": lambda x, pad, value=0.0: x.pad(pad, "constant", value),
    "aten._to_copy.default": lambda x, **kw: x,
    "aten.to.dtype": lambda x, dtype, *a, **kw: x,
    "aten.type_as.default": lambda x, other: x,
    "aten.lift_fresh_copy.default": lambda x: x,
    "aten._assert_tensor_metadata.default": lambda *args, **kwargs: None,
    "aten.sym_size.int": lambda x, dim: x.shape[dim],
}
"""ATen operator -> what runs it on private arguments (its plaintext runs are the ATen
operator itself)."""


def _where(node: torch.fx.Node) -> str:
    """The node, the torch module it is in and the user code that made it."""
    stack = node.meta.get("nn_module_stack") or {}
    module = ""
    if stack:
        path, kind = list(stack.values())[-1]
        kind = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
        module = f" in module '{path}' ({kind.rsplit('.', 1)[-1]})"
    trace = node.meta.get("stack_trace")
    line = f"; traced from:\n{trace.strip()}" if trace else ""
    return f"node '{node.name}'{module}{line}"


def _op_name(node: torch.fx.Node) -> str:
    return str(node.target)


class _ReluOf:
    """A ReLU left for the max_pool2d that is its only use (relu_max_pool2d)."""

    def __init__(self, x: TensorLike) -> None:
        self.x = x


def _relus_into_pools(graph: torch.fx.Graph) -> set[str]:
    """The relu nodes whose only use is as the input of a max_pool2d (run together as
    MPCTensor.relu_max_pool2d: one comparison depth instead of two)."""
    out = set()
    for node in graph.nodes:
        if node.op == "call_function" and _op_name(node) == "aten.relu.default" and len(node.users) == 1:
            user = next(iter(node.users))
            if _op_name(user) == "aten.max_pool2d.default" and user.args[:1] == (node,):
                out.add(node.name)
    return out


def _pool_of_relu(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    if isinstance(x, MPCTensor):
        return x.relu_max_pool2d(kernel, _pool_stride(stride), padding, dilation, ceil_mode)
    return TF.max_pool2d(torch.relu(x), kernel, _pool_stride(stride), padding, dilation, ceil_mode)


class ExportedModule(Module):
    """A model exported with torch.export, its parameters and buffers held as mpc_ml
    tensors under their torch names; runs its ATen graph."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        object.__setattr__(self, "_graph", program.graph)
        object.__setattr__(self, "_fused_relus", _relus_into_pools(program.graph))
        inputs = {}
        constants = {}
        for spec in program.graph_signature.input_specs:
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER"):
                inputs[spec.arg.name] = (kind, spec.target)
                value = program.state_dict.get(spec.target, program.constants.get(spec.target))
                owner, _, name = spec.target.rpartition(".")
                table = "register_parameter" if kind == "PARAMETER" else "register_buffer"
                getattr(_holder(self, owner), table)(name, value.detach().clone())
            elif kind == "CONSTANT_TENSOR":
                constants[spec.arg.name] = program.constants[spec.target].detach().clone()
            elif kind == "USER_INPUT":
                inputs[spec.arg.name] = ("USER_INPUT", None)
            else:
                raise NotImplementedError(f"from_pytorch: exported input of kind {kind} "
                                          f"({spec.arg.name}) is not supported")
        object.__setattr__(self, "_inputs", inputs)
        object.__setattr__(self, "_constants", constants)
        ops = {_op_name(n) for n in program.graph.nodes if n.op == "call_function"}
        object.__setattr__(self, "_mode_dependent", bool(ops & MODE_DEPENDENT))
        kinds = [spec.kind.name for spec in program.graph_signature.output_specs]
        if any(k != "USER_OUTPUT" for k in kinds):
            raise NotImplementedError(f"from_pytorch: the exported graph updates state ({kinds}); "
                                      "export the model in eval mode")

    def train(self, mode: bool = True) -> "ExportedModule":
        """As Module.train; a graph whose operators depend on the mode (dropout, batch norm)
        was exported in one mode and cannot switch (convert the model again in the other)."""
        if self._mode_dependent and mode != self._exported_training:
            raise ValueError(f"this model was exported in {'train' if self._exported_training else 'eval'} "
                             "mode and has dropout or batch norm: call from_pytorch on the torch "
                             f"model in {'train' if mode else 'eval'} mode instead")
        return super().train(mode)

    def _state(self, target: str):
        owner, _, name = target.rpartition(".")
        module = self.get_submodule(owner) if owner else self
        return module._parameters[name] if name in module._parameters else module._buffers[name]

    def forward(self, *inputs) -> Any:
        """Run the exported graph on inputs (private or plaintext)."""
        env: dict[str, Any] = {}
        user = list(inputs)

        def value(arg):
            return torch.fx.node.map_arg(arg, lambda n: env[n.name])

        for node in self._graph.nodes:
            if node.op == "placeholder":
                kind, target = self._inputs.get(node.name, ("CONSTANT", None))
                env[node.name] = (self._constants[node.name] if kind == "CONSTANT" else
                                  user.pop(0) if kind == "USER_INPUT" else self._state(target))
            elif node.op == "call_function":
                args, kwargs = value(node.args), value(node.kwargs)
                if node.name in self._fused_relus:
                    env[node.name] = _ReluOf(args[0])
                elif args[:1] and isinstance(args[0], _ReluOf):
                    env[node.name] = _pool_of_relu(args[0].x, *args[1:], **kwargs)
                elif node.target is operator.getitem:
                    env[node.name] = args[0][args[1]]
                elif not _private(list(args) + list(kwargs.values())):
                    env[node.name] = node.target(*args, **kwargs)
                else:
                    if _op_name(node) in INDEX_READERS:
                        kwargs = {**kwargs, "indices": any(u.target is operator.getitem and u.args[1] == 1
                                                          for u in node.users)}
                    env[node.name] = ATEN_OPS[_op_name(node)](*args, **kwargs)
            elif node.op == "output":
                outs = value(node.args[0])
                return outs[0] if len(outs) == 1 else tuple(outs)
        raise RuntimeError("exported graph has no output")


MODE_DEPENDENT = {"aten.dropout.default", "aten._native_batch_norm_legit_no_training.default",
                  "aten.batch_norm.default"}


def _holder(root: Module, path: str) -> Module:
    """root.<path>, creating empty container modules on the way."""
    holder = root
    for name in filter(None, path.split(".")):
        if name not in holder._modules:
            holder.add_module(name, Module())
        holder = holder._modules[name]
    return holder


def unsupported(program: torch.export.ExportedProgram) -> list[str]:
    """The operators of an exported graph that may see private tensors (the parameters,
    buffers and inputs, and what is computed from them) and that mpc_ml cannot run on
    them, each with the module and the line of user code it came from. Operators on
    constants alone (zeros, arange, masks from shapes) run as plaintext."""
    def may_be_private(spec) -> bool:  # encrypt() shares floating-point state only
        if spec.kind.name == "USER_INPUT":
            return True
        if spec.kind.name not in ("PARAMETER", "BUFFER"):
            return False
        value = program.state_dict.get(spec.target, program.constants.get(spec.target))
        return value is not None and value.is_floating_point()
    private = {spec.arg.name for spec in program.graph_signature.input_specs if may_be_private(spec)}
    missing = []
    for node in program.graph.nodes:
        if node.op != "call_function" or not any(a.name in private for a in node.all_input_nodes):
            continue
        if _makes_tensors(node):  # a size (a dynamic batch's SymInt) is public
            private.add(node.name)
        if node.target is not operator.getitem and _op_name(node) not in ATEN_OPS:
            missing.append(f"{_op_name(node)} at {_where(node)}")
    return missing


def _export(module: torch.nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    """torch.export with the batch (dim 0 of every input of 2 or more rows) dynamic, so
    that the model runs on any batch size; static shapes where the model's code fixes the
    batch."""
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} if t.dim() and t.shape[0] >= 2 else None for t in inputs)
    if any(dynamic) and len({t.shape[0] for t, d in zip(inputs, dynamic) if d}) == 1:
        try:
            return torch.export.export(module, inputs, dynamic_shapes=dynamic).run_decompositions({})
        except Exception:  # the code specialises the batch: export it as it is
            pass
    return torch.export.export(module, inputs).run_decompositions({})


def _makes_tensors(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) for v in val)
    return val is None or isinstance(val, torch.Tensor)


def export(module: torch.nn.Module, inputs: tuple) -> ExportedModule:
    """module as an ExportedModule (torch.export on these inputs); NotImplementedError
    naming every operator mpc_ml cannot run, and where each comes from."""
    with warnings.catch_warnings():  # torch's own deprecation notices about its pytree specs
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        program = _export(module, inputs)
    missing = unsupported(program)
    if missing:
        raise NotImplementedError("from_pytorch: unsupported operator " + "\nand ".join(missing))
    converted = ExportedModule(program)
    object.__setattr__(converted, "_exported_training", module.training)
    Module.train(converted, module.training)
    return converted
