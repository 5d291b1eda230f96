"""SSD: a single-shot detector with a grid of anchors per feature map, its loss and its inference.

The model follows the lesson: a small convolutional backbone, then a head that reduces the feature
map to a 4x4 grid (then 2x2 and 1x1 for the multi-scale version) with stride-2 convolutions stacked
on the backbone's last feature map, the original fastai lesson's design (the SSD paper instead reads
predictions off feature maps of several scales, two of them the backbone's own). At every grid cell,
for each of its ``k`` anchors, one 3x3 convolution predicts ``C + 1`` class scores (``C`` object
classes, the background at index 0) and another 4 box numbers;
`flatten_conv` lays them out as ``(B, anchors, C + 1)`` and ``(B, anchors, 4)``, anchors in the
row-major order of `course_lib.detection.anchors.grid_anchors`.

Coordinates: inside the model and the loss, boxes are (x1, y1, x2, y2) *normalised* to [0, 1] by
the image's width and height (names end in ``_norm``), like the anchors; targets and detections
are in pixels, as everywhere else in the course.

Two ways to turn the 4 box numbers of an anchor into a box (``box_coding``):

* ``"tanh"`` (the original lesson): ``tanh`` squashes each number into (-1, 1); the centre moves by
  at most half a grid cell and each side is scaled by ``1 + t / 2``, i.e. between 0.5x and 1.5x the
  anchor's side (not "twice as big": that would need ``1 + t``). The localization loss compares the
  decoded boxes with the ground truth directly (L1, as in the lesson).
* ``"deltas"`` (Faster R-CNN, SSD paper, torchvision): the numbers are the offsets
  ``(dx, dy, dw, dh)`` of `course_lib.detection.boxes.encode_boxes`, unbounded, with SSD's weights
  ``(10, 10, 5, 5)``; the loss compares them with the encoded ground truth (smooth L1).

Classification treats the background the lesson's way: the head outputs ``C + 1`` scores, but the
background column is dropped and each class gets its own sigmoid ("is it a circle?"), trained with
binary cross-entropy or with focal loss; an anchor is background when every class says no.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..shipped import missing_file_message, shipped_file
from .anchors import SSD_GRID_SIZES, SSD_RATIOS, SSD_ZOOMS, grid_anchors
from .boxes import box_iou, decode_boxes, encode_boxes
from .losses import focal_loss, smooth_l1_loss
from .matching import match_anchors, match_iou_matrix
from .suppression import batched_nms

__all__ = [
    "SSDConfig",
    "SSD",
    "StdConv",
    "OutConv",
    "flatten_conv",
    "small_backbone",
    "postprocess",
    "decode_ssd_boxes",
    "anchor_cell_sizes",
    "tanh_to_boxes",
    "SSD_BOX_WEIGHTS",
    "MATCH_IOU_THRESHOLD",
    "SSDLoss",
    "ssd_targets",
    "pad_targets",
    "match_anchors_batched",
    "gather_matches",
    "ssd_loss",
    "save_ssd",
    "load_ssd",
    "load_shapes_ssd",
    "SHAPES_SSD_PATH",
]

#: SSD's box-coding weights (the paper's "variances" 0.1, 0.1, 0.2, 0.2, inverted).
SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: The IoU given to padding rows of a batch of targets: below any real IoU, so they never match.
PADDING_IOU = -1.0
#: One matching threshold for the whole lesson (the original walkthrough's 0.5; its code used 0.4).
MATCH_IOU_THRESHOLD = 0.5
#: Initial probability of every class at every anchor: almost all anchors are background, so the
#: head starts by saying so (RetinaNet's prior, bias log(p / (1 - p)) ~ -4.6; the lesson used -3 and -4).
PRIOR_PROBABILITY = 0.01
#: Where smooth L1 turns from quadratic to linear: 1/9, as in Faster R-CNN's region proposal loss.
SMOOTH_L1_BETA = 1.0 / 9.0
BOX_CODINGS = ("tanh", "deltas")
CLASSIFICATION_LOSSES = ("bce", "focal")
#: Where `load_shapes_ssd` finds the course's trained shapes detector.
SHAPES_SSD_PATH = shipped_file("ssd_shapes.pt")


# --- the network ------------------------------------------------------------------------------


class StdConv(nn.Sequential):
    """3x3 convolution, BatchNorm, ReLU (and optional dropout): the head's building block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),  # BN shifts
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


