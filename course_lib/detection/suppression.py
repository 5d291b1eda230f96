"""Non-maximum suppression: one box per object.

Greedy NMS walks the boxes from the highest score down and keeps a box unless a box kept
before it overlaps it with IoU > ``iou_threshold``. Written as a loop over the kept boxes, it
makes one pass over the remaining boxes per kept box: thousands of small steps. The same
greedy result comes here from a few large vectorised steps, in two phases that suit the two
kinds of inputs NMS sees:

1. Dense overlaps (a detector's raw output: dozens of boxes on each object). The best
   `BLOCK` remaining boxes are settled among themselves (`_greedy_in_block`), then the boxes
   they keep remove every remaining box they overlap (`_overlaps_any`). A few blocks usually
   remove most boxes.
2. Sparse overlaps (once a block predicts that it would remove little). Two boxes only have a
   large IoU when they are close compared with their sizes, so `_close_pairs` compares each
   box with a short window of neighbours only (`_layout`; most of the N x N pairs are never
   looked at) and lists the pairs with IoU > threshold; `_greedy_on_pairs` settles the
   greedy order on them. The boxes go `CHUNK` at a time in greedy order: a chunk is first
   checked against the boxes kept from earlier chunks only, then settled among itself.

Both phases settle greedy chains in rounds: a box is kept when none of the better boxes that
overlap it is kept. Each round settles at least the best undecided box; in practice the
rounds number the longest chain "a removes b, which would have removed c" (a handful).

The kept indices and their order (decreasing score, equal scores by index) are those of
``torchvision.ops.nms`` and ``batched_nms``; the IoU is computed with the same operations in
the same order, so even borderline pairs are decided alike.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .boxes import _as_float, _check_boxes, _check_corners, _check_same_device, _check_tensor

__all__ = ["nms", "batched_nms"]

#: Boxes are compared in tiles of pairs whose intermediate tensors take at most 256 KB each
#: (65,536 float32 IoUs): they stay in the CPU cache and below the size from which memory is
#: mapped afresh from the system (and page-faulted) at every allocation; and a tile is big
#: enough that the cost of starting a tensor operation (a microsecond or so) hardly counts.
TILE_BYTES = 256 * 1024
#: Phase 1 settles the best remaining boxes this many at a time (a 128 x 128 tile) ...
BLOCK = 128
#: ... and hands over to phase 2 once a block's boxes look sparse: when the boxes it keeps can
#: be expected to remove less than this fraction of the rest.
DENSE_REMOVAL = 0.25
#: Phase 2 settles the remaining boxes this many at a time, in greedy order ...
CHUNK = 4096
#: ... and compares this many neighbouring boxes at a time with the union of their windows.
TILE_ROWS = 16
#: Relative safety margin of the window tests, far above float rounding, so that no pair the
#: exact IoU test accepts is left out of a window.
WINDOW_SLACK = 1e-3
#: `_sparse_nonzero` reads this many bool flags at once, as one 64-bit word.
FLAGS_PER_WORD = 8


def _check_inputs(boxes, scores, iou_threshold) -> float:
    _check_boxes(boxes)
    _check_tensor(scores, "scores")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes, got {tuple(scores.shape)}")
    _check_same_device(boxes=boxes, scores=scores)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not iou_threshold >= 0:
        raise ValueError(f"iou_threshold must be a number >= 0, got {iou_threshold!r}")
    # A quick look first (a sum and a minimum); only when it finds something odd do the
    # precise, slower checks run (a sum may also overflow on huge but finite coordinates).
    quick = _as_float(boxes.detach())
    if quick.numel() and not (math.isfinite(float(quick.sum())) and float((quick[:, 2:] - quick[:, :2]).min()) >= 0):
        if not bool(torch.isfinite(boxes).all()):
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
    boxes, by decreasing score, equal scores by index. These are the boxes torchvision's
    ``batched_nms`` keeps when it runs NMS class by class (above 1,000 boxes on the CPU; it
    then lists equal scores in no particular order). With fewer boxes it shifts each class's
    boxes far apart instead and runs one NMS, and the shifted coordinates can round a
    borderline IoU (boxes that just touch, at threshold 0) the other way.
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
    # Greedy order: decreasing score; equal scores keep their index order (stable sort).
    by_score = torch.sort(scores, descending=True, stable=True).indices
    if iou_threshold >= 1:  # an IoU is never above 1: every box is kept
        return by_score
    threshold = _float_threshold(iou_threshold, boxes.dtype)
    boxes = _columns(boxes, by_score)  # from here on a box is named by its greedy rank
    classes = None if classes is None else classes.index_select(0, by_score)
    kept = torch.zeros(len(by_score), dtype=torch.bool, device=boxes.device)

    remaining = _settle_dense_blocks(boxes, classes, threshold, kept)  # phase 1
    if remaining.numel() > 0:  # phase 2
        kept[remaining[_settle_sparse(boxes.index_select(1, remaining),
                                      None if classes is None else classes.index_select(0, remaining),
                                      iou_threshold, threshold)]] = True
    return by_score[kept]


# --------------------------------------------------------------------------- IoU tests


@functools.lru_cache(maxsize=64)
def _float_threshold(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number <= iou_threshold: for an IoU ``v`` computed in ``dtype``,
    ``v > result`` is exactly ``v > iou_threshold`` compared in double precision (as the
    C++ kernel of torchvision does), even when the threshold is not representable. (Returned
    as a Python float, which ``dtype`` represents exactly.)"""
    value = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(value) > iou_threshold:
        value = torch.nextafter(value, torch.tensor(float("-inf"), dtype=dtype))
    return float(value)


