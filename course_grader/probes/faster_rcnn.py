"""Exercise 5 (Faster R-CNN step by step): the grader's own calls.

Expected answers come from the course's library:

- q1 ``make_anchors`` / ``anchors_inside``: `course_lib.detection.anchors.rpn_anchors` (the source's
  convention: centres at ``(i + 0.5) * stride``) and `inside_image`;
- q2 ``rpn_labels``: `course_lib.detection.matching.label_anchors` (negatives first, then positives,
  every anchor tying for an object's best IoU forced, an object that overlaps nothing forcing nothing);
- q3 ``sample_minibatch``: random, so checked for what the question promises (`Satisfies`): the exact
  numbers of positives and negatives of `sample_labels`, kept anchors keeping their label, the same
  seed giving the same draw and another seed another one; without a choice to make, the result is
  compared with `sample_labels`' exactly;
- q4 ``encode`` / ``decode``: `course_lib.detection.boxes.encode_boxes` and `decode_boxes`;
- q5 ``flatten_head_output``: `course_lib.detection.ssd.flatten_conv` (the RPN head's reshape);
- q6 ``select_proposals``: `select_proposals_reference`, the source's order of
  `course_lib.detection.faster_rcnn.region_proposals.filter_proposals` (``order="seed"``) on
  probabilities instead of logits, built from `clip_boxes` and `course_lib.detection.suppression.nms`;
- q7 ``roi_max_pool``: `course_lib.detection.roi.roi_pool` (torchvision's quantisation).

Inputs are exact binary fractions, so that every right formula agrees on every tie and threshold:
box coordinates are multiples of 1/8 pixel below 256 (areas, intersections and unions are then
exact in float32), IoUs given to the labelling are multiples of 1/64, scores are distinct multiples
of 1/1024, the thresholds that decide something on exact ties are binary fractions too (0.375, not
0.3), and the ratios of anchors that must meet the image's edge exactly are 1/4, 1 and 4 (square
roots 1/2, 1, 2). ROI pooling's boxes land on half feature cells (rounding halves up is part of the
question) and its regions stay below 29 cells, from where float32, float64 and integer arithmetic
can put the end of a 7-bin region's last bin one cell apart.
"""
from __future__ import annotations

import torch

from course_lib.detection.anchors import inside_image, rpn_anchors
from course_lib.detection.boxes import clip_boxes, decode_boxes, encode_boxes
from course_lib.detection.matching import label_anchors, sample_labels
from course_lib.detection.suppression import nms
from course_lib.detection.roi import roi_pool
from course_lib.detection.ssd import flatten_conv
from ..probe_types import Call, Satisfies

#: Steps of the random inputs: pixel coordinates, IoUs, scores, other values (deltas, features).
PIXEL_STEP = 2.0 ** -3
IOU_STEP = 2.0 ** -6
SCORE_STEP = 2.0 ** -10
VALUE_STEP = 2.0 ** -10
#: The source's anchors: height / width ratios and sizes in strides; ratios with exact square roots.
SOURCE_RATIOS, SOURCE_SCALES = (0.5, 1.0, 2.0), (8.0, 16.0, 32.0)
EXACT_RATIOS = (0.25, 1.0, 4.0)
#: The RPN's labelling thresholds: the source's, and exact binary fractions.
LABEL_THRESHOLDS = ((0.7, 0.3), (0.75, 0.25), (0.625, 0.375), (0.5, 0.5))
#: Labels of the exercise (and of `course_lib.detection.matching`).
POSITIVE, NEGATIVE, IGNORE = 1, 0, -1
#: Box coding weights: the RPN's (none), Fast R-CNN's head's, and arbitrary ones.
RPN_WEIGHTS, HEAD_WEIGHTS, ODD_WEIGHTS = (1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 7.0)
#: NMS thresholds of the proposals (the source's 0.7 too: the set-up's nms decides, not the answer).
NMS_THRESHOLDS = (0.7, 0.5, 0.625, 0.75)
#: ROI pooling: spatial scales (1 / stride) and output sizes; regions stay below this many cells.
SPATIAL_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625)
POOL_SIZES = (7, 2, 3, 1, 5)
MAX_ROI_CELLS = 28


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _quantized(values: torch.Tensor, step: float) -> torch.Tensor:
    return (values / step).round() * step


