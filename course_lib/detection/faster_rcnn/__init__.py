"""Faster R-CNN step by step (lesson 5), checked against torchvision.

- `rpn`: the region proposal network's head, anchor targets and sampling, and its loss;
- `region_proposals`: from every anchor's prediction to a few hundred proposals per image;
- `roi_heads`: ROI sampling, ROI pooling/align, the detection head, its loss and the detections;
- `config`, `backbones`, `detector`: `TwoStageDetector`, the whole detector, its settings,
  saving and loading.

Anchors come from `course_lib.detection.anchors.rpn_anchors`. Import from the modules or from here.
"""
from __future__ import annotations

from .backbones import VGG16_LAYERS, build_backbone, vgg16_backbone
from .config import (
    BACKBONES,
    SEED_SETTINGS,
    TORCHVISION_SETTINGS,
    VGG16_CHANNELS,
    VGG16_STRIDE,
    FasterRCNNConfig,
)
from .detector import (
    LOSS_NAMES,
    DetectorStages,
    TwoStageDetector,
    load_faster_rcnn,
    save_faster_rcnn,
    state_dict_from_torchvision,
)
from .region_proposals import (
    PROPOSAL_ORDERS,
    RPN_NMS_THRESHOLD,
    SEED_MIN_SIZE,
    SEED_TEST_PROPOSALS,
    SEED_TRAIN_PROPOSALS,
    TORCHVISION_MIN_SIZE,
    TORCHVISION_TEST_PROPOSALS,
    TORCHVISION_TRAIN_PROPOSALS,
    Proposals,
    ProposalSettings,
    decode_proposals,
    filter_proposals,
)
from .roi_heads import (
    DETECTION_MIN_SIZE,
    DETECTION_NMS_THRESHOLD,
    DETECTION_SCORE_THRESHOLD,
    DETECTIONS_PER_IMAGE,
    FAST_RCNN_SMOOTH_L1_BETA,
    POOLING_METHODS,
    ROI_ALIGN_SAMPLING_RATIO,
    ROI_BACKGROUND_IOU,
    ROI_BOX_WEIGHTS,
    ROI_FOREGROUND_IOU,
    ROI_OUTPUT_SIZE,
    ROI_POSITIVE_FRACTION,
    SEED_REPRESENTATION_SIZE,
    SEED_ROI_BATCH_SIZE,
    TORCHVISION_REPRESENTATION_SIZE,
    TORCHVISION_ROI_BATCH_SIZE,
    DetectionHead,
    RoiSample,
    fast_rcnn_loss,
    pool_rois,
    postprocess_detections,
    sample_rois,
)
from .rpn import (
    OBJECTNESS_KINDS,
    RPN_BATCH_SIZE,
    RPN_BOX_WEIGHTS,
    RPN_LAMBDA,
    RPN_LOSS_NORMALIZATIONS,
    RPN_NEGATIVE_IOU,
    RPN_POSITIVE_FRACTION,
    RPN_POSITIVE_IOU,
    SEED_SMOOTH_L1_BETA,
    TORCHVISION_SMOOTH_L1_BETA,
    RPNHead,
    RPNLoss,
    RPNOutput,
    RPNTargets,
    objectness_logits,
    rpn_loss,
    rpn_targets,
    sample_anchors,
)

__all__ = [
    # rpn
    "OBJECTNESS_KINDS", "RPN_LOSS_NORMALIZATIONS", "RPN_POSITIVE_IOU", "RPN_NEGATIVE_IOU", "RPN_BATCH_SIZE",
    "RPN_POSITIVE_FRACTION", "RPN_BOX_WEIGHTS", "RPN_LAMBDA", "SEED_SMOOTH_L1_BETA", "TORCHVISION_SMOOTH_L1_BETA",
    "RPNHead", "RPNOutput", "objectness_logits", "RPNTargets", "rpn_targets", "sample_anchors", "RPNLoss",
    "rpn_loss",
    # region proposals
    "PROPOSAL_ORDERS", "RPN_NMS_THRESHOLD", "SEED_MIN_SIZE", "TORCHVISION_MIN_SIZE", "ProposalSettings",
    "SEED_TRAIN_PROPOSALS", "SEED_TEST_PROPOSALS", "TORCHVISION_TRAIN_PROPOSALS", "TORCHVISION_TEST_PROPOSALS",
    "decode_proposals", "Proposals", "filter_proposals",
    # roi heads
    "ROI_FOREGROUND_IOU", "ROI_BACKGROUND_IOU", "SEED_ROI_BATCH_SIZE", "TORCHVISION_ROI_BATCH_SIZE",
    "ROI_POSITIVE_FRACTION", "ROI_BOX_WEIGHTS", "ROI_OUTPUT_SIZE", "POOLING_METHODS", "ROI_ALIGN_SAMPLING_RATIO",
    "SEED_REPRESENTATION_SIZE", "TORCHVISION_REPRESENTATION_SIZE", "FAST_RCNN_SMOOTH_L1_BETA",
    "DETECTION_SCORE_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTIONS_PER_IMAGE", "DETECTION_MIN_SIZE",
    "RoiSample", "sample_rois", "pool_rois", "DetectionHead", "fast_rcnn_loss", "postprocess_detections",
    # detector
    "BACKBONES", "VGG16_STRIDE", "VGG16_CHANNELS", "TORCHVISION_SETTINGS", "SEED_SETTINGS", "FasterRCNNConfig",
    "VGG16_LAYERS", "vgg16_backbone", "build_backbone", "LOSS_NAMES", "DetectorStages", "TwoStageDetector", "save_faster_rcnn",
    "load_faster_rcnn", "state_dict_from_torchvision",
]
