"""The second stage of Faster R-CNN (Fast R-CNN): which proposals it learns from, the fixed-size
features it cuts out of the feature map for each, the head that classifies them and refines their
boxes, its loss, and the final detections.

Class labels: 0 is the background, objects are 1..C-1, and ``num_classes`` counts the
background (torchvision's convention). Boxes are xyxy pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..boxes import _check_boxes, _check_same_device, _check_tensor, box_iou, clip_boxes, decode_boxes, encode_boxes
from ..matching import IGNORE, sample_labels
from ..suppression import batched_nms
from ..roi import roi_pool, rois_from_boxes
from .region_proposals import _image_sizes
from .rpn import _check_choice

__all__ = [
    "ROI_FOREGROUND_IOU",
    "ROI_BACKGROUND_IOU",
    "SEED_ROI_BATCH_SIZE",
    "TORCHVISION_ROI_BATCH_SIZE",
    "ROI_POSITIVE_FRACTION",
    "ROI_BOX_WEIGHTS",
    "ROI_OUTPUT_SIZE",
    "POOLING_METHODS",
    "ROI_ALIGN_SAMPLING_RATIO",
    "SEED_REPRESENTATION_SIZE",
    "TORCHVISION_REPRESENTATION_SIZE",
    "FAST_RCNN_SMOOTH_L1_BETA",
    "DETECTION_SCORE_THRESHOLD",
    "DETECTION_NMS_THRESHOLD",
    "DETECTIONS_PER_IMAGE",
    "DETECTION_MIN_SIZE",
    "RoiSample",
    "sample_rois",
    "pool_rois",
    "DetectionHead",
    "fast_rcnn_loss",
    "postprocess_detections",
]

#: A proposal whose best IoU with an object reaches 0.5 learns that object's class ...
ROI_FOREGROUND_IOU = 0.5
#: ... one whose best IoU is in [0, 0.5) is background (seed and torchvision; Fast R-CNN's paper
#: used [0.1, 0.5), leaving the proposals that touch no object out).
ROI_BACKGROUND_IOU = (0.0, 0.5)
#: Proposals per image in the head's loss: 128 in the seed (and the paper) ...
SEED_ROI_BATCH_SIZE = 128
#: ... 512 in torchvision ...
TORCHVISION_ROI_BATCH_SIZE = 512
#: ... at most a quarter of them objects (32 of 128).
ROI_POSITIVE_FRACTION = 0.25
#: The head's box coding weights (dx, dy, dw, dh): its targets are 10x / 5x the RPN's.
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Each proposal becomes a 7 x 7 grid of features (7 x 7 x 512 = 25,088 numbers with VGG16).
ROI_OUTPUT_SIZE = 7
#: ``"roi_align"``: torchvision's bilinear ``roi_align`` (what its Faster R-CNN uses);
#: ``"roi_pool"``: the course's max-pooling `course_lib.detection.roi.roi_pool` (Fast R-CNN's).
POOLING_METHODS = ("roi_align", "roi_pool")
#: ``roi_align`` averages 2 x 2 bilinear samples per bin (torchvision's ``MultiScaleRoIAlign``).
ROI_ALIGN_SAMPLING_RATIO = 2
#: Width of the head's two hidden layers: VGG16's 4,096 in the seed, 1,024 in torchvision.
SEED_REPRESENTATION_SIZE = 4096
TORCHVISION_REPRESENTATION_SIZE = 1024
#: Smooth L1 of the head's box loss turns linear at |d| = 1/9 (torchvision's ``fastrcnn_loss``).
FAST_RCNN_SMOOTH_L1_BETA = 1.0 / 9.0
#: Detections: class probabilities above 0.05 ...
DETECTION_SCORE_THRESHOLD = 0.05
#: ... NMS per class at IoU 0.5 ...
DETECTION_NMS_THRESHOLD = 0.5
#: ... at most 100 per image ...
DETECTIONS_PER_IMAGE = 100
#: ... and no (almost) empty boxes.
DETECTION_MIN_SIZE = 1e-2


# --------------------------------------------------------------------------- ROI sampling


class RoiSample(NamedTuple):
    """The proposals of one image the head learns from (`sample_rois`), in index order."""

    #: (R, 4) xyxy pixels: sampled proposals (ground-truth boxes included when added).
    boxes: Tensor
    #: (R,) int64: the class to predict, 0 for background.
    labels: Tensor
    #: (R, 4) encoded deltas (with ``box_weights``) to the matched object; 0 for background.
    box_targets: Tensor
    #: (R,) int64: the matched object's index, -1 for background.
    matched_gt: Tensor


def _check_targets_of_image(gt_boxes: Tensor, gt_labels: Tensor) -> None:
    _check_boxes(gt_boxes, "gt_boxes")
    _check_tensor(gt_labels, "gt_labels")
    if gt_labels.shape != gt_boxes.shape[:1]:
        raise ValueError(f"gt_labels must have shape ({gt_boxes.shape[0]},) to match gt_boxes, "
                         f"got {tuple(gt_labels.shape)}")
    if gt_labels.is_floating_point():
        raise TypeError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                batch_size: int = SEED_ROI_BATCH_SIZE, positive_fraction: float = ROI_POSITIVE_FRACTION,
                foreground_iou: float = ROI_FOREGROUND_IOU,
                background_iou: tuple[float, float] = ROI_BACKGROUND_IOU,
                box_weights: Sequence[float] = ROI_BOX_WEIGHTS, add_gt: bool = True,
                generator: torch.Generator | None = None) -> RoiSample:
    """Pick one image's training proposals for the head, with their classes and box targets.

    1. the ground-truth boxes join the proposals (``add_gt``): early in training the RPN
       proposes nothing good, and the head still sees perfect examples;
    2. each proposal takes the object it overlaps most (first on ties): foreground with that
       object's class when the IoU reaches ``foreground_iou``, background (0) when it lies in
       ``[background_iou[0], background_iou[1])``, ignored otherwise;
    3. `course_lib.detection.matching.sample_labels` keeps ``batch_size`` of them, at most
       ``batch_size * positive_fraction`` foreground (128 with at most 32 in the seed; torchvision
       draws 512), drawn from ``generator``; the result keeps the proposals' order, like
       torchvision's ``RoIHeads.select_training_samples``.

    proposals: (P, 4), gt_boxes: (G, 4), gt_labels: (G,) in 1..C-1  ->  `RoiSample`.
    No object: every proposal is background.
    """
    _check_boxes(proposals, "proposals")
    _check_targets_of_image(gt_boxes, gt_labels)
    _check_same_device(proposals=proposals, gt_boxes=gt_boxes, gt_labels=gt_labels)
    low, high = (float(v) for v in background_iou)
    if not 0 <= low <= high <= foreground_iou <= 1:
        raise ValueError(f"need 0 <= background_iou[0] <= background_iou[1] <= foreground_iou <= 1, got "
                         f"background_iou={tuple(background_iou)}, foreground_iou={foreground_iou}")
    dtype = proposals.dtype if proposals.is_floating_point() else torch.float32
    proposals, gt_boxes = proposals.detach().to(dtype), gt_boxes.to(dtype)
    if add_gt:
        proposals = torch.cat((proposals, gt_boxes))
    num_proposals, device = proposals.shape[0], proposals.device

    labels = torch.zeros(num_proposals, dtype=torch.int64, device=device)
    matched = torch.full((num_proposals,), -1, dtype=torch.int64, device=device)
    if gt_boxes.shape[0] > 0 and num_proposals > 0:
        best_iou, best_gt = box_iou(gt_boxes, proposals).max(dim=0)
        foreground = best_iou >= foreground_iou
        labels = torch.where(foreground, gt_labels.to(torch.int64)[best_gt], labels)
        labels[~foreground & ((best_iou < low) | (best_iou >= high))] = IGNORE
        matched = torch.where(foreground, best_gt, matched)

    sampled = sample_labels(labels, batch_size, positive_fraction, generator)
    keep = torch.nonzero(sampled != IGNORE).squeeze(1)  # index order, like torchvision
    boxes, labels, matched = proposals[keep], labels[keep], matched[keep]
    box_targets = torch.zeros_like(boxes)
    foreground = matched >= 0
    if bool(foreground.any()):
        box_targets[foreground] = encode_boxes(gt_boxes[matched[foreground]], boxes[foreground], box_weights)
    return RoiSample(boxes, labels, box_targets, matched)


# --------------------------------------------------------------------------- ROI pooling


def pool_rois(features: Tensor, boxes: Sequence[Tensor], spatial_scale: float, *,
              output_size: int = ROI_OUTPUT_SIZE, method: str = "roi_align",
              sampling_ratio: int = ROI_ALIGN_SAMPLING_RATIO) -> Tensor:
    """A fixed ``output_size x output_size`` grid of features for every box of every image.

    ``method="roi_align"``: ``torchvision.ops.roi_align`` (bilinear samples averaged per bin,
    ``aligned=False``, what torchvision's Faster R-CNN uses through ``MultiScaleRoIAlign``);
    ``"roi_pool"``: the course's `course_lib.detection.roi.roi_pool` (the maximum of each bin,
    Fast R-CNN's and the seed's; ``sampling_ratio`` is not used).

    features: (B, C, H, W); boxes: B tensors (R_i, 4) xyxy image pixels; spatial_scale:
    feature cells per pixel (1 / stride)  ->  (sum R_i, C, output_size, output_size), images in
    order. 128 VGG16 ROIs: (128, 512, 7, 7), flattened 25,088 inputs per ROI for the head.
    """
    _check_tensor(features, "features")
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence) or len(boxes) != features.shape[0]:
        raise ValueError(f"boxes must be a list of {features.shape[0]} (R_i, 4) tensors, one per image")
    _check_choice(method, POOLING_METHODS, "method")
    rois = rois_from_boxes([b.detach().to(features.dtype) for b in boxes])
    if method == "roi_pool":
        return roi_pool(features, rois, output_size, spatial_scale)
    return roi_align(features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                     aligned=False)


# --------------------------------------------------------------------------- the head


class DetectionHead(nn.Module):
    """Flatten -> fc6 -> ReLU -> fc7 -> ReLU, then class scores and per-class box deltas.

    ``num_classes`` counts the background. Parameter names are those of torchvision's
    ``TwoMLPHead`` (fc6, fc7) and ``FastRCNNPredictor`` (cls_score, bbox_pred), with torchvision's
    default initialisation. The seed's head: 512 channels, 7 x 7, representation 4,096
    (``nn.Linear(25088, 4096)``).
    """

    def __init__(self, in_channels: int, num_classes: int, pooled_size: int = ROI_OUTPUT_SIZE,
                 representation_size: int = TORCHVISION_REPRESENTATION_SIZE):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("pooled_size", pooled_size),
                            ("representation_size", representation_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be an int >= 2, got {num_classes!r}")
        self.in_features = in_channels * pooled_size * pooled_size
        self.num_classes = num_classes
        self.fc6 = nn.Linear(self.in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes)
        self.bbox_pred = nn.Linear(representation_size, num_classes * 4)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """pooled: (R, C, h, w) -> class_logits (R, num_classes), box_regression (R, num_classes * 4)."""
        _check_tensor(pooled, "pooled")
        if pooled.dim() < 2 or pooled.shape[1:].numel() != self.in_features:
            raise ValueError(f"pooled must have shape (R, C, h, w) with C * h * w = {self.in_features}, "
                             f"got {tuple(pooled.shape)}")
        x = pooled.flatten(start_dim=1)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        return self.cls_score(x), self.bbox_pred(x)


# --------------------------------------------------------------------------- loss


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor | Sequence[Tensor],
                   box_targets: Tensor | Sequence[Tensor],
                   beta: float = FAST_RCNN_SMOOTH_L1_BETA) -> tuple[Tensor, Tensor]:
    """The head's loss, torchvision's ``fastrcnn_loss``: (classifier, box regression).

    classifier: cross-entropy over all R sampled proposals (mean); box regression: smooth L1
    (``beta``) between the deltas predicted *for the true class* and the targets, summed over
    foreground proposals and divided by R (all sampled proposals, not only the foreground).

    class_logits: (R, K); box_regression: (R, K * 4); labels: (R,) in 0..K-1 and box_targets:
    (R, 4), or lists of per-image tensors (concatenated). R = 0 gives two zeros.
    """
    if not isinstance(labels, Tensor):
        labels = torch.cat(list(labels))
    if not isinstance(box_targets, Tensor):
        box_targets = torch.cat(list(box_targets))
    for name, value in (("class_logits", class_logits), ("box_regression", box_regression)):
        _check_tensor(value, name)
    if class_logits.dim() != 2 or box_regression.shape != (class_logits.shape[0], class_logits.shape[1] * 4):
        raise ValueError(f"class_logits must be (R, K) and box_regression (R, K * 4), got "
                         f"{tuple(class_logits.shape)} and {tuple(box_regression.shape)}")
    if labels.shape != class_logits.shape[:1] or box_targets.shape != (class_logits.shape[0], 4):
        raise ValueError(f"labels must be ({class_logits.shape[0]},) and box_targets ({class_logits.shape[0]}, 4), "
                         f"got {tuple(labels.shape)} and {tuple(box_targets.shape)}")
    _check_same_device(class_logits=class_logits, box_regression=box_regression, labels=labels,
                       box_targets=box_targets)
    num_rois = labels.numel()
    if num_rois == 0:
        zero = class_logits.sum() * 0 + box_regression.sum() * 0
        return zero, zero.clone()
    classifier = F.cross_entropy(class_logits, labels)
    foreground = torch.nonzero(labels > 0).squeeze(1)
    per_class = box_regression.reshape(num_rois, -1, 4)
    box_loss = F.smooth_l1_loss(per_class[foreground, labels[foreground]], box_targets[foreground],
                                beta=beta, reduction="sum")
    return classifier, box_loss / num_rois


# --------------------------------------------------------------------------- inference


def postprocess_detections(class_logits: Tensor, box_regression: Tensor, proposals: Sequence[Tensor],
                           image_size, *, score_threshold: float = DETECTION_SCORE_THRESHOLD,
                           nms_threshold: float = DETECTION_NMS_THRESHOLD,
                           detections_per_image: int = DETECTIONS_PER_IMAGE,
                           min_size: float = DETECTION_MIN_SIZE,
                           box_weights: Sequence[float] = ROI_BOX_WEIGHTS) -> list[dict[str, Tensor]]:
    """Final detections, torchvision's ``RoIHeads.postprocess_detections``.

    For every proposal and every object class: its box (the class's deltas decoded, clipped to
    the image) and its softmax probability. Background is dropped; then, per image, pairs with
    a probability above ``score_threshold``, boxes with both sides at least ``min_size``, NMS
    per class at ``nms_threshold`` and the ``detections_per_image`` best.

    class_logits: (R, K), box_regression: (R, K * 4), proposals: B tensors (R_i, 4) with
    sum R_i = R; image_size: (H, W) or one per image  ->  B dicts ``boxes`` (D, 4),
    ``scores`` (D,), ``labels`` (D,) int64 in 1..K-1, best first.
    """
    if isinstance(proposals, Tensor) or not isinstance(proposals, Sequence):
        raise ValueError("proposals must be a list of (R_i, 4) tensors, one per image")
    for i, p in enumerate(proposals):
        _check_boxes(p, f"proposals[{i}]")
    counts = [p.shape[0] for p in proposals]
    if class_logits.dim() != 2 or class_logits.shape[0] != sum(counts):
        raise ValueError(f"class_logits must have shape ({sum(counts)}, K) (one row per proposal), "
                         f"got {tuple(class_logits.shape)}")
    num_classes = class_logits.shape[1]
    if box_regression.shape != (class_logits.shape[0], num_classes * 4):
        raise ValueError(f"box_regression must have shape ({class_logits.shape[0]}, {num_classes * 4}), "
                         f"got {tuple(box_regression.shape)}")
    sizes = _image_sizes(image_size, len(proposals))

    anchors = torch.cat(list(proposals)).to(box_regression.dtype) if proposals else box_regression.new_zeros(0, 4)
    boxes_all = decode_boxes(box_regression.reshape(-1, num_classes, 4), anchors[:, None], box_weights)
    scores_all = F.softmax(class_logits, dim=-1)
    detections = []
    for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), sizes):  # per image
        boxes = clip_boxes(boxes, size)[:, 1:].reshape(-1, 4)  # drop the background column
        labels = torch.arange(1, num_classes, device=scores.device).expand(scores.shape[0], -1).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = scores > score_threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections
