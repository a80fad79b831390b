"""`crypten.optim`: mpc_ml's optimizers under CrypTen's names."""
from ...optim import SGD, Adam

__all__ = ["Adam", "SGD"]
