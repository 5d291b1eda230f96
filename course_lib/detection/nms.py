"""Non-maximum suppression: one box per object.

Greedy NMS walks the boxes from the highest score down and keeps a box unless a box kept
before it overlaps it with IoU > ``iou_threshold``. Written as a loop over kept boxes it needs
one pass over the remaining boxes per kept box. Here the same greedy result comes from a few
vectorised steps, in two phases that suit the two kinds of inputs NMS sees:

1. Dense overlaps (a detector's raw output: dozens of boxes on each object). The best
   `BLOCK` remaining boxes are settled among themselves, then the boxes they keep remove
   every remaining box they overlap. A few blocks usually leave little to do.
2. Sparse overlaps (once a block predicts it would remove little). `_overlapping_pairs`
   finds, once, every pair of remaining boxes with IoU > threshold. Two boxes only overlap
   that much when their centres are close compared with their sizes, so each box is compared
   with a short window of neighbours (same or next horizontal band, close left edges) and
   most of the N x N pairs are never looked at.

Both phases settle boxes with `_greedy_keep`, which resolves the greedy order on the "would
suppress" relation in rounds: a box whose better overlapping boxes have all been removed is
kept; a box overlapped by a kept box is removed. Each round settles at least the best
undecided box; in practice the rounds number the longest chain "a removes b, which would
have removed c" (a handful).

The kept indices and their order (decreasing score, equal scores by index) are those of
``torchvision.ops.nms`` and ``batched_nms``; the IoU is computed with the same operations in
the same order, so even borderline pairs are decided alike.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .boxes import _as_float, _check_boxes, _check_corners, _check_same_device, _check_tensor

__all__ = ["nms", "batched_nms"]

#: Boxes are compared in tiles of at most 32,768 pairs: each tile operation stays in the CPU
#: cache and below torch's parallel grain size (no thread start-up for every small tile).
TILE_PAIRS = 32_768
#: Phase 1 settles the best remaining boxes this many at a time (a 128 x 128 tile) ...
BLOCK = 128
#: ... and hands over to phase 2 once a block's boxes look sparse: when the boxes it keeps can
#: be expected to remove less than this fraction of the rest.
DENSE_REMOVAL = 0.25
#: Phase 2 tiles: 128 boxes against up to 256 boxes of their window.
TILE_ROWS = 128
TILE_COLS = TILE_PAIRS // TILE_ROWS
#: Relative safety margin of the window tests, far above float rounding, so that no pair the
#: exact IoU test accepts is left out of a window.
WINDOW_SLACK = 1e-3


def _check_inputs(boxes, scores, iou_threshold) -> float:
    _check_boxes(boxes)
    _check_tensor(scores, "scores")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}")
    _check_same_device(boxes=boxes, scores=scores)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not iou_threshold >= 0:
        raise ValueError(f"iou_threshold must be a number >= 0, got {iou_threshold!r}")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite (no NaN or inf coordinates)")
    _check_corners(boxes)
    return float(iou_threshold)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    boxes: (N, 4) xyxy, scores: (N,)  ->  (K,) int64 indices of the kept boxes, by
    decreasing score. A box is dropped when a kept, better-scoring box has IoU > iou_threshold
    with it.
    """
    iou_threshold = _check_inputs(boxes, scores, iou_threshold)
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each class: boxes of different classes never suppress
    each other.

    boxes: (N, 4) xyxy, scores: (N,), classes: (N,) int  ->  (K,) int64 indices of the kept
    boxes, by decreasing score, equal scores by index (torchvision's ``batched_nms`` keeps the
    same boxes; above 1,000 boxes it lists equal scores in no particular order).
    """
    iou_threshold = _check_inputs(boxes, scores, iou_threshold)
    _check_tensor(classes, "classes")
    if classes.shape != scores.shape:
        raise ValueError(f"classes must have shape ({boxes.shape[0]},) to match boxes, got {tuple(classes.shape)}")
    if classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"classes must be an integer tensor, got {classes.dtype}")
    _check_same_device(boxes=boxes, classes=classes)
    return _nms(boxes, scores, classes, iou_threshold)


def _nms(boxes: Tensor, scores: Tensor, classes: Tensor | None, iou_threshold: float) -> Tensor:
    boxes, scores = boxes.detach(), scores.detach()
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    boxes = _as_float(boxes)
    threshold = _float_threshold(iou_threshold, boxes.dtype).to(boxes.device)

    # Greedy order: decreasing score; equal scores keep their index order (stable sort).
    by_score = torch.sort(scores, descending=True, stable=True).indices
    # (index_select rather than boxes[by_score]: the latter starts threads even for small inputs)
    boxes = boxes.index_select(0, by_score)  # from here on a box is named by its greedy rank
    classes = None if classes is None else classes.index_select(0, by_score)
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)

    remaining = _settle_dense_blocks(boxes, classes, threshold, kept)  # phase 1
    if remaining.numel() > 0:  # phase 2
        first, second = _overlapping_pairs(boxes.index_select(0, remaining),
                                           None if classes is None else classes.index_select(0, remaining),
                                           iou_threshold, threshold)
        # `remaining` is in greedy order: the smaller index of a pair comes first.
        keep = _greedy_keep(len(remaining), torch.minimum(first, second), torch.maximum(first, second))
        kept[remaining[keep]] = True
    return by_score[kept]


def _settle_dense_blocks(boxes: Tensor, classes: Tensor | None, threshold: Tensor, kept: Tensor) -> Tensor:
    """Phase 1: settle the best boxes a block at a time while blocks look dense.

    boxes: (N, 4) in greedy order; marks the boxes it keeps in ``kept`` (N,) and returns the
    greedy ranks of the boxes it has not settled, in greedy order.
    """
    remaining = torch.arange(len(boxes), device=boxes.device)
    while remaining.numel() > 0:
        block, rest = remaining[:BLOCK], remaining[BLOCK:]
        block_boxes = boxes.index_select(0, block)
        overlaps = _same_class(_iou_exceeds(block_boxes, block_boxes, threshold), classes, block, block)
        upper = _column_after_row(len(block), 0, len(block), 0, boxes.device)
        earlier, later = (overlaps & upper).nonzero().unbind(1)
        block_keep = _greedy_keep(len(block), earlier, later)
        winners, winner_boxes = block[block_keep], block_boxes[block_keep]
        # The block is a sample of the rest: each of its boxes overlaps 2 * pairs / len(block)
        # of it, so the winners should remove about winners * that / len(block) of the rest.
        expected_removal = len(winners) * 2 * len(earlier) / len(block) ** 2
        if rest.numel() > 0 and expected_removal < DENSE_REMOVAL:
            return remaining  # sparse: phase 2 does better (and settles this block again)
        kept[winners] = True
        removed = torch.zeros(len(rest), dtype=torch.bool, device=boxes.device)
        step = max(1, TILE_PAIRS // max(1, len(winners)))
        for lo in range(0, len(rest), step):  # the winners remove what they overlap, a tile at a time
            chunk = rest[lo:lo + step]
            overlaps = _iou_exceeds(winner_boxes, boxes.index_select(0, chunk), threshold)
            overlaps = _same_class(overlaps, classes, winners, chunk)
            removed[lo:lo + step] = overlaps.any(dim=0)
        remaining = rest[~removed]
    return remaining


def _column_after_row(num_rows: int, first_row: int, num_cols: int, first_col: int,
                      device: torch.device | None = None) -> Tensor:
    """(num_rows, num_cols) bool: column index > row index, for a tile starting at
    (first_row, first_col). (A comparison rather than ``triu``, which runs threads even on
    small tiles.)"""
    rows = torch.arange(first_row, first_row + num_rows, device=device)
    cols = torch.arange(first_col, first_col + num_cols, device=device)
    return cols[None, :] > rows[:, None]


def _same_class(overlaps: Tensor, classes: Tensor | None, rows: Tensor, cols: Tensor) -> Tensor:
    """Keep only overlaps between boxes of one class (all of them without classes)."""
    if classes is None:
        return overlaps
    return overlaps & (classes[rows][:, None] == classes[cols][None, :])


def _float_threshold(iou_threshold: float, dtype: torch.dtype) -> Tensor:
    """The largest ``dtype`` number <= iou_threshold: for an IoU ``v`` computed in ``dtype``,
    ``v > result`` is exactly ``v > iou_threshold`` compared in double precision (as the
    C++ kernel of torchvision does), even when the threshold is not representable."""
    value = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(value) > iou_threshold:
        value = torch.nextafter(value, torch.tensor(float("-inf"), dtype=dtype))
    return value


def _iou_exceeds(boxes1: Tensor, boxes2: Tensor, threshold: Tensor,
                 area1: Tensor | None = None, area2: Tensor | None = None) -> Tensor:
    """IoU(boxes1[i], boxes2[j]) > threshold, with the operations in the order (and so with
    the rounding) of torchvision's kernel.

    boxes1: (N, 4), boxes2: (M, 4) xyxy, threshold from `_float_threshold`, optional areas
    (N,), (M,)  ->  (N, M) bool.
    """
    x1a, y1a, x2a, y2a = (c[:, None] for c in boxes1.unbind(1))
    x1b, y1b, x2b, y2b = (c[None, :] for c in boxes2.unbind(1))
    area1 = (x2a - x1a) * (y2a - y1a) if area1 is None else area1[:, None]
    area2 = (x2b - x1b) * (y2b - y1b) if area2 is None else area2[None, :]
    overlap_w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_(min=0)
    overlap_h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_(min=0)
    inter = overlap_w.mul_(overlap_h)
    return inter.div_((area1 + area2).sub_(inter)) > threshold  # 0 / 0 is NaN: not above


def _overlapping_pairs(boxes: Tensor, classes: Tensor | None, iou_threshold: float,
                       threshold: Tensor) -> tuple[Tensor, Tensor]:
    """All pairs of boxes (of the same class) with IoU > iou_threshold, each pair once.

    IoU > t needs the boxes to overlap by more than t times the width (height) of each, so
    their centres are less than (1 - t) x the larger width (height) apart. Hence:

    - bands: cut the image into horizontal bands at least (1 - t) x the tallest box high;
      two boxes that overlap enough are in the same band or in neighbouring bands;
    - windows: sort each band by left edge; box p can only overlap enough with boxes whose
      left edge lies in a window: after p's and before ``x2 - t * w`` in its own band; in the
      next band after ``x1 - (1 - t) * widest`` and before ``x2 - t * w``.

    Blocks of rows are compared with their windows in dense tiles; all other pairs are
    never looked at.

    boxes: (N, 4) xyxy  ->  (first (P,), second (P,)) int64 box indices.
    """
    device = boxes.device
    empty = torch.empty(0, dtype=torch.int64, device=device)
    num_boxes = boxes.shape[0]
    x1, y1, x2, y2 = boxes.double().unbind(1)
    width, height = x2 - x1, y2 - y1
    t = iou_threshold * (1 - WINDOW_SLACK)  # looser than the exact test: never misses a pair
    if num_boxes < 2 or iou_threshold >= 1 or float(height.max()) <= 0:
        return empty, empty  # IoU never exceeds 1; flat boxes have IoU 0
    centre_y = (y1 + y2) / 2 - float(y1.min())
    # Bands at least (1 - t) x the tallest box, and not so thin that tiles would be tiny.
    band_height = max((1 - t) * float(height.max()), float(centre_y.max()) * TILE_ROWS / num_boxes)
    band = torch.floor(centre_y / band_height).long()
    num_bands = int(band.max()) + 2  # one empty band more, so "the next band" never leaves a class
    group = band if classes is None else torch.unique(classes, return_inverse=True)[1] * num_bands + band
    reach = x2 - t * width  # partners start left of this ...
    back = x1 - (1 - t) * float(width.max())  # ... and, in the next band, right of this

    # Exact integer keys (group, left edge): ranks of all coordinates, groups offset past them.
    _, rank = torch.unique(torch.cat((x1, reach, back)), return_inverse=True)
    left_key, reach_key, back_key = (rank.view(3, -1) + group * (3 * num_boxes)).unbind(0)
    order = torch.argsort(left_key, stable=True)
    sorted_key, reach_key, back_key = left_key[order], reach_key[order], back_key[order]
    next_group = 3 * num_boxes  # add to a key: the same coordinate in the next group
    # Positions in sorted_key (keys are integers: "<= k" is "< k + 1"): where each box's window
    # ends in its band, starts and ends in the next band, and where its group ends.
    queries = torch.cat((reach_key, back_key + next_group + 1, reach_key + next_group,
                         sorted_key - sorted_key % next_group + next_group))
    same_end, next_start, next_end, group_end = torch.searchsorted(sorted_key, queries).view(4, -1).tolist()

    ordered = boxes.index_select(0, order)
    area = (ordered[:, 2] - ordered[:, 0]) * (ordered[:, 3] - ordered[:, 1])
    firsts, seconds = [], []
    start = 0
    while start < num_boxes:  # blocks of rows, never across two groups ...
        stop = min(start + TILE_ROWS, group_end[start])
        rows = slice(start, stop)
        windows = [(start + 1, max(same_end[start:stop]), True),
                   (min(next_start[start:stop]), max(next_end[start:stop]), False)]
        for lo, hi, same_band in windows:  # ... against their windows, a tile at a time
            for tile_lo in range(lo, hi, TILE_COLS):
                cols = slice(tile_lo, min(tile_lo + TILE_COLS, hi))
                overlaps = _iou_exceeds(ordered[rows], ordered[cols], threshold, area[rows], area[cols])
                if same_band and tile_lo < stop:  # a pair once: the column after the row
                    overlaps &= _column_after_row(stop - start, start, cols.stop - tile_lo, tile_lo, device)
                row, col = overlaps.nonzero().unbind(1)
                firsts.append(row + start)
                seconds.append(col + tile_lo)
        start = stop
    if not firsts:
        return empty, empty
    return order[torch.cat(firsts)], order[torch.cat(seconds)]


def _greedy_keep(num_boxes: int, earlier: Tensor, later: Tensor) -> Tensor:
    """Greedy NMS on a suppression graph.

    Boxes are named by their greedy rank; an edge (earlier[e], later[e]) with
    earlier[e] < later[e] means the two boxes overlap too much.
    Returns (num_boxes,) bool: kept.
    """
    kept = torch.zeros(num_boxes, dtype=torch.bool, device=earlier.device)
    removed = torch.zeros_like(kept)
    while earlier.numel() > 0:  # rounds: about as many as the longest chain of dependencies
        # No remaining edge points at it: every better box that overlaps it was removed.
        waiting = torch.zeros_like(kept)
        waiting[later] = True
        kept |= ~waiting & ~removed
        # A kept box removes every box it overlaps.
        removed[later[kept.index_select(0, earlier)]] = True
        # Edges touching a removed box cannot change anything any more.
        live = ~(removed.index_select(0, earlier) | removed.index_select(0, later))
        earlier, later = earlier[live], later[live]
    return ~removed
