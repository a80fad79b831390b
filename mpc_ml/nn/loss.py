"""Losses with torch.nn's names; private or public inputs and targets."""
from __future__ import annotations

from . import functional as F
from .functional import TensorLike
from .module import Module


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"unknown reduction {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        """The reduction."""
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error."""

    def forward(self, input: TensorLike, target: TensorLike) -> TensorLike:
        """mse_loss(input, target)."""
        return F.mse_loss(input, target, self.reduction)


class L1Loss(_Loss):
    """Mean absolute error."""

    def forward(self, input: TensorLike, target: TensorLike) -> TensorLike:
        """l1_loss(input, target)."""
        return F.l1_loss(input, target, self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy of probabilities in (0, 1)."""

    def forward(self, input: TensorLike, target: TensorLike) -> TensorLike:
        """binary_cross_entropy(input, target)."""
        return F.binary_cross_entropy(input, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy of logits (sigmoid folded in, stable)."""

    def forward(self, input: TensorLike, target: TensorLike) -> TensorLike:
        """binary_cross_entropy_with_logits(input, target)."""
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy; target: public class indices, or private/public probabilities."""

    def __init__(self, weight: TensorLike | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        if weight is not None or label_smoothing:
            raise ValueError("CrossEntropyLoss: class weights and label smoothing are not supported")

    def forward(self, input: TensorLike, target: TensorLike) -> TensorLike:
        """cross_entropy(input, target)."""
        return F.cross_entropy(input, target, self.reduction)