def _boxes(count: int, generator: torch.Generator, corner_low: float, corner_high: float, size_low: float,
           size_high: float) -> torch.Tensor:
    """(count, 4) xyxy boxes on the `PIXEL_STEP` grid: top-left corners in [corner_low, corner_high),
    widths and heights in [size_low, size_high]."""
    top_left = _quantized(corner_low + torch.rand(count, 2, generator=generator) * (corner_high - corner_low),
                          PIXEL_STEP)
    size = _quantized(size_low + torch.rand(count, 2, generator=generator) * (size_high - size_low), PIXEL_STEP)
    return torch.cat([top_left, top_left + size], dim=1)


def _feature_map(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """What make_anchors reads from a feature map: its size (and device); zeros travel shortest."""
    return torch.zeros(batch, channels, height, width)


# --- Q1: anchors and the inside filter ------------------------------------------------------------

def anchors_calls(question: str, generator: torch.Generator) -> list[Call]:
    """make_anchors on small maps (non-square, B and C > 1 once), the defaults, exact ratios, one ratio,
    a stride that is no power of two; anchors_inside on anchors that meet the image's edges exactly,
    on random boxes with corners on the edges, on anchors all outside, and on no anchors."""
    calls = []
    cases = [  # (B, C, H, W, stride, ratios, scales), None: the signature's defaults
        (1, 1, _randint(2, 5, generator), _randint(2, 6, generator), 16, None, None),
        (2, 3, _randint(1, 3, generator), _randint(3, 4, generator), 16, None, None),
        (1, 1, _randint(2, 4, generator), _randint(2, 4, generator), 8, EXACT_RATIOS, (2.0, 4.0)),
        (1, 1, 1, 1, 32, (1.0,), (1.0, 2.0, 4.0, 8.0)),
        (1, 2, _randint(2, 5, generator), _randint(1, 3, generator), 12, SOURCE_RATIOS, (1.5, 3.0)),
        (1, 1, 3, 2, 4, (2.0, 0.5), (4.0,)),
    ]
    for batch, channels, height, width, stride, ratios, scales in cases:
        features = _feature_map(batch, channels, height, width)
        args = (features, stride) if ratios is None else (features, stride, ratios, scales)
        expected = rpn_anchors((height, width), stride, *(() if ratios is None else (ratios, scales)),
                               convention="seed")
        calls.append(Call(question, "make_anchors", args, expected))

    # Anchors of size 1 and 2 strides with exact ratios: the first column's x1 is 0, the last column's x2
    # is the image's width (and the same for rows): inside, edges included.
    for height, width, stride in [(3, 4, 8), (_randint(2, 5, generator), _randint(2, 5, generator), 16)]:
        anchors = rpn_anchors((height, width), stride, EXACT_RATIOS, (1.0, 2.0), convention="seed")
        calls.append(Call(question, "anchors_inside", (anchors, height * stride, width * stride),
                          inside_image(anchors, height * stride, width * stride)))
    image_h, image_w = 8 * _randint(6, 12, generator), 8 * _randint(6, 12, generator)
    boxes = _boxes(40, generator, -16.0, 96.0, 0.0, 48.0)
    edges = torch.randint(0, 4, (40,), generator=generator)  # move one coordinate onto its edge
    for side, value in enumerate((0.0, 0.0, float(image_w), float(image_h))):
        chosen = edges == side
        shift = value - boxes[chosen, side]
        boxes[chosen, side % 2::2] += shift[:, None]
    calls.append(Call(question, "anchors_inside", (boxes, image_h, image_w), inside_image(boxes, image_h, image_w)))
    outside = _boxes(6, generator, 100.0, 120.0, 1.0, 8.0)
    calls.append(Call(question, "anchors_inside", (outside, 64, 64), inside_image(outside, 64, 64)))
    calls.append(Call(question, "anchors_inside", (torch.zeros(0, 4), 64, 48), torch.zeros(0, dtype=torch.bool)))
    return calls


# --- Q2: RPN labels -------------------------------------------------------------------------------

def iou_matrix(num_gt: int, num_anchors: int, generator: torch.Generator, thresholds: tuple[float, float]) -> torch.Tensor:
    """(G, A) IoUs on the `IOU_STEP` grid: most entries 0 (anchors far from every object), some
    exactly at the thresholds, each object's best IoU shared by up to three anchors, and (with two
    objects or more) one object that overlaps no anchor at all."""
    values = _quantized(torch.rand(num_gt, num_anchors, generator=generator), IOU_STEP)
    values[torch.rand(num_gt, num_anchors, generator=generator) < 0.5] = 0.0
    at_threshold = torch.rand(num_gt, num_anchors, generator=generator) < 0.08
    choice = torch.randint(0, 2, (num_gt, num_anchors), generator=generator)
    exact = torch.tensor([t for t in thresholds if (t / IOU_STEP).is_integer()] or [0.5])
    values[at_threshold] = exact[choice[at_threshold] % len(exact)]
    if num_anchors > 1:
        for row in range(num_gt):  # ties for an object's best IoU
            best = float(values[row].max())
            ties = torch.randint(0, num_anchors, (_randint(0, 2, generator),), generator=generator)
            values[row, ties] = best
    if num_gt > 1:
        values[_randint(0, num_gt - 1, generator)] = 0.0
    return values


def rpn_labels_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random IoU matrices at the four pairs of thresholds (the defaults once), no objects, no anchors,
    and the source's mistake: an object whose best anchors (tied) have IoU below the negative threshold."""
    calls = []
    for index, (num_gt, num_anchors) in enumerate([(1, 1), (2, 30), (3, 50), (5, 80), (4, 12), (6, 60)]):
        positive, negative = LABEL_THRESHOLDS[index % len(LABEL_THRESHOLDS)]
        ious = iou_matrix(num_gt, num_anchors, generator, (positive, negative))
        args = (ious,) if index == 0 else (ious, positive, negative)
        calls.append(Call(question, "rpn_labels", args, label_anchors(ious, positive, negative)))
    no_objects = torch.zeros(0, 7)
    calls.append(Call(question, "rpn_labels", (no_objects,), label_anchors(no_objects)))
    no_anchors = torch.zeros(3, 0)
    calls.append(Call(question, "rpn_labels", (no_anchors,), label_anchors(no_anchors)))
    # Object 1's best IoU, 0.25, is below 0.3 and two anchors share it: both positive, not negative.
    forced = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.125], [0.0, 0.25, 0.25, 0.0, 0.125]])
    calls.append(Call(question, "rpn_labels", (forced,), label_anchors(forced)))
    return calls


