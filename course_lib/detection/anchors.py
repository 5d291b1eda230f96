"""Anchor boxes: the fixed boxes a detector predicts corrections to.

- `grid_anchors`: SSD-style anchors on square grids, normalised to the image (lesson 4).
- `rpn_anchors`: Faster R-CNN's anchors in pixels on a feature map (lesson 5).
- `inside_image`: which anchors lie fully inside the image.
- `kmeans_anchors`: YOLO-style anchor shapes learned from a data set's box sizes (lesson 3).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .boxes import _as_float, _check_boxes, _check_tensor

__all__ = [
    "SSD_GRID_SIZES",
    "SSD_ZOOMS",
    "SSD_RATIOS",
    "RPN_RATIOS",
    "RPN_SCALES",
    "ANCHOR_CONVENTIONS",
    "grid_anchors",
    "rpn_anchors",
    "inside_image",
    "wh_iou",
    "KMeansAnchors",
    "kmeans_anchors",
]

#: SSD lesson: a 4x4, a 2x2 and a 1x1 grid of cells ...
SSD_GRID_SIZES = (4, 2, 1)
#: ... three anchor sizes per cell, as a fraction of the cell ...
SSD_ZOOMS = (0.75, 1.0, 1.3)
#: ... and three shapes as (width, height) factors: square, tall, wide. The lesson's source
#: writes the same shapes in (height, width) order: (1, 1), (1, 0.5), (0.5, 1).
SSD_RATIOS = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5))

#: Faster R-CNN: aspect ratios height / width ...
RPN_RATIOS = (0.5, 1.0, 2.0)
#: ... and sizes in units of the feature stride (8, 16, 32 x 16 px = 128, 256, 512 px).
RPN_SCALES = (8.0, 16.0, 32.0)
#: Where `rpn_anchors` puts anchors, two conventions that differ by half a stride:
#: ``"seed"`` (the lesson's source, py-faster-rcnn): centred on the middle of each stride x stride
#: patch, ``((col + 0.5) * stride, (row + 0.5) * stride)``, exact sizes;
#: ``"torchvision"`` (``AnchorGenerator``): centred on the patch's top-left corner
#: ``(col * stride, row * stride)``, half widths and heights rounded to whole pixels.
ANCHOR_CONVENTIONS = ("seed", "torchvision")


def _positive_numbers(values, name: str) -> list[float]:
    if isinstance(values, (int, float)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    numbers = [float(v) for v in values]
    if not all(v > 0 and math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must all be positive, got {tuple(values)}")
    return numbers


def grid_anchors(grid_sizes: Sequence[int] = SSD_GRID_SIZES,
                 zooms: Sequence[float] = SSD_ZOOMS,
                 ratios: Sequence[tuple[float, float]] = SSD_RATIOS,
                 *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """SSD anchors on square grids, normalised xyxy: the image is the unit square [0, 1]^2.

    A ``g x g`` grid has cells of side ``1/g``; each cell gets one anchor per (zoom, ratio),
    centred on the cell, of width ``zoom * ratio_w / g`` and height ``zoom * ratio_h / g``.
    Anchors are not clipped: a 1.3-zoomed anchor of the 1x1 grid reaches past the image.

    Order (the order of a detector head's outputs): grid by grid as given; inside a grid the
    cells row by row (top row first, left to right, so 4x4 anchor ``i`` is row ``i // 4``,
    column ``i % 4``); inside a cell zoom by zoom, and for each zoom ratio by ratio.

    Returns (sum(g * g) * len(zooms) * len(ratios), 4): 189 anchors with the defaults;
    ``grid_anchors((4,), (1.0,), ((1.0, 1.0),))`` gives the 16 cells of a 4x4 grid.
    """
    if isinstance(grid_sizes, int) or not isinstance(grid_sizes, Sequence) or len(grid_sizes) == 0:
        raise ValueError(f"grid_sizes must be a non-empty sequence of ints, got {grid_sizes!r}")
    if not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid_sizes):
        raise ValueError(f"grid_sizes must be positive ints, got {tuple(grid_sizes)}")
    zoom_values = _positive_numbers(zooms, "zooms")
    if not isinstance(ratios, Sequence) or len(ratios) == 0 or not all(
            isinstance(r, Sequence) and len(r) == 2 for r in ratios):
        raise ValueError(f"ratios must be a non-empty sequence of (width, height) pairs, got {ratios!r}")
    ratio_values = [_positive_numbers(r, "ratios") for r in ratios]

    # (k, 2) anchor (width, height) per cell, in cell units, zoom-major then ratio.
    shapes = torch.tensor([[z * rw, z * rh] for z in zoom_values for rw, rh in ratio_values],
                          dtype=torch.float64, device=device)
    per_grid = []
    for g in grid_sizes:  # three grids: a tiny loop
        centres = (torch.arange(g, dtype=torch.float64, device=device) + 0.5) / g
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row-major cells
        centre_xy = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # (g*g, 1, 2)
        half = shapes[None] / (2 * g)  # (1, k, 2)
        per_grid.append(torch.cat((centre_xy - half, centre_xy + half), dim=-1).reshape(-1, 4))
    return torch.cat(per_grid).to(dtype)


def rpn_anchors(feature_size: int | Sequence[int], stride: float,
                ratios: Sequence[float] = RPN_RATIOS, scales: Sequence[float] = RPN_SCALES,
                *, convention: str = "seed", device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Faster R-CNN anchors in pixels for a feature map of ``feature_size = (H, W)`` (or H = W).

    Each feature-map cell stands for a ``stride x stride`` patch of the image. For aspect ratio
    ``r = height / width`` and scale ``s`` an anchor has area ``(s * stride) ** 2``:
    ``height = s * stride * sqrt(r)``, ``width = s * stride / sqrt(r)``. Where it sits depends on
    ``convention`` (see `ANCHOR_CONVENTIONS`):

    - ``"seed"``: centred on the patch centre ``((col + 0.5) * stride, (row + 0.5) * stride)``,
      exact sizes. 8,940 of an 800x800 image's 22,500 anchors lie inside it.
    - ``"torchvision"``: centred on ``(col * stride, row * stride)`` with half sizes rounded to
      whole pixels (round half to even), computed in ``dtype``: exactly torchvision's
      ``AnchorGenerator(sizes=((s1 * stride, ...),), aspect_ratios=(ratios,))``. 9,321 inside.

    Order: cells row by row (y outer, x inner), and in each cell ratio-major then scale
    (torchvision's order). This is the order of a head's output ``(B, A * D, H, W)`` flattened
    with ``permute(0, 2, 3, 1).reshape(B, -1, D)``, so anchor ``i`` goes with prediction ``i``.
    An 800x800 image through VGG16 (stride 16, a 50x50 map) gets 50 * 50 * 9 = 22,500 anchors.

    Returns (H * W * len(ratios) * len(scales), 4) xyxy pixels, not clipped to the image.
    """
    if isinstance(feature_size, int) and not isinstance(feature_size, bool):
        feature_size = (feature_size, feature_size)
    if (not isinstance(feature_size, (Sequence, torch.Size)) or len(feature_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in feature_size)):
        raise ValueError(f"feature_size must be an int or (height, width) ints, got {feature_size!r}")
    height, width = feature_size
    if height < 0 or width < 0:
        raise ValueError(f"feature_size must not be negative, got {tuple(feature_size)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, float)) or not stride > 0:
        raise ValueError(f"stride must be a positive number, got {stride!r}")
    if convention not in ANCHOR_CONVENTIONS:
        raise ValueError(f"convention must be one of {ANCHOR_CONVENTIONS}, got {convention!r}")
    ratio_list = _positive_numbers(ratios, "ratios")
    scale_list = _positive_numbers(scales, "scales")

    if convention == "seed":
        # (R*S, 2) anchor sizes, ratio-major: for each ratio, every scale; exact, in float64.
        ratio_values = torch.tensor(ratio_list, dtype=torch.float64)
        sides = torch.tensor(scale_list, dtype=torch.float64)[None, :] * stride
        anchor_h = (sides * ratio_values.sqrt()[:, None]).reshape(-1)
        anchor_w = (sides / ratio_values.sqrt()[:, None]).reshape(-1)
        half = torch.stack((anchor_w, anchor_h), dim=-1).to(device) / 2  # (R*S, 2)
        cell = torch.cat((-half, half), dim=-1)  # (R*S, 4) around the centre
        offset = 0.5  # cells
        work_dtype = torch.float64
    else:
        # torchvision's AnchorGenerator.generate_anchors, step by step and in its dtype, so that
        # the rounding of half sizes (e.g. 181.02 / 2 = 90.51 -> 91) comes out the same.
        ratio_values = torch.tensor(ratio_list, dtype=dtype, device=device)
        sizes = torch.tensor([s * stride for s in scale_list], dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratio_values)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).view(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).view(-1)
        cell = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        offset = 0.0
        work_dtype = dtype

    cy = (torch.arange(height, dtype=torch.float64, device=device) + offset) * stride
    cx = (torch.arange(width, dtype=torch.float64, device=device) + offset) * stride
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # y outer: row by row
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4).to(work_dtype)  # (H*W, 1, 4)
    return (centres + cell.to(work_dtype)[None]).reshape(-1, 4).to(dtype)


