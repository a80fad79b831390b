"""`crypten.nn`: mpc_ml's Module, layers and losses under CrypTen's names, and
from_pytorch(model, dummy_input).

CrypTen's Module API is mpc_ml's: encrypt(src=...) (encrypt(mode=False) decrypts),
decrypt(), encrypted, train()/eval(), zero_grad(), update_parameters(lr). The losses take
CrypTen's arguments: CrossEntropyLoss(logits, one-hot targets).
"""
from __future__ import annotations

import torch

from ... import nn as _nn
from ...nn import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BCELoss,
                   BCEWithLogitsLoss, Conv1d, Conv2d, CrossEntropyLoss, Dropout, Flatten, Identity,
                   L1Loss, Linear, LogSoftmax, MaxPool2d, Module, ModuleList, MSELoss, ReLU,
                   Sequential, Sigmoid, Softmax, Tanh)


def from_pytorch(pytorch_model: torch.nn.Module, dummy_input: torch.Tensor) -> Module:
    """The model as an mpc_ml Module with its (still public) weights; call .encrypt(src=)
    next. The dummy input gives shapes and dtypes only (mpc_ml traces with torch.export,
    where CrypTen went through ONNX)."""
    return _nn.from_pytorch(pytorch_model, dummy_input)


__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d",
           "BatchNorm2d", "Conv1d", "Conv2d", "CrossEntropyLoss", "Dropout", "Flatten", "GELU",
           "Identity", "L1Loss", "Linear", "LogSoftmax", "MSELoss", "MaxPool2d", "Module",
           "ModuleList", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh", "from_pytorch"]