def _columns(boxes: Tensor, order: Tensor) -> Tensor:
    """boxes: (N, 4) xyxy, order: (N,)  ->  (5, N): rows x1, y1, x2, y2 and area of
    ``boxes[order]``, each row contiguous.

    (Row by row because an operation between an (N, 1) and a (1, M) tensor runs several
    times faster when each comes from a contiguous row than from a column of an (N, 4) one.)
    """
    x1, y1, x2, y2 = boxes.t().index_select(1, order)
    return torch.stack((x1, y1, x2, y2, (x2 - x1) * (y2 - y1)))


def _iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every box of ``boxes1`` with every box of ``boxes2``, with the operations in the
    order (and so with the rounding) of torchvision's NMS kernel, for comparing with a
    threshold >= 0.

    boxes1: (5, ..., N, 1), boxes2: (5, ..., 1, M), rows x1, y1, x2, y2, area as from
    `_columns`  ->  (..., N, M). Where two boxes do not overlap the result is 0 or negative
    (only the width of the overlap is clamped at 0, one operation fewer), and two empty boxes
    give 0 / 0 = NaN: none of these is above a threshold >= 0, as in the kernel.
    """
    x1a, y1a, x2a, y2a, area_a = boxes1.unbind(0)
    x1b, y1b, x2b, y2b, area_b = boxes2.unbind(0)
    overlap_w = (torch.minimum(x2b, x2a) - torch.maximum(x1b, x1a)).clamp_(min=0)
    inter = overlap_w.mul_(torch.minimum(y2b, y2a) - torch.maximum(y1b, y1a))
    return inter.div_((area_a + area_b).sub_(inter))


def _above(iou: Tensor, threshold: float) -> Tensor:
    """1.0 where iou > threshold, else 0.0 (NaN counts as not above), in the IoU's dtype.

    (The sign of iou - threshold, negatives set to 0: fast floating-point operations, where
    a comparison would give booleans that are slow to convert.)
    """
    return iou.nan_to_num_(0.0).sub_(threshold).sign_().clamp_(min=0)


# --------------------------------------------------------------------------- phase 1


def _settle_dense_blocks(boxes: Tensor, classes: Tensor | None, threshold: float, kept: Tensor) -> Tensor:
    """Phase 1: settle the best boxes a block at a time while blocks look dense.

    boxes: (5, N) from `_columns`, in greedy order; marks the boxes it keeps in ``kept`` (N,)
    and returns the greedy ranks of the boxes it has not settled, in greedy order.
    """
    remaining = torch.arange(boxes.shape[1], device=boxes.device)
    while remaining.numel() > 0:
        block, rest = remaining[:BLOCK], remaining[BLOCK:]
        block_boxes = boxes.index_select(1, block)
        # suppress[i, j] = 1: box i comes before box j and would remove it.
        suppress = _above(_iou(block_boxes[:, :, None], block_boxes[:, None, :]), threshold).triu_(diagonal=1)
        if classes is not None:
            block_classes = classes.index_select(0, block)
            suppress.mul_(block_classes[:, None] == block_classes[None, :])
        block_keep = _greedy_in_block(suppress)
        # The block is a sample of the rest: each of its boxes overlaps 2 * pairs / len(block)
        # of it, so the boxes it keeps should remove about kept * that / len(block) of the rest.
        pairs, num_kept = float(suppress.sum()), int(block_keep.sum())
        if rest.numel() > 0 and num_kept * 2 * pairs / len(block) ** 2 < DENSE_REMOVAL:
            return remaining  # sparse: phase 2 does better (and settles this block again)
        winners = block[block_keep]
        kept[winners] = True
        if rest.numel() == 0:
            return rest
        removed = _overlaps_any(boxes.index_select(1, winners), boxes.index_select(1, rest), threshold,
                                None if classes is None else classes.index_select(0, winners),
                                None if classes is None else classes.index_select(0, rest))
        remaining = rest[~removed]
    return remaining


def _greedy_in_block(suppress: Tensor) -> Tensor:
    """Greedy NMS within a block, from its "would remove" matrix.

    suppress: (B, B) 0/1 floats, [i, j] = 1 when box i comes before box j and overlaps it too
    much  ->  (B,) bool: kept. A box is kept when no kept box removes it; starting from
    "all kept", each round recomputes that rule from the previous round's answer. The first
    box is right after one round, the boxes only it can remove after two, and so on: once a
    round changes nothing, every box is settled as the greedy loop would settle it.
    """
    keep = torch.ones(suppress.shape[0], dtype=suppress.dtype, device=suppress.device)
    while True:
        # (keep @ suppress)[j]: how many kept boxes would remove box j (a sum of 0s and 1s: exact);
        # eq_(0) turns it into 1.0 where none would, else 0.0.
        new_keep = (keep @ suppress).eq_(0)
        if torch.equal(new_keep, keep):
            return keep.bool()
        keep = new_keep


def _overlaps_any(winners: Tensor, rest: Tensor, threshold: float,
                  winner_classes: Tensor | None, rest_classes: Tensor | None) -> Tensor:
    """Which boxes of ``rest`` overlap some box of ``winners`` (of their class) too much.

    winners: (5, W), rest: (5, R) from `_columns`  ->  (R,) bool. Compared a tile at a time.
    """
    num_rest = rest.shape[1]
    removed = torch.empty(num_rest, dtype=torch.bool, device=rest.device)
    step = max(1, TILE_BYTES // rest.element_size() // winners.shape[1])
    for lo in range(0, num_rest, step):
        iou = _iou(winners[:, :, None], rest[:, None, lo:lo + step]).nan_to_num_(0.0)  # (W, step)
        if winner_classes is not None:
            iou.mul_(winner_classes[:, None] == rest_classes[None, lo:lo + step])
        removed[lo:lo + step] = iou.amax(dim=0) > threshold
    return removed


# --------------------------------------------------------------------------- phase 2


def _settle_sparse(boxes: Tensor, classes: Tensor | None, iou_threshold: float, threshold: float) -> Tensor:
    """Phase 2: greedy NMS by pairs of close boxes, `CHUNK` boxes at a time.

    The boxes of a chunk are first compared with the boxes kept from earlier chunks only (the
    boxes removed earlier remove nothing), and those they overlap too much are dropped; the
    others are then settled among themselves (`_greedy_on_pairs`).

    boxes: (5, N) from `_columns`, in greedy order  ->  (N,) bool: kept.
    """
    num_boxes = boxes.shape[1]
    kept = torch.zeros(num_boxes, dtype=torch.bool, device=boxes.device)
    width, height = boxes[2] - boxes[0], boxes[3] - boxes[1]
    if num_boxes < 2 or float(height.max()) <= 0 or float(width.max()) <= 0:
        return ~kept  # flat boxes have IoU 0: nothing is removed
    layout = _layout(boxes[:4].double(), classes, iou_threshold)
    size = -(-num_boxes // -(-num_boxes // CHUNK))  # chunks of (nearly) equal sizes
    for start in range(0, num_boxes, size):
        in_chunk = torch.zeros_like(kept)
        in_chunk[start:start + size] = True
        if start > 0:  # the boxes kept so far remove what they overlap too much
            removed, _ = _close_pairs(boxes, classes, layout, in_chunk, kept, threshold)
            in_chunk[removed] = False
        first, second = _close_pairs(boxes, classes, layout, in_chunk, in_chunk, threshold)
        # Settled by greedy rank within the chunk (its boxes are in greedy order).
        rank = torch.cumsum(in_chunk, 0) - 1
        first, second = rank[first], rank[second]
        chunk_keep = _greedy_on_pairs(int(rank[-1]) + 1, torch.minimum(first, second), torch.maximum(first, second))
        kept[in_chunk.nonzero().squeeze(1)[chunk_keep]] = True
    return kept


def _layout(boxes: Tensor, classes: Tensor | None, iou_threshold: float) -> dict:
    """Where to look for the boxes that may overlap a box too much.

    IoU > t needs the boxes to overlap by more than t times the width of each (the overlap
    is at most as tall as either box, and the union at least as large as either), so the left
    edges of two such boxes are less than (1 - t) x the width of the left one apart; the same
    holds for top edges and heights. Also IoU <= the ratio of the widths, so the widths differ
    by less than a factor 1 / t. Hence:

    - bands: cut the image into horizontal bands at least (1 - t) x the tallest box high, by
      top edge; two boxes that overlap enough are in the same band or in neighbouring bands;
    - a sort key: (class, band, left edge) as one float64 number, the bands of a class side
      by side on a line, each `stride` long. A box's partners in a band then have keys from
      ``key - back`` to ``key + reach`` (shifted by ``stride`` per band), with
      ``reach = (1 - t) * w`` and ``back = (1 - t) / t * w``: a short window of the sorted keys.

    boxes: (4, N) float64 rows x1, y1, x2, y2  ->  {"key", "reach", "back": (N,) float64,
    "stride": float, "order": (N,) the boxes by key}; the windows carry a margin for float
    rounding (`WINDOW_SLACK`).
    """
    x1, y1, x2, y2 = boxes
    width, height = x2 - x1, y2 - y1
    t = iou_threshold * (1 - WINDOW_SLACK)  # looser than the exact test: never misses a pair
    reach = (1 - t) * width
    back = torch.full_like(width, (1 - t) * float(width.max()))
    if t > 0:
        back = torch.minimum(back, width * ((1 - t) / t))
    # Bands at least (1 - t) x the tallest box, and not so thin that tiles would be tiny.
    top = y1 - float(y1.min())
    band_height = max((1 - t) * float(height.max()), float(top.max()) * TILE_ROWS / len(x1))
    group = torch.floor(top / band_height)
    if classes is not None:  # one more, empty band per class: a neighbouring band never leaves it
        group += torch.unique(classes, return_inverse=True)[1] * (float(group.max()) + 2) + 1
    left = x1 - float(x1.min())
    stride = float(left.max() + reach.max() + back.max()) + 1.0  # no window leaves its band
    key = group * stride + left
    key_slack = 4 * torch.finfo(torch.float64).eps * float(key.max() + stride)  # float64 rounding
    return {"key": key, "reach": reach + key_slack, "back": back + key_slack, "stride": stride,
            "order": torch.argsort(key, stable=True)}


def _close_pairs(boxes: Tensor, classes: Tensor | None, layout: dict, is_row: Tensor, is_col: Tensor,
                 threshold: float) -> tuple[Tensor, Tensor]:
    """The pairs (row box, column box) of different boxes of one class with IoU > threshold.

    Rows and columns are sorted by key; `TILE_ROWS` consecutive rows are compared with the
    union of their windows among the columns, and all other pairs are never looked at. When
    the rows are the columns (``is_col is is_row``), each pair needs finding once only: its
    left box looks to the right in its own band, and both ways in the next band; otherwise
    each row looks both ways in its own band and in the two neighbouring ones. A pair may come
    twice.

    boxes: (5, N) from `_columns`; is_row, is_col: (N,) bool, which boxes are rows and which
    columns  ->  (row boxes (P,), column boxes (P,)) box indices.
    """
    key, stride, order = layout["key"], layout["stride"], layout["order"]
    same = is_row is is_col
    rows = order[is_row[order]]  # in key order
    cols = rows if same else order[is_col[order]]
    if len(rows) == 0 or len(cols) == 0:
        return rows[:0], rows[:0]
    col_key = key[cols]
    num_rows = len(rows)
    num_tiles = -(-num_rows // TILE_ROWS)
    # (the last tile is padded with the last row)
    tile_rows = rows[torch.arange(num_tiles * TILE_ROWS, device=key.device).clamp_(max=num_rows - 1)]
    row_key = key[tile_rows].view(num_tiles, TILE_ROWS)
    reach = layout["reach"][tile_rows].view(num_tiles, TILE_ROWS)
    back = layout["back"][tile_rows].view(num_tiles, TILE_ROWS)
    shifts = (0.0, stride) if same else (-stride, 0.0, stride)
    starts = torch.stack([(row_key + shift - back).amin(1) for shift in shifts])
    ends = torch.stack([(row_key + shift + reach).amax(1) for shift in shifts])
    col_lo = torch.searchsorted(col_key, starts.view(-1))
    col_hi = torch.searchsorted(col_key, ends.view(-1), right=True)
    tile = torch.arange(num_tiles, device=key.device).repeat(len(shifts))
    if same:  # in its own band a row looks right only: from the tile's first row on
        col_lo[:num_tiles] = tile[:num_tiles] * TILE_ROWS
    max_cols = TILE_BYTES // boxes.element_size() // TILE_ROWS
    tile, col_lo, col_hi = _cut_windows(tile, col_lo, col_hi, max_cols)
    if tile.numel() == 0:
        return rows[:0], rows[:0]
    row_pos, col_pos = _pairs_in_windows(boxes.index_select(1, rows), boxes.index_select(1, cols),
                                         tile, col_lo, col_hi, threshold)
    first, second = rows[row_pos], cols[col_pos]
    valid = first != second  # (a box and itself)
    if classes is not None:
        valid &= classes[first] == classes[second]
    return first[valid], second[valid]


def _pairs_in_windows(row_boxes: Tensor, col_boxes: Tensor, tile: Tensor, col_lo: Tensor, col_hi: Tensor,
                      threshold: float) -> tuple[Tensor, Tensor]:
    """Compare each tile of rows with its window of columns; the pairs with IoU > threshold.

    row_boxes: (5, R), col_boxes: (5, C) from `_columns`, each in key order; tile, col_lo,
    col_hi (T,) from `_cut_windows`  ->  (row positions (P,), column positions (P,)).
    """
    num_rows = row_boxes.shape[1]
    rows = torch.arange(-(-num_rows // TILE_ROWS) * TILE_ROWS, device=row_boxes.device).clamp_(max=num_rows - 1)
    tile_boxes = row_boxes.index_select(1, rows).view(5, -1, TILE_ROWS, 1)
    # Windows are padded with an empty box (zero area), which overlaps nothing.
    padding = col_boxes.shape[1]
    col_boxes = torch.cat((col_boxes, col_boxes.new_zeros(5, 1)), dim=1)
    lengths = (col_hi - col_lo).tolist()
    steps = torch.arange(max(lengths) + FLAGS_PER_WORD, device=col_boxes.device)
    max_pairs = TILE_BYTES // col_boxes.element_size()
    hit_windows, hit_rows, hit_cols = [], [], []
    start = 0
    while start < len(lengths):
        # A batch of windows of similar length (they are sorted by it), padded to the longest.
        stop = start + 1
        while stop < len(lengths) and (stop + 1 - start) * TILE_ROWS * lengths[stop] <= max_pairs:
            stop += 1
        num_cols = -(-lengths[stop - 1] // FLAGS_PER_WORD) * FLAGS_PER_WORD  # for `_sparse_nonzero`
        cols = col_lo[start:stop, None] + steps[:num_cols]
        cols.masked_fill_(cols >= col_hi[start:stop, None], padding)
        window_boxes = col_boxes.index_select(1, cols.view(-1)).view(5, stop - start, 1, num_cols)
        iou = _iou(tile_boxes.index_select(1, tile[start:stop]), window_boxes)  # (J, TILE_ROWS, num_cols)
        hit = _sparse_nonzero(iou > threshold)  # flat positions in (J, TILE_ROWS, num_cols)
        hit_windows.append(hit // (TILE_ROWS * num_cols) + start)
        hit_rows.append(hit // num_cols % TILE_ROWS)
        hit_cols.append(hit % num_cols)
        start = stop
    window, row, col = torch.cat(hit_windows), torch.cat(hit_rows), torch.cat(hit_cols)
    first = rows.index_select(0, tile.index_select(0, window) * TILE_ROWS + row)
    return first, col_lo.index_select(0, window) + col


def _cut_windows(tile: Tensor, col_lo: Tensor, col_hi: Tensor, max_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """Drop empty windows, cut long ones into pieces of at most ``max_cols`` columns, and sort
    them by length (so that a batch of windows is padded little).

    tile, col_lo, col_hi: (T,) a tile and its window [col_lo, col_hi) of sorted positions
    ->  the same for the pieces.
    """
    length = col_hi - col_lo
    keep = length > 0
    tile, col_lo, length = tile[keep], col_lo[keep], length[keep]
    pieces = (length + max_cols - 1) // max_cols
    piece_of = torch.repeat_interleave(pieces)  # which window each piece comes from
    first_piece = torch.cumsum(pieces, 0) - pieces
    offset = (torch.arange(len(piece_of), device=tile.device) - first_piece[piece_of]) * max_cols
    tile, col_lo = tile[piece_of], col_lo[piece_of] + offset
    length = torch.clamp(length[piece_of] - offset, max=max_cols)
    by_length = torch.argsort(length)
    return tile[by_length], col_lo[by_length], (col_lo + length)[by_length]


def _sparse_nonzero(mask: Tensor) -> Tensor:
    """Flat positions of the True entries of a bool tensor that is mostly False.

    mask: contiguous, a multiple of `FLAGS_PER_WORD` entries  ->  (K,) int64, increasing.
    (``torch.nonzero`` looks at one entry at a time; here 8 entries are read at once as one
    64-bit word, and only the few non-zero words are looked at entry by entry.)
    """
    flags = mask.view(-1, FLAGS_PER_WORD)
    words = flags.view(torch.int64).view(-1).nonzero().squeeze(1)
    word, entry = flags.index_select(0, words).nonzero().unbind(1)
    return words.index_select(0, word) * FLAGS_PER_WORD + entry


def _greedy_on_pairs(num_boxes: int, earlier: Tensor, later: Tensor) -> Tensor:
    """Greedy NMS on a list of "would remove" pairs.

    Boxes are named by their greedy rank; a pair (earlier[e], later[e]) with
    earlier[e] < later[e] means the two boxes overlap too much.
    Returns (num_boxes,) bool: kept.
    """
    kept = torch.zeros(num_boxes, dtype=torch.bool, device=earlier.device)
    removed = torch.zeros_like(kept)
    while earlier.numel() > 0:  # rounds: about as many as the longest chain of dependencies
        # No remaining pair points at it: every better box that overlaps it was removed.
        waiting = torch.zeros_like(kept)
        waiting[later] = True
        kept |= ~waiting & ~removed
        # A kept box removes every box it overlaps.
        removed[later[kept.index_select(0, earlier)]] = True
        # Pairs touching a removed box cannot change anything any more.
        live = ~(removed.index_select(0, earlier) | removed.index_select(0, later))
        earlier, later = earlier[live], later[live]
    return ~removed