# --- Q3: the balanced mini-batch --------------------------------------------------------------------

def _labels(num_positive: int, num_negative: int, num_ignored: int, generator: torch.Generator) -> torch.Tensor:
    """(A,) int64 labels, positives, negatives and ignored anchors in a random order."""
    labels = torch.tensor([POSITIVE] * num_positive + [NEGATIVE] * num_negative + [IGNORE] * num_ignored)
    return labels[torch.randperm(len(labels), generator=generator)]


def balanced_sample(labels: torch.Tensor, batch_size: int, positive_fraction: float, *, same_as: int | None = None,
                    differs_from: int | None = None) -> Satisfies:
    """What sample_minibatch promises: kept anchors keep their label and the others become -1;
    min(positives, int(batch_size * positive_fraction)) positives, negatives up to batch_size; the
    draw of call ``same_as`` again (same seed), or other positives and negatives than call
    ``differs_from``'s (another seed) wherever there was a choice."""
    positives, negatives = int((labels == POSITIVE).sum()), int((labels == NEGATIVE).sum())
    cap = int(batch_size * positive_fraction)
    want_pos = min(positives, cap)
    want_neg = min(negatives, batch_size - want_pos)
    choice = {POSITIVE: positives > want_pos, NEGATIVE: negatives > want_neg}

    def check(result: torch.Tensor, earlier: list) -> str | None:
        kept = result != IGNORE
        if not torch.equal(result[kept], labels[kept]):
            return "a sampled anchor's label changed (kept anchors keep their label, the others become -1)"
        got_pos, got_neg = int((result == POSITIVE).sum()), int((result == NEGATIVE).sum())
        if got_pos != want_pos:
            return (f"kept {got_pos} positives, expected {want_pos} = min({positives} positives, "
                    f"int({batch_size} * {positive_fraction}))")
        if got_neg != want_neg:
            return (f"kept {got_neg} negatives, expected {want_neg} = min({negatives} negatives, "
                    f"{batch_size} - {want_pos} positives kept)")
        if same_as is not None and not torch.equal(result, earlier[same_as]):
            return "the same seed gave another draw (draw the random numbers with the generator argument)"
        if differs_from is not None:
            for value, name in ((POSITIVE, "positives"), (NEGATIVE, "negatives")):
                if choice[value] and torch.equal(result == value, earlier[differs_from] == value):
                    return (f"another seed kept the same {name} (choose them at random, with the "
                            f"generator argument)")
        return None

    return Satisfies(like=labels, check=check)


