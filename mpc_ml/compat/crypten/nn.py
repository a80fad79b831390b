"""`crypten.nn`: mpc_ml's Module, layers and losses under CrypTen's names, and
from_pytorch(model, dummy_input).

CrypTen's Module API is mpc_ml's: encrypt(src=...) (encrypt(mode=False) decrypts),
decrypt(), encrypted, train()/eval(), zero_grad(), update_parameters(lr). The losses take
CrypTen's arguments: CrossEntropyLoss(logits, one-hot targets).
"""
from __future__ import annotations

import torch

from ... import nn as _nn
from ...tensor import MPCTensor
from .cryptensor import as_cryptensor
from ...nn import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, BCELoss,
                   BCEWithLogitsLoss, Conv1d, Conv2d, CrossEntropyLoss, Dropout, Flatten, Identity,
                   L1Loss, Linear, LogSoftmax, MaxPool2d, Module, ModuleList, MSELoss, ReLU,
                   Sequential, Sigmoid, Softmax, Tanh)


class _CrypTenModule:
    """What a converted model adds for CrypTen: encrypt(mode=True, src=0) in CrypTen's
    argument order, its private parameters CrypTensors (so outputs follow CrypTen)."""

    def encrypt(self, mode: bool = True, src: int = 0) -> Module:
        """Share the weights from party src (mode=False: decrypt them)."""
        out = super().encrypt(src=src, mode=mode)
        if mode:
            for module in self.modules():
                for table in (module._parameters, module._buffers):
                    for value in table.values():
                        if isinstance(value, MPCTensor):
                            as_cryptensor(value)
        return out


def from_pytorch(pytorch_model: torch.nn.Module, dummy_input: torch.Tensor) -> Module:
    """The model as an mpc_ml Module with its (still public) weights; call .encrypt(src=)
    next. The dummy input gives shapes and dtypes only (mpc_ml traces with torch.export,
    where CrypTen went through ONNX)."""
    model = _nn.from_pytorch(pytorch_model, dummy_input)
    base = type(model)
    model.__class__ = type(f"CrypTen{base.__name__}", (_CrypTenModule, base), {})
    return model


__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BCELoss", "BCEWithLogitsLoss",
           "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "CrossEntropyLoss", "Dropout",
           "Flatten", "GELU",
           "Identity", "L1Loss", "Linear", "LogSoftmax", "MSELoss", "MaxPool2d", "Module",
           "ModuleList", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh", "from_pytorch"]
