"""Neural networks on private tensors: Module, layers, losses, functional, from_pytorch,
and checkpoints of shares.

Layers are written against MPCTensor's API (tensor/); nn never imports comm/ or
providers/ and knows nothing of Beaver triples. State dict keys are torch's own.
"""
from . import functional
from .convert import from_pytorch
from .layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool1d, AdaptiveMaxPool2d, AvgPool2d,
                     BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, Dropout, Flatten, Identity, Linear,
                     LogSoftmax, MaxPool2d, ReLU, Sigmoid, Softmax, Tanh)
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from .module import Module, ModuleList, Sequential

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AvgPool2d", "BCELoss",
           "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "CrossEntropyLoss",
           "Dropout", "Flatten", "GELU", "Identity", "L1Loss", "Linear", "LogSoftmax", "MSELoss",
           "MaxPool2d", "Module", "ModuleList", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
           "from_pytorch", "functional"]
