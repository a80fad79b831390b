"""MPCTensor: operator overloading and routing to primitives/, the recording point and its
observers (autograd tape, validation mode, correlation trace), and the gradients.

Imports primitives/, the session, core/ and config; never comm/ or providers/ directly.
A new op is an Op (core/ops.py), a method here that calls a primitive and record(), a
gradient in gradients.py (if differentiable) and a reference in validation.py.
"""
from . import gradients  # noqa: F401  (registers every gradient in tape.GRADIENTS)
from .binary_tensor import BinaryTensor, encrypt_binary
from .mpctensor import (MPCTensor, bernoulli, bilinear, cat, conv1d, conv2d, conv_transpose1d,
                        conv_transpose2d, encrypt, rand, randn, record, settle, stack, where)
from .tape import enable_grad, is_grad_enabled, missing_gradients, no_grad
from .trace import CorrelationTrace, prefetch, trace_correlations
from .validation import REFERENCES, ValidationError

_missing = missing_gradients()
if _missing:
    raise ImportError(f"differentiable ops without a gradient: {', '.join(map(str, _missing))}")

__all__ = ["REFERENCES", "BinaryTensor", "CorrelationTrace", "MPCTensor", "ValidationError",
           "bernoulli", "bilinear", "cat", "conv1d", "conv2d", "conv_transpose1d",
           "conv_transpose2d", "enable_grad", "encrypt", "encrypt_binary", "is_grad_enabled",
           "missing_gradients", "no_grad", "prefetch", "rand", "randn", "record", "settle",
           "stack", "trace_correlations", "where"]
