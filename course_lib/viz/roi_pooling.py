"""Where ROI pooling looks: the bins ``torchvision.ops.roi_pool`` and ``roi_align`` use for one box,
computed (`roi_bins`) and drawn on the feature map (`draw_roi_bins`).
"""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from .canvas import FIGURE_WIDTH_INCHES, _size_pair, _to_numpy

__all__ = [
    "ROI_BIN_METHODS",
    "roi_bins",
    "draw_roi_bins",
]

#: ROI pooling methods `roi_bins` knows (those of `torchvision.ops`).
ROI_BIN_METHODS = ("roi_pool", "roi_align")


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """C's ``round`` (what torchvision's ``roi_pool`` uses): halves go away from zero."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def roi_bins(
    box: Any,
    spatial_scale: float,
    output_size: int = 7,
    *,
    method: str = "roi_pool",
    feature_size: tuple[int, int] | None = None,
    sampling_ratio: int = 2,
) -> dict[str, np.ndarray]:
    """Where ``torchvision.ops.roi_pool`` / ``roi_align`` (``aligned=False``) look for one box.

    Coordinates are feature-map cells: cell ``j`` sits at coordinate ``j`` (the convention of both
    ops). Returns ``{"x": (lo, hi), "y": (lo, hi)}``, each ``(output_size,)``:

    - ``"roi_pool"``: bin ``i`` is the cells ``lo[i] <= j < hi[i]`` (integers): the box is rounded
      to whole cells, then cut into bins with floor and ceil, clipped to ``feature_size = (H, W)``
      when given; the op takes the maximum over each bin (0 for an empty one);
    - ``"roi_align"``: the exact bin edges (floats), plus ``"samples_x"``, ``"samples_y"``
      ``(output_size, sampling_ratio)``: where each bin is sampled by bilinear interpolation; the op
      averages the samples of a bin (sampling_ratio <= 0: as many as the bin is cells wide, rounded up).

    box: (4,) xyxy image pixels; spatial_scale: cells per pixel (1 / stride).
    """
    if method not in ROI_BIN_METHODS:
        raise ValueError(f"method must be one of {ROI_BIN_METHODS}, got {method!r}")
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    coords = _to_numpy(box).astype(np.float64).reshape(-1)
    if coords.shape != (4,):
        raise ValueError(f"box must have 4 numbers (x1, y1, x2, y2), got shape {tuple(_to_numpy(box).shape)}")
    steps = np.arange(output_size + 1, dtype=np.float64)
    result: dict[str, np.ndarray] = {}
    for axis, (start, end, limit) in (("x", (coords[0], coords[2], None if feature_size is None else feature_size[1])),
                                      ("y", (coords[1], coords[3], None if feature_size is None else feature_size[0]))):
        if method == "roi_pool":
            first, last = _round_half_away(np.array([start, end]) * spatial_scale)
            bin_size = max(last - first + 1, 1) / output_size
            lo = np.floor(steps[:-1] * bin_size) + first
            hi = np.ceil(steps[1:] * bin_size) + first
            if limit is not None:
                lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
            result[axis] = (lo.astype(np.int64), hi.astype(np.int64))
        else:
            first = start * spatial_scale
            bin_size = max(end * spatial_scale - first, 1.0) / output_size
            result[axis] = (first + steps[:-1] * bin_size, first + steps[1:] * bin_size)
            count = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_size))
            offsets = (np.arange(count) + 0.5) * bin_size / count
            result[f"samples_{axis}"] = result[axis][0][:, None] + offsets[None, :]
    return result


def draw_roi_bins(
    box: Any,
    spatial_scale: float,
    output_size: int = 7,
    ax: Axes | None = None,
    *,
    feature_map: Any = None,
    feature_size: tuple[int, int] | None = None,
    method: str = "roi_pool",
    sampling_ratio: int = 2,
    margin: float = 1.5,
    cmap: str = "magma",
    title: str | None = None,
) -> Axes:
    """One box's ``output_size x output_size`` pooling grid on the feature map (see `roi_bins`).

    The feature map (its mean over channels for (C, H, W)) is drawn cell by cell, cell ``j``
    centred on coordinate ``j``; the box scaled to the map is dashed white; the bins are cyan:
    for ``"roi_pool"`` whole cells (the box rounded to the grid, bins of unequal sizes), for
    ``"roi_align"`` the exact bins with their bilinear sample points. The view is the box plus
    ``margin`` cells.
    """
    if feature_map is not None:
        array = _to_numpy(feature_map).astype(np.float64)
        if array.ndim == 3:
            array = array.mean(axis=0)
        if array.ndim != 2:
            raise ValueError(f"feature_map must have shape (H, W) or (C, H, W), got {tuple(_to_numpy(feature_map).shape)}")
        feature_size = array.shape
    if feature_size is None:
        raise ValueError("give a feature_map or its feature_size (H, W)")
    height, width = _size_pair(feature_size, "feature_size")
    bins = roi_bins(box, spatial_scale, output_size, method=method, feature_size=(height, width),
                    sampling_ratio=sampling_ratio)
    if ax is None:
        _, ax = plt.subplots(figsize=(FIGURE_WIDTH_INCHES, FIGURE_WIDTH_INCHES))
    if feature_map is not None:
        ax.imshow(array, cmap=cmap, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    (x_lo, x_hi), (y_lo, y_hi) = bins["x"], bins["y"]
    shift = 0.5 if method == "roi_pool" else 0.0  # whole cells span [j - 0.5, j + 0.5]
    for i in range(output_size):
        for j in range(output_size):
            x0, y0 = x_lo[j] - shift, y_lo[i] - shift
            ax.add_patch(Rectangle((x0, y0), x_hi[j] - x_lo[j], y_hi[i] - y_lo[i], fill=False, edgecolor="cyan",
                                   linewidth=1.0))
    if method == "roi_align":
        sx, sy = bins["samples_x"].reshape(-1), bins["samples_y"].reshape(-1)
        grid_x, grid_y = np.meshgrid(sx, sy)
        ax.scatter(grid_x.reshape(-1), grid_y.reshape(-1), s=4, color="cyan", zorder=3)
    scaled = _to_numpy(box).astype(np.float64).reshape(-1) * spatial_scale
    ax.add_patch(Rectangle((scaled[0], scaled[1]), scaled[2] - scaled[0], scaled[3] - scaled[1], fill=False,
                           edgecolor="white", linestyle="--", linewidth=1.8))
    x_low, x_high = min(scaled[0], x_lo[0] - shift), max(scaled[2], x_hi[-1] - shift)
    y_low, y_high = min(scaled[1], y_lo[0] - shift), max(scaled[3], y_hi[-1] - shift)
    ax.set_xlim(x_low - margin, x_high + margin)
    ax.set_ylim(y_high + margin, y_low - margin)
    ax.set_aspect("equal")
    ax.set_xlabel("feature-map column")
    ax.set_ylabel("feature-map row")
    if title is not None:
        ax.set_title(title)
    return ax
