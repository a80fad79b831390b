"""Layers with torch.nn's names, arguments, defaults and parameter names.

Layers with parameters take their initial values from the torch layer of the same
configuration (same init), and `from_torch` copies a torch layer's values.
"""
from __future__ import annotations

import torch

from ..core.ring import IntOrTuple
from ..tensor import MPCTensor, is_grad_enabled
from . import functional as F
from .functional import TensorLike
from .module import Module


class _Stateless(Module):
    """A layer with no parameters calling one functional op."""

    def extra_repr(self) -> str:
        """The layer's public attributes, as key=value."""
        return ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()
                         if not k.startswith("_") and k != "training")


class Identity(_Stateless):
    """Returns its input; any arguments are ignored, as torch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: TensorLike) -> TensorLike:
        """x itself."""
        return x


class ReLU(_Stateless):
    """max(x, 0) elementwise."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: TensorLike) -> TensorLike:
        """relu(x)."""
        return F.relu(x)


class Sigmoid(_Stateless):
    """1 / (1 + e^-x) elementwise."""

    def forward(self, x: TensorLike) -> TensorLike:
        """sigmoid(x)."""
        return F.sigmoid(x)


class Tanh(_Stateless):
    """Hyperbolic tangent elementwise."""

    def forward(self, x: TensorLike) -> TensorLike:
        """tanh(x)."""
        return F.tanh(x)


class GELU(_Stateless):
    """x * Phi(x) elementwise (the exact, erf form)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: TensorLike) -> TensorLike:
        """gelu(x)."""
        return F.gelu(x, self.approximate)


class Softmax(_Stateless):
    """Softmax along dim (default: the last)."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: TensorLike) -> TensorLike:
        """softmax(x, dim)."""
        return F.softmax(x, self.dim if self.dim is not None else -1)


class LogSoftmax(_Stateless):
    """log(softmax) along dim (default: the last)."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: TensorLike) -> TensorLike:
        """log_softmax(x, dim)."""
        return F.log_softmax(x, self.dim if self.dim is not None else -1)


class Flatten(_Stateless):
    """Merges dimensions start_dim..end_dim (default: all but the batch)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: TensorLike) -> TensorLike:
        """x flattened."""
        return F.flatten(x, self.start_dim, self.end_dim)


class Dropout(_Stateless):
    """Zeroes elements with probability p in training, with a public mask."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = p

    def forward(self, x: TensorLike) -> TensorLike:
        """dropout(x) in training mode, x in eval mode."""
        return F.dropout(x, self.p, self.training)


class MaxPool2d(_Stateless):
    """2-d max pooling over (N, C, H, W) inputs. return_indices=True returns (values,
    indices) as torch's: each maximum's flat position in its H x W plane, private for a
    private input (the first maximum on ties)."""

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x: TensorLike) -> TensorLike | tuple[TensorLike, TensorLike]:
        """max_pool2d(x), and the indices if return_indices."""
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)


class AdaptiveMaxPool2d(_Stateless):
    """Max pooling of (N, C, H, W) or (C, H, W) inputs to a fixed output size (any size;
    None keeps that dim), as torch's: output cell i of a dim covers input positions
    floor(i L / out) .. ceil((i + 1) L / out) - 1. return_indices=True returns (values,
    indices), the indices private flat positions in the H x W plane."""

    def __init__(self, output_size: int | tuple[int | None, int | None], return_indices: bool = False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x: TensorLike) -> TensorLike | tuple[TensorLike, TensorLike]:
        """adaptive_max_pool2d(x, output_size), and the indices if return_indices."""
        return F.adaptive_max_pool2d(x, self.output_size, self.return_indices)


class AdaptiveMaxPool1d(_Stateless):
    """Max pooling of (N, C, L) or (C, L) inputs to a fixed length, as torch's (see
    AdaptiveMaxPool2d)."""

    def __init__(self, output_size: int | tuple[int], return_indices: bool = False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x: TensorLike) -> TensorLike | tuple[TensorLike, TensorLike]:
        """adaptive_max_pool1d(x, output_size), and the indices if return_indices."""
        return F.adaptive_max_pool1d(x, self.output_size, self.return_indices)


class AvgPool2d(_Stateless):
    """2-d average pooling over (N, C, H, W) inputs."""

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x: TensorLike) -> TensorLike:
        """avg_pool2d(x)."""
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(_Stateless):
    """Average pooling to a fixed output size (the input a multiple of it)."""

    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: TensorLike) -> TensorLike:
        """adaptive_avg_pool2d(x, output_size)."""
        return F.adaptive_avg_pool2d(x, self.output_size)


class _FromTorch(Module):
    """A layer whose parameters and buffers mirror a torch layer's."""

    torch_type: type

    def _adopt(self, source: torch.nn.Module) -> None:
        for name, p in source._parameters.items():
            self.register_parameter(name, None if p is None else p.detach().clone())
        for name, b in source._buffers.items():
            self.register_buffer(name, None if b is None else b.detach().clone())

    @classmethod
    def from_torch(cls, source: torch.nn.Module) -> "_FromTorch":
        """A copy of a torch layer of this kind, with its current values."""
        if not isinstance(source, cls.torch_type):
            raise TypeError(f"{cls.__name__}.from_torch needs a {cls.torch_type.__name__}")
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer._configure(source)
        layer._adopt(source)
        return layer

    def __init__(self, *args, **kwargs):
        super().__init__()
        source = self.torch_type(*args, **kwargs)
        self._configure(source)
        self._adopt(source)

    def _configure(self, source) -> None:
        raise NotImplementedError


