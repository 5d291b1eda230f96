"""What a detector is, for the lessons: the torchvision detectors the course supports (`DETECTORS`), the
record that describes one (`DetectorInfo`: weights, categories, COCO mAP, size) and a loaded model
with its record (`LoadedDetector`). Everything else in the package builds on these.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["DETECTORS", "DetectorInfo", "LoadedDetector"]

#: Short names of the supported detectors -> torchvision's builder names (the names it also accepts).
DETECTORS: dict[str, str] = {
    "fasterrcnn": "fasterrcnn_resnet50_fpn",
    "fasterrcnn_v2": "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet": "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_320": "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet": "retinanet_resnet50_fpn",
    "retinanet_v2": "retinanet_resnet50_fpn_v2",
    "fcos": "fcos_resnet50_fpn",
    "ssd300": "ssd300_vgg16",
    "ssdlite": "ssdlite320_mobilenet_v3_large",
}


# -- what a detector is -------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorInfo:
    """Which detector a lesson really runs, for printing and tables.

    ``box_map`` is in percent (COCO's convention: 37.0, not 0.37); ``box_map_source`` says on
    which data it was measured. ``offline_fallback`` is True when the detector asked for
    (``requested``) was unavailable and this one stands in for it.
    """

    name: str
    weights: str | None
    categories: tuple[str, ...]
    box_map: float | None
    box_map_source: str
    num_params: int
    offline_fallback: bool = False
    requested: str | None = None

    def __str__(self) -> str:
        weights = f" with {self.weights}" if self.weights else " (random weights)"
        measured = f"box mAP {self.box_map:.1f} on {self.box_map_source}" if self.box_map is not None \
            else "box mAP not measured"
        stand_in = f", offline stand-in for {self.requested}" if self.offline_fallback else ""
        return (f"{self.name}{weights}: {self.num_params / 1e6:.2f} M parameters, {measured}, "
                f"{len(self.categories)} categories{stand_in}")

    def as_row(self) -> dict[str, object]:
        """The columns of `format_table`."""
        return {"detector": self.name, "weights": self.weights or "random",
                "params (M)": f"{self.num_params / 1e6:.1f}",
                "box mAP": "-" if self.box_map is None else f"{self.box_map:.1f}",
                "measured on": self.box_map_source, "offline stand-in": "yes" if self.offline_fallback else "no"}


@dataclass
class LoadedDetector:
    """A detector in eval mode on its device (``model``) and what it really is (``info``)."""

    model: nn.Module
    info: DetectorInfo

    @property
    def categories(self) -> tuple[str, ...]:
        return self.info.categories

    def __repr__(self) -> str:  # the info, not the model's hundreds of layers
        return f"LoadedDetector({self.info})"
