"""The region proposal network (RPN) of Faster R-CNN: its head, its training targets and its loss.
(Turning its predictions into proposals: `course_lib.detection.faster_rcnn.region_proposals`.)

At every cell of the backbone's feature map and for each of its ``A`` anchors (see
`course_lib.detection.anchors.rpn_anchors`), the RPN predicts an objectness score ("is there an
object here?") and four box deltas ``(dx, dy, dw, dh)`` that move the anchor onto the object.

Two conventions run through this module, both named:

- **objectness** (`OBJECTNESS_KINDS`): ``"softmax"``, the lesson's source, scores two classes
  (background, object) per anchor, ``2 * A`` channels; ``"sigmoid"``, torchvision, one logit per
  anchor, ``A`` channels. They carry the same information: ``softmax((s0, s1))[1] ==
  sigmoid(s1 - s0)``, so `objectness_logits` turns two-way scores into one logit.
- **loss normalisation** (`RPN_LOSS_NORMALIZATIONS`): ``"seed"`` and ``"torchvision"``, see
  `rpn_loss`.

Shapes: ``B`` images, ``A`` anchors in all (``H * W * anchors per cell``), ``G`` objects.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..boxes import _check_boxes, _check_same_device, _check_tensor, box_iou, encode_boxes
from ..matching import IGNORE, POSITIVE, label_anchors, sample_labels
from ..ssd import flatten_conv

__all__ = [
    "OBJECTNESS_KINDS",
    "RPN_LOSS_NORMALIZATIONS",
    "RPN_POSITIVE_IOU",
    "RPN_NEGATIVE_IOU",
    "RPN_BATCH_SIZE",
    "RPN_POSITIVE_FRACTION",
    "RPN_BOX_WEIGHTS",
    "RPN_LAMBDA",
    "SEED_SMOOTH_L1_BETA",
    "TORCHVISION_SMOOTH_L1_BETA",
    "RPNHead",
    "RPNOutput",
    "objectness_logits",
    "RPNTargets",
    "rpn_targets",
    "sample_anchors",
    "RPNLoss",
    "rpn_loss",
]

#: ``"softmax"``: two scores (background, object) per anchor, the lesson's source;
#: ``"sigmoid"``: one logit per anchor, torchvision's ``RPNHead``.
OBJECTNESS_KINDS = ("sigmoid", "softmax")
#: How `rpn_loss` averages its two terms (see there).
RPN_LOSS_NORMALIZATIONS = ("torchvision", "seed")

#: An anchor is an object when its best IoU with a ground truth reaches 0.7 ...
RPN_POSITIVE_IOU = 0.7
#: ... background below 0.3, ignored in between (the paper, the seed and torchvision agree).
RPN_NEGATIVE_IOU = 0.3
#: Anchors in the loss per image ...
RPN_BATCH_SIZE = 256
#: ... of which at most half are objects (128 of 256).
RPN_POSITIVE_FRACTION = 0.5
#: The RPN's box coding has no weights: deltas in anchor widths and log-ratios.
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: The seed's weight of the box term ("lambda = 10" of the paper).
RPN_LAMBDA = 10.0
#: Smooth L1 turns linear at |d| = 1 in the seed's loss ...
SEED_SMOOTH_L1_BETA = 1.0
#: ... and at |d| = 1/9 in torchvision's.
TORCHVISION_SMOOTH_L1_BETA = 1.0 / 9.0
#: Weights of a new head: normal with this standard deviation, zero biases (seed and torchvision).
HEAD_INIT_STD = 0.01


def _check_choice(value, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


# --------------------------------------------------------------------------- the head


class RPNOutput(NamedTuple):
    """What `RPNHead` predicts, one row per anchor, in `rpn_anchors`' order."""

    #: (B, A, 4) box deltas (dx, dy, dw, dh).
    deltas: Tensor
    #: (B, A) logits (``"sigmoid"``) or (B, A, 2) background/object scores (``"softmax"``).
    objectness: Tensor


