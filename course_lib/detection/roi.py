"""ROI pooling (Fast R-CNN): a fixed-size feature grid for every region of interest.

Each region is cut into ``output_size`` bins on the feature map and each bin keeps its maximum,
so regions of any size become, e.g., 7 x 7 x C features for the detection head.

The bins are computed exactly like ``torchvision.ops.roi_pool`` (coordinates scaled and rounded,
bin edges floored and ceiled). The maxima come without a loop over regions or bins: a table of
maxima over every 2^i x 2^j window of the feature map is built once (a "sparse table", a few
maxima of shifted copies), and any bin of height h and width w is covered exactly by four such
windows of size 2^floor(log2 h) x 2^floor(log2 w), so its maximum is the largest of four
table entries.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import _check_boxes, _check_same_device, _check_tensor

__all__ = ["roi_pool", "rois_from_boxes"]

#: An empty bin (a region entirely off the feature map) gives 0, like torchvision; a non-empty
#: bin never goes below -FLT_MAX, the starting value of torchvision's running maximum.
LOWEST_MAX = -torch.finfo(torch.float32).max


def rois_from_boxes(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> one (K, 5) tensor of ``(batch_index, x1, y1, x2, y2)`` rows.

    boxes: a list with one (K_i, 4) xyxy tensor per image  ->  (sum K_i, 5).
    """
    if isinstance(boxes, Tensor) or not isinstance(boxes, Sequence) or len(boxes) == 0:
        raise ValueError("boxes must be a non-empty list of (K_i, 4) tensors, one per image")
    for i, b in enumerate(boxes):
        _check_boxes(b, f"boxes[{i}]")
    _check_same_device(**{f"boxes[{i}]": b for i, b in enumerate(boxes)})
    dtype = boxes[0].dtype if boxes[0].is_floating_point() else torch.float32
    index = torch.cat([torch.full((len(b), 1), i, dtype=dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat((index, torch.cat([b.to(dtype) for b in boxes])), dim=1)


def _output_size(output_size) -> tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    if (not isinstance(output_size, (Sequence, torch.Size)) or len(output_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in output_size)):
        raise ValueError(f"output_size must be a positive int or (height, width), got {output_size!r}")
    return int(output_size[0]), int(output_size[1])


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` sends them to the even integer)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def _bin_edges(start: Tensor, end: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
    """Integer [lo, hi) edges of each region's bins along one axis, clipped to [0, limit].

    start, end: (K,) rounded region edges (inclusive)  ->  lo, hi: (K, bins) int64.
    """
    dtype = start.dtype
    length = (end - start + 1).clamp(min=1)  # a malformed region becomes 1 cell
    bin_size = length / bins
    steps = torch.arange(bins + 1, dtype=dtype, device=start.device)
    lo = torch.floor(steps[None, :-1] * bin_size[:, None]) + start[:, None]
    hi = torch.ceil(steps[None, 1:] * bin_size[:, None]) + start[:, None]
    return lo.clamp(0, limit).long(), hi.clamp(0, limit).long()


def _window_max_table(features: Tensor, levels_h: int, levels_w: int) -> Tensor:
    """Maxima over every 2^i x 2^j window of the feature map.

    features: (B, H, W, C)  ->  (levels_h, levels_w, B, H, W, C) where [i, j, b, y, x] is the
    maximum of features[b, y : y + 2^i, x : x + 2^j] (entries whose window would leave the
    map are padding and never read).
    """
    rows = [features]
    for i in range(1, levels_h):  # log2 of the largest bin: a handful of levels
        shift = 1 << (i - 1)
        grown = rows[-1].clone()
        grown[:, :-shift] = torch.maximum(rows[-1][:, :-shift], rows[-1][:, shift:])
        rows.append(grown)
    table = []
    for level in rows:
        cols = [level]
        for j in range(1, levels_w):
            shift = 1 << (j - 1)
            grown = cols[-1].clone()
            grown[:, :, :-shift] = torch.maximum(cols[-1][:, :, :-shift], cols[-1][:, :, shift:])
            cols.append(grown)
        table.append(torch.stack(cols))
    return torch.stack(table)


def _floor_log2(x: Tensor) -> Tensor:
    """floor(log2(x)) for integers x >= 1, exactly."""
    powers = 2 ** torch.arange(63, device=x.device, dtype=torch.int64)
    return torch.searchsorted(powers, x, right=True) - 1


def roi_pool(features: Tensor, rois: Tensor | Sequence[Tensor], output_size: int | tuple[int, int],
             spatial_scale: float = 1.0) -> Tensor:
    """Max-pool each region of interest to a fixed grid of bins.

    features: (B, C, H, W); rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image
    pixels, or a list of (K_i, 4) boxes per image; ``spatial_scale`` maps image pixels to
    feature cells (1/16 for a stride-16 backbone)  ->  (K, C, out_h, out_w).
    Same values (and gradients, ties aside) as ``torchvision.ops.roi_pool``.
    """
    _check_tensor(features, "features")
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
    if not isinstance(rois, Tensor):
        rois = rois_from_boxes(rois)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5) as (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    _check_same_device(features=features, rois=rois)
    out_h, out_w = _output_size(output_size)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)) or not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be a positive number, got {spatial_scale!r}")

    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0 or channels == 0:
        return features.new_zeros((num_rois, channels, out_h, out_w))
    dtype = features.dtype
    rois = rois.detach().to(dtype)
    image = rois[:, 0].long()  # truncation, like the C++ cast
    if bool(((image < 0) | (image >= batch)).any()):
        raise ValueError(f"rois[:, 0] must be batch indices in [0, {batch - 1}]")

    # Region edges on the feature map, rounded like torchvision (in the features' dtype).
    scale = torch.tensor(spatial_scale, dtype=dtype, device=features.device)
    x1, y1, x2, y2 = (_round_half_away(c * scale) for c in rois[:, 1:].unbind(1))
    row_lo, row_hi = _bin_edges(y1, y2, out_h, height)  # (K, out_h)
    col_lo, col_hi = _bin_edges(x1, x2, out_w, width)  # (K, out_w)
    row_len, col_len = row_hi - row_lo, col_hi - col_lo
    empty = (row_len[:, :, None] <= 0) | (col_len[:, None, :] <= 0)  # (K, out_h, out_w)

    # Each bin is covered by four windows of 2^level cells, aligned to its two ends.
    level_h, level_w = _floor_log2(row_len.clamp(min=1)), _floor_log2(col_len.clamp(min=1))
    levels_h, levels_w = int(level_h.max()) + 1, int(level_w.max()) + 1
    table = _window_max_table(features.permute(0, 2, 3, 1), levels_h, levels_w)
    table = table.reshape(-1, channels)  # rows indexed by (level_h, level_w, b, y, x)
    # (Clamped so that empty bins, masked below, still read inside the table.)
    top, bottom = row_lo.clamp(max=height - 1), (row_hi - (1 << level_h)).clamp(0, height - 1)  # (K, out_h)
    left, right = col_lo.clamp(max=width - 1), (col_hi - (1 << level_w)).clamp(0, width - 1)  # (K, out_w)

    def rows_of(y: Tensor, x: Tensor) -> Tensor:  # (K, out_h), (K, out_w) -> (K*out_h*out_w,)
        level = level_h[:, :, None] * levels_w + level_w[:, None, :]
        cell = (image[:, None, None] * height + y[:, :, None]) * width + x[:, None, :]
        return (level * (batch * height * width) + cell).reshape(-1)

    pooled = table.index_select(0, rows_of(top, left))
    for y, x in ((top, right), (bottom, left), (bottom, right)):
        pooled = torch.maximum(pooled, table.index_select(0, rows_of(y, x)))
    pooled = pooled.reshape(num_rois, out_h, out_w, channels).clamp(min=LOWEST_MAX)
    pooled = pooled.masked_fill(empty[..., None], 0)
    return pooled.permute(0, 3, 1, 2).contiguous()