def inside_image(anchors: Tensor, height: float, width: float) -> Tensor:
    """Which anchors lie fully inside a ``height x width`` image (edges included).

    anchors: (N, 4) xyxy pixels  ->  (N,) bool. Faster R-CNN trains its RPN only on these:
    8,940 of the 22,500 anchors of an 800x800 image.
    """
    _check_boxes(anchors, "anchors")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
            & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))


# --------------------------------------------------------------------------- k-means anchors


def _check_wh(wh, name: str) -> Tensor:
    _check_tensor(wh, name)
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) holding (width, height), got {tuple(wh.shape)}")
    return _as_float(wh)


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of box shapes placed on a common centre: only widths and heights matter.

    wh1: (N, 2), wh2: (M, 2) as (width, height)  ->  (N, M). Zero-size shapes give IoU 0.
    """
    wh1, wh2 = _check_wh(wh1, "wh1"), _check_wh(wh2, "wh2")
    if wh1.device != wh2.device:
        raise ValueError(f"inputs must be on one device, got wh1 on {wh1.device}, wh2 on {wh2.device}")
    inter = (torch.minimum(wh1[:, None, 0], wh2[None, :, 0])
             * torch.minimum(wh1[:, None, 1], wh2[None, :, 1]))
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


class KMeansAnchors(NamedTuple):
    """Result of `kmeans_anchors`: unpack as ``wh, mean_iou = kmeans_anchors(...)``."""

    #: (k, 2) anchor (width, height), smallest area first.
    wh: Tensor
    #: Mean over the boxes of their best IoU with an anchor (the quality to plot against k).
    mean_iou: float


def _kmeans_plus_plus(wh: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ start: each new centre is drawn with probability ~ distance**2 to the chosen."""
    n = wh.shape[0]
    sample_device = generator.device if generator is not None else torch.device("cpu")
    first = torch.randint(n, (1,), generator=generator, device=sample_device)
    chosen = [int(first)]
    distance = 1 - wh_iou(wh, wh[chosen[-1]:chosen[-1] + 1])[:, 0]
    for _ in range(1, k):  # k is small (a handful of anchors)
        weights = (distance.clamp(min=0) ** 2).to(sample_device, torch.float64)
        if float(weights.sum()) <= 0:  # every box already has an identical centre
            weights = torch.ones_like(weights)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        distance = torch.minimum(distance, 1 - wh_iou(wh, wh[chosen[-1]:chosen[-1] + 1])[:, 0])
    return wh[chosen].clone()


