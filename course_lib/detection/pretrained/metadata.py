"""What torchvision says about its detectors, read from the weights' metadata without building or
downloading anything: names and weights resolved (`resolve_detector_name`, `resolve_weights`),
`detector_info` and `model_zoo` (COCO box mAP, parameters, categories), and COCO's category list
with its 'N/A' gaps explained.
"""
from __future__ import annotations

from collections.abc import Sequence

from torchvision.models import WeightsEnum, get_model_weights

from . import offline_detectors
from .records import DETECTORS, DetectorInfo

__all__ = [
    "UNUSED_CATEGORY",
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
]

#: The name COCO's category list gives to ids that no COCO 2017 annotation uses.
UNUSED_CATEGORY = "N/A"
#: What label 0 is called in torchvision's and the course's category lists.
BACKGROUND_NAMES = ("__background__", "background")
#: Where torchvision's weights keep their COCO box mAP: meta["_metrics"][COCO_METRICS][BOX_MAP].
COCO_METRICS, BOX_MAP = "COCO-val2017", "box_map"
COCO_SOURCE = "COCO val2017 (torchvision's metadata)"


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
                     f"(or torchvision's {', '.join(DETECTORS.values())}; offline: {', '.join(offline_detectors._FALLBACKS)})")


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
