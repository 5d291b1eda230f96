"""Exercise 3 (anchors and YOLO decoding): the grader's own calls.

Expected answers come from `course_lib.detection.yolo` and `course_lib.detection.anchors`; one
k-means step has no function of its own there, so `kmeans_step_reference` builds it from `wh_iou`
(the same update `kmeans_anchors` repeats). None of the questions is random.

Inputs are chosen so that a right answer passes whatever order it does its arithmetic in:

- thresholds are exact binary fractions (0.375, not 0.4), so comparing a float32 score with
  them gives the same answer in float32 or float64;
- k-means works in float64 (as the exercise's hidden tests do), where two distinct IoUs never
  round to a tie, and on integer shapes where ties are exact and deliberate;
- everything else is a value compared within the grader's tolerance, not a decision.
"""
from __future__ import annotations

import math

import torch

from course_lib.detection import yolo
from course_lib.detection.anchors import wh_iou
from ..probe_types import Call

#: Random inputs are multiples of this: exact in float32 and short in the printed data.
INPUT_STEP = 2.0 ** -10
#: Strides of Q4/Q5: integers and a fractional one (pixels per cell need not be whole).
STRIDES = (32, 16, 8.5)
#: Score thresholds of Q6: exact binary fractions.
THRESHOLDS = (0.0, 0.0625, 0.25, 0.375, 0.5, 0.875)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One int in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _quantized(values: torch.Tensor, step: float = INPUT_STEP) -> torch.Tensor:
    return (values / step).round() * step


# --- Q1: grid size and channels --------------------------------------------------------------------

def grid_and_channels_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random image sizes (square as an int, else (h, w)), strides 1..64, anchors and classes.

    Also the edges: an image smaller than the stride, exact multiples, one anchor and one class.
    """
    cases = [(1, 1, 1, 32), ((32, 96), 3, 2, 32), ((100, 64), 1, 2, 32)]
    for index in range(6):
        stride = 2 ** _randint(0, 7, generator)
        height, width = _randint(1, 1200, generator), _randint(1, 1200, generator)
        size = height if index % 2 == 0 else (height, width)
        cases.append((size, _randint(1, 12, generator), _randint(1, 100, generator), stride))
    return [Call(question, "grid_and_channels", case,
                 (yolo.output_grid_size(case[0], case[3]), yolo.head_channels(case[1], case[2])))
            for case in cases]


# --- Q2: IoU of box shapes -------------------------------------------------------------------------

def shape_iou_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random (w, h) tables of several sizes (empty ones too) and shapes with zero area (IoU 0)."""
    calls = []
    for n, k in [(1, 1), (7, 3), (40, 9), (0, 4), (5, 0)]:
        wh_a = _quantized(0.5 + 80 * torch.rand(n, 2, generator=generator))
        wh_b = _quantized(0.5 + 80 * torch.rand(k, 2, generator=generator))
        calls.append(Call(question, "shape_iou", (wh_a, wh_b), wh_iou(wh_a, wh_b)))
    degenerate_a = torch.tensor([[0.0, 0.0], [0.0, 5.0], [3.0, 4.0], [10.0, 20.0]])
    degenerate_b = torch.tensor([[0.0, 0.0], [3.0, 4.0], [20.0, 10.0], [7.0, 0.0]])
    calls.append(Call(question, "shape_iou", (degenerate_a, degenerate_b), wh_iou(degenerate_a, degenerate_b)))
    return calls


# --- Q3: one k-means step --------------------------------------------------------------------------

