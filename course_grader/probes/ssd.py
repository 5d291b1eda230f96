"""Exercise 4 (SSD matching and focal loss): the grader's own calls.

Expected answers come from `course_lib.detection` (IoU, matching, box coding, the SSD loss) and
from torchvision (`sigmoid_focal_loss`, `nms`). None of the questions is random.

Box coordinates are exact binary fractions (multiples of 1/8 pixel, or of 1/256 of a normalised
image), and so are thresholds (0.375, not 0.4): areas, intersections and unions are then exact in
float32, so every right answer computes the same IoUs whatever order it does its arithmetic in,
and matching or suppression never depends on rounding. The IoU ties the exercise defines
(equal best anchors, twin objects, an IoU equal to the threshold) are exact ties.
"""
from __future__ import annotations

import torch
import torchvision

from course_lib.detection import box_iou, decode_boxes, encode_boxes, grid_anchors, match_anchors, nms
from course_lib.detection.ssd import ssd_loss
from ..probe_types import Call

#: Steps of the random inputs: pixel boxes, normalised boxes, other numbers (logits, offsets).
PIXEL_STEP = 2.0 ** -3
NORMALISED_STEP = 2.0 ** -8
VALUE_STEP = 2.0 ** -10
#: SSD's box-coding weights, the exercise's default.
SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Matching and NMS thresholds: exact binary fractions.
MATCH_THRESHOLDS = (0.5, 0.375, 0.625)
NMS_THRESHOLDS = (0.25, 0.375, 0.5, 0.75)
#: The exercise's matching threshold in its SSD loss.
SSD_MATCH_THRESHOLD = 0.5


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One int in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _quantized(values: torch.Tensor, step: float) -> torch.Tensor:
    return (values / step).round() * step


def _boxes(count: int, generator: torch.Generator, corner_range: float, size_range: float, step: float,
           min_size: float = 0.0) -> torch.Tensor:
    """(count, 4) xyxy boxes on a grid of ``step``: top-left in [0, corner_range), size in
    [min_size, min_size + size_range] (zero-area boxes when min_size is 0)."""
    top_left = _quantized(torch.rand(count, 2, generator=generator) * corner_range, step)
    size = min_size + _quantized(torch.rand(count, 2, generator=generator) * size_range, step)
    return torch.cat([top_left, top_left + size], dim=1)


def dyadic_anchor_sets() -> list[torch.Tensor]:
    """Normalised anchors whose coordinates are exact binary fractions: the lesson's three grids
    with zoom 1.5 for 1.3, the 16 cells of a 4x4 grid, and two finer grids with wide anchors."""
    return [
        grid_anchors((4, 2, 1), (0.75, 1.0, 1.5)),
        grid_anchors((4,), (1.0,), ((1.0, 1.0),)),
        grid_anchors((8, 4), (0.5, 1.0), ((1.0, 1.0), (2.0, 1.0))),
    ]


# --- Q1: the IoU matrix ----------------------------------------------------------------------------

