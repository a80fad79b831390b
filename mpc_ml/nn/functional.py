"""Stateless layer math for private (MPCTensor) and plaintext (torch.Tensor) inputs.

Names and arguments follow torch.nn.functional. When no argument is private the call
goes to torch itself, so a converted model still runs on plaintext tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import tensor as T
from ..core.ring import IntOrTuple, Padding
from ..tensor import no_grad
from ..session import current
from ..tensor import MPCTensor

TensorLike = MPCTensor | torch.Tensor
"""A private (MPCTensor) or plaintext (torch.Tensor) value."""


def _private(*values) -> bool:
    return any(isinstance(v, MPCTensor) for v in values)


def linear(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None) -> TensorLike:
    """input @ weight.T + bias."""
    if not _private(input, weight, bias):
        return F.linear(input, weight, bias)
    out = input @ weight.t()
    return out if bias is None else out + bias


def conv1d(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1) -> TensorLike:
    """1-d convolution over (N, C, L) inputs, as torch.nn.functional.conv1d."""
    if not _private(input, weight, bias):
        return F.conv1d(input, weight, bias, stride, padding, dilation, groups)
    return T.conv1d(input, weight, bias, stride, padding, dilation, groups)


def conv2d(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1) -> TensorLike:
    """2-d convolution over (N, C, H, W) inputs, as torch.nn.functional.conv2d."""
    if not _private(input, weight, bias):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return T.conv2d(input, weight, bias, stride, padding, dilation, groups)


def conv_transpose1d(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
                     stride: IntOrTuple = 1, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                     groups: int = 1, dilation: IntOrTuple = 1) -> TensorLike:
    """1-d transposed convolution over (N, C, L) inputs, as torch.nn.functional.conv_transpose1d."""
    if not _private(input, weight, bias):
        return F.conv_transpose1d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return T.conv_transpose1d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None,
                     stride: IntOrTuple = 1, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                     groups: int = 1, dilation: IntOrTuple = 1) -> TensorLike:
    """2-d transposed convolution over (N, C, H, W) inputs, as torch.nn.functional.conv_transpose2d."""
    if not _private(input, weight, bias):
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return T.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def relu(input: TensorLike, inplace: bool = False) -> TensorLike:
    """max(input, 0) elementwise (`inplace` is accepted for torch's signature and ignored)."""
    return input.relu()


def hardtanh(input: TensorLike, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> TensorLike:
    """clamp(input, min_val, max_val) (`inplace` is accepted for torch's signature and ignored)."""
    return F.hardtanh(input, min_val, max_val) if not _private(input) else input.hardtanh(min_val, max_val)


def relu6(input: TensorLike, inplace: bool = False) -> TensorLike:
    """clamp(input, 0, 6) (`inplace` is accepted for torch's signature and ignored)."""
    return F.relu6(input) if not _private(input) else input.relu6()


def cosine_similarity(x1: TensorLike, x2: TensorLike, dim: int = 1, eps: float = 1e-8) -> TensorLike:
    """sum(x1 x2) / (|x1| |x2|) along dim, as torch.nn.functional.cosine_similarity."""
    if not _private(x1, x2):
        return F.cosine_similarity(x1, x2, dim, eps)
    return (x1 if isinstance(x1, MPCTensor) else x2).cosine_similarity(
        x2 if isinstance(x1, MPCTensor) else x1, dim, eps)


def sigmoid(input: TensorLike) -> TensorLike:
    """1 / (1 + e^-input) elementwise."""
    return input.sigmoid()


def tanh(input: TensorLike) -> TensorLike:
    """Hyperbolic tangent elementwise."""
    return input.tanh()


def gelu(input: TensorLike, approximate: str = "none") -> TensorLike:
    """x * Phi(x) elementwise, the exact (erf) form only."""
    if approximate != "none":
        raise ValueError("only the exact (erf) GELU is supported")
    return input.gelu() if _private(input) else F.gelu(input)


def softmax(input: TensorLike, dim: int) -> TensorLike:
    """e^x / sum(e^x) along dim."""
    return input.softmax(dim)


def log_softmax(input: TensorLike, dim: int) -> TensorLike:
    """log(softmax(input, dim))."""
    return input.log_softmax(dim)


def max_pool2d(input: TensorLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> TensorLike | tuple[TensorLike, TensorLike]:
    """2-d max pooling, as torch.nn.functional.max_pool2d; return_indices=True adds each
    maximum's flat position in its H x W plane (private for a private input)."""
    if not _private(input):
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices=return_indices)
    return input.max_pool2d(kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def adaptive_max_pool2d(input: TensorLike, output_size: int | tuple[int | None, int | None],
                        return_indices: bool = False) -> TensorLike | tuple[TensorLike, TensorLike]:
    """Adaptive max pooling to any size, as torch.nn.functional.adaptive_max_pool2d."""
    if not _private(input):
        return F.adaptive_max_pool2d(input, output_size, return_indices)
    return input.adaptive_max_pool2d(output_size, return_indices)


def adaptive_max_pool1d(input: TensorLike, output_size: int | tuple[int],
                        return_indices: bool = False) -> TensorLike | tuple[TensorLike, TensorLike]:
    """Adaptive max pooling over the last dim, as torch.nn.functional.adaptive_max_pool1d."""
    if not _private(input):
        return F.adaptive_max_pool1d(input, output_size, return_indices)
    return input.adaptive_max_pool1d(output_size, return_indices)


def avg_pool2d(input: TensorLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> TensorLike:
    """2-d average pooling, as torch.nn.functional.avg_pool2d (without divisor_override)."""
    if divisor_override is not None:
        raise ValueError("avg_pool2d(divisor_override=...) is not supported")
    if not _private(input):
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return input.avg_pool2d(kernel_size, stride, padding, ceil_mode, count_include_pad)


def adaptive_avg_pool2d(input: TensorLike,
                        output_size: int | tuple[int | None, int | None]) -> TensorLike:
    """Adaptive average pooling where the input size is a multiple of the output size."""
    if not _private(input):
        return F.adaptive_avg_pool2d(input, output_size)
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = input.shape[-2:]
    out_h, out_w = out_h or h, out_w or w
    if h % out_h or w % out_w:
        raise ValueError(f"adaptive_avg_pool2d: input {h}x{w} is not a multiple of the output "
                         f"{out_h}x{out_w}")
    kernel = (h // out_h, w // out_w)
    return input.avg_pool2d(kernel, kernel)


def flatten(input: TensorLike, start_dim: int = 0, end_dim: int = -1) -> TensorLike:
    """Dimensions start_dim..end_dim merged into one."""
    return input.flatten(start_dim, end_dim)


def dropout(input: TensorLike, p: float = 0.5, training: bool = True, inplace: bool = False) -> TensorLike:
    """Dropout with a public mask drawn from the parties' common PRG (it reveals nothing)."""
    if not _private(input):
        return F.dropout(input, p, training)
    if not training or p == 0:
        return input
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    draws = current().common.random_ring(input.shape) & ((1 << 24) - 1)
    keep = (draws.to(torch.float64) >= p * (1 << 24)).to(torch.float64)
    return input * (keep / (1 - p))


def batch_norm(input: TensorLike, running_mean: TensorLike | None, running_var: TensorLike | None,
               weight: TensorLike | None = None, bias: TensorLike | None = None, training: bool = False,
               momentum: float = 0.1,
               eps: float = 1e-5) -> tuple[TensorLike, TensorLike | None, TensorLike | None]:
    """Batch normalisation; returns (output, new running mean, new running var).

    Training uses the batch's mean and (biased) variance and 1/sqrt(var + eps) from
    inv_sqrt; the running statistics move by `momentum` with the unbiased variance.
    """
    channel_shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    dims = tuple(d for d in range(input.dim()) if d != 1)
    if not _private(input, running_mean, running_var, weight, bias):
        rm, rv = running_mean, running_var
        if training:
            rm = running_mean.clone() if running_mean is not None else None
            rv = running_var.clone() if running_var is not None else None
        out = F.batch_norm(input, rm, rv, weight, bias, training, momentum, eps)
        return out, rm, rv
    if training or running_mean is None:
        mean = input.mean(dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(dims, keepdim=True)
        scale = (var + eps).inv_sqrt()
        if running_mean is not None:
            count = input.numel() // input.shape[1]
            with no_grad():
                running_mean = running_mean * (1 - momentum) + mean.detach().reshape(-1) * momentum
                running_var = (running_var * (1 - momentum)
                               + var.detach().reshape(-1) * (momentum * count / max(count - 1, 1)))
    else:
        centered = input - running_mean.reshape(channel_shape)
        if isinstance(running_var, MPCTensor):
            scale = (running_var + eps).inv_sqrt().reshape(channel_shape)
        else:
            scale = (running_var + eps).rsqrt().reshape(channel_shape)
    out = centered * scale
    if weight is not None:
        out = out * weight.reshape(channel_shape)
    if bias is not None:
        out = out + bias.reshape(channel_shape)
    return out, running_mean, running_var


# -- losses ----------------------------------------------------------------------------------
def _reduce(loss, reduction: str, count: int | None = None):
    if reduction == "mean":
        return loss.sum() / count if count is not None else loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def mse_loss(input: TensorLike, target: TensorLike, reduction: str = "mean") -> TensorLike:
    """(input - target)^2, reduced by `reduction` ('mean', 'sum' or 'none')."""
    if not _private(input, target):
        return F.mse_loss(input, target, reduction=reduction)
    diff = input - target
    return _reduce(diff * diff, reduction)


def l1_loss(input: TensorLike, target: TensorLike, reduction: str = "mean") -> TensorLike:
    """|input - target|, reduced by `reduction` ('mean', 'sum' or 'none')."""
    if not _private(input, target):
        return F.l1_loss(input, target, reduction=reduction)
    return _reduce((input - target).abs(), reduction)


def binary_cross_entropy(input: TensorLike, target: TensorLike, reduction: str = "mean") -> TensorLike:
    """-(t log p + (1 - t) log(1 - p)); p must lie in log's domain (0, 1)."""
    if not _private(input, target):
        return F.binary_cross_entropy(input, target, reduction=reduction)
    loss = (target * input.log() + (1 - target) * (1 - input).log()).neg()
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input: TensorLike, target: TensorLike,
                                     reduction: str = "mean") -> TensorLike:
    """relu(x) - x t + log(1 + e^-|x|), stable for any x."""
    if not _private(input, target):
        return F.binary_cross_entropy_with_logits(input, target, reduction=reduction)
    loss = input.relu() - input * target + (input.abs().neg()._exp_wide() + 1.0).log()  # |input| may be large
    return _reduce(loss, reduction)


def cross_entropy(input: TensorLike, target: TensorLike, reduction: str = "mean") -> TensorLike:
    """-sum(t * log_softmax(input, 1)); target: class indices (public integer tensor) or
    (private or public) probabilities / one-hot of input's shape."""
    if not _private(input, target):
        return F.cross_entropy(input, target, reduction=reduction)
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        if tuple(target.shape) != (input.shape[0], *input.shape[2:]):
            raise ValueError(f"cross_entropy: class indices of shape {tuple(target.shape)} for "
                             f"input of shape {tuple(input.shape)}")
        target = F.one_hot(target, input.shape[1]).movedim(-1, 1).to(torch.float64)
    elif tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"cross_entropy: target of shape {tuple(target.shape)} for input of "
                         f"shape {tuple(input.shape)}")
    per_item = (input.log_softmax(1) * target).neg().sum(1)
    return _reduce(per_item, reduction)