class RPNHead(nn.Module):
    """3x3 convolution + ReLU, then two 1x1 convolutions: objectness and box deltas per anchor.

    ``objectness="sigmoid"`` gives one logit per anchor (torchvision), ``"softmax"`` two scores
    (the lesson's source). ``mid_channels`` defaults to ``in_channels`` (VGG16: 512 -> 512).

    Parameter names are torchvision's ``RPNHead`` (``conv``, ``cls_logits``, ``bbox_pred``):
    a ``"sigmoid"`` head's state dict loads into torchvision's ``RPNHead(in_channels,
    num_anchors)``, and torchvision's (``conv.0.0.*``) loads into this one.
    """

    def __init__(self, in_channels: int, num_anchors: int = 9, objectness: str = "sigmoid",
                 mid_channels: int | None = None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_anchors", num_anchors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.objectness = _check_choice(objectness, OBJECTNESS_KINDS, "objectness")
        self.num_anchors = num_anchors
        mid_channels = in_channels if mid_channels is None else mid_channels
        scores_per_anchor = 1 if objectness == "sigmoid" else 2
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors * scores_per_anchor, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=HEAD_INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> RPNOutput:
        """features: (B, in_channels, H, W) -> `RPNOutput` with A = H * W * num_anchors rows.

        The maps (B, A*4, H, W) and (B, A*k, H, W) are laid out cell by cell, the anchors of a
        cell together: (1, 36, 50, 50) -> (1, 22500, 4) and (1, 18, 50, 50) -> (1, 22500, 2).
        """
        _check_tensor(features, "features")
        if features.dim() != 4 or features.shape[1] != self.conv.in_channels:
            raise ValueError(f"features must have shape (B, {self.conv.in_channels}, H, W), "
                             f"got {tuple(features.shape)}")
        hidden = F.relu(self.conv(features))
        deltas = flatten_conv(self.bbox_pred(hidden), self.num_anchors)
        scores = flatten_conv(self.cls_logits(hidden), self.num_anchors)  # (B, A, 1) or (B, A, 2)
        return RPNOutput(deltas, scores.squeeze(-1) if self.objectness == "sigmoid" else scores)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision keeps its 3x3 conv in nn.Sequential(Conv2dNormActivation): "conv.0.0.weight".
        for kind in ("weight", "bias"):
            theirs = f"{prefix}conv.0.0.{kind}"
            if theirs in state_dict:
                state_dict[f"{prefix}conv.{kind}"] = state_dict.pop(theirs)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def objectness_logits(objectness: Tensor) -> Tensor:
    """One logit per anchor: (B, A) logits unchanged, (B, A, 2) scores -> ``s1 - s0`` (B, A).

    ``sigmoid(s1 - s0)`` is the softmax probability of "object": ranking by it is ranking by
    probability. (The seed's source ranks by the raw object score ``s1`` alone, which ignores
    the background score.)
    """
    _check_tensor(objectness, "objectness")
    if objectness.dim() == 3 and objectness.shape[-1] == 2:
        return objectness[..., 1] - objectness[..., 0]
    if objectness.dim() == 2:
        return objectness
    raise ValueError(f"objectness must have shape (B, A) (logits) or (B, A, 2) (two-way scores), "
                     f"got {tuple(objectness.shape)}")


# --------------------------------------------------------------------------- targets


class RPNTargets(NamedTuple):
    """What one image's anchors should predict (`rpn_targets`)."""

    #: (A,) int64: `POSITIVE` (1) object, `NEGATIVE` (0) background, `IGNORE` (-1).
    labels: Tensor
    #: (A,) int64: for positives the ground truth they regress to (their highest IoU), else -1.
    matched_gt: Tensor
    #: (A, 4) encoded deltas of the matched ground truth for positives, 0 elsewhere.
    box_targets: Tensor


def rpn_targets(anchors: Tensor, gt_boxes: Tensor, *, positive_iou: float = RPN_POSITIVE_IOU,
                negative_iou: float = RPN_NEGATIVE_IOU, ignore_outside: Sequence[int] | None = None,
                box_weights: Sequence[float] = RPN_BOX_WEIGHTS) -> RPNTargets:
    """Label one image's anchors and encode what the positives should predict.

    Labels come from `course_lib.detection.matching.label_anchors`: negative when the best IoU
    with any ground truth is below ``negative_iou``, positive from ``positive_iou`` on, and each
    ground truth's best anchors (ties included) positive whatever their IoU; negatives are
    assigned first, so a forced positive stays positive (the seed did it the other way round).
    Same labels as torchvision's ``Matcher(0.7, 0.3, allow_low_quality_matches=True)``, except
    for an object that overlaps no anchor at all: its "best" IoU is 0, and torchvision then makes
    every anchor it does not overlap positive; here it forces nothing.

    ``ignore_outside=(height, width)``: anchors not entirely inside the image are ignored and
    left out of the matching (the seed's rule: 8,940 of 22,500 anchors take part). ``None``
    (torchvision): every anchor takes part.

    anchors: (A, 4), gt_boxes: (G, 4) xyxy pixels  ->  `RPNTargets`. No ground truth: every
    (inside) anchor is negative.
    """
    _check_boxes(anchors, "anchors")
    _check_boxes(gt_boxes, "gt_boxes")
    _check_same_device(anchors=anchors, gt_boxes=gt_boxes)
    num_anchors, device = anchors.shape[0], anchors.device
    dtype = anchors.dtype if anchors.is_floating_point() else torch.float32

    taking_part = torch.ones(num_anchors, dtype=torch.bool, device=device)
    if ignore_outside is not None:
        if not isinstance(ignore_outside, (Sequence, torch.Size)) or len(ignore_outside) != 2:
            raise ValueError(f"ignore_outside must be (height, width) or None, got {ignore_outside!r}")
        height, width = (float(s) for s in ignore_outside)
        taking_part = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
                       & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))
    candidates = anchors[taking_part]

    ious = box_iou(gt_boxes.to(dtype), candidates.to(dtype))  # (G, A_in)
    labels = torch.full((num_anchors,), IGNORE, dtype=torch.int64, device=device)
    labels[taking_part] = label_anchors(ious, positive_iou, negative_iou)

    matched_gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
    box_targets = torch.zeros(num_anchors, 4, dtype=dtype, device=device)
    if gt_boxes.shape[0] > 0 and candidates.shape[0] > 0:
        best_gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
        best_gt[taking_part] = ious.max(dim=0).indices  # ties: the first ground truth
        positive = labels == POSITIVE
        matched_gt = torch.where(positive, best_gt, matched_gt)
        box_targets[positive] = encode_boxes(gt_boxes.to(dtype)[best_gt[positive]], anchors[positive].to(dtype),
                                             box_weights)
    return RPNTargets(labels, matched_gt, box_targets)