def flatten_conv(x: torch.Tensor, k: int) -> torch.Tensor:
    """x: (B, k * D, H, W) conv output -> (B, H * W * k, D), anchors row-major, the k of a cell together."""
    if x.ndim != 4 or x.shape[1] % k != 0:
        raise ValueError(f"x must be (B, k * D, H, W) with k={k}, got shape {tuple(x.shape)}")
    batch, channels = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(batch, -1, channels // k)


class OutConv(nn.Module):
    """The two output convolutions of one grid: class scores (C + 1 per anchor) and 4 box numbers."""

    def __init__(self, k: int, in_channels: int, num_classes: int, prior_probability: float = PRIOR_PROBABILITY):
        super().__init__()
        self.k = k
        self.classes = nn.Conv2d(in_channels, num_classes * k, 3, padding=1)
        self.boxes = nn.Conv2d(in_channels, 4 * k, 3, padding=1)
        nn.init.constant_(self.classes.bias, -math.log((1 - prior_probability) / prior_probability))
        nn.init.zeros_(self.boxes.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, in_channels, H, W) -> (B, H*W*k, num_classes), (B, H*W*k, 4)."""
        return flatten_conv(self.classes(x), self.k), flatten_conv(self.boxes(x), self.k)


def small_backbone(stage_channels: Sequence[int], stage_depths: Sequence[int]) -> nn.Sequential:
    """A plain CNN: each stage halves H and W with a stride-2 StdConv, then adds stride-1 ones.

    ``stage_depths[i]`` convolutions in stage ``i`` (the first with stride 2). Cheap by design: the
    first stage, at the highest resolution, has a single convolution.
    """
    if len(stage_channels) != len(stage_depths) or min(stage_depths, default=1) < 1:
        raise ValueError(f"stage_channels and stage_depths must have one entry per stage and depths >= 1, "
                         f"got {tuple(stage_channels)} and {tuple(stage_depths)}")
    layers: list[nn.Module] = []
    previous = 3
    for channels, depth in zip(stage_channels, stage_depths):
        layers.append(StdConv(previous, channels, stride=2))
        layers += [StdConv(channels, channels, stride=1) for _ in range(depth - 1)]
        previous = channels
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class SSDConfig:
    """Everything that defines an SSD's shape; saved with its weights.

    The backbone halves the image once per stage; the head then halves once more for each grid, so
    ``image_size / 2**len(stage_channels) == 2 * grids[0]`` (64 px, 3 stages -> 8x8 features -> 4x4 grid).
    """

    num_classes: int = 4  # including the background (label 0)
    image_size: int = 64
    grids: tuple[int, ...] = SSD_GRID_SIZES
    zooms: tuple[float, ...] = SSD_ZOOMS
    ratios: tuple[tuple[float, float], ...] = SSD_RATIOS  # (width, height) factors
    stage_channels: tuple[int, ...] = (24, 48, 96)
    stage_depths: tuple[int, ...] = (1, 2, 2)
    head_channels: int = 96
    dropout: float = 0.0
    box_coding: str = "deltas"
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.box_coding not in BOX_CODINGS:
            raise ValueError(f"box_coding must be one of {BOX_CODINGS}, got {self.box_coding!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names must name all {self.num_classes} classes (background first), "
                             f"got {len(self.class_names)}")

    @property
    def anchors_per_cell(self) -> int:
        return len(self.zooms) * len(self.ratios)

    @property
    def num_anchors(self) -> int:
        return sum(g * g for g in self.grids) * self.anchors_per_cell

    @classmethod
    def from_dict(cls, values: dict) -> SSDConfig:
        values = dict(values)
        values["ratios"] = tuple(tuple(r) for r in values.get("ratios", cls.ratios))
        for key in ("grids", "zooms", "stage_channels", "stage_depths", "class_names"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def anchor_cell_sizes(grids: Sequence[int], anchors_per_cell: int) -> torch.Tensor:
    """(A,) the side of the grid cell each anchor belongs to, normalised (1 / grid), in anchor order."""
    return torch.cat([torch.full((g * g * anchors_per_cell,), 1.0 / g) for g in grids])


class SSD(nn.Module):
    """Backbone + multi-grid SSD head. ``forward(images)`` -> class logits (B, A, C + 1), box outputs (B, A, 4).

    ``images``: (B, 3, S, S) float with ``S = config.image_size``. The anchors (A, 4, normalised
    xyxy) and each anchor's cell size (A,) are buffers, so they follow the model's device.
    """

    def __init__(self, config: SSDConfig | None = None, backbone: nn.Module | None = None,
                 backbone_channels: int | None = None):
        super().__init__()
        self.config = config = config or SSDConfig()
        if backbone is None:
            backbone = small_backbone(config.stage_channels, config.stage_depths)
            backbone_channels = config.stage_channels[-1]
        elif backbone_channels is None:
            raise ValueError("backbone_channels (the channels of the custom backbone's output) is required")
        self.backbone = backbone
        k = config.anchors_per_cell
        self.neck = StdConv(backbone_channels, config.head_channels, stride=1, dropout=config.dropout)
        self.downsample = nn.ModuleList(
            StdConv(config.head_channels, config.head_channels, stride=2, dropout=config.dropout)
            for _ in config.grids)
        self.outputs = nn.ModuleList(OutConv(k, config.head_channels, config.num_classes) for _ in config.grids)
        anchors = grid_anchors(tuple(config.grids), tuple(config.zooms), tuple(tuple(r) for r in config.ratios))
        self.register_buffer("anchors", anchors, persistent=False)  # (A, 4) normalised xyxy
        self.register_buffer("cell_sizes", anchor_cell_sizes(config.grids, k), persistent=False)
        if self.anchors.shape[0] != config.num_anchors:
            raise ValueError(f"grid_anchors gave {self.anchors.shape[0]} anchors, expected {config.num_anchors}")
        self._check_grid_sizes()

    def _check_grid_sizes(self) -> None:
        size = self.config.image_size
        with torch.no_grad():
            was_training = self.training
            self.eval()
            x = self.neck(self.backbone(torch.zeros(1, 3, size, size, device=self.anchors.device)))
            got = []
            for down in self.downsample:
                x = down(x)
                got.append(x.shape[-1])
            self.train(was_training)
        if tuple(got) != tuple(self.config.grids):
            raise ValueError(f"with image_size={size} the head's feature maps are {got}, but grids="
                             f"{self.config.grids}; the backbone must output 2 * grids[0] = "
                             f"{2 * self.config.grids[0]} cells per side")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: (B, 3, S, S) -> class_logits (B, A, C + 1), box_outputs (B, A, 4)."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images must be (B, 3, {size}, {size}), got shape {tuple(images.shape)}")
        x = self.neck(self.backbone(images))
        class_logits, box_outputs = [], []
        for down, out in zip(self.downsample, self.outputs):
            x = down(x)
            c, b = out(x)
            class_logits.append(c)
            box_outputs.append(b)
        return torch.cat(class_logits, dim=1), torch.cat(box_outputs, dim=1)

    def decode(self, box_outputs: torch.Tensor) -> torch.Tensor:
        """box_outputs: (B, A, 4) -> predicted boxes (B, A, 4), normalised xyxy."""
        return decode_ssd_boxes(box_outputs, self.anchors, self.config.box_coding, self.cell_sizes)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
             **options) -> SSDLoss:
        """`ssd_loss` with this model's anchors, box coding and image size (``options``: its keywords)."""
        return ssd_loss(*outputs, targets, self.anchors, image_size=self.config.image_size,
                        box_coding=self.config.box_coding, cell_sizes=self.cell_sizes, **options)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float = 0.3, nms_threshold: float = 0.45,
               max_detections: int = 100, candidates_per_image: int = 400) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` (D, 4) in pixels, ``scores`` (D,), ``labels`` (D,) in 1..C.

        Every (anchor, class) pair whose sigmoid score passes ``score_threshold`` is a candidate
        (at most ``candidates_per_image``, best first); non-maximum suppression then runs per class.
        """
        was_training = self.training
        self.eval()
        try:
            class_logits, box_outputs = self(images)
        finally:
            self.train(was_training)
        return postprocess(class_logits, self.decode(box_outputs), self.config.image_size, score_threshold,
                           nms_threshold, max_detections, candidates_per_image)


# --- from activations to boxes ------------------------------------------------------------------


def tanh_to_boxes(activations: torch.Tensor, anchors_norm: torch.Tensor, cell_sizes: torch.Tensor) -> torch.Tensor:
    """The lesson's parameterisation. activations: (..., A, 4); anchors_norm: (A, 4) xyxy; cell_sizes: (A,).

    Returns (..., A, 4) normalised xyxy boxes: centres within half a cell of the anchor's centre,
    widths and heights between 0.5x and 1.5x the anchor's.
    """
    if activations.shape[-2:] != anchors_norm.shape or cell_sizes.shape != anchors_norm.shape[:1]:
        raise ValueError(f"activations (..., A, 4), anchors_norm (A, 4) and cell_sizes (A,) must agree, got "
                         f"{tuple(activations.shape)}, {tuple(anchors_norm.shape)}, {tuple(cell_sizes.shape)}")
    t = torch.tanh(activations)
    anchor_centers = (anchors_norm[:, :2] + anchors_norm[:, 2:]) / 2
    anchor_sizes = anchors_norm[:, 2:] - anchors_norm[:, :2]
    centers = anchor_centers + t[..., :2] / 2 * cell_sizes[:, None]
    sizes = anchor_sizes * (1 + t[..., 2:] / 2)
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)


def decode_ssd_boxes(box_outputs: torch.Tensor, anchors_norm: torch.Tensor, box_coding: str,
                     cell_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """box_outputs: (..., A, 4) -> boxes (..., A, 4) normalised xyxy, with either coding."""
    if box_coding == "tanh":
        if cell_sizes is None:
            raise ValueError("cell_sizes (A,) is required for box_coding='tanh'")
        return tanh_to_boxes(box_outputs, anchors_norm, cell_sizes)
    if box_coding == "deltas":
        return decode_boxes(box_outputs, anchors_norm, weights=SSD_BOX_WEIGHTS)  # anchors broadcast
    raise ValueError(f"box_coding must be one of {BOX_CODINGS}, got {box_coding!r}")


# --- the loss -------------------------------------------------------------------------------------


class SSDLoss(NamedTuple):
    """The loss of a batch and its parts (all scalars except ``num_positive``, an int)."""

    total: torch.Tensor
    localization: torch.Tensor
    classification: torch.Tensor
    num_positive: int


def _image_scale(image_size: int | Sequence[int], device: torch.device) -> torch.Tensor:
    """(4,) pixels -> normalised divisors (w, h, w, h)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return torch.tensor([width, height, width, height], dtype=torch.float32, device=device)


def ssd_targets(gt_boxes_norm: torch.Tensor, gt_labels: torch.Tensor, anchors_norm: torch.Tensor,
                iou_threshold: float = MATCH_IOU_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Match one image's objects to the anchors.

    gt_boxes_norm: (N, 4) normalised xyxy; gt_labels: (N,) in 1..C; anchors_norm: (A, 4).
    Returns ``anchor_labels`` (A,) with 0 for background and ``anchor_boxes`` (A, 4), the matched
    object's box for positive anchors (rows of background anchors are meaningless zeros).
    """
    if gt_boxes_norm.shape[0] == 0:  # no objects: every anchor is background
        background = torch.zeros(anchors_norm.shape[0], dtype=torch.int64, device=anchors_norm.device)
        return background, torch.zeros_like(anchors_norm)
    matched = match_anchors(gt_boxes_norm, anchors_norm, iou_threshold)  # (A,) object index or -1
    positive = matched >= 0
    safe = matched.clamp(min=0)
    anchor_labels = torch.where(positive, gt_labels[safe], torch.zeros_like(matched))
    anchor_boxes = torch.where(positive[:, None], gt_boxes_norm[safe], torch.zeros_like(anchors_norm))
    return anchor_labels, anchor_boxes


def pad_targets(targets: Sequence[dict[str, torch.Tensor]], device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B targets with N_i objects -> boxes (B, G, 4), labels (B, G), valid (B, G) bool, G = max N_i.

    Padding rows are zero boxes with label 0 and ``valid`` False.
    """
    from torch.nn.utils.rnn import pad_sequence

    if len(targets) == 0:
        raise ValueError("targets must hold at least one image's dict, got none")
    boxes = pad_sequence([t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].to(device, torch.int64).reshape(-1) for t in targets], batch_first=True)
    counts = torch.tensor([t["labels"].numel() for t in targets], device=boxes.device)
    valid = torch.arange(boxes.shape[1], device=boxes.device)[None, :] < counts[:, None]
    return boxes, labels, valid


def match_anchors_batched(gt_boxes: torch.Tensor, gt_valid: torch.Tensor, anchors: torch.Tensor,
                          iou_threshold: float = MATCH_IOU_THRESHOLD) -> torch.Tensor:
    """`match_anchors` for a whole padded batch at once: the same rule, no loop over images.

    gt_boxes: (B, G, 4) xyxy, gt_valid: (B, G) bool (False = padding), anchors: (A, 4)
    -> (B, A) int64: object index or -1 (background). The rule is `match_iou_matrix`, the very
    function `match_anchors` calls; padding rows get IoU -1, so they never match and force nothing.
    """
    batch, num_gt = gt_valid.shape
    if gt_boxes.shape != (batch, num_gt, 4):
        raise ValueError(f"gt_boxes must be (B, G, 4) = ({batch}, {num_gt}, 4) like gt_valid (B, G), "
                         f"got {tuple(gt_boxes.shape)}")
    if num_gt == 0:
        return torch.full((batch, anchors.shape[0]), -1, dtype=torch.int64, device=anchors.device)
    ious = box_iou(gt_boxes.reshape(-1, 4), anchors).reshape(batch, num_gt, -1)  # (B, G, A)
    ious = ious.masked_fill(~gt_valid[..., None], PADDING_IOU)
    return match_iou_matrix(ious, iou_threshold)


def gather_matches(matches: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """matches (B, A), gt_boxes (B, G, 4), gt_labels (B, G) -> anchor labels (B, A) (0 background), boxes (B, A, 4)."""
    positive = matches >= 0
    if gt_labels.shape[1] == 0:
        return torch.zeros_like(matches), torch.zeros(*matches.shape, 4, device=matches.device)
    index = matches.clamp(min=0)
    labels = torch.where(positive, gt_labels.gather(1, index), torch.zeros_like(matches))
    boxes = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
    return labels, torch.where(positive[..., None], boxes, torch.zeros_like(boxes))


def ssd_loss(
    class_logits: torch.Tensor,
    box_outputs: torch.Tensor,
    targets: Sequence[dict[str, torch.Tensor]],
    anchors_norm: torch.Tensor,
    *,
    image_size: int | Sequence[int],
    classification: str = "focal",
    box_coding: str = "deltas",
    cell_sizes: torch.Tensor | None = None,
    iou_threshold: float = MATCH_IOU_THRESHOLD,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_weight: float = 1.0,
) -> SSDLoss:
    """SSD loss of a batch: localization on matched anchors + per-class sigmoid classification.

    class_logits: (B, A, C + 1), column 0 the background (dropped); box_outputs: (B, A, 4);
    targets: B dicts with ``boxes`` (N, 4) in pixels and ``labels`` (N,) in 1..C; anchors_norm: (A, 4).

    Each image's objects are matched to the anchors with `match_anchors`' rule (every object gets
    its best anchor, other anchors need IoU >= ``iou_threshold``), for the whole batch at once
    (`match_anchors_batched`). Localization: L1 between decoded and true
    boxes (``"tanh"``) or smooth L1 between predicted and encoded offsets (``"deltas"``), on
    positive anchors only. Classification over all anchors and classes: binary cross-entropy
    (``"bce"``) or focal loss (``"focal"``, ``alpha`` weighting the positives). Both are sums
    divided by the number of positive anchors in the batch (at least 1).
    """
    if classification not in CLASSIFICATION_LOSSES:
        raise ValueError(f"classification must be one of {CLASSIFICATION_LOSSES}, got {classification!r}")
    if box_coding not in BOX_CODINGS:
        raise ValueError(f"box_coding must be one of {BOX_CODINGS}, got {box_coding!r}")
    if class_logits.ndim != 3 or box_outputs.shape != (*class_logits.shape[:2], 4):
        raise ValueError(f"class_logits must be (B, A, C + 1) and box_outputs (B, A, 4), got "
                         f"{tuple(class_logits.shape)} and {tuple(box_outputs.shape)}")
    batch, num_anchors, num_scores = class_logits.shape
    if anchors_norm.shape != (num_anchors, 4):
        raise ValueError(f"anchors_norm must be ({num_anchors}, 4), got {tuple(anchors_norm.shape)}")
    if len(targets) != batch:
        raise ValueError(f"targets must hold one dict per image ({batch}), got {len(targets)}")

    scale = _image_scale(image_size, class_logits.device)
    gt_boxes, gt_labels, gt_valid = pad_targets(targets, class_logits.device)
    matches = match_anchors_batched(gt_boxes / scale, gt_valid, anchors_norm, iou_threshold)  # (B, A)
    anchor_labels, anchor_boxes = gather_matches(matches, gt_boxes / scale, gt_labels)
    positive = anchor_labels > 0
    num_positive = int(positive.sum())
    normaliser = max(num_positive, 1)

    if box_coding == "tanh":
        predicted = decode_ssd_boxes(box_outputs, anchors_norm, "tanh", cell_sizes)[positive]
        wanted = anchor_boxes[positive]
        localization = F.l1_loss(predicted, wanted, reduction="sum")
    else:
        anchors_of_positives = anchors_norm.expand(batch, -1, -1)[positive]
        wanted = encode_boxes(anchor_boxes[positive], anchors_of_positives, weights=SSD_BOX_WEIGHTS)
        localization = smooth_l1_loss(box_outputs[positive], wanted, beta=SMOOTH_L1_BETA, reduction="sum")

    # One-hot over C + 1 columns, then drop the background column: background anchors are all zeros.
    one_hot = F.one_hot(anchor_labels, num_scores)[..., 1:].to(class_logits.dtype)
    logits = class_logits[..., 1:]
    if classification == "bce":
        class_loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="sum")
    else:
        class_loss = focal_loss(logits, one_hot, alpha=alpha, gamma=gamma, reduction="sum")

    localization = box_weight * localization / normaliser
    class_loss = class_loss / normaliser
    return SSDLoss(localization + class_loss, localization, class_loss, num_positive)


# --- inference ----------------------------------------------------------------------------------


def postprocess(class_logits: torch.Tensor, boxes_norm: torch.Tensor, image_size: int | Sequence[int],
                score_threshold: float = 0.3, nms_threshold: float = 0.45, max_detections: int = 100,
                candidates_per_image: int = 400) -> list[dict[str, torch.Tensor]]:
    """class_logits: (B, A, C + 1), boxes_norm: (B, A, 4) -> per image ``boxes`` (pixels), ``scores``, ``labels``."""
    scale = _image_scale(image_size, boxes_norm.device)
    scores_all = torch.sigmoid(class_logits[..., 1:])  # (B, A, C): one sigmoid per class
    num_classes = scores_all.shape[-1]
    boxes_all = (boxes_norm.clamp(0.0, 1.0) * scale)
    detections = []
    for scores, boxes in zip(scores_all, boxes_all):  # per image: the number of candidates differs
        flat = scores.flatten()  # (A * C,), anchor-major
        keep = (flat > score_threshold).nonzero().squeeze(1)
        keep = keep[flat[keep].argsort(descending=True)[:candidates_per_image]]
        anchor_index, class_index = keep // num_classes, keep % num_classes
        candidate_boxes, candidate_scores = boxes[anchor_index], flat[keep]
        kept = batched_nms(candidate_boxes, candidate_scores, class_index, nms_threshold)[:max_detections]
        detections.append({"boxes": candidate_boxes[kept], "scores": candidate_scores[kept],
                           "labels": class_index[kept] + 1})
    return detections


# --- saving and loading ---------------------------------------------------------------------------


def save_ssd(model: SSD, path: str | Path, **extra) -> None:
    """Save the weights and config (plus any ``extra`` metadata, e.g. metrics) to ``path``."""
    state = {"config": asdict(model.config), "state_dict": model.state_dict(), **extra}
    torch.save(state, Path(path))


def load_ssd(path: str | Path, map_location: str | torch.device = "cpu") -> SSD:
    """An SSD saved by `save_ssd`, in eval mode; its metadata is in ``model.metadata``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SSD weights at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    model = SSD(SSDConfig.from_dict(state.pop("config")))
    model.load_state_dict(state.pop("state_dict"))
    model.metadata = state
    return model.to(map_location).eval()


def load_shapes_ssd(device: str | torch.device = "cpu", path: str | Path | None = None) -> SSD:
    """The course's trained shapes detector (``data/ssd_shapes.pt``), in eval mode on ``device``."""
    searched, path = path is None, Path(path) if path is not None else SHAPES_SSD_PATH
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path, "the trained shapes SSD",
                                                     "python -m course_lib.detection.train_shapes_ssd", searched))
    return load_ssd(path, map_location=device)