def iou_matrix_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random boxes (about one in five with zero width or height), empty inputs on either side,
    and touching, nested and point-like boxes."""
    calls = []
    for n, m in [(1, 1), (5, 7), (24, 30), (0, 5), (4, 0), (0, 0)]:
        boxes_a, boxes_b = (_boxes(count, generator, 100.0, 50.0, PIXEL_STEP) for count in (n, m))
        for boxes in (boxes_a, boxes_b):
            flat = torch.rand(len(boxes), generator=generator) < 0.2
            axis = _randint(0, 2, generator)
            boxes[flat, 2 + axis] = boxes[flat, axis]
        calls.append(Call(question, "iou_matrix", (boxes_a, boxes_b), box_iou(boxes_a, boxes_b)))
    boxes_a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]])
    boxes_b = torch.tensor([[1.0, 0.0, 2.0, 1.0], [1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]])
    calls.append(Call(question, "iou_matrix", (boxes_a, boxes_b), box_iou(boxes_a, boxes_b)))
    return calls


# --- Q2: matching objects to anchors -------------------------------------------------------------

def match_to_anchors_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random objects (none in some images) on three anchor sets at three thresholds, and the
    rule's corner cases: twin objects, two objects sharing their best anchor, an object exactly on
    an anchor next to one outside every anchor, an object tying with four anchors, an IoU exactly
    at the threshold, a tiny object."""
    anchor_sets = dyadic_anchor_sets()
    cases = []
    for trial in range(6):
        anchors = anchor_sets[trial % len(anchor_sets)]
        count = 0 if trial == 1 else _randint(1, 7, generator)
        objects = _boxes(count, generator, 0.75, 0.5, NORMALISED_STEP, min_size=2 ** -6).clamp(max=1.0)
        cases.append((objects, anchors, MATCH_THRESHOLDS[trial % len(MATCH_THRESHOLDS)]))
    cells = anchor_sets[1]
    cases += [
        (torch.tensor([[0.3125, 0.3125, 0.4375, 0.4375]] * 2), cells, 0.5),                  # twins
        (torch.tensor([[0.25, 0.25, 0.5, 0.4375], [0.3125, 0.3125, 0.5, 0.5]]), cells, 0.5),  # one best anchor
        (torch.tensor([[0.5, 0.5, 0.75, 0.75], [2.0, 2.0, 3.0, 3.0]]), cells, 0.5),          # on, outside
        (torch.tensor([[0.0, 0.0, 0.5, 0.5]]), cells, 0.5),                                  # four equal best
        (torch.tensor([[0.0, 0.0, 0.5, 0.25]]),
         torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]]), 0.5),  # IoU 0.5
        (torch.tensor([[0.125, 0.125, 0.140625, 0.140625]]), cells, 0.5),                   # tiny
    ]
    return [Call(question, "match_to_anchors", case, match_anchors(*case)) for case in cases]


# --- Q3: focal loss --------------------------------------------------------------------------------

def focal_loss_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Several shapes (an empty one too) and (alpha, gamma), the defaults, and all-background or
    all-object targets with extreme logits (+-50, +-100)."""
    calls = []
    for shape, alpha, gamma in [((7,), 0.25, 2.0), ((2, 50, 3), 0.5, 1.0), ((4, 30, 5), 0.9, 0.0),
                                ((60, 2), 0.25, 5.0), ((0, 3), 0.25, 2.0)]:
        logits = _quantized(4 * torch.randn(shape, generator=generator), VALUE_STEP)
        targets = (torch.rand(shape, generator=generator) < 0.1).float()
        expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
        calls.append(Call(question, "focal_loss", (logits, targets, alpha, gamma), expected))
    logits = _quantized(4 * torch.randn(20, 3, generator=generator), VALUE_STEP)
    targets = (torch.rand(20, 3, generator=generator) < 0.2).float()
    calls.append(Call(question, "focal_loss", (logits, targets),
                      torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="sum")))
    extreme = torch.tensor([[50.0, -50.0, 0.0], [100.0, -100.0, 3.0]])
    for targets in (torch.zeros_like(extreme), torch.ones_like(extreme)):
        calls.append(Call(question, "focal_loss", (extreme, targets),
                          torchvision.ops.sigmoid_focal_loss(extreme, targets, reduction="sum")))
    return calls


# --- Q4: box encoding and decoding ---------------------------------------------------------------

def encode_decode_calls(question: str, generator: torch.Generator) -> list[Call]:
    """encode and decode on random normalised boxes and anchors with three weightings (the default
    too), no boxes, and offsets so large that only the clamp keeps the boxes finite."""
    calls = []
    for count, weights in [(1, SSD_WEIGHTS), (13, (1.0, 1.0, 1.0, 1.0)), (13, (2.0, 3.0, 0.5, 7.0)),
                           (40, SSD_WEIGHTS), (0, SSD_WEIGHTS), (9, None)]:
        boxes = _boxes(count, generator, 0.75, 0.5, NORMALISED_STEP, min_size=2 ** -6)
        anchors = _boxes(count, generator, 0.75, 0.5, NORMALISED_STEP, min_size=2 ** -6)
        deltas = _quantized(2 * torch.randn(count, 4, generator=generator), VALUE_STEP)
        coding = SSD_WEIGHTS if weights is None else weights
        extra = () if weights is None else (weights,)
        calls.append(Call(question, "encode", (boxes, anchors, *extra), encode_boxes(boxes, anchors, coding)))
        calls.append(Call(question, "decode", (deltas, anchors, *extra), decode_boxes(deltas, anchors, coding)))
    deltas = torch.tensor([[0.0, 0.0, 1e6, -1e6], [1e3, -1e3, 80.0, 80.0], [0.0, 0.0, 1e4, 1e4]])
    anchors = torch.tensor([[0.0, 0.0, 0.25, 0.125], [0.125, 0.125, 0.375, 0.375], [0.5, 0.25, 0.75, 1.0]])
    calls.append(Call(question, "decode", (deltas, anchors), decode_boxes(deltas, anchors, SSD_WEIGHTS)))
    return calls


# --- Q5: non-maximum suppression -------------------------------------------------------------------

def non_max_suppression_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random crowded boxes with distinct scores (against torchvision's nms), boxes with tied scores
    (the lower index first), an IoU exactly at the threshold (not suppressed), no boxes."""
    calls = []
    for count in (1, 2, 10, 60, 200):
        boxes = _boxes(count, generator, 96.0, 30.0, PIXEL_STEP, min_size=2.0)
        scores = torch.randperm(count, generator=generator).float() / max(count, 1)  # distinct
        threshold = NMS_THRESHOLDS[_randint(0, len(NMS_THRESHOLDS), generator)]
        calls.append(Call(question, "non_max_suppression", (boxes, scores, threshold),
                          torchvision.ops.nms(boxes, scores, threshold)))
    # Tied scores: torchvision's order among equal scores is not defined, the exercise's is.
    boxes = _boxes(40, generator, 40.0, 20.0, PIXEL_STEP, min_size=2.0)
    scores = torch.randint(0, 4, (40,), generator=generator).float() / 4
    calls.append(Call(question, "non_max_suppression", (boxes, scores, 0.375), nms(boxes, scores, 0.375)))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 2)
    scores = torch.tensor([0.5, 0.875, 0.875, 0.25, 0.25])
    calls.append(Call(question, "non_max_suppression", (boxes, scores, 0.5), nms(boxes, scores, 0.5)))
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 2.0]])  # IoU 1/2 and 1/3
    scores = torch.tensor([0.875, 0.75, 0.5])
    calls.append(Call(question, "non_max_suppression", (boxes, scores, 0.5), nms(boxes, scores, 0.5)))
    calls.append(Call(question, "non_max_suppression", (torch.zeros(0, 4), torch.zeros(0), 0.5),
                      torch.zeros(0, dtype=torch.int64)))
    return calls


