"""The grader's own checks of exercises 3 (YOLO decoding) and 4 (SSD): right answers pass, mistakes fail.

Most tests play the student's kernel in this process: the solution notebook's answers (or a
mistaken version of one) are executed into a namespace, the probe cells run there, and the grader
judges what they printed. One test grades real notebooks end to end in the sandbox.
"""
from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision

from course_lib.detection import nms
from course_grader.audit import audit_cells
from course_grader.probes import PROBES, ssd, yolo_decoding
from course_grader.submission import cell_kind, grade_id
from course_grader.probes import calls_for
from course_grader.verdicts import encode, judge

from probe_checks import grader_calls, printed as _printed, solution_answers, solution_source, verdicts
from probe_checks import with_mistake as _with_mistake

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
YOLO = "03_anchors_and_yolo_decoding"
SSD = "04_ssd_matching_and_focal_loss"
ASSIGNMENTS = (YOLO, SSD)
#: Seeds of the "any seed" test (each seed draws every question's inputs afresh).
SEEDS = range(12)
#: What one question's probe may print (the grader keeps at most 1 MiB of a cell's output).
MAX_PRINTED_BYTES = 200_000


_source, _answers, _calls, _verdicts = solution_source, solution_answers, grader_calls, verdicts


@pytest.fixture(scope="module")
def solutions() -> dict[str, dict]:
    return {assignment: _answers(assignment) for assignment in ASSIGNMENTS}


# --- coverage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_graded_question_is_probed(assignment, solutions):
    graded = {grade_id(c) for c in _source(assignment).cells if cell_kind(c) == "tests"}
    calls = calls_for(assignment, 1)
    assert PROBES[assignment] is {YOLO: yolo_decoding.calls, SSD: ssd.calls}[assignment]
    assert {call.question for call in calls} == graded
    assert all(callable(solutions[assignment].get(call.name)) for call in calls), "a probed name is not an answer"


# --- right answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_solution_passes_the_graders_own_check_for_any_seed(assignment, solutions):
    for seed in SEEDS:
        verdicts = _verdicts(assignment, solutions[assignment], seed)
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


#: Other right answers: the probes must not depend on the solution's order of arithmetic.
OTHER_RIGHT_ANSWERS = {
    YOLO: '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return tuple(math.ceil(side / stride) for side in image_size), num_anchors * 4 + num_anchors * num_classes

def shape_iou(wh_a, wh_b):
    w = torch.min(wh_a[:, 0:1], wh_b[:, 0].unsqueeze(0))
    h = torch.min(wh_a[:, 1:2], wh_b[:, 1].unsqueeze(0))
    inter = w * h
    union = wh_a.prod(dim=1)[:, None] - inter + wh_b.prod(dim=1)[None, :]
    safe = torch.where(union == 0, torch.ones_like(union), union)
    return torch.where(union == 0, torch.zeros_like(inter), inter / safe)

def kmeans_step(wh, centroids):
    assignment = (1 - shape_iou(wh, centroids)).argmin(dim=1)
    new = centroids.clone()
    for k in range(centroids.shape[0]):  # a handful of clusters
        members = wh[assignment == k]
        if len(members):
            new[k] = members.mean(dim=0)
    return assignment, new

def decode_prediction(values, anchor_wh, cell_xy, stride):
    x = (cell_xy[0] + torch.sigmoid(values[0])) * stride
    y = (cell_xy[1] + torch.sigmoid(values[1])) * stride
    w = anchor_wh[0] * torch.exp(values[2])
    h = anchor_wh[1] * torch.exp(values[3])
    return torch.stack([x, y, w, h]), torch.softmax(values[4:], dim=-1)

def decode_output(output, anchors, stride, num_classes):
    b, _, h, w = output.shape
    a = len(anchors)
    rows = output.view(b, a, 4 + num_classes, h * w).permute(0, 3, 1, 2).reshape(b, -1, 4 + num_classes)
    ys, xs = torch.meshgrid(torch.arange(h, device=output.device), torch.arange(w, device=output.device),
                            indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], dim=1).repeat_interleave(a, dim=0).to(output.dtype)
    centres = (torch.sigmoid(rows[..., :2]) + cells) * stride
    sizes = torch.exp(rows[..., 2:4]) * anchors.to(output.dtype).repeat(h * w, 1)
    logits = rows[..., 4:]
    infinite = torch.isposinf(logits)
    any_infinite = infinite.any(dim=-1, keepdim=True)
    hopeless = torch.isneginf(logits).all(dim=-1, keepdim=True)
    finite = torch.softmax(logits.masked_fill(any_infinite | hopeless, 0.0), dim=-1)
    shared = infinite.to(logits.dtype) / infinite.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.cat([centres, sizes], dim=-1), torch.where(any_infinite, shared, finite)

