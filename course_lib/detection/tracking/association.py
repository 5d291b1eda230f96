"""Associating tracks with detections by IoU: each track and each detection used at most once, either
the matching with the largest total IoU (``"hungarian"``) or best IoU first (``"greedy"``),
optionally only between equal labels.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..boxes import _check_boxes, _check_corners, _check_same_device, _check_tensor, box_iou

__all__ = ["ASSOCIATION_METHODS", "DEFAULT_IOU_THRESHOLD", "Association", "associate"]

#: ``"hungarian"``: the matching with the largest total IoU; ``"greedy"``: best IoU first.
ASSOCIATION_METHODS = ("hungarian", "greedy")
#: The least IoU of a match (the default of `associate`, `update_tracks` and `IoUTracker`).
DEFAULT_IOU_THRESHOLD = 0.3


# --------------------------------------------------------------------------- association


class Association(NamedTuple):
    """What `associate` returns (indices into its two inputs)."""

    matches: Tensor  # (K, 2) int64 rows (track index, detection index), by track index
    unmatched_tracks: Tensor  # (T - K,) int64, increasing
    unmatched_detections: Tensor  # (D - K,) int64, increasing


def _check_labels(labels, n: int, name: str, boxes_name: str) -> Tensor:
    _check_tensor(labels, name)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per row of {boxes_name}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    return labels


def _check_threshold(iou_threshold) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    return float(iou_threshold)


def associate(track_boxes: Tensor, detection_boxes: Tensor, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
              method: str = "hungarian", track_labels: Tensor | None = None,
              detection_labels: Tensor | None = None) -> Association:
    """Match tracks with detections by IoU; each track and each detection is used at most once.

    A pair can match only when its IoU is >= ``iou_threshold`` (and, when both label tensors are
    given, when the labels are equal: class-aware association).

    - ``"hungarian"``: the matching with the largest total IoU over the pairs that can match
      (``scipy.optimize.linear_sum_assignment`` on the IoU, the other pairs set to 0, which is the
      same as minimising the summed ``1 - IoU``); the zero pairs it may add are dropped.
    - ``"greedy"``: repeatedly take the pair with the highest IoU whose track and detection are
      both still free. Equal IoUs are taken by track index, then detection index.

    track_boxes: (T, 4) xyxy, detection_boxes: (D, 4) xyxy, labels: (T,) and (D,) int
    ->  `Association` of (K, 2), (T - K,), (D - K,) int64 indices on the inputs' device.
    """
    _check_boxes(track_boxes, "track_boxes")
    _check_boxes(detection_boxes, "detection_boxes")
    _check_same_device(track_boxes=track_boxes, detection_boxes=detection_boxes)
    _check_corners(track_boxes, "track_boxes")
    _check_corners(detection_boxes, "detection_boxes")
    iou_threshold = _check_threshold(iou_threshold)
    if method not in ASSOCIATION_METHODS:
        raise ValueError(f"method must be one of {ASSOCIATION_METHODS}, got {method!r}")
    if (track_labels is None) != (detection_labels is None):
        raise ValueError("track_labels and detection_labels must be given together (class-aware) or not at all")

    iou = box_iou(track_boxes, detection_boxes).detach()  # (T, D)
    allowed = iou >= iou_threshold
    if track_labels is not None:
        _check_labels(track_labels, track_boxes.shape[0], "track_labels", "track_boxes")
        _check_labels(detection_labels, detection_boxes.shape[0], "detection_labels", "detection_boxes")
        _check_same_device(track_boxes=track_boxes, track_labels=track_labels, detection_labels=detection_labels)
        allowed &= track_labels[:, None] == detection_labels[None, :]
    iou = torch.where(allowed, iou, torch.zeros_like(iou))

    matches = _hungarian(iou, allowed) if method == "hungarian" else _greedy(iou, allowed)
    return Association(matches, *_unmatched(matches, iou.shape))


def _hungarian(iou: Tensor, allowed: Tensor) -> Tensor:
    """(K, 2) pairs of largest total IoU, by row; ``iou`` is 0 where not ``allowed``."""
    if iou.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.int64, device=iou.device)
    from scipy.optimize import linear_sum_assignment  # imported here: scipy costs ~0.4 s to import

    rows, cols = linear_sum_assignment(iou.double().cpu().numpy(), maximize=True)  # rows increasing
    pairs = torch.from_numpy(np.stack((rows, cols), axis=1)).to(device=iou.device, dtype=torch.int64)
    return pairs[allowed[pairs[:, 0], pairs[:, 1]]]


def _greedy(iou: Tensor, allowed: Tensor) -> Tensor:
    """(K, 2) pairs chosen best IoU first, by row.

    Greedy matching is sequential by nature; it is settled here in rounds instead of pair by
    pair: a pair that is the best remaining pair of both its row and its column is exactly a
    pair the sequential greedy loop would take, so every round takes all of those at once.
    """
    n_rows, n_cols = iou.shape
    # Rank of every pair in greedy order: IoU descending; a stable sort of the row-major
    # flattening breaks ties by row, then column. Pairs that cannot match rank last.
    order = torch.sort(iou.flatten(), descending=True, stable=True).indices
    not_allowed = n_rows * n_cols  # larger than every rank
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=iou.device))
    rank = torch.where(allowed.flatten(), rank, not_allowed).reshape(n_rows, n_cols)
    matches = []
    row_ids = torch.arange(n_rows, device=iou.device)
    while rank.numel() and bool((rank < not_allowed).any()):
        best_col = rank.argmin(dim=1)  # (T,) best remaining detection of each track
        best_row = rank.argmin(dim=0)  # (D,) best remaining track of each detection
        mutual = (rank.gather(1, best_col[:, None])[:, 0] < not_allowed) & (best_row[best_col] == row_ids)
        rows, cols = row_ids[mutual], best_col[mutual]
        matches.append(torch.stack((rows, cols), dim=1))
        rank[rows, :] = not_allowed
        rank[:, cols] = not_allowed
    if not matches:
        return torch.zeros(0, 2, dtype=torch.int64, device=iou.device)
    pairs = torch.cat(matches)
    return pairs[pairs[:, 0].argsort()]


def _unmatched(matches: Tensor, shape: tuple[int, int]) -> list[Tensor]:
    """The indices of each side that are in no pair, increasing."""
    used = [torch.zeros(size, dtype=torch.bool, device=matches.device).index_fill_(0, matches[:, side], True)
            for side, size in enumerate(shape)]
    return [torch.nonzero(~u)[:, 0] for u in used]
