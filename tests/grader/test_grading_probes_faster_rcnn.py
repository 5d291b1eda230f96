"""The grader's own checks of exercise 5 (Faster R-CNN step by step): right answers pass, mistakes fail.

Most tests play the student's kernel in this process: the solution notebook's set-up and answers (or
a mistaken version of one) are executed into a namespace, the probe cells run there, and the grader
judges what they printed. One test grades real notebooks end to end in the sandbox.
"""
from __future__ import annotations

import copy
import functools
import re
import tempfile
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision

from course_lib.detection.faster_rcnn.region_proposals import filter_proposals
from course_lib.detection.suppression import nms
from course_grader.audit import audit_cells
from course_grader.probes import PROBES, faster_rcnn
from course_grader.submission import cell_kind, grade_id
from course_grader.probes import calls_for
from course_grader.probe_types import Satisfies
from course_grader.verdicts import encode, judge

from probe_checks import grader_calls, printed as _printed, solution_answers, solution_source, verdicts
from probe_checks import with_mistake as _with_mistake

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "05_faster_rcnn_step_by_step"
#: Seeds of the "any seed" test (each seed draws every question's inputs afresh).
SEEDS = range(12)
#: What one question's probe may print (the grader keeps at most 1 MiB of a cell's output).
MAX_PRINTED_BYTES = 200_000
QUESTIONS = {f"q{i}_tests" for i in range(1, 8)}
POINTS = {"q1_tests": 3, "q2_tests": 3, "q3_tests": 2, "q4_tests": 2, "q5_tests": 2, "q6_tests": 3, "q7_tests": 3}