def select_detections(class_probs, score_threshold, background_index):
    foreground = class_probs.clone()
    foreground[:, background_index] = -1.0
    labels = foreground.argmax(dim=1)
    scores = class_probs.gather(1, labels[:, None])[:, 0]
    return scores > score_threshold, labels, scores
''',
    SSD: '''
def iou_matrix(boxes_a, boxes_b):
    ax1, ay1, ax2, ay2 = boxes_a.unbind(1)
    bx1, by1, bx2, by2 = boxes_b.unbind(1)
    w = (torch.min(ax2[:, None], bx2[None]) - torch.max(ax1[:, None], bx1[None])).clamp(min=0)
    h = (torch.min(ay2[:, None], by2[None]) - torch.max(ay1[:, None], by1[None])).clamp(min=0)
    inter = w * h
    union = ((bx2 - bx1) * (by2 - by1))[None] + ((ax2 - ax1) * (ay2 - ay1))[:, None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-30), 0.0)

def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-ce)
    alpha_t = torch.where(targets == 1, alpha, 1 - alpha)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()

def encode(boxes, anchors, weights=SSD_WEIGHTS):
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    a_centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    a_size = anchors[:, 2:] - anchors[:, :2]
    w = torch.tensor(weights, dtype=boxes.dtype, device=boxes.device)
    return torch.cat([w[:2] * (centre - a_centre) / a_size, w[2:] * torch.log(size / a_size)], dim=1)

def decode(deltas, anchors, weights=SSD_WEIGHTS):
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device)
    a_centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    a_size = anchors[:, 2:] - anchors[:, :2]
    centre = a_centre + deltas[:, :2] * a_size / w[:2]
    half = 0.5 * a_size * torch.exp(torch.clamp(deltas[:, 2:] / w[2:], max=MAX_LOG_SCALE))
    return torch.cat([centre - half, centre + half], dim=1)

