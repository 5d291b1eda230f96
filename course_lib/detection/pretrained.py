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
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import WeightsEnum, get_model_builder, get_model_weights

from ..weights import WeightsUnavailable, ensure_weights
from .ssd import SHAPES_SSD_PATH, load_shapes_ssd

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
#: The name COCO's category list gives to ids that no COCO 2017 annotation uses.
UNUSED_CATEGORY = "N/A"
#: What label 0 is called in torchvision's and the course's category lists.
BACKGROUND_NAMES = ("__background__", "background")
#: Where torchvision's weights keep their COCO box mAP: meta["_metrics"][COCO_METRICS][BOX_MAP].
COCO_METRICS, BOX_MAP = "COCO-val2017", "box_map"
COCO_SOURCE = "COCO val2017 (torchvision's metadata)"
#: The offline detector keeps every detection above this score, as torchvision's detectors do
#: (their own thresholds are 0.001 to 0.2); `predict`'s ``score_threshold`` does the real filtering.
FALLBACK_SCORE_THRESHOLD = 0.05
DEFAULT_FALLBACK = "shapes_ssd"
WARNING_SIGN = "\u26a0"
#: The longest error text `predict` repeats in its own message (the original error is chained).
ERROR_TEXT_LIMIT = 300


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


# -- names, weights and metadata ----------------------------------------------------------------


def supported_detectors() -> tuple[str, ...]:
    """The short names `load_detector` accepts (torchvision's builder names work too)."""
    return tuple(DETECTORS)


def resolve_detector_name(name: str) -> str:
    """A short name or a torchvision builder name -> the builder name; unknown -> one-line ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a detector name (str), got {type(name).__name__}")
    key = name.strip().lower()
    if key in DETECTORS:
        return DETECTORS[key]
    if key in DETECTORS.values():
        return key
    raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)} "
                     f"(or torchvision's {', '.join(DETECTORS.values())}; offline: {', '.join(_FALLBACKS)})")


def resolve_weights(name: str, weights: WeightsEnum | str | None = "DEFAULT") -> WeightsEnum | None:
    """``"DEFAULT"``, a member's name (``"COCO_V1"`` or ``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"``),
    a member, or None -> the weights enum member of detector ``name`` (or None: random weights)."""
    enum = get_model_weights(resolve_detector_name(name))
    if weights is None:
        return None
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise TypeError(f"weights {weights} belong to another model: {name} takes {enum.__name__} members")
        return weights
    if isinstance(weights, str):
        key = weights.strip().removeprefix(enum.__name__ + ".")
        if key in enum.__members__:
            return enum[key]
        raise ValueError(f"weights {weights!r} unknown for {name}: choose one of "
                         f"{', '.join(enum.__members__)}, a {enum.__name__} member, or None")
    raise TypeError(f"weights must be a {enum.__name__} member, its name, 'DEFAULT' or None, "
                    f"got {type(weights).__name__}")


def _box_map(weights: WeightsEnum) -> float | None:
    return weights.meta.get("_metrics", {}).get(COCO_METRICS, {}).get(BOX_MAP)


def detector_info(name: str, weights: WeightsEnum | str | None = "DEFAULT") -> DetectorInfo:
    """What ``name`` with ``weights`` is, from the weights' metadata only (nothing built or downloaded).

    With ``weights=None`` (random initialisation) the categories and parameter count are those of
    the default weights (same architecture, same 91 outputs) and there is no mAP.
    """
    builder_name = resolve_detector_name(name)
    resolved = resolve_weights(builder_name, weights)
    meta = (resolved or get_model_weights(builder_name).DEFAULT).meta
    return DetectorInfo(
        name=builder_name, weights=None if resolved is None else str(resolved),
        categories=tuple(meta["categories"]), box_map=None if resolved is None else _box_map(resolved),
        box_map_source=COCO_SOURCE if resolved is not None else "untrained (random weights)",
        num_params=int(meta["num_params"]))


def model_zoo() -> list[DetectorInfo]:
    """`detector_info` of every supported detector with its default weights, from metadata only."""
    return [detector_info(name) for name in DETECTORS]


def format_table(infos: Sequence[DetectorInfo]) -> str:
    """A plain-text table of `DetectorInfo.as_row` rows, one detector per line."""
    rows = [info.as_row() for info in infos]
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# -- COCO's category list -------------------------------------------------------------------------


def coco_categories() -> tuple[str, ...]:
    """torchvision's COCO category list (91 names, index = label), from the weights' metadata."""
    return tuple(get_model_weights(DETECTORS["fasterrcnn"]).DEFAULT.meta["categories"])


def unused_category_ids(categories: Sequence[str]) -> list[int]:
    """Labels named ``'N/A'``: COCO category ids that no COCO 2017 annotation uses."""
    return [label for label, name in enumerate(categories) if name == UNUSED_CATEGORY]


def used_categories(categories: Sequence[str]) -> dict[int, str]:
    """label -> name for the real object classes: the background and the ``'N/A'`` gaps left out."""
    return {label: name for label, name in enumerate(categories)
            if name != UNUSED_CATEGORY and not (label == 0 and name in BACKGROUND_NAMES)}


def describe_categories(categories: Sequence[str]) -> str:
    """One paragraph explaining a category list's labels, its 'N/A' gaps included (counts computed)."""
    used, unused = used_categories(categories), unused_category_ids(categories)
    text = f"{len(categories)} labels: "
    text += "0 is the background, " if categories and categories[0] in BACKGROUND_NAMES else ""
    text += f"{len(used)} are object classes"
    if unused:
        text += (f", and {len(unused)} ({', '.join(map(str, unused))}) are '{UNUSED_CATEGORY}'. The COCO paper "
                 f"listed 91 object categories and numbered them; the released annotations use only 80 but "
                 f"keep the original numbers, so label k is COCO's category id k and the ids of the "
                 f"categories left out stay as gaps: a COCO detector never saw an object with these labels")
    return text + "."


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


