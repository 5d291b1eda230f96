"""Non-maximum suppression: one box per object.

Greedy NMS walks the boxes from the highest score down and keeps a box unless a box kept
before it overlaps it with IoU > ``iou_threshold``. Written as a loop over kept boxes it needs
one pass over the remaining boxes per kept box. Here the same greedy result comes from a few
vectorised steps, in two phases that suit the two kinds of inputs NMS sees:

1. Dense overlaps (a detector's raw output: dozens of boxes on each object). The best
   ``BLOCK`` remaining boxes are settled among themselves, then the boxes they keep remove,
   in one comparison, every remaining box they overlap. A few blocks usually leave little.
2. Sparse overlaps (once a block keeps most of its boxes). `_overlapping_pairs` finds, once,
   every pair of remaining boxes with IoU > threshold: two boxes can only overlap that much
   if they overlap a lot horizontally, so after sorting boxes by their left edge each box is
   compared only with a short window of the boxes after it (dense tiles of bounded size; most
   of the N x N pairs are never looked at).

Both phases settle a set of boxes with `_greedy_keep`, which resolves the greedy order on a
"would suppress" relation in rounds: a box whose better overlapping boxes have all been
removed is kept; a box overlapped by a kept box is removed. Each round settles at least the
best undecided box; in practice the rounds number the longest chain "a removes b, which
would have removed c" (a handful).

The kept indices and their order (decreasing score, equal scores by index) are those of
``torchvision.ops.nms`` and ``batched_nms``.
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
#: ... and hands over to phase 2 once a block keeps more than this fraction of its boxes.
DENSE_KEEP_FRACTION = 0.5
#: Phase 2 tiles: 32 boxes against up to 1024 boxes of their window.
TILE_ROWS = 32
TILE_COLS = TILE_PAIRS // TILE_ROWS
#: Relative safety margin of the horizontal-window test, far above float rounding, so that no
#: pair the exact IoU test accepts is left out of a window.
WINDOW_SLACK = 1e-3


def _check_inputs(boxes, scores, iou_threshold) -> float:
    _check_boxes(boxes)
    _check_tensor(scores, "scores")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}")
    _check_same_device(boxes=boxes, scores=scores)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not iou_threshold >= 0:
        raise ValueError(f"iou_threshold must be a number >= 0, got {iou_threshold!r}")
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
    boxes, by decreasing score.
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
    boxes = boxes[by_score]  # from here on a box is named by its greedy rank
    classes = None if classes is None else classes[by_score]
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)

    # Phase 1: the best boxes, block by block, while blocks keep few of their boxes.
    remaining = torch.arange(len(boxes), device=boxes.device)
    while remaining.numel() > 0:
        block, rest = remaining[:BLOCK], remaining[BLOCK:]
        overlaps = _iou_exceeds(boxes[block], boxes[block], threshold)
        if classes is not None:
            overlaps &= classes[block][:, None] == classes[block][None, :]
        earlier, later = overlaps.triu_(diagonal=1).nonzero().unbind(1)
        block_keep = _greedy_keep(len(block), earlier, later)
        if rest.numel() > 0 and int(block_keep.sum()) > DENSE_KEEP_FRACTION * len(block):
            break  # sparse overlaps: phase 2 does better (and settles this block again)
        winners = block[block_keep]
        kept[winners] = True
        removed = torch.zeros(len(rest), dtype=torch.bool, device=boxes.device)
        step = max(1, TILE_PAIRS // max(1, len(winners)))
        for lo in range(0, len(rest), step):  # the rest, a tile at a time
            chunk = rest[lo:lo + step]
            overlaps = _iou_exceeds(boxes[winners], boxes[chunk], threshold)
            if classes is not None:
                overlaps &= classes[winners][:, None] == classes[chunk][None, :]
            removed[lo:lo + step] = overlaps.any(dim=0)
        remaining = rest[~removed]
    else:
        return by_score[kept]

    # Phase 2: every overlapping pair among the remaining boxes, then the greedy rounds.
    first, second = _overlapping_pairs(boxes[remaining], None if classes is None else classes[remaining],
                                       iou_threshold, threshold)
    # Remaining boxes are in greedy order, so the smaller index of a pair comes first.
    keep = _greedy_keep(len(remaining), torch.minimum(first, second), torch.maximum(first, second))
    kept[remaining[keep]] = True
    return by_score[kept]


def _float_threshold(iou_threshold: float, dtype: torch.dtype) -> Tensor:
    """The largest ``dtype`` number <= iou_threshold: for an IoU ``v`` computed in ``dtype``,
    ``v > result`` is exactly ``v > iou_threshold`` compared in double precision (as the
    C++ kernel of torchvision does), even when the threshold is not representable."""
    value = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(value) > iou_threshold:
        value = torch.nextafter(value, torch.tensor(float("-inf"), dtype=dtype))
    return value


def _iou_exceeds(boxes1: Tensor, boxes2: Tensor, threshold: Tensor) -> Tensor:
    """IoU(boxes1[i], boxes2[j]) > threshold, with the operations in the order (and so with
    the rounding) of torchvision's kernel.

    boxes1: (N, 4), boxes2: (M, 4) xyxy, threshold from `_float_threshold`  ->  (N, M) bool.
    """
    x1a, y1a, x2a, y2a = (c[:, None] for c in boxes1.unbind(1))
    x1b, y1b, x2b, y2b = (c[None, :] for c in boxes2.unbind(1))
    overlap_w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_(min=0)
    overlap_h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_(min=0)
    inter = overlap_w.mul_(overlap_h)
    union = ((x2a - x1a) * (y2a - y1a) + (x2b - x1b) * (y2b - y1b)).sub_(inter)
    return inter.div_(union) > threshold  # 0 / 0 (two empty boxes) is NaN: not above


def _overlapping_pairs(boxes: Tensor, classes: Tensor | None, iou_threshold: float,
                       threshold: Tensor) -> tuple[Tensor, Tensor]:
    """All pairs of boxes (of the same class) with IoU > iou_threshold, each pair once.

    boxes: (N, 4) xyxy  ->  (first (P,), second (P,)) int64 box indices.
    """
    num_boxes = boxes.shape[0]
    device = boxes.device
    x1, x2 = boxes[:, 0].double(), boxes[:, 2].double()
    # If IoU > t then the horizontal overlap exceeds t * width of each box. So a box q whose
    # left edge is not left of box p's can only matter to p if x1_q < reach_p:
    reach = x2 - iou_threshold * (1 - WINDOW_SLACK) * (x2 - x1)
    # Sort by (class, left edge). Ranks of the coordinates make exact integer keys, and
    # offsetting each class past all ranks keeps a window inside its class.
    _, coordinate_rank = torch.unique(torch.cat((x1, reach)), return_inverse=True)
    class_offset = 0
    if classes is not None:
        class_offset = torch.unique(classes, return_inverse=True)[1] * (2 * num_boxes)
    left_key = coordinate_rank[:num_boxes] + class_offset
    reach_key = coordinate_rank[num_boxes:] + class_offset
    order = torch.argsort(left_key, stable=True)
    # Box at sorted position p can overlap the boxes at sorted positions p < q < window_end[p].
    window_end = torch.searchsorted(left_key[order], reach_key[order])

    ordered = boxes[order]
    position = torch.arange(num_boxes, device=device)
    ends = window_end.tolist()
    firsts, seconds = [], []
    for start in range(0, num_boxes, TILE_ROWS):  # blocks of rows ...
        stop = min(start + TILE_ROWS, num_boxes)
        rows = slice(start, stop)
        for lo in range(start + 1, max(ends[start:stop]), TILE_COLS):  # ... against their window
            cols = slice(lo, min(lo + TILE_COLS, max(ends[start:stop])))
            in_window = ((position[None, cols] > position[rows, None])
                         & (position[None, cols] < window_end[rows, None]))
            row, col = (_iou_exceeds(ordered[rows], ordered[cols], threshold) & in_window).nonzero().unbind(1)
            firsts.append(row + start)
            seconds.append(col + lo)
    if not firsts:
        empty = torch.empty(0, dtype=torch.int64, device=device)
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
