"""Building a torchvision detector the real way, ``builder(weights=...)``, with the weight file found by
the course's mechanism (`course_lib.weights.ensure_weights`), and one line and an offline stand-in
(`offline_detectors`) when no source has it, so that every cell still runs.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

import torch
from torchvision.models import WeightsEnum, get_model_builder

from ...weights import WeightsUnavailable, ensure_weights
from . import offline_detectors
from .metadata import detector_info, resolve_detector_name, resolve_weights, used_categories
from .offline_detectors import DEFAULT_FALLBACK
from .records import LoadedDetector

__all__ = ["load_detector"]

WARNING_SIGN = "\u26a0"


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
    from ... import get_device

    device = torch.device(device) if device is not None else get_device()
    if isinstance(name, str) and name in offline_detectors._FALLBACKS:
        loaded = offline_detectors._load_fallback(name, device)
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
        loaded = offline_detectors._load_fallback(fallback, device)
        print(f"{WARNING_SIGN} {error} Continuing offline with the course's {loaded.info.name} "
              f"({', '.join(used_categories(loaded.info.categories).values())}), not a COCO detector.")
        info = replace(loaded.info, offline_fallback=True, requested=builder_name)
        return LoadedDetector(loaded.model.to(device).eval(), info)
    model = builder(weights=resolved, progress=progress, **builder_options).to(device).eval()
    info = detector_info(builder_name, resolved)
    if resolved is None or builder_options:  # e.g. num_classes changed: count what was built
        info = replace(info, num_params=sum(p.numel() for p in model.parameters()))
    return LoadedDetector(model, info)