def sample_minibatch_calls(question: str, generator: torch.Generator) -> list[Call]:
    """The source's 256 with half positives (the same seed twice, another seed), few positives (negatives
    fill the batch), few negatives (positives stay capped), a quarter positives, no choice at all
    (compared exactly), nothing labelled, a batch of 0, no anchors, and the global random generator."""
    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(_randint(1, 2**31 - 2, generator))

    calls = []
    labels = _labels(_randint(150, 300, generator), _randint(400, 900, generator), 300, generator)
    draw = seeded()
    first = len(calls)
    calls.append(Call(question, "sample_minibatch", (labels, 256, 0.5, draw), balanced_sample(labels, 256, 0.5)))
    calls.append(Call(question, "sample_minibatch", (labels, 256, 0.5, draw),
                      balanced_sample(labels, 256, 0.5, same_as=first)))
    calls.append(Call(question, "sample_minibatch", (labels, 256, 0.5, seeded()),
                      balanced_sample(labels, 256, 0.5, differs_from=first)))
    few_positives = _labels(_randint(3, 20, generator), _randint(300, 500, generator), 100, generator)
    calls.append(Call(question, "sample_minibatch", (few_positives, 256, 0.5, seeded()),
                      balanced_sample(few_positives, 256, 0.5)))
    few_negatives = _labels(_randint(60, 120, generator), _randint(5, 15, generator), 50, generator)
    calls.append(Call(question, "sample_minibatch", (few_negatives, 64, 0.25, seeded()),
                      balanced_sample(few_negatives, 64, 0.25)))
    quarter = _labels(_randint(40, 80, generator), _randint(200, 300, generator), 20, generator)
    calls.append(Call(question, "sample_minibatch", (quarter, 128, 0.25, seeded()),
                      balanced_sample(quarter, 128, 0.25)))
    all_positive = _labels(_randint(20, 40, generator), 0, 10, generator)
    calls.append(Call(question, "sample_minibatch", (all_positive, 16, 1.0, seeded()),
                      balanced_sample(all_positive, 16, 1.0)))
    # No choice to make: every labelled anchor is kept, whatever the draw.
    for labels in (_labels(3, 5, 7, generator), _labels(0, 0, 9, generator), torch.zeros(0, dtype=torch.int64)):
        expected = sample_labels(labels, 256, 0.5, torch.Generator().manual_seed(0))
        calls.append(Call(question, "sample_minibatch", (labels, 256, 0.5, seeded()), expected))
    nothing = _labels(4, 6, 2, generator)
    calls.append(Call(question, "sample_minibatch", (nothing, 0, 0.5, seeded()), torch.full_like(nothing, IGNORE)))
    # The defaults (256, 0.5) and no generator: torch's global one.
    labels = _labels(_randint(150, 250, generator), _randint(300, 400, generator), 50, generator)
    calls.append(Call(question, "sample_minibatch", (labels,), balanced_sample(labels, 256, 0.5)))
    return calls


