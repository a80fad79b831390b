"""Op: the one list of operation names.

The tensor's recording point reports every MPCTensor op as an Op; autograd keys its
gradients by Op (a differentiable op without one fails at import); the validation mode
keys its plaintext references by Op; the dealer's Beaver triples name their bilinear Op.
"""
from __future__ import annotations

from enum import StrEnum


class Op(StrEnum):
    """Every operation an MPCTensor records (a str: "matmul" == Op.MATMUL)."""

    # linear, local
    ADD = "add"
    NEG = "neg"
    SUM = "sum"
    # products (Beaver, or a public operand) and public division
    MUL = "mul"
    MATMUL = "matmul"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV2D_INPUT = "conv2d_input"
    CONV2D_WEIGHT = "conv2d_weight"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    DIV_PUBLIC = "div_public"
    # shape and selection, local
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    PERMUTE = "permute"
    EXPAND = "expand"
    FLIP = "flip"
    GETITEM = "getitem"
    PAD = "pad"
    CAT = "cat"
    STACK = "stack"
    WHERE = "where"
    CUMSUM = "cumsum"
    ROLL = "roll"
    GATHER = "gather"
    SCATTER = "scatter"
    SCATTER_ADD = "scatter_add"
    INDEX_SELECT = "index_select"
    INDEX_ADD = "index_add"
    # comparisons and what is built on them
    RELU = "relu"
    ABS = "abs"
    CLAMP = "clamp"
    MAX = "max"
    MAX_POOL2D = "max_pool2d"
    MAX_POOL2D_INDICES = "max_pool2d_indices"
    WINDOW_SUM = "window_sum"
    LT = "lt"
    GT = "gt"
    EQ = "eq"
    NE = "ne"
    SIGN = "sign"
    ARGMAX = "argmax"
    # approximations (primitives/approximations.py)
    EXP = "exp"
    LOG = "log"
    RECIPROCAL = "reciprocal"
    SQRT = "sqrt"
    INV_SQRT = "inv_sqrt"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    ERF = "erf"
    GELU = "gelu"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    COS = "cos"
    SIN = "sin"

    @property
    def differentiable(self) -> bool:
        """Whether autograd must have a gradient for this op."""
        return self not in NOT_DIFFERENTIABLE


NOT_DIFFERENTIABLE = frozenset({
    Op.CONV1D,  # recorded as a height-1 conv2d
    Op.CONV2D_INPUT, Op.CONV2D_WEIGHT,  # gradient ops themselves (no double backward)
    Op.LT, Op.GT, Op.EQ, Op.NE, Op.SIGN, Op.ARGMAX,  # piecewise constant: no gradient, as torch
    Op.MAX_POOL2D_INDICES,
})

BILINEAR_OPS = (Op.MUL, Op.MATMUL, Op.CONV1D, Op.CONV2D, Op.CONV2D_INPUT, Op.CONV2D_WEIGHT)
"""The ops that ring.bilinear computes and Beaver triples are made for."""
