"""ROI pooling (Fast R-CNN): a fixed-size feature grid for every region of interest.

Each region is cut into ``output_size`` bins on the feature map and each bin keeps its maximum,
so regions of any size become, e.g., 7 x 7 x C features for the detection head.

The bins are computed exactly like ``torchvision.ops.roi_pool`` (coordinates scaled and rounded,
bin edges floored and ceiled). The maxima come without a loop over regions or bins, from a
"sparse table": the maxima over every 2^i x 2^j window of the feature map, each level made
from the previous one by one maximum of two shifted copies. Any bin of height h and width w is
covered exactly by four windows of size 2^floor(log2 h) x 2^floor(log2 w) aligned to its
corners, so its maximum is the largest of four table entries. The levels are visited one at a
time (a handful of them), and each serves the bins of its size: the feature map is never
copied per region or per bin.
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

    # Every bin, flattened, sorted by its table level (empty bins first, as level -1).
    level_h, level_w = _floor_log2(row_len.clamp(min=1)), _floor_log2(col_len.clamp(min=1))
    levels_h, levels_w = int(level_h.max()) + 1, int(level_w.max()) + 1
    level = (level_h[:, :, None] * levels_w + level_w[:, None, :]).masked_fill_(empty, -1).view(-1)
    level, order = torch.sort(level)
    count = torch.bincount(level + 1, minlength=levels_h * levels_w + 1).tolist()
    # Each bin's image and the first cell of its four windows: rows aligned to the bin's top
    # or bottom edge, columns to its left or right edge; (5, K * out_h * out_w) in level order.
    bins = (num_rois, out_h, out_w)
    corners = torch.stack((image[:, None, None].expand(bins),
                           row_lo[:, :, None].expand(bins), (row_hi - (1 << level_h))[:, :, None].expand(bins),
                           col_lo[:, None, :].expand(bins), (col_hi - (1 << level_w))[:, None, :].expand(bins)))
    corners = corners.view(5, -1).index_select(1, order)

    # Channels last: a table entry is a contiguous row of C values. Torchvision's running
    # maximum starts at -FLT_MAX, so a lower value (-inf) never comes out of a non-empty bin.
    rows_level = features.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
    if float(rows_level.detach().min()) < LOWEST_MAX:
        rows_level = rows_level.clamp(min=LOWEST_MAX)
    pooled = features.new_zeros(num_rois * out_h * out_w, channels)  # empty bins stay 0
    done = count[0]
    for i in range(levels_h):  # log2 of the tallest bin: a handful of levels
        if i > 0:  # maxima over 2^i rows: two windows of 2^(i-1) rows
            shift = 1 << (i - 1)
            rows_level = torch.maximum(rows_level[:, :-shift], rows_level[:, shift:])
        window = rows_level  # (B, H - 2^i + 1, W - 2^j + 1, C): window maxima at their top-left cell
        for j in range(levels_w):
            if j > 0:
                shift = 1 << (j - 1)
                window = torch.maximum(window[:, :, :-shift], window[:, :, shift:])
            n = count[1 + i * levels_w + j]
            if n == 0:
                continue
            here = slice(done, done + n)  # the bins of 2^i x 2^j windows
            done += n
            bin_image, ys, xs = corners[0, here], corners[1:3, here], corners[3:, here]
            ys = ys + bin_image * window.shape[1]  # rows of the (B * rows, columns) map
            cells = (ys[:, None, :] * window.shape[2] + xs[None, :, :]).view(-1)  # (4 * n,)
            best = window.reshape(-1, channels).index_select(0, cells).view(4, n, channels).amax(dim=0)
            pooled.index_copy_(0, order[here], best)
    if count[0] == len(level):  # every bin empty: zeros, still part of the graph (for autograd)
        pooled = pooled + features.flatten()[:0].sum()
    return pooled.view(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2).contiguous()