# -- loading --------------------------------------------------------------------------------------


def _backbone_weights(builder: Callable, value) -> WeightsEnum | None:
    """``weights_backbone`` as the builder's own enum (its default's type), from a member, a name or None."""
    if value is None or isinstance(value, WeightsEnum):
        return value
    default = inspect.signature(builder).parameters["weights_backbone"].default
    return type(default).verify(value)


def load_detector(
    name: str,
    weights: WeightsEnum | str | None = "DEFAULT",
    *,
    device: torch.device | str | None = None,
    fallback: str | Callable[[torch.device], LoadedDetector] | None = DEFAULT_FALLBACK,
    progress: bool = False,
    **builder_options,
) -> LoadedDetector:
    """Build detector ``name`` with ``weights`` through torchvision's ``builder(weights=...)``, in eval mode.

    Args:
        name: a short name (`supported_detectors`), torchvision's builder name, or an offline
            detector's name (``"shapes_ssd"``).
        weights: ``"DEFAULT"``, a weights enum member or its name, or None for random weights (then
            the backbone is random too unless ``weights_backbone=`` says otherwise).
        device: where the model goes; None: `course_lib.get_device()` (the GPU when there is one).
        fallback: the offline detector used, after a one-line notice, when the weight file is
            nowhere to be found (`register_fallback` adds others); None raises `WeightsUnavailable`.
        builder_options: passed to torchvision's builder (e.g. ``box_score_thresh=0.3``).

    Returns a `LoadedDetector`: ``.model`` and ``.info`` (which detector it really is).
    """
    from .. import get_device

    device = torch.device(device) if device is not None else get_device()
    if isinstance(name, str) and name in _FALLBACKS:
        loaded = _load_fallback(name, device)
        return LoadedDetector(loaded.model.to(device).eval(), loaded.info)
    builder_name = resolve_detector_name(name)
    builder = get_model_builder(builder_name)
    resolved = resolve_weights(builder_name, weights)
    if resolved is None:  # random head; the backbone is random too unless weights_backbone names weights
        builder_options["weights_backbone"] = _backbone_weights(builder, builder_options.get("weights_backbone"))
        needed = [w for w in (builder_options["weights_backbone"],) if w is not None]
    else:  # torchvision ignores weights_backbone when the whole detector has weights
        needed = [resolved]
    try:
        for file in needed:
            ensure_weights(file, progress=progress)  # afterwards torchvision finds it in its cache
    except WeightsUnavailable as error:
        if fallback is None:
            raise
        loaded = _load_fallback(fallback, device)
        print(f"{WARNING_SIGN} {error} Continuing offline with the course's {loaded.info.name} "
              f"({', '.join(used_categories(loaded.info.categories).values())}), not a COCO detector.")
        info = replace(loaded.info, offline_fallback=True, requested=builder_name)
        return LoadedDetector(loaded.model.to(device).eval(), info)
    model = builder(weights=resolved, progress=progress, **builder_options).to(device).eval()
    info = detector_info(builder_name, resolved)
    if resolved is None or builder_options:  # e.g. num_classes changed: count what was built
        info = replace(info, num_params=sum(p.numel() for p in model.parameters()))
    return LoadedDetector(model, info)


