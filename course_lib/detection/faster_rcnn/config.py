"""Everything that defines a `TwoStageDetector`, in one frozen dataclass saved with its weights.

The defaults suit the course's synthetic shapes (64 x 64 images, objects of 9 to 32 pixels, three
classes plus the background): a small CNN of stride 4 (a 16 x 16 feature map), anchors of 8 to 48
pixels, and proposal and sample counts scaled down to a 64-pixel image. `FasterRCNNConfig.seed_vgg16`
gives the lesson's 800 x 800 VGG16 walkthrough with the source's numbers, and `TORCHVISION_SETTINGS`
torchvision's ``FasterRCNN`` choices.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ...data.shapes import CLASSES as SHAPES_CLASSES
from ..anchors import ANCHOR_CONVENTIONS, RPN_RATIOS, RPN_SCALES
from .region_proposals import (
    SEED_TEST_PROPOSALS,
    SEED_TRAIN_PROPOSALS,
    TORCHVISION_TEST_PROPOSALS,
    TORCHVISION_TRAIN_PROPOSALS,
    ProposalSettings,
)
from .roi_heads import (
    POOLING_METHODS,
    ROI_ALIGN_SAMPLING_RATIO,
    ROI_BACKGROUND_IOU,
    ROI_FOREGROUND_IOU,
    ROI_OUTPUT_SIZE,
    ROI_POSITIVE_FRACTION,
    SEED_REPRESENTATION_SIZE,
    SEED_ROI_BATCH_SIZE,
    TORCHVISION_REPRESENTATION_SIZE,
    TORCHVISION_ROI_BATCH_SIZE,
)
from .rpn import (
    OBJECTNESS_KINDS,
    RPN_BATCH_SIZE,
    RPN_LOSS_NORMALIZATIONS,
    RPN_NEGATIVE_IOU,
    RPN_POSITIVE_FRACTION,
    RPN_POSITIVE_IOU,
)

__all__ = ["BACKBONES", "VGG16_CHANNELS", "VGG16_STRIDE", "FasterRCNNConfig", "TORCHVISION_SETTINGS",
           "SEED_SETTINGS"]

#: ``"small"``: the course's small CNN built from ``stage_channels`` / ``stage_depths``;
#: ``"vgg16"``: torchvision's VGG16 ``features`` without the last max-pool (stride 16, 512
#: channels); ``"custom"``: any module given to the detector (its stride and channels in the config).
BACKBONES = ("small", "vgg16", "custom")
VGG16_STRIDE = 16
VGG16_CHANNELS = 512

#: torchvision's ``FasterRCNN`` choices (one feature level), for ``dataclasses.replace(config, **...)``.
TORCHVISION_SETTINGS: dict[str, Any] = {
    "anchor_convention": "torchvision",
    "objectness": "sigmoid",
    "rpn_ignore_outside": False,
    "rpn_loss": "torchvision",
    "train_proposals": TORCHVISION_TRAIN_PROPOSALS,
    "test_proposals": TORCHVISION_TEST_PROPOSALS,
    "roi_batch_size": TORCHVISION_ROI_BATCH_SIZE,
    "pooling": "roi_align",
    "representation_size": TORCHVISION_REPRESENTATION_SIZE,
}
#: The lesson's source: anchors centred in their cells, two-way objectness, anchors crossing the
#: border ignored, lambda = 10, 12,000 -> 2,000 / 6,000 -> 300 proposals, 128 ROIs, ROI pooling.
SEED_SETTINGS: dict[str, Any] = {
    "anchor_convention": "seed",
    "objectness": "softmax",
    "rpn_ignore_outside": True,
    "rpn_loss": "seed",
    "train_proposals": SEED_TRAIN_PROPOSALS,
    "test_proposals": SEED_TEST_PROPOSALS,
    "roi_batch_size": SEED_ROI_BATCH_SIZE,
    "pooling": "roi_pool",
    "representation_size": SEED_REPRESENTATION_SIZE,
}


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class FasterRCNNConfig:
    """A two-stage detector's shape and settings (the defaults: the course's shapes data)."""

    #: classes including the background (label 0): shapes have circle, square, triangle.
    num_classes: int = len(SHAPES_CLASSES)
    class_names: tuple[str, ...] = SHAPES_CLASSES

    # backbone: its output has `backbone_channels` channels, one cell per `stride` pixels.
    backbone: str = "small"
    stage_channels: tuple[int, ...] = (32, 64)
    stage_depths: tuple[int, ...] = (1, 4)
    backbone_channels: int = 64
    stride: int = 4

    # anchors (`rpn_anchors`): sizes are scales x stride, here 8, 12, 16, 24, 32, 48 pixels.
    anchor_ratios: tuple[float, ...] = RPN_RATIOS
    anchor_scales: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
    anchor_convention: str = "torchvision"

    # region proposal network
    objectness: str = "sigmoid"
    rpn_positive_iou: float = RPN_POSITIVE_IOU
    rpn_negative_iou: float = RPN_NEGATIVE_IOU
    rpn_ignore_outside: bool = False
    rpn_batch_size: int = RPN_BATCH_SIZE
    rpn_positive_fraction: float = RPN_POSITIVE_FRACTION
    rpn_loss: str = "torchvision"
    #: 4,608 anchors on a 64-pixel image: 1,000 best -> 300 proposals while training ...
    train_proposals: ProposalSettings = ProposalSettings(1_000, 300)
    #: ... 500 -> 100 at test time.
    test_proposals: ProposalSettings = ProposalSettings(500, 100)

    # second stage
    roi_batch_size: int = 64
    roi_positive_fraction: float = ROI_POSITIVE_FRACTION
    roi_foreground_iou: float = ROI_FOREGROUND_IOU
    roi_background_iou: tuple[float, float] = ROI_BACKGROUND_IOU
    pooling: str = "roi_align"
    pooled_size: int = ROI_OUTPUT_SIZE
    sampling_ratio: int = ROI_ALIGN_SAMPLING_RATIO
    representation_size: int = 256

    # detections (torchvision's defaults)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100

    #: seeds the model's own generator for the RPN and ROI samples.
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int(self.num_classes, "num_classes")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names must name all {self.num_classes} classes (background first), "
                             f"got {len(self.class_names)}")
        for name, choices in (("backbone", BACKBONES), ("anchor_convention", ANCHOR_CONVENTIONS),
                              ("objectness", OBJECTNESS_KINDS), ("rpn_loss", RPN_LOSS_NORMALIZATIONS),
                              ("pooling", POOLING_METHODS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("backbone_channels", "stride", "rpn_batch_size", "roi_batch_size", "pooled_size",
                     "sampling_ratio", "representation_size", "detections_per_image"):
            _positive_int(getattr(self, name), name)
        for name in ("train_proposals", "test_proposals"):
            if not isinstance(getattr(self, name), ProposalSettings):
                raise TypeError(f"{name} must be a ProposalSettings, got {type(getattr(self, name)).__name__}")
        if self.backbone == "small":
            if len(self.stage_channels) != len(self.stage_depths) or not self.stage_channels:
                raise ValueError(f"stage_channels and stage_depths need one entry per stage, got "
                                 f"{self.stage_channels} and {self.stage_depths}")
            expected = (self.stage_channels[-1], 2 ** len(self.stage_channels))
            if (self.backbone_channels, self.stride) != expected:
                raise ValueError(f"the small backbone gives {expected[0]} channels at stride {expected[1]}; "
                                 f"got backbone_channels={self.backbone_channels}, stride={self.stride}")
        if self.backbone == "vgg16" and (self.backbone_channels, self.stride) != (VGG16_CHANNELS, VGG16_STRIDE):
            raise ValueError(f"VGG16 features have {VGG16_CHANNELS} channels at stride {VGG16_STRIDE}; got "
                             f"backbone_channels={self.backbone_channels}, stride={self.stride}")

    @property
    def anchors_per_location(self) -> int:
        """Anchors at each feature-map cell: ratios x scales (9 in the lesson)."""
        return len(self.anchor_ratios) * len(self.anchor_scales)

    @property
    def anchor_sizes(self) -> tuple[float, ...]:
        """Anchor sizes in pixels (square root of the area): scales x stride."""
        return tuple(s * self.stride for s in self.anchor_scales)

    def replace(self, **changes) -> FasterRCNNConfig:
        """A copy with some fields changed: ``config.replace(**TORCHVISION_SETTINGS)``."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (what `save_faster_rcnn` stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FasterRCNNConfig:
        """Inverse of `to_dict` (lists become tuples, proposal settings their dataclass)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown FasterRCNNConfig fields: {sorted(unknown)}")
        values = dict(values)
        for key, value in values.items():
            if key in ("train_proposals", "test_proposals") and isinstance(value, dict):
                values[key] = ProposalSettings(**value)
            elif isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)

    @classmethod
    def seed_vgg16(cls, num_classes: int = 2, class_names: tuple[str, ...] = (), **changes) -> FasterRCNNConfig:
        """The lesson's walkthrough: VGG16 on an 800 x 800 image (a 50 x 50 map, 22,500 anchors of
        128, 256, 512 pixels), with every setting of the source (`SEED_SETTINGS`). The source
        detects one class (helmets) besides the background: ``num_classes=2``."""
        values = {"num_classes": num_classes, "class_names": class_names, "backbone": "vgg16",
                  "stage_channels": (), "stage_depths": (), "backbone_channels": VGG16_CHANNELS,
                  "stride": VGG16_STRIDE, "anchor_ratios": RPN_RATIOS, "anchor_scales": RPN_SCALES,
                  **SEED_SETTINGS}
        values.update(changes)
        return cls(**values)