def kmeans_anchors(wh: Tensor, k: int, *, generator: torch.Generator | None = None,
                   iters: int = 100) -> KMeansAnchors:
    """Anchor shapes by k-means on box (width, height) with distance ``1 - IoU`` (YOLOv2).

    Boxes are compared as if they shared a centre (`wh_iou`), so a big box and a small one of
    the same shape are far apart, unlike with Euclidean distance. k-means++ picks the starting
    shapes (seeded by ``generator``); then assignment to the most-overlapping anchor and the
    mean shape of each cluster alternate until nothing changes or ``iters`` rounds are done.
    A cluster that loses all its boxes keeps its previous shape.

    wh: (N, 2) positive sizes, ``1 <= k <= N``  ->  `KMeansAnchors` (wh (k, 2) sorted by area,
    mean_iou).
    """
    wh = _check_wh(wh, "wh")
    n = wh.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int between 1 and the number of boxes ({n}), got {k!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    if not bool((wh > 0).all()):
        raise ValueError("wh must hold positive widths and heights (drop degenerate boxes first)")

    centres = _kmeans_plus_plus(wh, k, generator)
    assignment = wh_iou(wh, centres).argmax(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assignment, wh)
        counts = torch.bincount(assignment, minlength=k)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        new_assignment = wh_iou(wh, centres).argmax(dim=1)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment

    best_iou = wh_iou(wh, centres).max(dim=1).values
    by_area = torch.argsort(centres[:, 0] * centres[:, 1], stable=True)
    return KMeansAnchors(centres[by_area], float(best_iou.mean()))