def non_max_suppression(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel() > 0:  # the textbook loop: one kept box at a time
        best = order[0]
        keep.append(int(best))
        overlaps = iou_matrix(boxes[best][None].double(), boxes[order[1:]].double())[0]
        order = order[1:][overlaps <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)
''',
}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_other_right_answers_pass_too(assignment, solutions):
    namespace = dict(solutions[assignment])
    exec(OTHER_RIGHT_ANSWERS[assignment], namespace)  # noqa: S102
    for seed in range(4):
        verdicts = _verdicts(assignment, namespace, seed)
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


# --- typical mistakes ------------------------------------------------------------------------------
# Each replaces one answer; `right_<name>` is the solution's function, for mistakes that change one
# thing about its result. Messages are what the grade record quotes after the question's name.

MISTAKES = {
    # exercise 3, Q1
    "grid sizes rounded down": (YOLO, "q1_tests", '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (h // stride, w // stride), num_anchors * (4 + num_classes)''', "item 0: item 0: got"),
    "an extra objectness channel": (YOLO, "q1_tests", '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    grid, _ = right_grid_and_channels(image_size, num_anchors, num_classes, stride)
    return grid, num_anchors * (5 + num_classes)''', "item 1: got"),
    "grid sizes as floats": (YOLO, "q1_tests", '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    grid, channels = right_grid_and_channels(image_size, num_anchors, num_classes, stride)
    return (float(grid[0]), float(grid[1])), channels''', "got a float, expected"),
    "(width, height) instead of (height, width)": (YOLO, "q1_tests", '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    grid, channels = right_grid_and_channels(image_size, num_anchors, num_classes, stride)
    return grid[::-1], channels''', "item 0: item 0: got"),
    "a list instead of a tuple": (YOLO, "q1_tests", '''
def grid_and_channels(image_size, num_anchors, num_classes, stride=32):
    return list(right_grid_and_channels(image_size, num_anchors, num_classes, stride))''',
                                  "got a list, expected a tuple"),
    # exercise 3, Q2
    "shape IoU of empty shapes is NaN": (YOLO, "q2_tests", '''
def shape_iou(wh_a, wh_b):
    inter = torch.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * torch.minimum(wh_a[:, None, 1], wh_b[None, :, 1])
    return inter / ((wh_a[:, 0] * wh_a[:, 1])[:, None] + (wh_b[:, 0] * wh_b[:, 1])[None, :] - inter)''',
                                         "values differ"),
    "shape IoU as (K, N)": (YOLO, "q2_tests", '''
def shape_iou(wh_a, wh_b):
    return right_shape_iou(wh_b, wh_a)''', "shape (3, 7) expected (7, 3)"),
    "shape IoU as a ratio of areas": (YOLO, "q2_tests", '''
def shape_iou(wh_a, wh_b):
    a, b = wh_a.prod(dim=1)[:, None], wh_b.prod(dim=1)[None, :]
    larger = torch.maximum(a, b)
    return torch.where(larger > 0, torch.minimum(a, b) / larger.clamp(min=1e-30), 0.0)''', "values differ"),
    "shape IoU in float64": (YOLO, "q2_tests", '''
def shape_iou(wh_a, wh_b):
    return right_shape_iou(wh_a, wh_b).double()''', "dtype float64 expected float32"),
    # exercise 3, Q3
    "k-means assigns the least overlapping centroid": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    assignment = shape_iou(wh, centroids).argmin(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, assignment, wh)
    counts = torch.bincount(assignment, minlength=len(centroids))[:, None]
    return assignment, torch.where(counts > 0, sums / counts.clamp(min=1), centroids)''', "item 0: values differ"),
    "an empty cluster becomes NaN": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    assignment = shape_iou(wh, centroids).argmax(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, assignment, wh)
    return assignment, sums / torch.bincount(assignment, minlength=len(centroids))[:, None]''', "item 1: values differ"),
    "an empty cluster moves to (0, 0)": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    assignment = shape_iou(wh, centroids).argmax(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, assignment, wh)
    return assignment, sums / torch.bincount(assignment, minlength=len(centroids))[:, None].clamp(min=1)''',
                                         "item 1: values differ"),
    "k-means ties go to the last centroid": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    last = len(centroids) - 1 - shape_iou(wh, centroids).flip(1).argmax(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, last, wh)
    counts = torch.bincount(last, minlength=len(centroids))[:, None]
    return last, torch.where(counts > 0, sums / counts.clamp(min=1), centroids)''', "item 0: values differ"),
    "k-means with Euclidean distance": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    assignment = torch.cdist(wh, centroids).argmin(dim=1)
    sums = torch.zeros_like(centroids).index_add_(0, assignment, wh)
    counts = torch.bincount(assignment, minlength=len(centroids))[:, None]
    return assignment, torch.where(counts > 0, sums / counts.clamp(min=1), centroids)''', "values differ"),
    "k-means assignment as int32": (YOLO, "q3_tests", '''
def kmeans_step(wh, centroids):
    assignment, new = right_kmeans_step(wh, centroids)
    return assignment.int(), new''', "item 0: dtype int32 expected int64"),
    # exercise 3, Q4
    "cell as (row, column)": (YOLO, "q4_tests", '''
def decode_prediction(values, anchor_wh, cell_xy, stride):
    return right_decode_prediction(values, anchor_wh, cell_xy[::-1], stride)''', "item 0: values differ"),
    "anchor as (height, width)": (YOLO, "q4_tests", '''
def decode_prediction(values, anchor_wh, cell_xy, stride):
    return right_decode_prediction(values, anchor_wh.flip(0), cell_xy, stride)''', "item 0: values differ"),
    "centre offsets without the sigmoid": (YOLO, "q4_tests", '''
def decode_prediction(values, anchor_wh, cell_xy, stride):
    box, probs = right_decode_prediction(values, anchor_wh, cell_xy, stride)
    centre = (torch.tensor(cell_xy, dtype=values.dtype) + values[:2].clamp(0, 1)) * stride
    return torch.cat([centre, box[2:]]), probs''', "item 0: values differ"),
    "class probabilities from a sigmoid": (YOLO, "q4_tests", '''
def decode_prediction(values, anchor_wh, cell_xy, stride):
    box, _ = right_decode_prediction(values, anchor_wh, cell_xy, stride)
    return box, torch.sigmoid(values[4:])''', "item 1: values differ"),
    "decoding in float32 whatever the input": (YOLO, "q4_tests", '''
def decode_prediction(values, anchor_wh, cell_xy, stride):
    return right_decode_prediction(values.float(), anchor_wh.float(), cell_xy, stride)''',
                                               "dtype float32 expected float64"),
    # exercise 3, Q5
    "softmax over the anchors (the seed's dim=1)": (YOLO, "q5_tests", '''
def decode_output(output, anchors, stride, num_classes):
    boxes, _ = right_decode_output(output, anchors, stride, num_classes)
    b, _, h, w = output.shape
    a = len(anchors)
    logits = output.reshape(b, a, 4 + num_classes, h, w).permute(0, 3, 4, 1, 2)[..., 4:]
    probs = torch.softmax(logits, dim=3).reshape(b, h * w * a, num_classes)
    return boxes, probs''', "item 1: values differ"),
    "anchors outermost": (YOLO, "q5_tests", '''
def decode_output(output, anchors, stride, num_classes):
    boxes, probs = right_decode_output(output, anchors, stride, num_classes)
    b, n, _ = boxes.shape
    a = len(anchors)
    reorder = lambda t: t.reshape(b, n // a, a, -1).transpose(1, 2).reshape(b, n, -1)
    return reorder(boxes), reorder(probs)''', "values differ"),
    "rows and columns swapped in the grid": (YOLO, "q5_tests", '''
def decode_output(output, anchors, stride, num_classes):
    boxes, probs = right_decode_output(output, anchors, stride, num_classes)
    b, _, h, w = output.shape
    a = len(anchors)
    rows = torch.arange(h, dtype=output.dtype).repeat_interleave(w * a)
    cols = torch.arange(w, dtype=output.dtype).repeat(h).repeat_interleave(a)
    moved = boxes.clone()
    moved[..., 0] += (rows - cols) * stride
    moved[..., 1] += (cols - rows) * stride
    return moved, probs''', "item 0: values differ"),
    "plain softmax: NaN for infinite logits": (YOLO, "q5_tests", '''
def decode_output(output, anchors, stride, num_classes):
    boxes, _ = right_decode_output(output, anchors, stride, num_classes)
    b, _, h, w = output.shape
    a = len(anchors)
    rows = output.reshape(b, a, 4 + num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, -1)
    return boxes, torch.softmax(rows[..., 4:], dim=-1)''', "item 1: values differ"),
    "decoding in float32 whatever the input (whole output)": (YOLO, "q5_tests", '''
def decode_output(output, anchors, stride, num_classes):
    return right_decode_output(output.float(), anchors.float(), stride, num_classes)''',
                                                              "dtype float32 expected float64"),
    # exercise 3, Q6
    "the background can be the label": (YOLO, "q6_tests", '''
def select_detections(class_probs, score_threshold, background_index):
    scores, labels = class_probs.max(dim=1)
    return scores > score_threshold, labels, scores''', "values differ"),
    "a score equal to the threshold is kept": (YOLO, "q6_tests", '''
def select_detections(class_probs, score_threshold, background_index):
    keep, labels, scores = right_select_detections(class_probs, score_threshold, background_index)
    return scores >= score_threshold, labels, scores''', "item 0: values differ"),
    "labels counted without the background column": (YOLO, "q6_tests", '''
def select_detections(class_probs, score_threshold, background_index):
    columns = [c for c in range(class_probs.shape[1]) if c != background_index]
    scores, labels = class_probs[:, columns].max(dim=1)
    return scores > score_threshold, labels, scores''', "item 1: values differ"),
    "only the kept predictions": (YOLO, "q6_tests", '''
def select_detections(class_probs, score_threshold, background_index):
    keep, labels, scores = right_select_detections(class_probs, score_threshold, background_index)
    return keep[keep], labels[keep], scores[keep]''', "shape"),
    "keep as 0/1 integers": (YOLO, "q6_tests", '''
def select_detections(class_probs, score_threshold, background_index):
    keep, labels, scores = right_select_detections(class_probs, score_threshold, background_index)
    return keep.long(), labels, scores''', "item 0: dtype int64 expected bool"),
    # exercise 4, Q1
    "IoU of two empty boxes is NaN": (SSD, "q1_tests", '''
def iou_matrix(boxes_a, boxes_b):
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).prod(dim=-1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)''', "values differ"),
    "overlaps not clamped at 0": (SSD, "q1_tests", '''
def iou_matrix(boxes_a, boxes_b):
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).prod(dim=-1)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).prod(dim=-1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-30), 0.0)''', "values differ"),
    "pixel-inclusive widths (+ 1)": (SSD, "q1_tests", '''
def iou_matrix(boxes_a, boxes_b):
    grow = lambda boxes: torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)
    return right_iou_matrix(grow(boxes_a), grow(boxes_b))''',
                                     "values differ"),
    "IoU matrix as (M, N)": (SSD, "q1_tests", '''
def iou_matrix(boxes_a, boxes_b):
    return right_iou_matrix(boxes_b, boxes_a)''', "shape"),
    "a loop that loses the shape of empty inputs": (SSD, "q1_tests", '''
def iou_matrix(boxes_a, boxes_b):
    if len(boxes_a) == 0:
        return torch.zeros(0)
    return torch.stack([right_iou_matrix(box[None], boxes_b)[0] for box in boxes_a])''', "shape (0,) expected (0, 5)"),
    # exercise 4, Q2
    "an IoU equal to the threshold is background": (SSD, "q2_tests", '''
def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
    return right_match_to_anchors(gt_boxes, anchors, iou_threshold + 1e-6)''', "values differ"),
    "one forced anchor per object (ties and shared anchors lost)": (SSD, "q2_tests", '''
def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), -1, dtype=torch.int64)
    ious = iou_matrix(gt_boxes, anchors)
    best_iou, matches = ious.max(dim=0)
    matches = torch.where(best_iou >= iou_threshold, matches, -1)
    matches[ious.argmax(dim=1)] = torch.arange(len(gt_boxes))
    return matches''', "values differ"),
    "an object outside every anchor forces them all": (SSD, "q2_tests", '''
def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), -1, dtype=torch.int64)
    ious = iou_matrix(gt_boxes, anchors)
    best_iou, matches = ious.max(dim=0)
    matches = torch.where(best_iou >= iou_threshold, matches, -1)
    is_best = ious == ious.max(dim=1, keepdim=True).values
    forced = torch.where(is_best, ious, -1.0).argmax(dim=0)
    return torch.where(is_best.any(dim=0), forced, matches)''', "values differ"),
    "no objects: a crash": (SSD, "q2_tests", '''
def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
    ious = iou_matrix(gt_boxes, anchors)
    ious.max(dim=0)
    return right_match_to_anchors(gt_boxes, anchors, iou_threshold)''', "raised IndexError"),
    "matches as floats": (SSD, "q2_tests", '''
def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
    return right_match_to_anchors(gt_boxes, anchors, iou_threshold).float()''', "dtype float32 expected int64"),
    # exercise 4, Q3
    "alpha weights the negatives (ERRATA)": (SSD, "q3_tests", '''
def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    return right_focal_loss(logits, targets, 1 - alpha, gamma)''', "values differ"),
    "log(sigmoid): not finite for extreme logits": (SSD, "q3_tests", '''
def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum()''', "values differ"),
    "mean instead of sum": (SSD, "q3_tests", '''
def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    return right_focal_loss(logits, targets, alpha, gamma) / max(logits.numel(), 1)''', "values differ"),
    "the focusing term on p_t": (SSD, "q3_tests", '''
def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * p_t ** gamma * ce).sum()''', "values differ"),
    "no reduction": (SSD, "q3_tests", '''
def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return (alpha * targets + (1 - alpha) * (1 - targets)) * (1 - p_t) ** gamma * ce''', "shape"),
    # exercise 4, Q4
    "clamp before dividing by the weight": (SSD, "q4_tests", '''
def decode(deltas, anchors, weights=SSD_WEIGHTS):
    wx, wy, ww, wh = weights
    clamped = torch.cat([deltas[:, :2], deltas[:, 2:].clamp(max=MAX_LOG_SCALE)], dim=1)
    return right_decode(clamped, anchors, weights)''', "values differ"),
    "no clamp: huge offsets overflow": (SSD, "q4_tests", '''
def decode(deltas, anchors, weights=SSD_WEIGHTS):
    wx, wy, ww, wh = weights
    a_width, a_height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx = deltas[:, 0] / wx * a_width + anchors[:, 0] + a_width / 2
    cy = deltas[:, 1] / wy * a_height + anchors[:, 1] + a_height / 2
    width, height = torch.exp(deltas[:, 2] / ww) * a_width, torch.exp(deltas[:, 3] / wh) * a_height
    return torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)''',
                                        "values differ"),
    "decode multiplies by the weights": (SSD, "q4_tests", '''
def decode(deltas, anchors, weights=SSD_WEIGHTS):
    scale = torch.tensor(weights) ** 2
    return right_decode(deltas * scale, anchors, weights)''', "values differ"),
    "dy measured in anchor widths": (SSD, "q4_tests", '''
def encode(boxes, anchors, weights=SSD_WEIGHTS):
    deltas = right_encode(boxes, anchors, weights)
    a_width, a_height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    return torch.cat([deltas[:, :1], (deltas[:, 1] * a_height / a_width)[:, None], deltas[:, 2:]], dim=1)''',
                                     "values differ"),
    "size offsets without their weights": (SSD, "q4_tests", '''
def encode(boxes, anchors, weights=SSD_WEIGHTS):
    deltas = right_encode(boxes, anchors, weights)
    return torch.cat([deltas[:, :2], deltas[:, 2:] / torch.tensor(weights[2:])], dim=1)''', "values differ"),
    # exercise 4, Q5
    "an IoU equal to the threshold suppresses": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    order = torch.sort(scores, descending=True, stable=True).indices
    ious = iou_matrix(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= ious[i] >= iou_threshold
    return order[torch.tensor(kept, dtype=torch.int64)]''', "non_max_suppression("),
    "equal scores: the higher index first": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    flipped = right_non_max_suppression(boxes.flip(0), scores.flip(0), iou_threshold)
    return len(boxes) - 1 - flipped''', "values differ"),
    "suppressed boxes still suppress": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    order = torch.sort(scores, descending=True, stable=True).indices
    ious = iou_matrix(boxes[order], boxes[order])
    later = torch.ones_like(ious, dtype=torch.bool).triu(diagonal=1)
    return order[~((ious > iou_threshold) & later).any(dim=0)]''', "non_max_suppression("),
    "kept indices in index order": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    return right_non_max_suppression(boxes, scores, iou_threshold).sort().values''', "values differ"),
    "positions in the sorted order, not box indices": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    kept = right_non_max_suppression(boxes, scores, iou_threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.argsort(order)[kept]''', "values differ"),
    "kept indices as a list": (SSD, "q5_tests", '''
def non_max_suppression(boxes, scores, iou_threshold):
    return right_non_max_suppression(boxes, scores, iou_threshold).tolist()''', "got a list, expected"),
    # exercise 4, Q6
    "losses not divided by the positives": (SSD, "q6_tests", '''
def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    positives = max(int((match_to_anchors(gt_boxes, anchors, 0.5) >= 0).sum()), 1)
    loc, cls = right_ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors)
    return loc * positives, cls * positives''', "values differ"),
    "no objects: divided by zero": (SSD, "q6_tests", '''
