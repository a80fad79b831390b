"""Optimizers on private parameters: SGD (momentum, Nesterov, weight decay) and Adam.

Imports tensor/ only: an optimizer updates MPCTensor parameters under no_grad.
"""
from .optimizers import SGD, Adam, Optimizer

__all__ = ["SGD", "Adam", "Optimizer"]