class Linear(_FromTorch):
    """y = x W^T + b; weight (out_features, in_features)."""

    torch_type = torch.nn.Linear

    def _configure(self, source) -> None:
        self.in_features, self.out_features = source.in_features, source.out_features

    def forward(self, x: TensorLike) -> TensorLike:
        """x W^T + b."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """The layer's sizes."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ConvNd(_FromTorch):
    def _configure(self, source) -> None:
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.kernel_size, self.stride, self.padding = source.kernel_size, source.stride, source.padding
        self.dilation, self.groups = source.dilation, source.groups
        self.padding_mode = source.padding_mode
        self._mode_padding = tuple(source._reversed_padding_repeated_twice)

    def _padded(self, x: TensorLike) -> tuple[TensorLike, IntOrTuple]:
        """(input, the convolution's padding): as torch's layers, a padding_mode other
        than 'zeros' pads the input first (reflect, replicate, circular), then pads 0."""
        if self.padding_mode == "zeros":
            return x, self.padding
        if isinstance(x, MPCTensor):
            return x.pad(self._mode_padding, self.padding_mode), 0
        return torch.nn.functional.pad(x, self._mode_padding, self.padding_mode), 0

    def extra_repr(self) -> str:
        """The convolution's channels and geometry."""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Conv1d(_ConvNd):
    """1-d convolution over (N, C, L) inputs."""

    torch_type = torch.nn.Conv1d

    def forward(self, x: TensorLike) -> TensorLike:
        """conv1d(x, weight, bias)."""
        x, padding = self._padded(x)
        return F.conv1d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                        self.groups)


class Conv2d(_ConvNd):
    """2-d convolution over (N, C, H, W) inputs."""

    torch_type = torch.nn.Conv2d

    def forward(self, x: TensorLike) -> TensorLike:
        """conv2d(x, weight, bias)."""
        x, padding = self._padded(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                        self.groups)


class _BatchNorm(_FromTorch):
    def _configure(self, source) -> None:
        self.num_features, self.eps, self.momentum = source.num_features, source.eps, source.momentum
        self.affine, self.track_running_stats = source.affine, source.track_running_stats
        if self.momentum is None:
            raise ValueError("BatchNorm(momentum=None) (cumulative average) is not supported")

    def _inference_affine(self):
        """(scale, shift) with x * scale + shift == eval-mode batch norm, computed once per
        set of statistics and parameters: private running statistics would otherwise cost
        an inv_sqrt on every inference."""
        parts = (self.running_mean, self.running_var, self.weight, self.bias)
        key = tuple(id(getattr(t, "share", t)) for t in parts)
        cached = self.__dict__.get("_affine")
        if cached is None or cached[0] != key:
            scale = (self.running_var + self.eps).inv_sqrt()
            scale = scale * self.weight if self.weight is not None else scale
            shift = -(self.running_mean * scale)
            shift = shift + self.bias if self.bias is not None else shift
            object.__setattr__(self, "_affine", (key, scale, shift))
        return self.__dict__["_affine"][1:]

    def forward(self, x: TensorLike) -> TensorLike:
        """Batch-normalised x; in training, updates the running statistics."""
        self._check_input(x)
        use_batch = self.training or not self.track_running_stats
        if (not use_batch and not is_grad_enabled()
                and isinstance(self.running_var, MPCTensor)):
            scale, shift = self._inference_affine()
            shape = [1, -1] + [1] * (x.dim() - 2)
            return x * scale.reshape(shape) + shift.reshape(shape)
        out, mean, var = F.batch_norm(x, self.running_mean if self.track_running_stats else None,
                                      self.running_var if self.track_running_stats else None,
                                      self.weight, self.bias, use_batch, self.momentum, self.eps)
        if use_batch and self.track_running_stats:
            self.running_mean, self.running_var = mean, var
            if self.num_batches_tracked is not None:
                self.num_batches_tracked = self.num_batches_tracked + 1
        return out

    def extra_repr(self) -> str:
        """Features, eps and momentum."""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) inputs."""

    torch_type = torch.nn.BatchNorm1d

    def _check_input(self, x) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"BatchNorm1d expects 2-d or 3-d input, got {x.dim()}-d")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) inputs."""

    torch_type = torch.nn.BatchNorm2d

    def _check_input(self, x) -> None:
        if x.dim() != 4:
            raise ValueError(f"BatchNorm2d expects 4-d input, got {x.dim()}-d")
