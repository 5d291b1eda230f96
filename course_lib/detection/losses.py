"""Detection losses: focal loss for classification, smooth L1 for box regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import _check_same_device, _check_tensor

__all__ = ["REDUCTIONS", "focal_loss", "smooth_l1_loss"]

#: How a loss turns per-element values into its result.
REDUCTIONS = ("none", "mean", "sum")


def _check_pair(input_name: str, input: Tensor, target_name: str, target: Tensor, reduction: str) -> None:
    _check_tensor(input, input_name)
    _check_tensor(target, target_name)
    if input.shape != target.shape:
        raise ValueError(f"{target_name} must have the shape of {input_name} {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    _check_same_device(**{input_name: input, target_name: target})
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "sum") -> Tensor:
    """Sigmoid focal loss (RetinaNet): binary cross-entropy that fades on easy examples.

    With ``p_t`` the predicted probability of the true answer, the loss of one element is
    ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``. The factor ``(1 - p_t) ** gamma`` shrinks
    the loss of the thousands of easy background anchors; ``alpha_t`` is ``alpha`` for
    positives (targets 1) and ``1 - alpha`` for negatives: 0.25 on positives and 0.75 on
    negatives by default. ``alpha < 0`` turns that weighting off. ``gamma = 0`` and no alpha
    give plain binary cross-entropy.

    logits: (...) raw scores, targets: (...) in [0, 1] (one-hot per class, all zeros for
    background)  ->  a scalar, or (...) with ``reduction="none"``. Same as
    ``torchvision.ops.sigmoid_focal_loss`` (whose default reduction is "none").
    """
    _check_pair("logits", logits, "targets", targets, reduction)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha > 1:
        raise ValueError(f"alpha must be a number <= 1 (negative disables it), got {alpha!r}")
    targets = targets.to(logits.dtype)

    probs = torch.sigmoid(logits)
    # log(p_t) computed from the logits, stable for large |logits|.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Smooth L1 (Huber-like) loss of Fast/Faster R-CNN box regression.

    Per element, with ``d = |input - target|``: ``0.5 * d**2 / beta`` if ``d < beta`` else
    ``d - 0.5 * beta``: quadratic near 0 (small, smooth gradients), linear far away (an
    outlier box does not dominate). ``beta = 0`` is plain L1. torchvision's Faster R-CNN
    uses ``beta = 1/9`` and ``reduction="sum"`` divided by the number of sampled anchors.

    input, target: (...)  ->  a scalar, or (...) with ``reduction="none"``. Same as
    ``torch.nn.functional.smooth_l1_loss``.
    """
    _check_pair("input", input, "target", target, reduction)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    diff = (input - target).abs()
    if beta == 0:  # avoid 0 / 0 in the quadratic branch (and NaN gradients)
        return _reduce(diff, reduction)
    loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)