# --- Q4: box encoding and decoding ------------------------------------------------------------------

def encode_decode_calls(question: str, generator: torch.Generator) -> list[Call]:
    """encode and decode with the RPN's weights (the default), the head's and odd ones; boxes and anchors
    row by row, deltas (B, A, 4) against (A, 4) anchors, no boxes, and size offsets so large that only
    the clamp before exp keeps the boxes finite."""
    calls = []
    for count, weights, batch in [(1, None, None), (12, HEAD_WEIGHTS, None), (12, ODD_WEIGHTS, None),
                                  (30, RPN_WEIGHTS, 2), (9, HEAD_WEIGHTS, 3), (0, RPN_WEIGHTS, None)]:
        boxes = _boxes(count, generator, 0.0, 192.0, 1.0, 64.0)
        anchors = _boxes(count, generator, 0.0, 192.0, 1.0, 64.0)
        shape = (count, 4) if batch is None else (batch, count, 4)
        deltas = _quantized(torch.randn(shape, generator=generator), VALUE_STEP)
        coding = RPN_WEIGHTS if weights is None else weights
        extra = () if weights is None else (weights,)
        many = boxes if batch is None else _boxes(batch * count, generator, 0.0, 192.0, 1.0, 64.0).view(shape)
        calls.append(Call(question, "encode", (many, anchors, *extra), encode_boxes(many, anchors, coding)))
        calls.append(Call(question, "decode", (deltas, anchors, *extra), decode_boxes(deltas, anchors, coding)))
    deltas = torch.tensor([[[0.0, 0.0, 1e6, -1e6], [1e3, -1e3, 80.0, 80.0], [0.0, 0.0, 1e4, 1e4]]])
    anchors = torch.tensor([[0.0, 0.0, 16.0, 8.0], [8.0, 8.0, 24.0, 24.0], [32.0, 16.0, 48.0, 64.0]])
    calls.append(Call(question, "decode", (deltas, anchors), decode_boxes(deltas, anchors, RPN_WEIGHTS)))
    return calls


# --- Q5: the head's output, one row per anchor --------------------------------------------------------