@pytest.fixture(autouse=True)
def kernel_on_the_cpu(monkeypatch):
    """The in-process kernel puts the grader's inputs on the CPU, GPU or not (so `.cuda()` is a mistake)."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")


_source = functools.partial(solution_source, ASSIGNMENT)
_answers = functools.partial(solution_answers, ASSIGNMENT)
_calls = functools.partial(grader_calls, ASSIGNMENT)
_verdicts = functools.partial(verdicts, ASSIGNMENT)


@pytest.fixture(scope="module")
def solution() -> dict:
    return _answers()


# --- coverage ---------------------------------------------------------------------------------------

def test_every_graded_question_is_probed_and_worth_its_points(solution):
    source = _source()
    graded = {grade_id(c): c.metadata.nbgrader["points"] for c in source.cells if cell_kind(c) == "tests"}
    assert graded == POINTS and sum(graded.values()) == 18
    assert PROBES[ASSIGNMENT] is faster_rcnn.calls
    calls = calls_for(ASSIGNMENT, 1)
    assert {call.question for call in calls} == QUESTIONS
    assert all(callable(solution.get(call.name)) for call in calls), "a probed name is not an answer"
    names = {call.question: set() for call in calls}
    for call in calls:
        names[call.question].add(call.name)
    assert names == {"q1_tests": {"make_anchors", "anchors_inside"}, "q2_tests": {"rpn_labels"},
                     "q3_tests": {"sample_minibatch"}, "q4_tests": {"encode", "decode"},
                     "q5_tests": {"flatten_head_output"}, "q6_tests": {"select_proposals"},
                     "q7_tests": {"roi_max_pool"}}


# --- right answers -------------------------------------------------------------------------------

def test_the_solution_passes_the_graders_own_check_for_any_seed(solution):
    for seed in SEEDS:
        verdicts = _verdicts(solution, seed)
        assert set(verdicts) == QUESTIONS
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


#: Other right answers: the probes must not depend on the solution's order of arithmetic, on its
#: vectorisation, or on how it draws its random numbers.
OTHER_RIGHT_ANSWERS = '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    height, width = feature_map.shape[-2:]
    device = feature_map.device
    shapes = []
    for ratio in ratios:  # the few shapes of a cell; width from the area, height from the ratio
        for scale in scales:
            w = math.sqrt((scale * stride) ** 2 / ratio)
            shapes.append([-w / 2, -w * ratio / 2, w / 2, w * ratio / 2])
    shapes = torch.tensor(shapes, dtype=torch.float32, device=device)
    xs = torch.arange(width, device=device) * stride + stride / 2
    ys = torch.arange(height, device=device) * stride + stride / 2
    centres = torch.stack([xs.repeat(height), ys.repeat_interleave(width)] * 2, dim=1).float()
    return (centres[:, None, :] + shapes[None]).reshape(-1, 4)

def anchors_inside(anchors, image_height, image_width):
    limits = torch.tensor([image_width, image_height], device=anchors.device)
    return (anchors[:, :2] >= 0).all(dim=1) & (anchors[:, 2:] <= limits).all(dim=1)

def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
    num_objects, num_anchors = ious.shape
    if num_objects == 0:
        return torch.zeros(num_anchors, dtype=torch.int64, device=ious.device)
    labels = torch.full((num_anchors,), -1, dtype=torch.int64, device=ious.device)
    if num_anchors == 0:
        return labels
    best = ious.amax(dim=0)
    labels = torch.where(best < negative_iou, 0, labels)
    labels = torch.where(best >= positive_iou, 1, labels)
    for row in ious:  # a loop over the objects
        top = row.max()
        if top > 0:
            labels[row == top] = 1
    return labels

def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    num_positive = min(int((labels == 1).sum()), int(batch_size * positive_fraction))
    num_negative = min(int((labels == 0).sum()), batch_size - num_positive)
    keys = torch.rand(labels.shape, generator=generator, device=labels.device)
    sampled = torch.full_like(labels, -1)
    for value, count in ((1, num_positive), (0, num_negative)):
        candidates = torch.where(labels == value, keys, torch.full_like(keys, 2.0))
        sampled[torch.argsort(candidates)[:count]] = value
    return sampled

def encode(boxes, anchors, weights=RPN_WEIGHTS):
    w = torch.tensor(weights, dtype=boxes.dtype, device=boxes.device)
    size, a_size = boxes[..., 2:] - boxes[..., :2], anchors[..., 2:] - anchors[..., :2]
    centre, a_centre = (boxes[..., :2] + boxes[..., 2:]) / 2, (anchors[..., :2] + anchors[..., 2:]) / 2
    return torch.cat([w[:2] * (centre - a_centre) / a_size, w[2:] * torch.log(size / a_size)], dim=-1)

def decode(deltas, anchors, weights=RPN_WEIGHTS):
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device)
    a_size = anchors[..., 2:] - anchors[..., :2]
    a_centre = (anchors[..., :2] + anchors[..., 2:]) / 2
    centre = a_centre + deltas[..., :2] / w[:2] * a_size
    half = 0.5 * a_size * torch.exp(torch.clamp(deltas[..., 2:] / w[2:], max=MAX_LOG_SCALE))
    return torch.cat([centre - half, centre + half], dim=-1)

def flatten_head_output(output, values_per_anchor):
    batch, channels, height, width = output.shape
    anchors = channels // values_per_anchor
    rows = output.view(batch, anchors, values_per_anchor, height, width).permute(0, 3, 4, 1, 2)
    return rows.contiguous().view(batch, -1, values_per_anchor)

def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    height, width = image_size
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    large = (boxes[:, 2:] - boxes[:, :2]).amin(dim=1) >= min_size
    index = torch.nonzero(large).squeeze(1)
    index = index[torch.argsort(scores[index], descending=True, stable=True)][:pre_nms_top_n]
    keep = index[nms(boxes[index], scores[index], nms_threshold)][:post_nms_top_n]
    return boxes[keep], scores[keep]

def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    channels, height, width = features.shape
    pooled = torch.zeros(len(boxes), channels, output_size, output_size, dtype=features.dtype, device=features.device)
    steps = torch.arange(output_size + 1, dtype=torch.float32)
    for k, box in enumerate(boxes.tolist()):
        x1, y1, x2, y2 = (math.floor(v * spatial_scale + 0.5) for v in box)
        bin_height = max(y2 - y1 + 1, 1) / output_size  # floats, as torchvision's C++ code
        bin_width = torch.tensor(max(x2 - x1 + 1, 1) / output_size, dtype=torch.float32)
        tops = [min(max(math.floor(i * bin_height) + y1, 0), height) for i in range(output_size + 1)]
        bottoms = [min(max(math.ceil(i * bin_height) + y1, 0), height) for i in range(output_size + 1)]
        lefts = (torch.floor(steps * bin_width) + x1).clamp(0, width).long().tolist()
        rights = (torch.ceil(steps * bin_width) + x1).clamp(0, width).long().tolist()
        for i in range(output_size):
            for j in range(output_size):
                if bottoms[i + 1] > tops[i] and rights[j + 1] > lefts[j]:
                    cells = features[:, tops[i]:bottoms[i + 1], lefts[j]:rights[j + 1]]
                    pooled[k, :, i, j] = cells.flatten(start_dim=1).max(dim=1).values
    return pooled
'''
#: The source's way of sampling (turning the anchors left out to -1), with its two slips fixed.
SOURCE_SAMPLING_FIXED = '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    labels = labels.clone()
    n_pos = int(positive_fraction * batch_size)
    pos_index = torch.nonzero(labels == 1).squeeze(1)
    if len(pos_index) > n_pos:
        order = torch.randperm(len(pos_index), generator=generator, device=labels.device)
        labels[pos_index[order[:len(pos_index) - n_pos]]] = -1
    n_neg = batch_size - int((labels == 1).sum())
    neg_index = torch.nonzero(labels == 0).squeeze(1)
    if len(neg_index) > n_neg:
        order = torch.randperm(len(neg_index), generator=generator, device=labels.device)
        labels[neg_index[order[:len(neg_index) - n_neg]]] = -1
    return labels
'''


@pytest.mark.parametrize("code", [OTHER_RIGHT_ANSWERS, SOURCE_SAMPLING_FIXED], ids=["other", "source-sampling"])
def test_other_right_answers_pass_too(code, solution):
    namespace = dict(solution)
    exec(code, namespace)  # noqa: S102
    for seed in range(4):
        verdicts = _verdicts(namespace, seed)
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


# --- typical mistakes ------------------------------------------------------------------------------
# Each replaces one answer; `right_<name>` is the solution's function, for mistakes that change one
# thing about its result. The message (a regular expression) is what the grade record quotes.

MISTAKES = {
    # Q1: anchors
    "16 x 16 anchor points: the stride taken for the map's size (erratum 1)": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    points = torch.zeros(1, 1, int(stride), int(stride), device=feature_map.device)
    return right_make_anchors(points, stride, ratios, scales)''', r"make_anchors\(.*shape \(\d+, 4\) expected \(\d+, 4\)"),
    "centres on the cells' corners (i * stride)": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    return right_make_anchors(feature_map, stride, ratios, scales) - stride / 2''', "values differ"),
    "the ratio taken as width / height": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    return right_make_anchors(feature_map, stride, tuple(1 / r for r in ratios), scales)''', "values differ"),
    "anchors generated column by column, x outer and y inner (erratum 8)": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    height, width = feature_map.shape[-2:]
    anchors = right_make_anchors(feature_map, stride, ratios, scales).view(height, width, -1, 4)
    return anchors.transpose(0, 1).reshape(-1, 4)''', "values differ"),
    "anchors as (y1, x1, y2, x2) (erratum 5)": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    return right_make_anchors(feature_map, stride, ratios, scales)[:, [1, 0, 3, 2]]''', "values differ"),
    "in a cell, scale by scale and then ratio by ratio": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    anchors = right_make_anchors(feature_map, stride, ratios, scales)
    return anchors.view(-1, len(ratios), len(scales), 4).transpose(1, 2).reshape(-1, 4)''', "values differ"),
    "anchors moved with .cuda() (erratum 000-8)": ("q1_tests", '''
def make_anchors(feature_map, stride, ratios=RATIOS, scales=SCALES):
    return right_make_anchors(feature_map, stride, ratios, scales).cuda()''',
                                                   r"make_anchors\(.*(raised|the output is on cuda, the input was on cpu)"),
    "edges excluded from the inside": ("q1_tests", '''
def anchors_inside(anchors, image_height, image_width):
    return ((anchors[:, 0] > 0) & (anchors[:, 1] > 0) & (anchors[:, 2] < image_width)
            & (anchors[:, 3] < image_height))''',
        r"anchors_inside\(.*values differ from the reference \(integers must be equal\)"),
    "the image's height and width swapped": ("q1_tests", '''
def anchors_inside(anchors, image_height, image_width):
    return right_anchors_inside(anchors, image_width, image_height)''', r"anchors_inside\(.*values differ"),
    # Q2: labels
    "negatives assigned after the positives (erratum 2)": ("q2_tests", '''
def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
    labels = torch.full((ious.shape[1],), -1, dtype=torch.int64, device=ious.device)
    if ious.shape[0] == 0:
        return labels.fill_(0)
    if ious.shape[1] == 0:
        return labels
    best_iou = ious.max(dim=0).values
    best_of_object = ious.max(dim=1, keepdim=True).values
    labels[((ious == best_of_object) & (best_of_object > 0)).any(dim=0)] = 1
    labels[best_iou >= positive_iou] = 1
    labels[best_iou < negative_iou] = 0
    return labels''', r"rpn_labels\(.*values differ from the reference \(integers must be equal\)"),
    "one best anchor per object (argmax: ties not forced)": ("q2_tests", '''
def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
    labels = torch.full((ious.shape[1],), -1, dtype=torch.int64, device=ious.device)
    if ious.shape[0] == 0:
        return labels.fill_(0)
    if ious.shape[1] == 0:
        return labels
    best_iou = ious.max(dim=0).values
    labels[best_iou < negative_iou] = 0
    labels[best_iou >= positive_iou] = 1
    best = ious.max(dim=1)
    labels[best.indices[best.values > 0]] = 1
    return labels''', "values differ"),
    "an object that overlaps no anchor forces them all": ("q2_tests", '''
def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
    labels = right_rpn_labels(ious, positive_iou, negative_iou)
    if ious.shape[0] and ious.shape[1]:
        labels[(ious == ious.max(dim=1, keepdim=True).values).any(dim=0)] = 1
    return labels''', "values differ"),
    "labels as floats": ("q2_tests", '''
def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
    return right_rpn_labels(ious, positive_iou, negative_iou).float()''', "dtype float32 expected int64"),
    # Q3: sampling
    "n_neg = n_sample * sum(label == 0) (erratum 3)": ("q3_tests", '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    positive = torch.nonzero(labels == 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    n_pos = min(positive.numel(), int(batch_size * positive_fraction))
    n_neg = batch_size * int((labels == 0).sum())
    positive = positive[torch.randperm(positive.numel(), generator=generator, device=labels.device)[:n_pos]]
    negative = negative[torch.randperm(negative.numel(), generator=generator, device=labels.device)[:n_neg]]
    sampled = torch.full_like(labels, -1)
    sampled[positive], sampled[negative] = 1, 0
    return sampled''', r"kept \d+ negatives, expected \d+ = min\("),
    "n_pos = pos_ratio * n_sample, a float used as a size (erratum 9)": ("q3_tests",
                                                                          SOURCE_SAMPLING_FIXED.replace(
                                                                              "int(positive_fraction * batch_size)",
                                                                              "positive_fraction * batch_size"),
                                                                          r"sample_minibatch\(.*raised TypeError"),
    "positives fill the batch when negatives are scarce": ("q3_tests", '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    positive = torch.nonzero(labels == 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    n_neg = min(negative.numel(), batch_size - min(positive.numel(), int(batch_size * positive_fraction)))
    n_pos = min(positive.numel(), batch_size - n_neg)
    positive = positive[torch.randperm(positive.numel(), generator=generator, device=labels.device)[:n_pos]]
    negative = negative[torch.randperm(negative.numel(), generator=generator, device=labels.device)[:n_neg]]
    sampled = torch.full_like(labels, -1)
    sampled[positive], sampled[negative] = 1, 0
    return sampled''', r"kept \d+ positives, expected \d+ = min\("),
    "the first positives and negatives, not a random choice": ("q3_tests", '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    positive = torch.nonzero(labels == 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    n_pos = min(positive.numel(), int(batch_size * positive_fraction))
    n_neg = min(negative.numel(), batch_size - n_pos)
    sampled = torch.full_like(labels, -1)
    sampled[positive[:n_pos]], sampled[negative[:n_neg]] = 1, 0
    return sampled''', "another seed kept the same positives"),
    "drawn with replacement": ("q3_tests", '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    positive = torch.nonzero(labels == 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    n_pos = min(positive.numel(), int(batch_size * positive_fraction))
    n_neg = min(negative.numel(), batch_size - n_pos)
    sampled = torch.full_like(labels, -1)
    if n_pos:
        sampled[positive[torch.randint(positive.numel(), (n_pos,), generator=generator, device=labels.device)]] = 1
    if n_neg:
        sampled[negative[torch.randint(negative.numel(), (n_neg,), generator=generator, device=labels.device)]] = 0
    return sampled''', r"kept \d+ (positives|negatives), expected"),
    "torch's global generator instead of the argument": ("q3_tests", '''
def sample_minibatch(labels, batch_size=256, positive_fraction=0.5, generator=None):
    return right_sample_minibatch(labels, batch_size, positive_fraction)''', "the same seed gave another draw"),
    # Q4: box coding
    "widths with the + 1 of pixel-inclusive code (erratum 4)": ("q4_tests", '''
def encode(boxes, anchors, weights=RPN_WEIGHTS):
    wx, wy, ww, wh = weights
    width, height = boxes[..., 2] - boxes[..., 0] + 1, boxes[..., 3] - boxes[..., 1] + 1
    cx, cy = boxes[..., 0] + width / 2, boxes[..., 1] + height / 2
    a_width, a_height = anchors[..., 2] - anchors[..., 0] + 1, anchors[..., 3] - anchors[..., 1] + 1
    a_cx, a_cy = anchors[..., 0] + a_width / 2, anchors[..., 1] + a_height / 2
    return torch.stack([wx * (cx - a_cx) / a_width, wy * (cy - a_cy) / a_height,
                        ww * torch.log(width / a_width), wh * torch.log(height / a_height)], dim=-1)''',
                                                              r"encode\(.*values differ"),
    "no clamp before exp": ("q4_tests", '''
def decode(deltas, anchors, weights=RPN_WEIGHTS):
    wx, wy, ww, wh = weights
    a_width, a_height = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    a_cx, a_cy = anchors[..., 0] + a_width / 2, anchors[..., 1] + a_height / 2
    cx, cy = deltas[..., 0] / wx * a_width + a_cx, deltas[..., 1] / wy * a_height + a_cy
    width, height = torch.exp(deltas[..., 2] / ww) * a_width, torch.exp(deltas[..., 3] / wh) * a_height
    return torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=-1)''',
                            r"decode\(.*values differ from the reference \(largest difference (nan|inf|\d)"),
    "deltas in the source's (dy, dx, dh, dw) order": ("q4_tests", '''
def encode(boxes, anchors, weights=RPN_WEIGHTS):
    return right_encode(boxes, anchors, weights)[..., [1, 0, 3, 2]]''', r"encode\(.*values differ"),
    "decode ignores the weights": ("q4_tests", '''
def decode(deltas, anchors, weights=RPN_WEIGHTS):
    return right_decode(deltas, anchors)''', r"decode\(.*values differ"),
    "(N, 4) only: [:, 0] instead of [..., 0]": ("q4_tests", '''
def decode(deltas, anchors, weights=RPN_WEIGHTS):
    wx, wy, ww, wh = weights
    a_width, a_height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    a_cx, a_cy = anchors[:, 0] + a_width / 2, anchors[:, 1] + a_height / 2
    cx, cy = deltas[:, 0] / wx * a_width + a_cx, deltas[:, 1] / wy * a_height + a_cy
    width = torch.exp((deltas[:, 2] / ww).clamp(max=MAX_LOG_SCALE)) * a_width
    height = torch.exp((deltas[:, 3] / wh).clamp(max=MAX_LOG_SCALE)) * a_height
    return torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)''',
                                                  r"decode\(<tensor \(\d+, \d+, 4\)>.*(raised|shape|values differ)"),
    # Q5: the head's output
    "reshaped without moving the channels last": ("q5_tests", '''
def flatten_head_output(output, values_per_anchor):
    return output.reshape(output.shape[0], -1, values_per_anchor)''', "values differ"),
    ".view after permute (not contiguous)": ("q5_tests", '''
def flatten_head_output(output, values_per_anchor):
    return output.permute(0, 2, 3, 1).view(output.shape[0], -1, values_per_anchor)''', "raised RuntimeError: view size"),
    "columns before rows: permute(0, 3, 2, 1)": ("q5_tests", '''
def flatten_head_output(output, values_per_anchor):
    return output.permute(0, 3, 2, 1).reshape(output.shape[0], -1, values_per_anchor)''', "values differ"),
    "channels read as (value, anchor)": ("q5_tests", '''
def flatten_head_output(output, values_per_anchor):
    batch, channels, height, width = output.shape
    rows = output.view(batch, values_per_anchor, channels // values_per_anchor, height, width)
    return rows.permute(0, 3, 4, 2, 1).reshape(batch, -1, values_per_anchor)''', "values differ"),
    "a batch of one assumed": ("q5_tests", '''
def flatten_head_output(output, values_per_anchor):
    return output.permute(0, 2, 3, 1).reshape(1, -1, values_per_anchor)''', r"shape \(1, \d+, \d\) expected \(2,"),
    # Q6: proposals
    "NMS given the sorted indices instead of the scores (erratum 4)": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    height, width = image_size
    x, y = boxes[:, 0::2].clamp(0, width), boxes[:, 1::2].clamp(0, height)
    boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    large = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[large], scores[large]
    order = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
    boxes, scores = boxes[order], scores[order]
    keep = nms(boxes, order.float(), nms_threshold)[:post_nms_top_n]
    return boxes[keep], scores[keep]''', r"select_proposals\(.*item 0: (values differ|shape)"),
    "boxes not clipped to the image": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    return right_select_proposals(boxes, scores, (1e9, 1e9), pre_nms_top_n, post_nms_top_n, nms_threshold, min_size)''',
                                       r"select_proposals\(.*item 0: (values differ|shape)"),
    "small boxes judged by their width only": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    height, width = image_size
    x, y = boxes[:, 0::2].clamp(0, width), boxes[:, 1::2].clamp(0, height)
    boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    large = (boxes[:, 2] - boxes[:, 0]) >= min_size
    return right_select_proposals(boxes[large], scores[large], image_size, pre_nms_top_n, post_nms_top_n,
                                  nms_threshold, 0.0)''', r"select_proposals\(.*item 0: (values differ|shape)"),
    "the top-N cut only after NMS": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    return right_select_proposals(boxes, scores, image_size, len(boxes), post_nms_top_n, nms_threshold, min_size)''',
                                      r"select_proposals\(.*item 0: (values differ|shape)"),
    "min size measured with the + 1 of pixel-inclusive widths": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    return right_select_proposals(boxes, scores, image_size, pre_nms_top_n, post_nms_top_n, nms_threshold,
                                  min_size - 1)''', r"select_proposals\(.*item 0: (values differ|shape)"),
    "small boxes removed before clipping": ("q6_tests", '''
def select_proposals(boxes, scores, image_size, pre_nms_top_n=12_000, post_nms_top_n=2_000, nms_threshold=0.7,
                     min_size=16.0):
    large = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return right_select_proposals(boxes[large], scores[large], image_size, pre_nms_top_n, post_nms_top_n,
                                  nms_threshold, 0.0)''', r"select_proposals\(.*item 0: (values differ|shape)"),
    # Q7: ROI pooling
    "regions without the + 1 (the last cell left out)": ("q7_tests", '''
def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    channels, height, width = features.shape
    pooled = features.new_zeros(len(boxes), channels, output_size, output_size)
    for k, (x1, y1, x2, y2) in enumerate(torch.floor(boxes * spatial_scale + 0.5).long().tolist()):
        roi_width, roi_height = max(x2 - x1, 1), max(y2 - y1, 1)
        for i in range(output_size):
            top = min(max((i * roi_height) // output_size + y1, 0), height)
            bottom = min(max(-((-(i + 1) * roi_height) // output_size) + y1, 0), height)
            for j in range(output_size):
                left = min(max((j * roi_width) // output_size + x1, 0), width)
                right = min(max(-((-(j + 1) * roi_width) // output_size) + x1, 0), width)
                if bottom > top and right > left:
                    pooled[k, :, i, j] = features[:, top:bottom, left:right].amax(dim=(1, 2))
    return pooled''', r"roi_max_pool\(.*values differ"),
    "corners rounded with torch.round (halves to even)": ("q7_tests", '''
def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    cells = torch.round(boxes * spatial_scale)
    return right_roi_max_pool(features, (cells - 0.25) / spatial_scale, output_size, spatial_scale)''',
                                                          r"roi_max_pool\(.*values differ"),
    "bins as maxima starting from 0 (negative features lost)": ("q7_tests", '''
def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    return right_roi_max_pool(features, boxes, output_size, spatial_scale).clamp(min=0)''',
                                                                r"roi_max_pool\(.*values differ"),
    "adaptive max pooling of the region cut out of the map": ("q7_tests", '''
def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    channels, height, width = features.shape
    pooled = features.new_zeros(len(boxes), channels, output_size, output_size)
    for k, (x1, y1, x2, y2) in enumerate(torch.floor(boxes * spatial_scale + 0.5).long().tolist()):
        region = features[:, max(y1, 0):max(y2 + 1, 0), max(x1, 0):max(x2 + 1, 0)]
        if region.numel():
            pooled[k] = F.adaptive_max_pool2d(region, output_size)
    return pooled''', r"roi_max_pool\(.*values differ"),
    "boxes read as (y1, x1, y2, x2)": ("q7_tests", '''
def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
    return right_roi_max_pool(features, boxes[:, [1, 0, 3, 2]], output_size, spatial_scale)''',
                                       r"roi_max_pool\(.*values differ"),
}



def test_there_are_many_typical_mistakes_on_every_question():
    per_question = {q: sum(1 for question, *_ in MISTAKES.values() if question == q) for q in QUESTIONS}
    assert len(MISTAKES) >= 15 and min(per_question.values()) >= 4, per_question
    errata = [name for name in MISTAKES if "erratum" in name]
    assert len(errata) >= 9, errata


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_typical_mistakes_fail_the_graders_own_check(mistake, solution):
    question, code, message = MISTAKES[mistake]
    namespace = _with_mistake(solution, code)
    for seed in (3, 4):
        verdicts = _verdicts(namespace, seed, question)
        problem = verdicts[question]
        assert problem is not None and re.search(message, problem), (seed, problem)
        assert len(problem) < 400 and "\n" not in problem, "the record's message is one readable line"


def test_a_mistake_in_one_answer_costs_only_its_question(solution):
    _, code, _ = MISTAKES["negatives assigned after the positives (erratum 2)"]
    verdicts = _verdicts(_with_mistake(solution, code), 5)
    assert {q for q, v in verdicts.items() if v} == {"q2_tests"}, verdicts


def test_outputs_on_another_device_than_the_inputs_are_caught(solution):
    """On a GPU grader the inputs are on cuda: results left on the cpu fail, nested ones (tuples) too."""
    calls = list(_calls(2))
    outputs, _ = _printed(calls, solution)
    assert not any(judge(calls, outputs).values())
    for output in outputs.values():
        output["device"] = "cuda"  # what the kernel reports when its inputs were on the GPU
    on_cuda = judge(calls, outputs)
    assert set(on_cuda) == QUESTIONS
    assert all("the output is on cpu, the input was on cuda" in on_cuda[q] for q in QUESTIONS), on_cuda


def test_unanswered_questions_get_a_clear_message(solution):
    namespace = {name: value for name, value in solution.items()
                 if name not in ("make_anchors", "anchors_inside", "select_proposals")}
    exec("def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):\n    raise NotImplementedError()", namespace)  # noqa: S102
    verdicts = _verdicts(namespace, 6)
    assert "NameError: make_anchors is not defined" in verdicts["q1_tests"]
    assert "raised NotImplementedError" in verdicts["q2_tests"]
    assert "NameError: select_proposals is not defined" in verdicts["q6_tests"]
    assert verdicts["q3_tests"] is None and verdicts["q7_tests"] is None


# --- the probes themselves -----------------------------------------------------------------------

def test_what_a_question_prints_stays_small(solution):
    _, sizes = _printed(calls_for(ASSIGNMENT, 5), solution)
    assert len(sizes) == len(QUESTIONS) and all(0 < size < MAX_PRINTED_BYTES for size in sizes.values()), sizes


def test_the_calls_of_a_seed_are_the_same_every_time_and_differ_between_seeds():
    def plain(calls):
        return [(c.question, c.name, encode(c.args)) for c in calls]

    assert plain(calls_for(ASSIGNMENT, 8)) == plain(calls_for(ASSIGNMENT, 8))
    assert plain(calls_for(ASSIGNMENT, 8)) != plain(calls_for(ASSIGNMENT, 9))


def test_probe_inputs_are_exact_binary_fractions():
    """Boxes on a 1/8 pixel grid below 256, IoUs on a 1/64 grid, distinct scores: every right formula
    computes the same areas, IoUs, ties and thresholds."""
    def on_grid(values: torch.Tensor, step: float) -> bool:
        return torch.equal(values / step, (values / step).round())

    def largest(values: torch.Tensor) -> float:
        return float(values.abs().max()) if values.numel() else 0.0

    for seed in range(6):
        for call in calls_for(ASSIGNMENT, seed):
            if call.name in ("anchors_inside", "encode", "select_proposals"):  # areas exact in float32
                assert on_grid(call.args[0], faster_rcnn.PIXEL_STEP) and largest(call.args[0]) <= 256, call.name
            if call.name == "roi_max_pool":  # corners in feature cells: exact, halves exactly halves
                scale = call.args[3] if len(call.args) == 4 else 1 / 16
                assert on_grid(call.args[1] * scale, faster_rcnn.PIXEL_STEP)
            if call.name == "rpn_labels":
                assert on_grid(call.args[0], faster_rcnn.IOU_STEP)
            if call.name == "select_proposals":
                scores = call.args[1]
                assert on_grid(scores, faster_rcnn.SCORE_STEP) and len(scores.unique()) == len(scores)
            if call.name in ("decode", "flatten_head_output"):
                assert on_grid(call.args[0][call.args[0].abs() < 1e3], faster_rcnn.VALUE_STEP)
    exact = [t for pair in faster_rcnn.LABEL_THRESHOLDS[1:] for t in pair] + list(faster_rcnn.NMS_THRESHOLDS[1:])
    assert all((t * 2 ** 4).is_integer() for t in exact)
    assert all(float(r) ** 0.5 in (0.5, 1.0, 2.0) for r in faster_rcnn.EXACT_RATIOS)


def test_probes_meet_the_ties_and_thresholds_they_are_about():
    """The labelling sees IoUs exactly at its thresholds and tied best anchors; the proposals see boxes
    exactly min_size wide once clipped; ROI pooling sees corners on half cells and empty bins."""
    for seed in range(4):
        calls = calls_for(ASSIGNMENT, seed)
        ious = [c.args for c in calls if c.name == "rpn_labels" and len(c.args) == 3]
        assert any(bool((args[0] == args[1]).any() or (args[0] == args[2]).any()) for args in ious)
        assert any(bool(((a[0] == a[0].max(dim=1, keepdim=True).values) & (a[0] > 0)).sum(dim=1).gt(1).any())
                   for a in ious)
        inside = [c for c in calls if c.name == "anchors_inside" and len(c.args[0])]
        assert any(bool((c.args[0][:, 0] == 0).any() and (c.args[0][:, 2] == c.args[2]).any()) for c in inside)
        pools = [c for c in calls if c.name == "roi_max_pool"]
        halves = [((c.args[1] * c.args[3]) % 1 == 0.5).any() for c in pools if len(c.args) == 4]
        assert any(bool(h) for h in halves)
        assert any(bool((c.expected == 0).all(dim=(1, 2, 3)).any()) for c in pools if len(c.expected))
        for call in pools:
            scale = call.args[3] if len(call.args) == 4 else 1 / 16
            corners = torch.floor(call.args[1] * scale + 0.5)
            sizes = corners[:, 2:] - corners[:, :2] + 1
            assert sizes.numel() == 0 or float(sizes.max()) <= faster_rcnn.MAX_ROI_CELLS, "float and integer bins differ"
        sampling = [c for c in calls if c.name == "sample_minibatch"]
        assert sum(isinstance(c.expected, Satisfies) for c in sampling) >= 7
        assert any(not isinstance(c.expected, Satisfies) for c in sampling)


def test_the_grader_side_proposals_are_the_librarys_and_torchvisions():
    """select_proposals_reference = filter_proposals(order="seed") on the scores' logits = torchvision's ops
    in the source's order."""
    for seed in range(6):
        for call in calls_for(ASSIGNMENT, seed):
            if call.name != "select_proposals" or not len(call.args[0]):
                continue
            boxes, scores, size, *rest = call.args
            pre, post, threshold, min_size = rest or (12_000, 2_000, 0.7, 16.0)
            expected_boxes, expected_scores = call.expected
            library = filter_proposals(boxes[None], torch.logit(scores.double()).float()[None], size,
                                       pre_nms_top_n=pre, post_nms_top_n=post, nms_threshold=threshold,
                                       min_size=min_size, order="seed")
            assert torch.equal(library.boxes[0], expected_boxes)
            torch.testing.assert_close(library.scores[0], expected_scores)
            clipped = torchvision.ops.clip_boxes_to_image(boxes, size)
            large = torchvision.ops.remove_small_boxes(clipped, min_size) if min_size > 0 else torch.arange(len(boxes))
            large = large[torch.sort(scores[large], descending=True, stable=True).indices][:pre]
            keep = large[torchvision.ops.nms(clipped[large], scores[large], threshold)][:post]
            assert torch.equal(clipped[keep], expected_boxes)