def kmeans_step_reference(wh: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign each shape to its most-overlapping centroid (ties: the lower index), then move every
    centroid that got shapes to their mean; a centroid without shapes stays.

    wh: (N, 2), centroids: (K, 2)  ->  (assignment (N,) int64, new centroids (K, 2)).
    """
    assignment = wh_iou(wh, centroids).argmax(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, assignment, wh.to(centroids.dtype))
    counts = torch.bincount(assignment, minlength=centroids.shape[0])[:, None]
    return assignment, torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


def kmeans_step_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random float64 shapes and centroids (more centroids than shapes too: empty clusters), and
    integer shapes with exact ties: duplicated centroids, and two centroids a shape overlaps equally."""
    cases = []
    for n, k in [(1, 1), (30, 3), (200, 5), (3, 6)]:
        wh = 1 + 60 * torch.rand(n, 2, generator=generator, dtype=torch.float64)
        cases.append((wh, 1 + 60 * torch.rand(k, 2, generator=generator, dtype=torch.float64)))
    integer_wh = torch.randint(1, 41, (25, 2), generator=generator).double()
    cases.append((integer_wh, torch.tensor([[10.0, 10.0], [10.0, 10.0], [30.0, 12.0], [500.0, 1.0]],
                                           dtype=torch.float64)))
    cases.append((torch.tensor([[10.0, 10.0], [10.0, 10.0], [20.0, 20.0]], dtype=torch.float64),
                  torch.tensor([[20.0, 10.0], [10.0, 20.0]], dtype=torch.float64)))  # IoU 1/2 with both
    return [Call(question, "kmeans_step", case, kmeans_step_reference(*case)) for case in cases]


# --- Q4: decoding one prediction -------------------------------------------------------------------

def _decode_one(values: torch.Tensor, anchor_wh: torch.Tensor, cell_xy: tuple[int, int], grid: tuple[int, int],
                stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference decoder on a grid holding ``values`` at ``cell_xy`` (column, row)."""
    height, width = grid
    output = torch.zeros(1, values.shape[0], height, width, dtype=values.dtype)
    output[0, :, cell_xy[1], cell_xy[0]] = values
    boxes, probs = yolo.decode(output, anchor_wh[None], stride, values.shape[0] - yolo.BOX_CHANNELS)
    row = cell_xy[1] * width + cell_xy[0]
    return boxes[0, row], probs[0, row]


def decode_prediction_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random offsets and logits in random cells, infinite offsets, a -inf logit, float64 values."""
    calls = []
    for trial in range(9):
        num_classes = _randint(1, 9, generator)
        height, width = _randint(2, 7, generator), _randint(2, 7, generator)
        cell_xy = (_randint(0, width, generator), _randint(0, height, generator))
        if trial == 0:  # column and row differ: (column, row) is not (row, column)
            cell_xy = (width - 1, 0)
        dtype = torch.float64 if trial % 4 == 3 else torch.float32
        values = _quantized(3 * torch.randn(yolo.BOX_CHANNELS + num_classes, generator=generator)).to(dtype)
        if trial % 3 == 1:
            values[:4] = torch.tensor([math.inf, -math.inf, -math.inf, 2.0])
        if trial % 3 == 2:
            values[:4] = torch.tensor([-math.inf, math.inf, 1.0, -math.inf])
            if num_classes > 1:
                values[4 + _randint(0, num_classes, generator)] = -math.inf
        anchor_wh = _quantized(2 + 50 * torch.rand(2, generator=generator)).to(dtype)
        stride = STRIDES[trial % len(STRIDES)]
        expected = _decode_one(values, anchor_wh, cell_xy, (height, width), stride)
        calls.append(Call(question, "decode_prediction", (values, anchor_wh, cell_xy, stride), expected))
    return calls


# --- Q5: decoding a whole output ---------------------------------------------------------------------

def _infinite_output(generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """A (1, 3 * 8, 2, 2) output (3 anchors, 4 classes) with infinities in some of its predictions:
    offsets at +-inf, one +inf logit, two +inf logits that share the probability, -inf logits.

    No prediction has only -inf logits: the exercise accepts any probabilities summing to 1 there.
    """
    num_classes = 4
    output = _quantized(3 * torch.randn(1, 3, yolo.BOX_CHANNELS + num_classes, 2, 2, generator=generator))
    inf = math.inf
    output[0, 0, :, 0, 0] = torch.tensor([inf, -inf, inf, -inf, -3.0, 5.0, 1.0, inf])
    output[0, 1, :, 0, 1] = torch.tensor([-inf, inf, 0.0, 0.0, inf, inf, -inf, 0.0])
    output[0, 2, :, 1, 0] = torch.tensor([0.0, 0.0, -inf, 1.0, -inf, 2.0, -inf, -inf])
    output[0, 1, :, 1, 1] = torch.tensor([2.0, -inf, inf, 0.5, inf, -inf, -inf, -inf])
    return output.reshape(1, 3 * (yolo.BOX_CHANNELS + num_classes), 2, 2), num_classes


def decode_output_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Several batch sizes, anchor counts, classes and non-square grids, a fractional stride,
    float64, and an output with infinite offsets and logits."""
    calls = []
    for batch, num_anchors, num_classes, height, width, stride, dtype in [
            (1, 1, 2, 1, 1, 32, torch.float32), (2, 2, 3, 3, 4, 32, torch.float32),
            (1, 3, 4, 2, 5, 16, torch.float32), (2, 2, 2, 2, 3, 8.5, torch.float64),
            (2, 5, 6, 4, 3, 32, torch.float32)]:
        output = _quantized(3 * torch.randn(batch, num_anchors * (yolo.BOX_CHANNELS + num_classes), height, width,
                                            generator=generator)).to(dtype)
        anchors = _quantized(1 + 80 * torch.rand(num_anchors, 2, generator=generator)).to(dtype)
        calls.append(Call(question, "decode_output", (output, anchors, stride, num_classes),
                          yolo.decode(output, anchors, stride, num_classes)))
    output, num_classes = _infinite_output(generator)
    anchors = torch.tensor([[4.0, 6.0], [8.0, 8.0], [2.0, 9.0]])
    calls.append(Call(question, "decode_output", (output, anchors, 32, num_classes),
                      yolo.decode(output, anchors, 32, num_classes)))
    return calls


# --- Q6: thresholding with a background class ----------------------------------------------------

def _probabilities(num: int, num_classes: int, background_index: int, generator: torch.Generator) -> torch.Tensor:
    """(num, num_classes) softmax rows whose best foreground class is unique (the exercise does not
    say which of two equal classes wins)."""
    while True:
        probs = torch.softmax(3 * torch.randn(num, num_classes, generator=generator), dim=1)
        foreground = probs.clone()
        foreground[:, background_index] = -1.0
        top_two = foreground.topk(min(2, num_classes), dim=1).values
        if num == 0 or num_classes < 3 or bool((top_two[:, 0] > top_two[:, 1]).all()):
            return probs


def _select_expected(probs: torch.Tensor, threshold: float, background_index: int):
    scores, labels = yolo.foreground_scores(probs, background_index)
    return scores > threshold, labels, scores


def select_detections_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random probabilities with the background at several indices, thresholds from 0 to 0.875,
    no predictions at all, and scores exactly at the threshold (not above it: not kept)."""
    calls = []
    for num, num_classes, background_index in [(1, 2, 0), (40, 4, 0), (40, 4, 3), (100, 7, 3), (20, 3, 1),
                                               (10, 5, 4), (0, 4, 0), (12, 91, 0)]:
        probs = _probabilities(num, num_classes, background_index, generator)
        threshold = THRESHOLDS[_randint(0, len(THRESHOLDS), generator)]
        calls.append(Call(question, "select_detections", (probs, threshold, background_index),
                          _select_expected(probs, threshold, background_index)))
    # A threshold equal to one prediction's score, exactly.
    probs = _probabilities(30, 5, 2, generator)
    threshold = float(yolo.foreground_scores(probs, 2)[0][_randint(0, 30, generator)])
    calls.append(Call(question, "select_detections", (probs, threshold, 2), _select_expected(probs, threshold, 2)))
    probs = torch.tensor([[0.5, 0.5], [0.75, 0.25], [0.25, 0.75]])
    calls.append(Call(question, "select_detections", (probs, 0.5, 1), _select_expected(probs, 0.5, 1)))
    return calls


def calls(generator: torch.Generator) -> list[Call]:
    return [
        *grid_and_channels_calls("q1_tests", generator),
        *shape_iou_calls("q2_tests", generator),
        *kmeans_step_calls("q3_tests", generator),
        *decode_prediction_calls("q4_tests", generator),
        *decode_output_calls("q5_tests", generator),
        *select_detections_calls("q6_tests", generator),
    ]
