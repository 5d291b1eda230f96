"""Region proposals: from the RPN's prediction at every anchor to a few hundred boxes per image.

Each anchor's deltas are applied to it (`decode_proposals`); `filter_proposals` keeps the boxes
most likely to hold an object, clipped to the image, without near-duplicates (NMS), in one of
two orders (`PROPOSAL_ORDERS`). `ProposalSettings` names the counts of the lesson's source and
of torchvision.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..boxes import _check_boxes, _check_same_device, _check_tensor, clip_boxes, decode_boxes
from ..suppression import nms
from .rpn import RPN_BOX_WEIGHTS, _check_choice, _check_count, objectness_logits

__all__ = [
    "PROPOSAL_ORDERS",
    "RPN_NMS_THRESHOLD",
    "SEED_MIN_SIZE",
    "TORCHVISION_MIN_SIZE",
    "ProposalSettings",
    "SEED_TRAIN_PROPOSALS",
    "SEED_TEST_PROPOSALS",
    "TORCHVISION_TRAIN_PROPOSALS",
    "TORCHVISION_TEST_PROPOSALS",
    "decode_proposals",
    "Proposals",
    "filter_proposals",
]

#: In which order `filter_proposals` takes the best boxes and removes small ones (see there).
PROPOSAL_ORDERS = ("torchvision", "seed")
#: Proposals overlapping a better one by more than this IoU are suppressed.
RPN_NMS_THRESHOLD = 0.7
#: The seed drops proposals narrower or lower than 16 pixels (at the network's input scale) ...
SEED_MIN_SIZE = 16.0
#: ... torchvision only drops (almost) empty ones.
TORCHVISION_MIN_SIZE = 1e-3


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ProposalSettings:
    """How many proposals `filter_proposals` keeps, and how it picks them (its keywords)."""

    #: best-scored boxes kept before NMS ...
    pre_nms_top_n: int
    #: ... and after it.
    post_nms_top_n: int
    nms_threshold: float = RPN_NMS_THRESHOLD
    #: boxes narrower or lower than this many pixels are dropped.
    min_size: float = TORCHVISION_MIN_SIZE
    #: boxes whose objectness probability is below this are dropped.
    score_threshold: float = 0.0
    #: ``"torchvision"`` (top-N first) or ``"seed"`` (small boxes removed first).
    order: str = "torchvision"

    def __post_init__(self) -> None:
        _check_count(self.pre_nms_top_n, "pre_nms_top_n")
        _check_count(self.post_nms_top_n, "post_nms_top_n")
        _check_choice(self.order, PROPOSAL_ORDERS, "order")


#: The seed (and the paper) while training: 12,000 best boxes -> NMS 0.7 -> 2,000 proposals ...
SEED_TRAIN_PROPOSALS = ProposalSettings(12_000, 2_000, RPN_NMS_THRESHOLD, SEED_MIN_SIZE, 0.0, "seed")
#: ... and while testing: 6,000 -> 300.
SEED_TEST_PROPOSALS = ProposalSettings(6_000, 300, RPN_NMS_THRESHOLD, SEED_MIN_SIZE, 0.0, "seed")
#: torchvision's ``FasterRCNN`` defaults (per feature level): 2,000 -> 2,000 training ...
TORCHVISION_TRAIN_PROPOSALS = ProposalSettings(2_000, 2_000, RPN_NMS_THRESHOLD, TORCHVISION_MIN_SIZE)
#: ... and 1,000 -> 1,000 testing.
TORCHVISION_TEST_PROPOSALS = ProposalSettings(1_000, 1_000, RPN_NMS_THRESHOLD, TORCHVISION_MIN_SIZE)


# --------------------------------------------------------------------------- proposals


def decode_proposals(deltas: Tensor, anchors: Tensor, weights: Sequence[float] = RPN_BOX_WEIGHTS) -> Tensor:
    """Apply the RPN's deltas to the anchors: deltas (B, A, 4), anchors (A, 4) -> boxes (B, A, 4)."""
    _check_tensor(deltas, "deltas")
    _check_boxes(anchors, "anchors")
    if deltas.dim() != 3 or deltas.shape[1:] != anchors.shape:
        raise ValueError(f"deltas must have shape (B, {anchors.shape[0]}, 4) to match the anchors, "
                         f"got {tuple(deltas.shape)}")
    return decode_boxes(deltas, anchors[None].to(deltas.dtype), weights)


