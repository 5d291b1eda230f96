"""Faster R-CNN assembled: backbone -> RPN -> proposals -> (ROI sampling) -> ROI pooling -> head.

`TwoStageDetector` speaks torchvision's language: in ``train()`` mode ``model(images, targets)``
returns the four losses of torchvision's ``FasterRCNN``; in ``eval()`` mode ``model(images)``
returns one dict of ``boxes``, ``labels``, ``scores`` per image. Targets: one dict per image with
``boxes`` (N, 4) xyxy pixels and ``labels`` (N,) in 1..num_classes-1 (0 is the background).

`TwoStageDetector.stages` runs the same pass and keeps every intermediate result (features,
anchors, RPN outputs, proposals and their scores, RPN targets and samples, sampled ROIs, pooled
features, head outputs), so that a lesson can look at each step without re-implementing it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..anchors import rpn_anchors
from .backbones import build_backbone
from .config import FasterRCNNConfig
from .region_proposals import decode_proposals, filter_proposals
from .roi_heads import DetectionHead, RoiSample, fast_rcnn_loss, pool_rois, postprocess_detections, sample_rois
from .rpn import RPNHead, RPNOutput, RPNTargets, rpn_loss, rpn_targets, sample_anchors

__all__ = ["DetectorStages", "TwoStageDetector", "save_faster_rcnn", "load_faster_rcnn",
           "state_dict_from_torchvision", "LOSS_NAMES"]

#: The loss dict's keys, torchvision's: RPN objectness and boxes, then the head's class and boxes.
LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass
class DetectorStages:
    """Every intermediate result of one pass of `TwoStageDetector` (B images, A anchors)."""

    #: (B, 3, H, W) the images as the backbone saw them, and (H, W).
    images: Tensor
    image_size: tuple[int, int]
    #: (B, C, H / stride, W / stride).
    features: Tensor
    #: (A, 4) xyxy pixels, in the order of the RPN's rows.
    anchors: Tensor
    #: the RPN head's deltas (B, A, 4) and objectness (B, A) or (B, A, 2).
    rpn: RPNOutput
    #: per image: proposals (P_i, 4), best first, and their objectness probabilities (P_i,).
    proposals: list[Tensor]
    proposal_scores: list[Tensor]
    #: per image, the boxes that were pooled: sampled ROIs (training) or all proposals.
    roi_boxes: list[Tensor]
    #: (R, C, s, s) pooled features of all roi_boxes, images in order.
    pooled: Tensor
    #: head outputs (R, K) and (R, K * 4).
    class_logits: Tensor
    box_regression: Tensor
    #: training only: per image RPN targets, the sampled RPN labels (B, A), and the sampled ROIs.
    rpn_targets: list[RPNTargets] | None = None
    rpn_sampled_labels: Tensor | None = None
    rois: list[RoiSample] | None = None
    #: training: the four losses (`LOSS_NAMES`); evaluation: the detections.
    losses: dict[str, Tensor] | None = None
    detections: list[dict[str, Tensor]] | None = None


def _check_targets(targets, batch: int, num_classes: int) -> list[dict[str, Tensor]]:
    if targets is None:
        raise ValueError("targets are needed in training: one dict with 'boxes' and 'labels' per image")
    if isinstance(targets, dict) or not isinstance(targets, Sequence) or len(targets) != batch:
        raise ValueError(f"targets must be a list of {batch} dicts (one per image), got {type(targets).__name__}"
                         + (f" of length {len(targets)}" if isinstance(targets, Sequence) else ""))
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' (N, 4) and 'labels' (N,)")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be a tensor of shape (N, 4), got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.is_floating_point():
            raise ValueError(f"targets[{i}]['labels'] must be an integer tensor of shape ({boxes.shape[0]},)")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in 1..{num_classes - 1} (0 is the background), "
                             f"got {labels.tolist()}")
        if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):  # an empty box has no encoding
            raise ValueError(f"targets[{i}]['boxes'] must be (x1, y1, x2, y2) with x1 < x2 and y1 < y2 "
                             f"(positive width and height)")
    return list(targets)


class TwoStageDetector(nn.Module):
    """Faster R-CNN: a backbone, a region proposal network and a Fast R-CNN head.

    ``config`` (`FasterRCNNConfig`, default: the shapes data) says everything but a custom
    backbone: pass any module mapping (B, 3, H, W) to (B, config.backbone_channels, H / stride,
    W / stride) as ``backbone`` (with ``config.backbone="custom"``). A module passed with a
    "small" or "vgg16" config (e.g. a pretrained VGG16 from `vgg16_backbone`) replaces the one
    the config would build and must have its structure (so that `load_faster_rcnn` can rebuild it).

    Submodules: ``backbone``, ``rpn_head`` (`RPNHead`), ``detection_head`` (`DetectionHead`).
    The ROI and anchor samples are drawn from the model's own generator (seeded by
    ``config.seed``; `reseed` restarts it) unless a ``generator`` is passed.
    """

    def __init__(self, config: FasterRCNNConfig | None = None, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config = config or FasterRCNNConfig()
        if not isinstance(config, FasterRCNNConfig):
            raise TypeError(f"config must be a FasterRCNNConfig, got {type(config).__name__}")
        if backbone is not None and not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.rpn_head = RPNHead(config.backbone_channels, config.anchors_per_location, config.objectness)
        self.detection_head = DetectionHead(config.backbone_channels, config.num_classes, config.pooled_size,
                                            config.representation_size)
        self.generator = torch.Generator().manual_seed(config.seed)

    def reseed(self, seed: int) -> None:
        """Restart the model's sampling generator (same seed, same samples)."""
        self.generator.manual_seed(seed)

    # -- the pieces ---------------------------------------------------------------------------

    @staticmethod
    def _as_batch(images) -> Tensor:
        if isinstance(images, (list, tuple)):
            if not images or not all(isinstance(i, Tensor) and i.dim() == 3 for i in images):
                raise ValueError("images must be a (B, 3, H, W) tensor or a non-empty list of (3, H, W) tensors")
            if len({tuple(i.shape) for i in images}) != 1:
                raise ValueError(f"images in a list must have one size, got {sorted({tuple(i.shape) for i in images})}")
            images = torch.stack(list(images))
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor or a list of (3, H, W) tensors, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (e.g. in [0, 1]), got {images.dtype}")
        return images

    def anchors(self, feature_size: tuple[int, int], device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
        """(A, 4) anchors for a feature map of ``feature_size = (h, w)``, in the RPN's row order."""
        c = self.config
        return rpn_anchors(tuple(feature_size), c.stride, c.anchor_ratios, c.anchor_scales,
                           convention=c.anchor_convention, device=device, dtype=dtype)

    def features(self, images: Tensor) -> Tensor:
        """The backbone's output (B, C, h, w), checked against the config's channels and stride."""
        features = self.backbone(images)
        c, (height, width) = self.config, images.shape[-2:]
        if (not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != c.backbone_channels
                or abs(features.shape[2] - height / c.stride) >= 1 or abs(features.shape[3] - width / c.stride) >= 1):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"the backbone gave {shape} for images of {height} x {width}; the config expects "
                             f"(B, {c.backbone_channels}, ~{height / c.stride:g}, ~{width / c.stride:g}) "
                             f"(backbone_channels={c.backbone_channels}, stride={c.stride})")
        return features

    # -- one pass -----------------------------------------------------------------------------

    def stages(self, images, targets: Sequence[dict[str, Tensor]] | None = None, *, training: bool | None = None,
               generator: torch.Generator | None = None, score_threshold: float | None = None,
               nms_threshold: float | None = None, max_detections: int | None = None) -> DetectorStages:
        """Run the detector and keep every intermediate result (`DetectorStages`).

        ``training`` (default: ``self.training``) picks the pipeline independently of the layers'
        mode: True samples anchors and ROIs from ``targets`` and computes the losses (training
        proposal counts); False keeps all proposals and produces detections (test counts; the
        ``score_threshold``, ``nms_threshold`` and ``max_detections`` override the config's).
        So ``model.eval(); model.stages(x, y, training=True)`` shows the training targets of a
        trained model without touching its BatchNorm statistics.
        """
        c = self.config
        training = self.training if training is None else training
        generator = self.generator if generator is None else generator
        images = self._as_batch(images)
        batch, image_size = images.shape[0], (int(images.shape[-2]), int(images.shape[-1]))
        if training:
            targets = _check_targets(targets, batch, c.num_classes)

        features = self.features(images)
        anchor_dtype = features.dtype if features.dtype == torch.float64 else torch.float32
        anchors = self.anchors(features.shape[-2:], features.device, anchor_dtype)
        rpn = self.rpn_head(features)
        decoded = decode_proposals(rpn.deltas.detach(), anchors)  # Faster R-CNN: no gradient through proposals
        settings = c.train_proposals if training else c.test_proposals
        proposals, proposal_scores = filter_proposals(decoded, rpn.objectness, image_size, **asdict(settings))

        stages_rpn_targets = sampled_labels = rois = losses = detections = None
        if training:
            gt_boxes = [t["boxes"].to(features.device, anchor_dtype) for t in targets]
            gt_labels = [t["labels"].to(features.device) for t in targets]
            stages_rpn_targets = [rpn_targets(anchors, boxes, positive_iou=c.rpn_positive_iou,
                                              negative_iou=c.rpn_negative_iou,
                                              ignore_outside=image_size if c.rpn_ignore_outside else None)
                                  for boxes in gt_boxes]  # per image: objects differ
            labels = torch.stack([t.labels for t in stages_rpn_targets])
            box_targets = torch.stack([t.box_targets for t in stages_rpn_targets])
            # All images' anchor samples, then all images' ROI samples: torchvision's order of draws.
            sampled_labels = sample_anchors(labels, c.rpn_batch_size, c.rpn_positive_fraction, generator)
            rpn_losses = rpn_loss(rpn.objectness, rpn.deltas, sampled_labels, box_targets.to(rpn.deltas.dtype),
                                  normalization=c.rpn_loss)
            rois = [sample_rois(p, boxes, labels_i, batch_size=c.roi_batch_size,
                                positive_fraction=c.roi_positive_fraction, foreground_iou=c.roi_foreground_iou,
                                background_iou=c.roi_background_iou, generator=generator)
                    for p, boxes, labels_i in zip(proposals, gt_boxes, gt_labels)]
            roi_boxes = [r.boxes for r in rois]
        else:
            roi_boxes = list(proposals)

        pooled = pool_rois(features, roi_boxes, 1.0 / c.stride, output_size=c.pooled_size, method=c.pooling,
                           sampling_ratio=c.sampling_ratio)
        class_logits, box_regression = self.detection_head(pooled)

        if training:
            classifier, box_loss = fast_rcnn_loss(class_logits, box_regression, [r.labels for r in rois],
                                                  [r.box_targets.to(box_regression.dtype) for r in rois])
            losses = dict(zip(LOSS_NAMES, (rpn_losses.objectness, rpn_losses.box, classifier, box_loss)))
        else:
            detections = postprocess_detections(
                class_logits, box_regression, roi_boxes, image_size,
                score_threshold=c.score_threshold if score_threshold is None else score_threshold,
                nms_threshold=c.nms_threshold if nms_threshold is None else nms_threshold,
                detections_per_image=c.detections_per_image if max_detections is None else max_detections)
        return DetectorStages(images, image_size, features, anchors, rpn, list(proposals), list(proposal_scores),
                              roi_boxes, pooled, class_logits, box_regression, stages_rpn_targets, sampled_labels,
                              rois, losses, detections)

    def forward(self, images, targets: Sequence[dict[str, Tensor]] | None = None, *,
                generator: torch.Generator | None = None):
        """``train()`` mode: the loss dict (`LOSS_NAMES`); ``eval()`` mode: one dict of ``boxes``
        (D, 4), ``labels`` (D,), ``scores`` (D,) per image. ``images``: (B, 3, H, W) or a list of
        same-size (3, H, W) tensors."""
        result = self.stages(images, targets, generator=generator)
        return result.losses if self.training else result.detections

    @torch.no_grad()
    def detect(self, images, score_threshold: float | None = None, nms_threshold: float | None = None,
               max_detections: int | None = None) -> list[dict[str, Tensor]]:
        """Detections in eval mode (the mode is restored), with optional overrides of the config's
        thresholds: what `course_lib.detection.evaluate.predict` calls."""
        was_training = self.training
        self.eval()
        try:
            return self.stages(images, training=False, score_threshold=score_threshold,
                               nms_threshold=nms_threshold, max_detections=max_detections).detections
        finally:
            self.train(was_training)


