"""Object-detection building blocks: boxes, anchors, matching, NMS, losses, ROI pooling, tracking.

The detectors have modules (and one package) of their own: ``yolo`` (lesson 3), ``ssd`` (lesson 4),
``faster_rcnn`` (lesson 5), ``pretrained`` (torchvision's detectors, lesson 6).

Boxes are ``(x1, y1, x2, y2)`` in pixels unless a name says otherwise. Each module is about one
idea; import from the module (``from course_lib.detection.suppression import nms``) or from here.
"""
from __future__ import annotations

from .anchors import (
    KMeansAnchors,
    grid_anchors,
    inside_image,
    kmeans_anchors,
    rpn_anchors,
    wh_iou,
)
from .boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)
from .losses import focal_loss, smooth_l1_loss
from .matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    IGNORE,
    NEGATIVE,
    POSITIVE,
    label_anchors,
    match_anchors,
    sample_labels,
)
from .suppression import batched_nms, nms
from .roi import roi_pool, rois_from_boxes
from .ssd import SSD, SSDConfig, load_shapes_ssd, ssd_loss
from .mot_metrics import ClearMOT, ClearMOTAccumulator, clear_mot
from .tracking import (IoUTracker, Track, associate, predict_boxes, track_speed, track_speeds, track_velocities,
                       tracks_to_tensors, update_tracks)
from .trails import draw_tracks, id_color

__all__ = [
    # boxes
    "box_area", "box_iou", "box_convert", "clip_boxes", "encode_boxes", "decode_boxes",
    # anchors
    "grid_anchors", "rpn_anchors", "inside_image", "wh_iou", "kmeans_anchors", "KMeansAnchors",
    # matching
    "match_anchors", "label_anchors", "sample_labels",
    "BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "POSITIVE", "NEGATIVE", "IGNORE",
    # nms
    "nms", "batched_nms",
    # losses
    "focal_loss", "smooth_l1_loss",
    # roi
    "roi_pool", "rois_from_boxes",
    # ssd (lesson 4)
    "SSD", "SSDConfig", "ssd_loss", "load_shapes_ssd",
    # tracking (lesson 6)
    "IoUTracker", "Track", "associate", "update_tracks", "predict_boxes", "track_velocities",
    "track_speeds", "track_speed", "tracks_to_tensors",
    "ClearMOT", "ClearMOTAccumulator", "clear_mot", "draw_tracks", "id_color",
]