class Proposals(NamedTuple):
    """`filter_proposals`' result: per image, the kept boxes and their objectness probabilities."""

    #: B tensors (P_i, 4) xyxy pixels, best first.
    boxes: list[Tensor]
    #: B tensors (P_i,) probabilities in [0, 1].
    scores: list[Tensor]


def _image_sizes(image_size, batch: int) -> list[tuple[float, float]]:
    """(H, W) for all images, or a list of B (H, W) pairs -> B (H, W) pairs."""
    if (isinstance(image_size, (Sequence, torch.Size)) and len(image_size) == 2
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in image_size)):
        return [(float(image_size[0]), float(image_size[1]))] * batch
    if (isinstance(image_size, Sequence) and len(image_size) == batch
            and all(isinstance(s, (Sequence, torch.Size)) and len(s) == 2 for s in image_size)):
        return [(float(h), float(w)) for h, w in image_size]
    raise ValueError(f"image_size must be (height, width) or a list of {batch} such pairs, got {image_size!r}")


def _large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(N,) bool: both sides at least ``min_size`` (torchvision's ``remove_small_boxes``)."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def filter_proposals(boxes: Tensor, objectness: Tensor, image_size, *, pre_nms_top_n: int,
                     post_nms_top_n: int, nms_threshold: float = RPN_NMS_THRESHOLD,
                     min_size: float = TORCHVISION_MIN_SIZE, score_threshold: float = 0.0,
                     order: str = "torchvision") -> Proposals:
    """From every anchor's decoded box to a few hundred proposals per image.

    ``order="torchvision"`` (``RegionProposalNetwork.filter_proposals``, one feature level):
    the ``pre_nms_top_n`` best logits, then clip to the image, drop boxes with a side below
    ``min_size`` and probabilities below ``score_threshold``, NMS at ``nms_threshold``, keep
    the ``post_nms_top_n`` best.

    ``order="seed"`` (the lesson's source): clip, drop small boxes (and low scores) first,
    *then* the ``pre_nms_top_n`` best, NMS, the ``post_nms_top_n`` best. The difference: with
    torchvision's order a small box can take one of the top-N places and then be dropped, so
    fewer than ``pre_nms_top_n`` boxes reach NMS; with the seed's, exactly ``pre_nms_top_n``
    (12,000 of 22,500) do when that many are large enough.

    boxes: (B, A, 4) decoded (`decode_proposals`); objectness: (B, A) logits or (B, A, 2)
    scores; image_size: (H, W) or one (H, W) per image  ->  `Proposals` (probabilities
    ``sigmoid(logit)``, best first). The objectness is not differentiated through.
    """
    _check_tensor(boxes, "boxes")
    _check_tensor(objectness, "objectness")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, A, 4), got {tuple(boxes.shape)}")
    logits = objectness_logits(objectness.detach())
    if logits.shape != boxes.shape[:2]:
        raise ValueError(f"objectness must have shape {tuple(boxes.shape[:2])} (or with a last dimension of 2) "
                         f"to match boxes, got {tuple(objectness.shape)}")
    _check_same_device(boxes=boxes, objectness=objectness)
    _check_choice(order, PROPOSAL_ORDERS, "order")
    pre_nms_top_n = _check_count(pre_nms_top_n, "pre_nms_top_n")
    post_nms_top_n = _check_count(post_nms_top_n, "post_nms_top_n")
    sizes = _image_sizes(image_size, boxes.shape[0])
    boxes = boxes.detach()

    if order == "torchvision":  # top-N of the logits for the whole batch at once
        top = logits.topk(min(pre_nms_top_n, logits.shape[1]), dim=1).indices  # (B, N)
        logits = logits.gather(1, top)
        boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))

    probabilities = torch.sigmoid(logits)  # the whole batch at once, as torchvision (same rounding)
    kept_boxes, kept_scores = [], []
    for image_boxes, scores, image_logits, size in zip(boxes, probabilities, logits, sizes):  # counts differ
        image_boxes = clip_boxes(image_boxes, size)
        keep = _large_enough(image_boxes, min_size) & (scores >= score_threshold)
        image_boxes, scores, image_logits = image_boxes[keep], scores[keep], image_logits[keep]
        if order == "seed":  # ranked by logit: probabilities near 1 can round to equal values
            best = image_logits.topk(min(pre_nms_top_n, image_logits.shape[0])).indices
            image_boxes, scores = image_boxes[best], scores[best]
        keep = nms(image_boxes, scores, nms_threshold)[:post_nms_top_n]
        kept_boxes.append(image_boxes[keep])
        kept_scores.append(scores[keep])
    return Proposals(kept_boxes, kept_scores)
