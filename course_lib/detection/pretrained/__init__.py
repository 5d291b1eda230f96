"""torchvision's pretrained detectors, loaded the real way, with an offline detector that still detects.

`load_detector` builds one of torchvision's COCO detectors through its own ``weights=`` API
(``retinanet_resnet50_fpn(weights=RetinaNet_ResNet50_FPN_Weights.COCO_V1)``, never the deprecated
``pretrained=True``). The weight file comes through the course's mechanism
(`course_lib.weights.ensure_weights`: a classroom mirror, the course's ``weights/`` folder, torch
hub's cache, then the internet unless ``COURSE_OFFLINE=1``). When no source has it, one line says
what is missing and how to provide it, and the course's own offline detector (the shapes SSD of
lesson 4, wrapped to behave like a torchvision detector) takes its place, so every cell still runs.

Everything a lesson prints about a detector comes from the weights' own metadata
(``weights.meta``): category names, COCO box mAP, parameter count. `detector_info` and
`model_zoo` read it without building or downloading anything.

`predict` runs any of these detectors over a clip's frames in batches.

One module per part: `records` (the supported names, `DetectorInfo`, `LoadedDetector`),
`offline_detectors` (the course's own detectors and the fallback registry), `metadata` (names,
weights, COCO categories), `loading` (`load_detector`) and `inference` (`predict`); everything is
importable from here.
"""
from __future__ import annotations

from .records import DETECTORS, DetectorInfo, LoadedDetector
from .offline_detectors import (_FALLBACKS, DEFAULT_FALLBACK, FALLBACK_SCORE_THRESHOLD, FixedSizeDetector,
                                register_fallback, shapes_ssd_detector)
from .metadata import (BACKGROUND_NAMES, BOX_MAP, COCO_METRICS, COCO_SOURCE, UNUSED_CATEGORY, coco_categories,
                       describe_categories, detector_info, format_table, model_zoo, resolve_detector_name, resolve_weights,
                       supported_detectors, unused_category_ids, used_categories)
from .loading import WARNING_SIGN, load_detector
from .inference import ERROR_TEXT_LIMIT, predict

__all__ = [
    "DETECTORS",
    "UNUSED_CATEGORY",
    "DetectorInfo",
    "LoadedDetector",
    "FixedSizeDetector",
    "supported_detectors",
    "resolve_detector_name",
    "resolve_weights",
    "detector_info",
    "model_zoo",
    "format_table",
    "coco_categories",
    "unused_category_ids",
    "used_categories",
    "describe_categories",
    "load_detector",
    "register_fallback",
    "shapes_ssd_detector",
    "predict",
]