# --------------------------------------------------------------------------- saving and loading


def save_faster_rcnn(model: TwoStageDetector, path: str | Path, **extra) -> None:
    """Save the config and the weights (plus any ``extra`` metadata, e.g. metrics) in one file."""
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), **extra}, Path(path))


def load_faster_rcnn(path: str | Path, map_location: str | torch.device = "cpu",
                     backbone: nn.Module | None = None) -> TwoStageDetector:
    """A detector saved by `save_faster_rcnn`, in eval mode on ``map_location``; its metadata is in
    ``model.metadata``. A "custom" backbone must be passed (its weights come from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Faster R-CNN weights at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    model = TwoStageDetector(FasterRCNNConfig.from_dict(state.pop("config")), backbone=backbone)
    model.load_state_dict(state.pop("state_dict"))
    model.metadata = state
    return model.to(map_location).eval()


#: torchvision ``FasterRCNN`` state-dict prefixes -> ours.
_TORCHVISION_PREFIXES = (
    ("rpn.head.conv.0.0.", "rpn_head.conv."),
    ("rpn.head.", "rpn_head."),
    ("roi_heads.box_head.", "detection_head."),
    ("roi_heads.box_predictor.", "detection_head."),
)


def state_dict_from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ``FasterRCNN`` state dict (one feature level, ``TwoMLPHead`` and
    ``FastRCNNPredictor``) renamed for `TwoStageDetector`: ``rpn.head.*`` -> ``rpn_head.*``,
    ``roi_heads.box_head.*`` and ``roi_heads.box_predictor.*`` -> ``detection_head.*``;
    ``backbone.*`` is kept (the backbones must have the same structure)."""
    renamed = {}
    for key, value in state_dict.items():
        for theirs, ours in _TORCHVISION_PREFIXES:
            if key.startswith(theirs):
                key = ours + key[len(theirs):]
                break
        renamed[key] = value
    return renamed