def test_the_grader_side_anchors_and_pooling_agree_with_torchvision():
    """Square anchors with the source's centres are torchvision's AnchorGenerator moved by half a stride;
    the probes' ROI pooling expectations are torchvision's roi_pool."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    for seed in range(4):
        for call in calls_for(ASSIGNMENT, seed):
            if call.name == "roi_max_pool":
                features, boxes, *rest = call.args
                size, scale = rest or (7, 1 / 16)
                torch.testing.assert_close(torchvision.ops.roi_pool(features[None], [boxes], size, scale), call.expected)
    generator = AnchorGenerator(sizes=((32, 64),), aspect_ratios=((1.0,),))
    features = torch.zeros(1, 1, 3, 5)
    theirs = generator(ImageList(torch.zeros(1, 3, 48, 80), [(48, 80)]), [features])[0]
    ours = _answers()["make_anchors"](features, 16, (1.0,), (2.0, 4.0))
    torch.testing.assert_close(ours, theirs + 8)


def test_the_set_ups_nms_is_the_courses_and_torchvisions():
    """The exercise hands its students an nms: it must be the right one (ties: lower index first)."""
    set_up_nms = _answers()["nms"]
    generator = torch.Generator().manual_seed(0)
    for count, spread, threshold in [(0, 10, 0.5), (1, 10, 0.5), (40, 30, 0.3), (600, 300, 0.7), (3000, 800, 0.5)]:
        centres = torch.rand(count, 2, generator=generator) * spread
        sizes = 4 + torch.rand(count, 2, generator=generator) * 60
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
        scores = torch.rand(count, generator=generator)
        kept = set_up_nms(boxes, scores, threshold)
        assert kept.dtype == torch.int64 and torch.equal(kept, nms(boxes, scores, threshold))
        assert torch.equal(kept, torchvision.ops.nms(boxes, scores, threshold))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 2 + [[0.0, 0.0, 2.0, 2.0]])
    scores = torch.tensor([0.5, 0.875, 0.875, 0.25, 0.25, 0.875])
    assert set_up_nms(boxes, scores, 0.5).tolist() == nms(boxes, scores, 0.5).tolist() == [1, 5, 3]


def test_the_balanced_sample_check_accepts_the_library_and_refuses_what_breaks_a_promise():
    labels = torch.tensor([1] * 30 + [0] * 40 + [-1] * 5)
    first = faster_rcnn.balanced_sample(labels, 16, 0.5)
    draw = faster_rcnn.sample_labels(labels, 16, 0.5, torch.Generator().manual_seed(1))
    assert first.check(draw, []) is None
    other = faster_rcnn.sample_labels(labels, 16, 0.5, torch.Generator().manual_seed(2))
    assert faster_rcnn.balanced_sample(labels, 16, 0.5, same_as=0).check(other, [draw]).startswith("the same seed")
    assert faster_rcnn.balanced_sample(labels, 16, 0.5, differs_from=0).check(other, [draw]) is None
    assert "another seed kept the same" in faster_rcnn.balanced_sample(labels, 16, 0.5, differs_from=0).check(draw, [draw])
    relabelled = draw.clone()
    relabelled[relabelled == 0] = 1
    assert "label changed" in first.check(relabelled, [])


# --- the static audit -------------------------------------------------------------------------------

DELEGATIONS = [
    ("q1_answer", "from course_lib.detection.anchors import rpn_anchors"),
    ("q1_answer", "from course_lib.detection import inside_image"),
    ("q1_answer", "from torchvision.models.detection.anchor_utils import AnchorGenerator"),
    ("q1_answer", "import torchvision\n_generator = torchvision.models.detection.rpn.AnchorGenerator"),
    ("q2_answer", "from course_lib.detection.matching import label_anchors"),
    ("q2_answer", "from torchvision.models.detection._utils import Matcher"),
    ("q2_answer", "from course_lib.detection.faster_rcnn.rpn import rpn_targets"),
    ("q3_answer", "from course_lib.detection.matching import sample_labels"),
    ("q3_answer", "from torchvision.models.detection._utils import BalancedPositiveNegativeSampler"),
    ("q3_answer", "import course_lib.detection.faster_rcnn as frcnn\n_sample = frcnn.sample_anchors"),
    ("q4_answer", "from torchvision.models.detection._utils import BoxCoder"),
    ("q4_answer", "from course_lib.detection.boxes import encode_boxes, decode_boxes"),
    ("q4_answer", "from course_lib.detection.faster_rcnn.region_proposals import decode_proposals"),
    ("q5_answer", "from torchvision.models.detection.rpn import concat_box_prediction_layers"),
    ("q5_answer", "from torchvision.models.detection.rpn import permute_and_flatten"),
    ("q5_answer", "from course_lib.detection.ssd import flatten_conv"),
    ("q5_answer", "from course_lib.detection.faster_rcnn import RPNHead"),
    ("q5_answer", "from torchvision.models.detection.rpn import RPNHead"),
    ("q6_answer", "from torchvision.ops import nms"),
    ("q6_answer", "import torchvision\n_keep = torchvision.ops.batched_nms"),
    ("q6_answer", "from torchvision.ops import clip_boxes_to_image"),
    ("q6_answer", "from torchvision.ops.boxes import remove_small_boxes"),
    ("q6_answer", "from torchvision.models.detection.rpn import RegionProposalNetwork"),
    ("q6_answer", "from course_lib.detection.faster_rcnn.region_proposals import filter_proposals"),
    ("q6_answer", "from course_lib.detection.suppression import nms as fast_nms"),
    ("q7_answer", "from torchvision.ops import roi_pool"),
    ("q7_answer", "import torchvision\n_pool = torchvision.ops.RoIPool(7, 1 / 16)"),
    ("q7_answer", "from torchvision.ops import MultiScaleRoIAlign"),
    ("q7_answer", "_pool = torch.ops.torchvision.roi_pool"),
    ("q7_answer", "from course_lib.detection.roi import roi_pool"),
    ("q7_answer", "from course_lib.detection.faster_rcnn.roi_heads import pool_rois"),
    ("q7_answer", "from torchvision.models.detection.roi_heads import RoIHeads"),
    ("q7_answer", "from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor"),
    ("q7_answer", "from torchvision.models.detection.roi_heads import fastrcnn_loss"),
]


@pytest.mark.parametrize("answer, code", DELEGATIONS)
def test_the_audit_reports_an_answer_that_calls_the_reference(answer, code):
    nb = _source()
    cell = next(c for c in nb.cells if grade_id(c) == answer)
    cell.source += "\n" + code
    audit = audit_cells(nb, _source())
    question = answer.replace("_answer", "_tests")
    assert audit.reported_questions == {question}, [f.message for f in audit.findings]
    assert audit.zeroed_questions == set(), [f.message for f in audit.findings]
    assert audit.findings[0].message.endswith("reported; the points come from the grader's own check")
    assert "scores 0" not in audit.findings[0].message


HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


def test_the_audit_leaves_the_solution_and_the_exercise_alone():
    source = _source()
    released = nbformat.read(ROOT / "exercises" / f"{ASSIGNMENT}.ipynb", as_version=4)
    submitted = copy.deepcopy(source)  # the solution as a submission holds it: no hidden tests
    for cell in submitted.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "tests":
            cell.source = HIDDEN_TESTS.sub("", cell.source)
    for nb in (source, released, submitted):
        assert audit_cells(nb).findings == []
        assert audit_cells(nb, source).findings == []


def test_the_set_ups_helpers_and_earlier_answers_are_allowed_and_the_hidden_tests_names_are_not():
    nb = copy.deepcopy(_source())
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "tests":
            cell.source = HIDDEN_TESTS.sub("", cell.source)
    q6 = next(c for c in nb.cells if grade_id(c) == "q6_answer")
    q6.source += ("\n_kept = nms(box_iou(GT_BOXES, GT_BOXES), torch.ones(2), 0.5)"
                  "\n_boxes = decode(torch.zeros(1, 4), GT_BOXES[:1])")
    assert audit_cells(nb, _source()).findings == []
    q6.source += "\n_proposals = reference_filter"
    audit = audit_cells(nb, _source())
    assert audit.reported_questions == {"q6_tests"}, [f.message for f in audit.findings]
    assert audit.zeroed_questions == set(), [f.message for f in audit.findings]
    assert any("reference_filter" in f.message for f in audit.findings), [f.message for f in audit.findings]


# --- end to end ----------------------------------------------------------------------------------

@pytest.mark.notebook
def test_grading_the_solution_and_a_subtly_wrong_answer_end_to_end():
    from course_grader.autograde import GradingOptions, grade_submission
    from course_grader.environment import isolated_environment
    from course_grader.record import Status

    options = GradingOptions(timeout=120, setup_timeout=180, probe_seed=20241)
    source = _source()
    with tempfile.TemporaryDirectory() as home, isolated_environment(Path(home), ROOT):
        source_bytes = nbformat.writes(source).encode()
        record = grade_submission(ASSIGNMENT, source_bytes, source_bytes, student="solution", options=options)
        print(f"{ASSIGNMENT} solution: {record.duration_s:.1f} s")  # shown with pytest -s
        assert (record.status, record.message) == (Status.GRADED, ""), record.message
        assert record.total == record.max_total == 18, record.scores

        # A box exactly min_size wide is kept: the visible and hidden tests never meet one, the grader does.
        without_hidden = copy.deepcopy(source)
        for cell in without_hidden.cells:
            if cell.cell_type == "code" and cell_kind(cell) == "tests":
                cell.source = HIDDEN_TESTS.sub("", cell.source)
        submission = copy.deepcopy(without_hidden)
        cell = next(c for c in submission.cells if grade_id(c) == "q6_answer")
        right = "large = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)"
        assert right in cell.source
        cell.source = cell.source.replace(right, right.replace(">=", ">"))
        record = grade_submission(ASSIGNMENT, nbformat.writes(without_hidden).encode(),
                                  nbformat.writes(submission).encode(), student="subtle", options=options)
        print(f"{ASSIGNMENT} subtle: {record.duration_s:.1f} s, {record.message}")
        assert record.scores["q6_tests"] == 0.0, record.scores
        assert record.total == record.max_total - 3, record.scores
        assert "q6_tests passed in the notebook but not the grader's own check (scores 0)" in record.message
        assert record.status == Status.TAMPERED, record.message
