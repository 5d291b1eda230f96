"""Which anchor is responsible for which object: matching, RPN labels and balanced sampling.

IoU matrices are (G, A): one row per ground-truth box, one column per anchor, as returned by
``box_iou(gt_boxes, anchors)`` (torchvision's ``match_quality_matrix`` layout).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .boxes import _check_boxes, _check_same_device, _check_tensor, box_iou

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "POSITIVE",
    "NEGATIVE",
    "IGNORE",
    "match_anchors",
    "match_iou_matrix",
    "label_anchors",
    "sample_labels",
]

#: `match_anchors`: the anchor is background (its best IoU is below the threshold).
BELOW_LOW_THRESHOLD = -1
#: `match_anchors` with a ``low_threshold``: neither object nor background, left out of the loss.
BETWEEN_THRESHOLDS = -2

#: `label_anchors` / `sample_labels`: an object anchor ...
POSITIVE = 1
#: ... a background anchor ...
NEGATIVE = 0
#: ... an anchor the loss ignores.
IGNORE = -1


def _check_threshold(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_ious(ious) -> Tensor:
    _check_tensor(ious, "ious")
    if ious.dim() != 2:
        raise ValueError(f"ious must have shape (G, A) (ground truths x anchors), got {tuple(ious.shape)}")
    return ious


def _best_anchor_of_each_gt(ious: Tensor) -> tuple[Tensor, Tensor]:
    """Anchors that are some ground truth's best match, and which ground truth they get.

    ious: (..., G, A), G >= 1  ->  (forced (..., A) bool, gt_index (..., A) int64).
    Every anchor reaching a ground truth's highest IoU counts (ties included, like
    torchvision's ``allow_low_quality_matches``); a ground truth that overlaps no anchor at
    all (best IoU 0), or a padding row (IoU < 0), forces nothing. An anchor that is the best of
    several ground truths goes to the one it overlaps most (on a tie, the lower index).
    """
    best_per_gt = ious.max(dim=-1, keepdim=True).values  # (..., G, 1)
    is_best = (ious == best_per_gt) & (best_per_gt > 0)  # (..., G, A)
    gt_index = torch.where(is_best, ious, torch.full_like(ious, -1.0)).argmax(dim=-2)
    return is_best.any(dim=-2), gt_index


def match_iou_matrix(ious: Tensor, iou_threshold: float = 0.5, *, low_threshold: float | None = None) -> Tensor:
    """The matching rule of `match_anchors` on IoUs already computed, for one image or a batch.

    ious: (..., G, A) with G >= 1, e.g. ``box_iou(gt_boxes, anchors)`` (G, A), or (B, G, A) for a
    padded batch where padding rows hold a negative IoU (they never match and force nothing)
    ->  (..., A) int64 in {-2, -1, 0, ..., G-1}. `match_anchors` and SSD's batched matching
    (`course_lib.detection.ssd.match_anchors_batched`) both call this function: the rule lives here.
    """
    _check_tensor(ious, "ious")
    if ious.dim() < 2 or ious.shape[-2] == 0:
        raise ValueError(f"ious must have shape (..., G, A) with G >= 1, got {tuple(ious.shape)}")
    high = _check_threshold(iou_threshold, "iou_threshold")
    low = high if low_threshold is None else _check_threshold(low_threshold, "low_threshold")
    if low > high:
        raise ValueError(f"low_threshold ({low}) must not exceed iou_threshold ({high})")
    if ious.shape[-1] == 0:  # no anchors: nothing to match (max over an empty axis is undefined)
        return torch.empty(ious.shape[:-2] + (0,), dtype=torch.int64, device=ious.device)
    best_iou, matches = ious.max(dim=-2)  # (..., A); ties: the first ground truth
    matches = torch.where(best_iou < low, BELOW_LOW_THRESHOLD, matches)
    matches = torch.where((best_iou >= low) & (best_iou < high), BETWEEN_THRESHOLDS, matches)
    forced, forced_gt = _best_anchor_of_each_gt(ious)
    return torch.where(forced, forced_gt, matches)


def match_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5,
                  *, low_threshold: float | None = None) -> Tensor:
    """For every anchor, the index of the ground-truth box it must predict, or a negative code.

    1. each anchor takes the ground truth it overlaps most; if that IoU is below
       ``iou_threshold`` it becomes `BELOW_LOW_THRESHOLD` (-1, background). With a
       ``low_threshold`` only IoU < low_threshold is background, and IoU in
       [low_threshold, iou_threshold) becomes `BETWEEN_THRESHOLDS` (-2, ignored);
    2. then each ground truth's best anchor is matched to it whatever its IoU, so that every
       object gets an anchor (SSD's rule) unless two objects share a best anchor: it goes to
       the one it overlaps most (see `_best_anchor_of_each_gt`, also for ties). The rule itself
       is `match_iou_matrix`, shared with SSD's batched matching.

    gt_boxes: (G, 4) xyxy, anchors: (A, 4) xyxy  ->  (A,) int64 in {-2, -1, 0, ..., G-1}.
    """
    _check_boxes(gt_boxes, "gt_boxes")
    _check_boxes(anchors, "anchors")
    _check_same_device(gt_boxes=gt_boxes, anchors=anchors)
    high = _check_threshold(iou_threshold, "iou_threshold")
    low = high if low_threshold is None else _check_threshold(low_threshold, "low_threshold")
    if low > high:
        raise ValueError(f"low_threshold ({low}) must not exceed iou_threshold ({high})")

    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return torch.full((num_anchors,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)
    return match_iou_matrix(box_iou(gt_boxes, anchors), high, low_threshold=low)  # ious (G, A)


def label_anchors(ious: Tensor, pos: float = 0.7, neg: float = 0.3) -> Tensor:
    """Faster R-CNN's RPN labels: `POSITIVE` (1), `NEGATIVE` (0) or `IGNORE` (-1) per anchor.

    - negative: the anchor's best IoU with any ground truth is below ``neg``;
    - positive: its best IoU is at least ``pos``, or it is a ground truth's best anchor
      (even below ``neg``: negatives are assigned first, then positives, so a forced
      positive is never turned back into a negative);
    - ignored: everything else (IoU in [neg, pos)).

    ious: (G, A) from ``box_iou(gt_boxes, anchors)``  ->  (A,) int64. With no ground truth
    every anchor is negative.
    """
    _check_ious(ious)
    pos = _check_threshold(pos, "pos")
    neg = _check_threshold(neg, "neg")
    if neg > pos:
        raise ValueError(f"neg ({neg}) must not exceed pos ({pos})")

    num_gt, num_anchors = ious.shape
    labels = torch.full((num_anchors,), IGNORE, dtype=torch.int64, device=ious.device)
    if num_gt == 0:
        return labels.fill_(NEGATIVE)
    if num_anchors == 0:
        return labels
    best_iou = ious.max(dim=0).values
    labels[best_iou < neg] = NEGATIVE  # negatives first ...
    labels[best_iou >= pos] = POSITIVE  # ... then positives
    forced, _ = _best_anchor_of_each_gt(ious)
    labels[forced] = POSITIVE
    return labels


def sample_labels(labels: Tensor, num_samples: int = 256, positive_fraction: float = 0.5,
                  generator: torch.Generator | None = None) -> Tensor:
    """Keep a random, balanced mini-batch of labelled anchors (or proposals); ignore the rest.

    Positives are labels >= 1 (`POSITIVE`, or class indices for detection-head proposals),
    negatives are labels == 0. At most ``int(num_samples * positive_fraction)`` positives are
    kept, and negatives fill the rest: ``num_samples - kept positives`` (so the batch stays
    ``num_samples`` when positives are scarce), as many as there are. The draws use
    ``generator`` (torch's global generator when None), positives first, like torchvision's
    ``BalancedPositiveNegativeSampler``.

    labels: (A,) int  ->  (A,) same dtype: sampled entries keep their label, others are
    `IGNORE`.
    """
    _check_tensor(labels, "labels")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (A,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or not labels.dtype.is_signed:
        raise TypeError(f"labels must be a signed integer tensor (-1 means ignore), got {labels.dtype}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    positive_fraction = _check_threshold(positive_fraction, "positive_fraction")

    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == NEGATIVE).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    draw_device = generator.device if generator is not None else labels.device
    pos_pick = torch.randperm(positive.numel(), generator=generator, device=draw_device)[:num_pos]
    neg_pick = torch.randperm(negative.numel(), generator=generator, device=draw_device)[:num_neg]
    keep = torch.cat((positive[pos_pick.to(labels.device)], negative[neg_pick.to(labels.device)]))
    sampled = torch.full_like(labels, IGNORE)
    sampled[keep] = labels[keep]
    return sampled