def sample_anchors(labels: Tensor, batch_size: int = RPN_BATCH_SIZE,
                   positive_fraction: float = RPN_POSITIVE_FRACTION,
                   generator: torch.Generator | None = None) -> Tensor:
    """Each image's mini-batch of anchors: at most ``batch_size * positive_fraction`` positives,
    negatives fill up to ``batch_size`` (`course_lib.detection.matching.sample_labels`, the
    same draws as torchvision's ``BalancedPositiveNegativeSampler`` seeded alike).

    labels: (A,) or (B, A) from `rpn_targets`  ->  the same shape: sampled anchors keep their
    label, the others become `IGNORE`. Images are drawn one after the other from ``generator``.
    """
    _check_tensor(labels, "labels")
    if labels.dim() not in (1, 2):
        raise ValueError(f"labels must have shape (A,) or (B, A), got {tuple(labels.shape)}")
    if labels.dim() == 1:
        return sample_labels(labels, batch_size, positive_fraction, generator)
    return torch.stack([sample_labels(row, batch_size, positive_fraction, generator) for row in labels])


# --------------------------------------------------------------------------- the loss


class RPNLoss(NamedTuple):
    """The RPN's two loss terms (torchvision's ``loss_objectness`` and ``loss_rpn_box_reg``)."""

    objectness: Tensor
    #: already multiplied by the box weight (lambda) where the normalisation has one.
    box: Tensor

    @property
    def total(self) -> Tensor:
        return self.objectness + self.box