# --- Q6: the SSD loss of one image -----------------------------------------------------------------

def ssd_loss_one_image_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random images (one without objects) with 1 to 5 classes on two anchor sets."""
    anchor_sets = dyadic_anchor_sets()[:2]
    calls = []
    for trial in range(6):
        anchors = anchor_sets[trial % 2]
        num_classes = _randint(1, 6, generator)
        count = 0 if trial == 2 else _randint(1, 5, generator)
        gt_boxes = _boxes(count, generator, 0.75, 0.25, NORMALISED_STEP, min_size=2 ** -4)
        gt_labels = torch.randint(1, num_classes + 1, (count,), generator=generator)
        class_logits = _quantized(2 * torch.randn(len(anchors), num_classes + 1, generator=generator) - 2,
                                  VALUE_STEP)
        box_outputs = _quantized(torch.randn(len(anchors), 4, generator=generator), VALUE_STEP)
        expected = ssd_loss(class_logits[None], box_outputs[None], [{"boxes": gt_boxes, "labels": gt_labels}],
                            anchors, image_size=1, classification="focal", box_coding="deltas",
                            iou_threshold=SSD_MATCH_THRESHOLD)
        calls.append(Call(question, "ssd_loss_one_image", (class_logits, box_outputs, gt_boxes, gt_labels, anchors),
                          (expected.localization, expected.classification)))
    return calls


def calls(generator: torch.Generator) -> list[Call]:
    return [
        *iou_matrix_calls("q1_tests", generator),
        *match_to_anchors_calls("q2_tests", generator),
        *focal_loss_calls("q3_tests", generator),
        *encode_decode_calls("q4_tests", generator),
        *non_max_suppression_calls("q5_tests", generator),
        *ssd_loss_one_image_calls("q6_tests", generator),
    ]