def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    positives = int((match_to_anchors(gt_boxes, anchors, 0.5) >= 0).sum())
    loc, cls = right_ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors)
    return loc * max(positives, 1) / positives, cls * max(positives, 1) / positives''', "item 0: values differ"),
    "the background column kept": (SSD, "q6_tests", '''
def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    matches = match_to_anchors(gt_boxes, anchors, 0.5)
    positive = matches >= 0
    labels = torch.zeros(len(anchors), dtype=torch.int64)
    labels[positive] = gt_labels[matches[positive]]
    loc, _ = right_ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors)
    one_hot = F.one_hot(labels, class_logits.shape[1]).float()
    return loc, focal_loss(class_logits, one_hot) / max(int(positive.sum()), 1)''', "item 1: values differ"),
    "smooth L1 with beta 1": (SSD, "q6_tests", '''
def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    matches = match_to_anchors(gt_boxes, anchors, 0.5)
    positive = matches >= 0
    wanted = encode(gt_boxes[matches[positive]], anchors[positive])
    loc = F.smooth_l1_loss(box_outputs[positive], wanted, beta=1.0, reduction="sum") / max(int(positive.sum()), 1)
    return loc, right_ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors)[1]''',
                              "item 0: values differ"),
    "the two losses as a list": (SSD, "q6_tests", '''