def rpn_loss(objectness: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor, *,
             normalization: str = "torchvision", box_weight: float | None = None,
             beta: float | None = None) -> RPNLoss:
    """The RPN loss of a batch, over the sampled anchors (``labels`` != -1).

    ``normalization="torchvision"`` (``RegionProposalNetwork.compute_loss``)::

        objectness = mean over sampled anchors of BCE-with-logits(logit, label)
        box        = sum over positives of smooth L1 (beta 1/9) / number of sampled anchors

    ``normalization="seed"`` (the lesson, ``L = 1/N_cls sum L_cls + lambda / N_reg sum p* L_reg``)::

        objectness = cross-entropy of the two-way scores, ignoring label -1 (1/N_cls: the mean)
        box        = lambda (10) * sum over positives of smooth L1 (beta 1) / N_reg

    where the seed's ``N_reg`` is the number of positive anchors (the paper's N_reg ~ 2,400 is
    the number of anchor positions; with it lambda = 10 balances the terms). With no positive
    the seed would divide by zero: N_reg counts at least 1 here. The two-way cross-entropy of
    scores ``(s0, s1)`` equals the binary cross-entropy of the logit ``s1 - s0``, so both
    normalisations take either kind of objectness. Nothing sampled: both terms are 0.

    objectness: (B, A) logits or (B, A, 2) scores (or flattened (N,), (N, 2)); deltas,
    box_targets: (B, A, 4) (or (N, 4)); labels: (B, A) (or (N,)) in {1, 0, -1}  ->  `RPNLoss`.
    ``box_weight`` and ``beta`` override the normalisation's lambda and smooth-L1 beta.
    """
    _check_choice(normalization, RPN_LOSS_NORMALIZATIONS, "normalization")
    for name, value in (("objectness", objectness), ("deltas", deltas), ("labels", labels),
                        ("box_targets", box_targets)):
        _check_tensor(value, name)
    two_way = objectness.dim() == labels.dim() + 1 and objectness.shape[-1] == 2
    if objectness.shape[:labels.dim()] != labels.shape or (objectness.dim() != labels.dim() and not two_way):
        raise ValueError(f"objectness must have the shape of labels {tuple(labels.shape)} (or with a last "
                         f"dimension of 2), got {tuple(objectness.shape)}")
    if deltas.shape != (*labels.shape, 4) or box_targets.shape != deltas.shape:
        raise ValueError(f"deltas and box_targets must have shape {(*labels.shape, 4)}, got "
                         f"{tuple(deltas.shape)} and {tuple(box_targets.shape)}")
    _check_same_device(objectness=objectness, deltas=deltas, labels=labels, box_targets=box_targets)

    labels = labels.reshape(-1).long()
    sampled = labels >= 0
    positive = labels == POSITIVE
    deltas, box_targets = deltas.reshape(-1, 4), box_targets.reshape(-1, 4)
    if two_way:
        objectness = objectness.reshape(-1, 2)
    else:
        objectness = objectness.reshape(-1)
    num_sampled = int(sampled.sum())
    if num_sampled == 0:  # keep the graph (and a zero gradient) instead of a NaN
        zero = objectness.sum() * 0 + deltas.sum() * 0
        return RPNLoss(zero, zero.clone())

    if normalization == "torchvision":
        beta = TORCHVISION_SMOOTH_L1_BETA if beta is None else beta
        box_weight = 1.0 if box_weight is None else box_weight
        chosen = objectness[sampled]
        logits = chosen[:, 1] - chosen[:, 0] if two_way else chosen  # CE of (s0, s1) = BCE of s1 - s0
        objectness_term = F.binary_cross_entropy_with_logits(logits, labels[sampled].to(logits.dtype))
        box_sum = F.smooth_l1_loss(deltas[positive], box_targets[positive], beta=beta, reduction="sum")
        return RPNLoss(objectness_term, box_weight * box_sum / num_sampled)

    beta = SEED_SMOOTH_L1_BETA if beta is None else beta
    box_weight = RPN_LAMBDA if box_weight is None else box_weight
    if two_way:
        objectness_term = F.cross_entropy(objectness, labels, ignore_index=IGNORE)
    else:
        objectness_term = F.binary_cross_entropy_with_logits(objectness[sampled],
                                                             labels[sampled].to(objectness.dtype))
    num_regression = max(int(positive.sum()), 1)
    box_sum = F.smooth_l1_loss(deltas[positive], box_targets[positive], beta=beta, reduction="sum")
    return RPNLoss(objectness_term, box_weight * box_sum / num_regression)
