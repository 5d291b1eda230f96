"""Detectors that need no download: the course's own trained detectors, made to behave like torchvision's
(`FixedSizeDetector`), and the registry of these offline stand-ins that `load_detector` falls back on
(`register_fallback`; the shapes SSD of lesson 4 by default).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ssd import SHAPES_SSD_PATH, load_shapes_ssd
from .records import DETECTORS, DetectorInfo, LoadedDetector

__all__ = ["FALLBACK_SCORE_THRESHOLD", "DEFAULT_FALLBACK", "FixedSizeDetector", "shapes_ssd_detector",
           "register_fallback"]

#: The offline detector keeps every detection above this score, as torchvision's detectors do
#: (their own thresholds are 0.001 to 0.2); `predict`'s ``score_threshold`` does the real filtering.
FALLBACK_SCORE_THRESHOLD = 0.05
DEFAULT_FALLBACK = "shapes_ssd"


# -- the offline detector -------------------------------------------------------------------------


class FixedSizeDetector(nn.Module):
    """A course detector that needs S x S inputs, made to behave like a torchvision detector (inference).

    ``forward(images)``: a list of (3, H, W) float images in [0, 1] (or a (B, 3, H, W) tensor), any
    sizes -> one dict per image with ``boxes`` (D, 4) in that image's pixels, ``labels`` (D,) and
    ``scores`` (D,). Each image is padded with black at the right or bottom to a square (shapes
    keep their proportions), resized to S x S and detected with ``detector.detect``; the boxes are
    scaled back and clipped to the image.
    """

    def __init__(self, detector: nn.Module, image_size: int, score_threshold: float = FALLBACK_SCORE_THRESHOLD):
        super().__init__()
        self.detector = detector
        self.image_size = int(image_size)
        self.score_threshold = float(score_threshold)

    def _square(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = max(height, width)
        image = F.pad(image, (0, side - width, 0, side - height))
        if side == self.image_size:
            return image
        return F.interpolate(image[None], size=(self.image_size,) * 2, mode="bilinear", align_corners=False,
                             antialias=True)[0]

    def forward(self, images, targets=None) -> list[dict[str, torch.Tensor]]:
        if targets is not None:
            raise NotImplementedError("the course's offline detector only detects; it is not trained here")
        images = list(images)
        for k, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{k}] must be a (3, H, W) tensor, got "
                                 f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
            if not image.is_floating_point():  # torchvision's detectors say the same
                raise TypeError(f"images[{k}] must be float in [0, 1], got {image.dtype}")
        if not images:
            return []
        detections = self.detector.detect(torch.stack([self._square(image) for image in images]),
                                          score_threshold=self.score_threshold)
        for image, found in zip(images, detections):
            height, width = image.shape[-2:]
            boxes = found["boxes"] * (max(height, width) / self.image_size)
            limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
            found["boxes"] = torch.minimum(boxes, limits)  # a box may reach into the padding
        return detections


def shapes_ssd_detector(device: torch.device | str = "cpu") -> LoadedDetector:
    """The course's trained shapes SSD (lesson 4: circles, squares, triangles) as a torchvision-like detector."""
    ssd = load_shapes_ssd(device)
    metrics, recipe = ssd.metadata.get("metrics", {}), ssd.metadata.get("recipe", {})
    box_map = metrics.get("map")
    source = f"course shapes val split ({recipe.get('val_images', '?')} images, {ssd.config.image_size} px)"
    info = DetectorInfo(name="shapes_ssd", weights=SHAPES_SSD_PATH.name, categories=tuple(ssd.config.class_names),
                        box_map=None if box_map is None else 100.0 * float(box_map), box_map_source=source,
                        num_params=sum(p.numel() for p in ssd.parameters()))
    return LoadedDetector(FixedSizeDetector(ssd, ssd.config.image_size).eval(), info)


#: Offline detectors by name: a factory ``(device) -> LoadedDetector`` or a ``"module:function"`` path
#: (imported only when needed). `load_detector` also loads them by name.
_FALLBACKS: dict[str, Callable[[torch.device], LoadedDetector] | str] = {
    DEFAULT_FALLBACK: shapes_ssd_detector,
    # lesson 5's two-stage detector, imported only when asked for
    "shapes_faster_rcnn": "course_lib.detection.faster_rcnn.train_shapes:shapes_faster_rcnn_detector",
}


def register_fallback(name: str, factory: Callable[[torch.device], LoadedDetector] | str) -> None:
    """Make another offline detector available, e.g. ``register_fallback("shapes_frcnn", "pkg.mod:loader")``."""
    if not isinstance(name, str) or not name or name in DETECTORS or name in DETECTORS.values():
        raise ValueError(f"name must be a new detector name, got {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and factory.count(":") == 1)):
        raise TypeError(f"factory must be a callable (device) -> LoadedDetector or a 'module:function' path, "
                        f"got {factory!r}")
    _FALLBACKS[name] = factory


def _load_fallback(fallback: str | Callable[[torch.device], LoadedDetector], device: torch.device) -> LoadedDetector:
    factory = fallback
    if isinstance(fallback, str):
        if fallback not in _FALLBACKS:
            raise ValueError(f"unknown offline detector {fallback!r}: choose one of {', '.join(_FALLBACKS)} or None")
        factory = _FALLBACKS[fallback]
    if isinstance(factory, str):
        module, function = factory.split(":")
        factory = getattr(importlib.import_module(module), function)
    loaded = factory(device)
    if not isinstance(loaded, LoadedDetector):
        raise TypeError(f"offline detector factory {fallback!r} must return a LoadedDetector, "
                        f"got {type(loaded).__name__}")
    return loaded