def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    return list(right_ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors))''',
                                 "got a list, expected a tuple"),
}





@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_typical_mistakes_fail_the_graders_own_check(mistake, solutions):
    assignment, question, code, message = MISTAKES[mistake]
    namespace = _with_mistake(solutions[assignment], code)
    for seed in (3, 4):
        problem = _verdicts(assignment, namespace, seed, question)[question]
        assert problem is not None and message in problem, (seed, problem)
        assert len(problem) < 400 and "\n" not in problem, "the record's message is one readable line"


def test_outputs_on_another_device_than_the_inputs_are_caught():
    """On a GPU grader the inputs are on cuda: results still on the cpu fail, nested ones too."""
    for assignment in ASSIGNMENTS:
        calls = [c for c in calls_for(assignment, 2) if c.question != "q1_tests" or assignment == SSD]
        questions = {c.question for c in calls}
        results = {q: [{"ok": encode(c.expected)} for c in calls if c.question == q] for q in questions}
        on_cpu = judge(calls, {q: {"device": "cpu", "results": r} for q, r in results.items()})
        assert not any(on_cpu.values()), on_cpu
        on_cuda = judge(calls, {q: {"device": "cuda", "results": r} for q, r in results.items()})
        assert all("the input was on cuda" in on_cuda[q] for q in questions), on_cuda


# --- the probes themselves -----------------------------------------------------------------------

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_what_a_question_prints_stays_small(assignment, solutions):
    calls = calls_for(assignment, 5)
    _, sizes = _printed(calls, solutions[assignment])
    assert len(sizes) == 6 and all(0 < size < MAX_PRINTED_BYTES for size in sizes.values()), sizes


def test_the_grader_side_kmeans_step_is_the_hidden_tests_loop():
    """Exercise 3 has no k-means step in course_lib: the grader's own one equals a plain loop."""
    generator = torch.Generator().manual_seed(0)
    for n, k in [(1, 1), (50, 4), (5, 9)]:
        wh = 1 + 60 * torch.rand(n, 2, generator=generator, dtype=torch.float64)
        centroids = 1 + 60 * torch.rand(k, 2, generator=generator, dtype=torch.float64)
        assignment, moved = yolo_decoding.kmeans_step_reference(wh, centroids)
        for cluster in range(k):
            members = wh[assignment == cluster]
            want = members.mean(dim=0) if len(members) else centroids[cluster]
            torch.testing.assert_close(moved[cluster], want)
        assert assignment.dtype == torch.int64
        for box, cluster in zip(wh.tolist(), assignment.tolist()):
            ious = []
            for centroid in centroids.tolist():
                inter = min(box[0], centroid[0]) * min(box[1], centroid[1])
                ious.append(inter / (box[0] * box[1] + centroid[0] * centroid[1] - inter))
            assert cluster == ious.index(max(ious))


def test_nms_expectations_agree_with_torchvision_and_the_exercise_on_ties():
    for seed in range(6):
        calls = [c for c in calls_for(SSD, seed) if c.name == "non_max_suppression"]
        for call in calls:
            boxes, scores, threshold = call.args
            assert torch.equal(nms(boxes, scores, threshold), call.expected)
            if len(scores.unique()) == len(scores):
                assert torch.equal(torchvision.ops.nms(boxes, scores, threshold), call.expected)
            else:  # equal scores: the lower index first
                position = {int(i): p for p, i in enumerate(call.expected)}
                for a in position:
                    for b in position:
                        if scores[a] == scores[b] and a < b:
                            assert position[a] < position[b]


def test_probe_inputs_are_exact_binary_fractions():
    """Boxes on a binary grid give exact areas and IoUs in float32: no right answer loses a tie."""
    for anchors in ssd.dyadic_anchor_sets():
        assert torch.equal(anchors * 2 ** 8, (anchors * 2 ** 8).round())
    for call in calls_for(SSD, 9):
        if call.name in ("iou_matrix", "match_to_anchors", "non_max_suppression"):
            boxes = call.args[0]
            assert torch.equal(boxes * 2 ** 8, (boxes * 2 ** 8).round()), call.name
    assert all((t * 2 ** 4).is_integer() for t in (*ssd.MATCH_THRESHOLDS, *ssd.NMS_THRESHOLDS))
    assert all((t * 2 ** 4).is_integer() for t in yolo_decoding.THRESHOLDS)


# --- the static audit -------------------------------------------------------------------------------

DELEGATIONS = [
    (SSD, "q1_answer", "from torchvision.ops import box_iou"),
    (SSD, "q1_answer", "import torchvision\nx = torchvision.ops.box_iou"),
    (SSD, "q1_answer", "from torchvision.ops.boxes import box_iou"),
    (SSD, "q1_answer", "from course_lib.detection.boxes import box_iou"),
    (SSD, "q1_answer", "from course_lib import detection"),
    (SSD, "q2_answer", "from course_lib.detection import match_anchors"),
    (SSD, "q3_answer", "import torchvision\nx = torchvision.ops.sigmoid_focal_loss"),
    (SSD, "q3_answer", "from torchvision.ops import sigmoid_focal_loss as fl"),
    (SSD, "q3_answer", "from course_lib.detection.losses import focal_loss as fl"),
    (SSD, "q4_answer", "import course_lib.detection.boxes as reference"),
    (SSD, "q5_answer", "import torchvision\nx = torchvision.ops.nms"),
    (SSD, "q5_answer", "from torchvision.ops import nms"),
    (SSD, "q5_answer", "from torchvision import ops\nx = ops.batched_nms"),
    (SSD, "q5_answer", "x = torch.ops.torchvision.nms"),
    (SSD, "q5_answer", "from torchvision.ops import *"),
    (SSD, "q6_answer", "from course_lib.detection.ssd import ssd_loss"),
    (YOLO, "q2_answer", "from course_lib.detection.anchors import wh_iou"),
    (YOLO, "q3_answer", "from course_lib.detection import kmeans_anchors"),
    (YOLO, "q5_answer", "from course_lib.detection.yolo import decode"),
    (YOLO, "q5_answer", "import course_lib.detection.yolo as yolo"),
    (YOLO, "q6_answer", "from course_lib.detection import yolo"),
]


@pytest.mark.parametrize("assignment, answer, code", DELEGATIONS)
def test_the_audit_reports_an_answer_that_calls_the_reference(assignment, answer, code):
    nb = _source(assignment)
    cell = next(c for c in nb.cells if grade_id(c) == answer)
    cell.source += "\n" + code
    audit = audit_cells(nb)
    question = answer.replace("_answer", "_tests")
    assert audit.reported_questions == {question}, [f.message for f in audit.findings]
    assert audit.zeroed_questions == set(), [f.message for f in audit.findings]
    assert audit.findings[0].message.endswith("reported; the points come from the grader's own check")
    assert "scores 0" not in audit.findings[0].message


def test_the_audit_leaves_the_solutions_alone():
    for assignment in ASSIGNMENTS:
        assert audit_cells(_source(assignment)).findings == []


# --- end to end ----------------------------------------------------------------------------------

#: One subtle mistake per exercise that the visible tests do not see.
SUBTLE = {
    YOLO: ("q3_tests", "q3_answer", "assignment = shape_iou(wh, centroids).argmax(dim=1)",
           "assignment = len(centroids) - 1 - shape_iou(wh, centroids).flip(1).argmax(dim=1)"),
    SSD: ("q5_tests", "q5_answer", "suppressed |= ious[i] > iou_threshold", "suppressed |= ious[i] >= iou_threshold"),
}
HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


@pytest.mark.notebook
def test_grading_the_solutions_and_a_subtly_wrong_answer_end_to_end():
    from course_grader.autograde import GradingOptions, grade_submission
    from course_grader.environment import isolated_environment
    from course_grader.record import Status

    options = GradingOptions(timeout=60, setup_timeout=180, probe_seed=20240)
    with tempfile.TemporaryDirectory() as home, isolated_environment(Path(home), ROOT):
        for assignment in ASSIGNMENTS:
            source = _source(assignment)
            source_bytes = nbformat.writes(source).encode()
            record = grade_submission(assignment, source_bytes, source_bytes, student="solution", options=options)
            print(f"{assignment} solution: {record.duration_s:.1f} s")  # shown with pytest -s
            assert (record.status, record.message) == (Status.GRADED, ""), record.message
            assert record.total == record.max_total, record.scores

            question, answer, right, wrong = SUBTLE[assignment]
            without_hidden = copy.deepcopy(source)
            tests = next(c for c in without_hidden.cells if grade_id(c) == question)
            tests.source = HIDDEN_TESTS.sub("", tests.source)
            submission = copy.deepcopy(without_hidden)
            cell = next(c for c in submission.cells if grade_id(c) == answer)
            assert right in cell.source
            cell.source = cell.source.replace(right, wrong)
            record = grade_submission(assignment, nbformat.writes(without_hidden).encode(),
                                      nbformat.writes(submission).encode(), student="subtle", options=options)
            print(f"{assignment} subtle: {record.duration_s:.1f} s, {record.message}")
            assert record.scores[question] == 0.0, record.scores
            assert record.total == record.max_total - record.max_scores[question], record.scores
            assert f"{question} passed in the notebook but not the grader's own check (scores 0)" in record.message
            assert record.status == Status.TAMPERED, record.message