def flatten_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Box deltas (4 per anchor), two-way objectness (2), one logit (1) and 5 values, 1 to 9 anchors per
    cell, one or two images, square and non-square maps, a 1 x 1 map."""
    calls = []
    for batch, anchors, values, height, width in [(1, 9, 4, 3, 4), (2, 3, 2, 4, 3), (1, 9, 1, 2, 2),
                                                   (2, 2, 5, _randint(1, 4, generator), _randint(2, 5, generator)),
                                                   (1, 1, 4, 1, 1)]:
        output = _quantized(torch.randn(batch, anchors * values, height, width, generator=generator), VALUE_STEP)
        calls.append(Call(question, "flatten_head_output", (output, values), flatten_conv(output, anchors)))
    return calls


# --- Q6: proposals ---------------------------------------------------------------------------------

def select_proposals_reference(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int],
                               pre_nms_top_n: int = 12_000, post_nms_top_n: int = 2_000,
                               nms_threshold: float = 0.7, min_size: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The exercise's proposals: clip, drop boxes with a side below ``min_size``, the ``pre_nms_top_n``
    best scores (equal scores: lower index first), NMS, the ``post_nms_top_n`` best.

    `filter_proposals(..., order="seed")` on the logits of ``scores`` keeps the same boxes (the tests
    check it); here the scores are the answer's, not recomputed from logits.
    """
    boxes = clip_boxes(boxes, image_size)
    large = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[large], scores[large]
    best = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
    boxes, scores = boxes[best], scores[best]
    keep = nms(boxes, scores, nms_threshold)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def _proposal_boxes(count: int, image_h: int, image_w: int, generator: torch.Generator) -> torch.Tensor:
    """Decoded boxes as an RPN gives them: clusters of overlapping boxes around a few objects, some
    reaching past the image's edges, some tiny, some exactly ``min_size`` wide once clipped."""
    clusters = _boxes(max(count // 10, 1), generator, -8.0, max(image_h, image_w) - 8.0, 2.0, 40.0)
    member = torch.randint(0, len(clusters), (count,), generator=generator)
    jitter = _quantized(torch.randn(count, 4, generator=generator) * 3, PIXEL_STEP)
    boxes = clusters[member] + jitter
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1)
    tiny = torch.rand(count, generator=generator) < 0.15
    boxes[tiny, 2:] = boxes[tiny, :2] + _quantized(torch.rand(int(tiny.sum()), 2, generator=generator) * 4,
                                                   PIXEL_STEP)
    return boxes


def select_proposals_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random crowded boxes in non-square images with the four NMS thresholds and several min sizes; top-N
    counts that cut before NMS where NMS then keeps fewer than post_nms_top_n (so cutting only after NMS
    shows) and after it; the defaults (top-N larger than the boxes); boxes exactly min_size wide once
    clipped; all boxes too small; no boxes."""
    calls = []
    cases = [  # (count, (image h, w), pre, post, nms threshold, min size); None: the defaults
        (80, (96, 128), 40, 40, 0.5, 8.0),
        (200, (128, 96), 100, 50, 0.625, 4.0),
        (150, (120, 160), 60, 200, 0.75, 6.0),
        (120, (160, 136), None, None, None, None),
        (60, (64, 64), 30, 10, 0.7, 0.0),
    ]
    for count, size, pre, post, threshold, min_size in cases:
        boxes = _proposal_boxes(count, *size, generator)
        scores = (torch.randperm(count, generator=generator) + 1).float() * SCORE_STEP  # distinct
        args = (boxes, scores, size) if pre is None else (boxes, scores, size, pre, post, threshold, min_size)
        calls.append(Call(question, "select_proposals", args, select_proposals_reference(*args)))
    # The 12 best boxes are near-copies of one box, the 12 next ones lie apart: cut to the 12 best before
    # NMS, one proposal is left; cut only after NMS, the others would join it.
    base = _boxes(1, generator, 8.0, 40.0, 24.0, 40.0)
    copies = base + _quantized(torch.rand(12, 4, generator=generator), PIXEL_STEP)
    apart = torch.tensor([[8.0 + 20 * k, 100.0, 24.0 + 20 * k, 116.0] for k in range(12)])
    shuffle = torch.randperm(24, generator=generator)
    boxes, scores = torch.cat([copies, apart])[shuffle], (24 - torch.arange(24.0))[shuffle] * SCORE_STEP
    calls.append(Call(question, "select_proposals", (boxes, scores, (128, 256), 12, 12, 0.5, 8.0),
                      select_proposals_reference(boxes, scores, (128, 256), 12, 12, 0.5, 8.0)))
    # Clipped to exactly 16 x 16 (kept), 15.875 wide (dropped), and entirely outside the image (dropped).
    boxes = torch.tensor([[-8.0, 40.0, 16.0, 56.0], [84.0, -4.0, 120.0, 16.0], [0.125, 0.0, 16.0, 16.0],
                          [130.0, 10.0, 150.0, 30.0], [40.0, 40.0, 72.0, 72.0]])
    scores = torch.tensor([0.5, 0.25, 0.75, 0.875, 0.125])
    calls.append(Call(question, "select_proposals", (boxes, scores, (96, 100)),
                      select_proposals_reference(boxes, scores, (96, 100))))
    tiny = _boxes(10, generator, 0.0, 50.0, 0.0, 8.0)
    calls.append(Call(question, "select_proposals", (tiny, torch.arange(1.0, 11.0) * SCORE_STEP, (64, 64)),
                      (torch.zeros(0, 4), torch.zeros(0))))
    calls.append(Call(question, "select_proposals", (torch.zeros(0, 4), torch.zeros(0), (64, 64)),
                      (torch.zeros(0, 4), torch.zeros(0))))
    return calls


# --- Q7: ROI max pooling ---------------------------------------------------------------------------

def _rois(count: int, height: int, width: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(count, 4) boxes in image pixels whose corners fall on half feature cells (a quarter of them on
    the halves themselves), some reaching past the feature map, regions below `MAX_ROI_CELLS` cells."""
    cell = 1 / scale
    step = cell / 8 if scale < 1 else PIXEL_STEP
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * cell
    side = (0.25 + torch.rand(count, 2, generator=generator) * 0.9) * torch.tensor([width, height]) * cell
    side = side.clamp(max=(MAX_ROI_CELLS - 2) * cell)
    boxes = _quantized(torch.cat([corner, corner + side], dim=1), step)
    halves = torch.rand(count, 4, generator=generator) < 0.25
    boxes[halves] = (torch.floor(boxes[halves] / cell) + 0.5) * cell  # exactly half a cell
    return torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1)