# -- inference ------------------------------------------------------------------------------------


def _frame_list(frames) -> list[torch.Tensor]:
    """frames: (N, 3, H, W) tensor or a sequence of (3, H, W) tensors -> list of (3, H, W), checked."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W) or a list of (3, H, W) tensors, got a tensor of shape "
                             f"{tuple(frames.shape)}")
        images = list(frames)
    elif isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        images = list(frames)
    else:
        raise TypeError(f"frames must be a tensor (N, 3, H, W) or a list of (3, H, W) tensors, "
                        f"got {type(frames).__name__}")
    for k, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"frames[{k}] must be a tensor, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"frames[{k}] must be (3, H, W) with H, W >= 1, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"frames[{k}] must be uint8 (0..255) or float (0..1), got {image.dtype}")
        if image.device != images[0].device:
            raise ValueError(f"frames must all be on one device, got {images[0].device} and {image.device} "
                             f"(frames[{k}])")
    return images


def predict(
    model: nn.Module | LoadedDetector,
    frames,
    score_threshold: float = 0.5,
    batch_size: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """Detections for each frame: ``boxes`` (D, 4) xyxy pixels, ``labels`` (D,), ``scores`` (D,) >= threshold.

    Args:
        model: a torchvision detector (or a `LoadedDetector`); it must already be on the frames'
            device: predict never moves it (a model on another device is a ValueError).
        frames: (N, 3, H, W) tensor or a list of (3, H, W) tensors (sizes may differ in a list),
            uint8 (0..255, converted to float in [0, 1]) or float in [0, 1].
        score_threshold: keep detections whose score is at least this.
        batch_size: frames per forward pass.

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored).
    Results are on the frames' device. An error inside the model is raised again as a
    RuntimeError saying which frames failed (the original error is its ``__cause__``).
    """
    net = model.model if isinstance(model, LoadedDetector) else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a LoadedDetector, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(score_threshold, (int, float)) or not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    images = _frame_list(frames)
    if not images:
        return []
    device = images[0].device
    parameter = next(net.parameters(), None)
    if parameter is not None and parameter.device != device:
        raise ValueError(f"model is on {parameter.device} but frames are on {device}: move one of them first "
                         f"(model.to(device) once, or frames.to(device))")
    results: list[dict[str, torch.Tensor]] = []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [image.float() / 255.0 if image.dtype == torch.uint8 else image
                         for image in images[start:start + batch_size]]
                where = f"frames {start}..{start + len(batch) - 1} of {len(images)}"
                try:
                    detections = net(batch)
                except Exception as error:  # say which frames and which model; keep the original as cause
                    text = " ".join(str(error).split())[:ERROR_TEXT_LIMIT]
                    raise RuntimeError(f"{type(net).__name__} failed on {where}: {type(error).__name__}: "
                                       f"{text}") from error
                if not isinstance(detections, (list, tuple)) or len(detections) != len(batch):
                    raise RuntimeError(f"{type(net).__name__} returned {type(detections).__name__} for {where}, "
                                       f"expected a list of {len(batch)} dicts")
                for found in detections:
                    keep = found["scores"] >= score_threshold
                    results.append({key: found[key][keep] for key in ("boxes", "labels", "scores")})
    finally:
        net.train(was_training)
    return results