def roi_max_pool_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random features (negative values too: an empty bin is 0, a bin of negatives is not) and boxes at five
    spatial scales and output sizes, the defaults, a region past the map's edge, one entirely outside it
    (all zeros), a box of one cell, and no boxes."""
    calls = []
    for index, (scale, size) in enumerate(zip(SPATIAL_SCALES, POOL_SIZES)):
        channels, height, width = _randint(1, 3, generator), _randint(4, 12, generator), _randint(4, 12, generator)
        features = _quantized(torch.randn(channels, height, width, generator=generator) * 2, VALUE_STEP)
        boxes = _rois(_randint(2, 6, generator), height, width, scale, generator)
        if index == 0:
            cell = 1 / scale
            boxes = torch.cat([boxes, torch.tensor([[(width + 1) * cell, 0.0, (width + 3) * cell, 2 * cell],
                                                    [2 * cell, 2 * cell, 2 * cell, 2 * cell]])])
        args = (features, boxes, size, scale)
        expected = roi_pool(features[None], [boxes], size, scale)
        calls.append(Call(question, "roi_max_pool", args, expected))
    features = _quantized(torch.randn(2, 6, 7, generator=generator), VALUE_STEP)
    boxes = _rois(3, 6, 7, 1 / 16, generator)
    calls.append(Call(question, "roi_max_pool", (features, boxes), roi_pool(features[None], [boxes], 7, 1 / 16)))
    calls.append(Call(question, "roi_max_pool", (features, torch.zeros(0, 4), 2, 0.25), torch.zeros(0, 2, 2, 2)))
    return calls


def calls(generator: torch.Generator) -> list[Call]:
    return [
        *anchors_calls("q1_tests", generator),
        *rpn_labels_calls("q2_tests", generator),
        *sample_minibatch_calls("q3_tests", generator),
        *encode_decode_calls("q4_tests", generator),
        *flatten_calls("q5_tests", generator),
        *select_proposals_calls("q6_tests", generator),
        *roi_max_pool_calls("q7_tests", generator),
    ]
