"""course_lib.detection.matching: the SSD lesson's matching, RPN labels and sampling."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from course_lib.detection.anchors import grid_anchors, rpn_anchors
from course_lib.detection.boxes import box_iou
from course_lib.detection.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    IGNORE,
    NEGATIVE,
    POSITIVE,
    label_anchors,
    match_anchors,
    match_iou_matrix,
    sample_labels,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)

# The SSD lesson's image: (y1, x1, y2, x2) pixels of a 224 x 224 image; printed / 224 to 4 decimals.
CHAIR, DINING_TABLE, SOFA = [152, 109, 222, 140], [159, 19, 222, 123], [115, 186, 150, 203]
LESSON_OVERLAPS = torch.tensor([
    # anchors 0-7 are all 0 for every object
    [0, 0, 0, 0, 0, 0, 0, 0, 0.0000, 0.0091, 0.0922, 0.0000, 0.0000, 0.0315, 0.3985, 0.0000],
    [0, 0, 0, 0, 0, 0, 0, 0, 0.0356, 0.0549, 0.0103, 0.0000, 0.2598, 0.4538, 0.0653, 0.0000],
    [0, 0, 0, 0, 0, 0, 0, 0, 0.0000, 0.0000, 0.0000, 0.1897, 0.0000, 0.0000, 0.0000, 0.0000],
], dtype=torch.float64)


def lesson_boxes() -> torch.Tensor:
    yx = torch.tensor([CHAIR, DINING_TABLE, SOFA], dtype=torch.float64) / 224
    return yx[:, [1, 0, 3, 2]]  # (y1, x1, y2, x2) -> our (x1, y1, x2, y2)


def jittered_gt(anchors: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Ground truths near random anchors, so every one overlaps some anchor."""
    g = torch.Generator().manual_seed(seed)
    picked = anchors[torch.randint(len(anchors), (count,), generator=g)]
    size = (picked[:, 2:] - picked[:, :2]).repeat(1, 2)
    return picked + 0.3 * size * (torch.rand(count, 4, generator=g, dtype=anchors.dtype) - 0.5)


# --------------------------------------------------------------------------- SSD matching


def test_lesson_overlap_matrix_to_three_decimals():
    overlaps = box_iou(lesson_boxes(), grid_anchors((4,), (1.0,), ((1.0, 1.0),), dtype=torch.float64))
    assert overlaps.shape == (3, 16)
    torch.testing.assert_close(overlaps, LESSON_OVERLAPS, rtol=0, atol=5e-4)
    torch.testing.assert_close(overlaps.max(dim=1).values, torch.tensor([0.3985, 0.4538, 0.1897],
                                                                        dtype=torch.float64), rtol=0, atol=5e-5)


def test_lesson_matching_picks_anchors_11_13_14():
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),), dtype=torch.float64)
    matches = match_anchors(lesson_boxes(), anchors, iou_threshold=0.5)
    expected = torch.full((16,), BELOW_LOW_THRESHOLD)
    expected[11], expected[13], expected[14] = 2, 1, 0  # sofa, dining table, chair
    assert torch.equal(matches, expected)
    # With a 0.2 threshold anchor 12 (IoU 0.2598 with the table) joins the table as well.
    matches = match_anchors(lesson_boxes(), anchors, iou_threshold=0.2)
    expected[12] = 1
    assert torch.equal(matches, expected)


def test_match_anchors_between_thresholds():
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),), dtype=torch.float64)
    matches = match_anchors(lesson_boxes(), anchors, iou_threshold=0.5, low_threshold=0.05)
    # Best IoUs in [0.05, 0.5): anchors 9 (0.0549), 10 (0.0922), 12 (0.2598) are ignored;
    # anchor 8 (0.0356) and the empty ones are background; the forced ones stay matched.
    assert matches[11] == 2 and matches[13] == 1 and matches[14] == 0
    assert torch.equal((matches == BETWEEN_THRESHOLDS).nonzero().flatten(), torch.tensor([9, 10, 12]))
    assert (matches[[0, 1, 2, 3, 4, 5, 6, 7, 8, 15]] == BELOW_LOW_THRESHOLD).all()


@SETTINGS
@given(count=st.integers(1, 8), seed=st.integers(0, 2**16), high=st.sampled_from([0.4, 0.5, 0.7]))
def test_match_anchors_agrees_with_torchvision_matcher(count, seed, high):
    anchors = rpn_anchors(6, 16, dtype=torch.float64)
    gt = jittered_gt(anchors, count, seed)
    low = high - 0.1
    ours = match_anchors(gt, anchors, high, low_threshold=low)
    theirs = Matcher(high, low, allow_low_quality_matches=True)(box_iou(gt, anchors))
    # Same anchors matched / background / ignored ...
    assert torch.equal(ours >= 0, theirs >= 0)
    assert torch.equal(ours == BELOW_LOW_THRESHOLD, theirs == Matcher.BELOW_LOW_THRESHOLD)
    # ... and the same object, except where a forced anchor goes to the object forcing it
    # (torchvision gives it the object it overlaps most, which may leave an object unmatched).
    forced_differently = (ours != theirs) & (ours >= 0)
    ious = box_iou(gt, anchors)
    for a in forced_differently.nonzero().flatten().tolist():
        assert ious[ours[a], a] == ious[:, a][ious[:, a] == ious.max(dim=1).values].max()
    # Every object's best anchor is matched (to it, unless another object overlaps it more).
    best = ious == ious.max(dim=1, keepdim=True).values
    assert (ours[best.any(dim=0)] >= 0).all()


def naive_match(ious: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """The rule of match_anchors written out object by object and anchor by anchor (the test's own copy)."""
    num_gt, num_anchors = ious.shape
    matches = []
    for a in range(num_anchors):
        column = ious[:, a].tolist()
        best = max(column)
        matches.append(BELOW_LOW_THRESHOLD if best < low else BETWEEN_THRESHOLDS if best < high
                       else column.index(best))
    forced_by = {}
    for g in range(num_gt):
        best = max(ious[g].tolist())
        if best > 0:
            for a in range(num_anchors):
                if ious[g, a] == best and (a not in forced_by or ious[g, a] > ious[forced_by[a], a]):
                    forced_by[a] = g
    for a, g in forced_by.items():
        matches[a] = g
    return torch.tensor(matches, dtype=torch.int64)


def awkward_boxes(seed: int, anchors: torch.Tensor) -> torch.Tensor:
    """Random objects plus the awkward cases: a twin, a copy of an anchor, a zero-area box, a box outside."""
    g = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 6, (1,), generator=g))
    xy = torch.rand(count, 2, generator=g, dtype=anchors.dtype) * 0.8
    boxes = torch.cat([xy, xy + 0.02 + 0.5 * torch.rand(count, 2, generator=g, dtype=anchors.dtype)], 1)
    extras = [boxes[:1],  # a twin of object 0: ties between objects
              anchors[int(torch.randint(len(anchors), (1,), generator=g))][None],  # IoU exactly 1 with an anchor
              torch.tensor([[0.3, 0.3, 0.3, 0.6]], dtype=anchors.dtype),  # zero width
              torch.tensor([[2.0, 2.0, 2.5, 2.5]], dtype=anchors.dtype)]  # overlaps no anchor
    keep = torch.rand(len(extras), generator=g) < 0.7
    return torch.cat([boxes] + [e for e, k in zip(extras, keep) if k])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("high", "low"), [(0.5, 0.5), (0.5, 0.3), (0.25, 0.1)])
def test_match_anchors_equals_the_rule_written_out(seed, high, low):
    anchors = grid_anchors((4, 2), (0.75, 1.0), ((1.0, 1.0), (0.5, 1.0)), dtype=torch.float64)
    gt = awkward_boxes(seed, anchors)
    expected = naive_match(box_iou(gt, anchors), high, low)
    assert torch.equal(match_anchors(gt, anchors, high, low_threshold=low), expected)
    assert torch.equal(match_iou_matrix(box_iou(gt, anchors), high, low_threshold=low), expected)


@pytest.mark.parametrize("seed", range(6))
def test_match_iou_matrix_on_a_padded_batch_equals_each_image_alone(seed):
    """One rule for a batch: (B, G, A) with padding rows at IoU -1 gives what each image gives alone."""
    anchors = grid_anchors(dtype=torch.float64)
    images = [awkward_boxes(seed * 10 + i, anchors) for i in range(4)]
    images[seed % 4] = images[seed % 4][:0]  # one image without objects
    num_gt = max(len(b) for b in images)
    ious = torch.full((len(images), num_gt, len(anchors)), -1.0, dtype=torch.float64)
    for i, boxes in enumerate(images):
        ious[i, :len(boxes)] = box_iou(boxes, anchors)
    for high, low in [(0.5, None), (0.5, 0.2)]:
        batched = match_iou_matrix(ious, high, low_threshold=low)
        assert batched.shape == (len(images), len(anchors))
        for i, boxes in enumerate(images):
            assert torch.equal(batched[i], match_anchors(boxes, anchors, high, low_threshold=low)), (seed, i)


def test_match_iou_matrix_edge_cases():
    assert match_iou_matrix(torch.zeros(3, 0)).shape == (0,)
    assert match_iou_matrix(torch.zeros(2, 3, 0)).shape == (2, 0)
    # A zero-area object has IoU 0 with everything: it forces nothing and matches nothing.
    assert match_iou_matrix(torch.zeros(1, 4)).tolist() == [BELOW_LOW_THRESHOLD] * 4
    with pytest.raises(ValueError, match=r"ious must have shape \(\.\.\., G, A\) with G >= 1"):
        match_iou_matrix(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"ious must have shape"):
        match_iou_matrix(torch.zeros(4))
    with pytest.raises(ValueError, match="low_threshold"):
        match_iou_matrix(torch.zeros(2, 4), 0.3, low_threshold=0.5)


# --------------------------------------------------------------------------- RPN labels


def labels_from_matcher(ious: torch.Tensor, pos: float, neg: float) -> torch.Tensor:
    matches = Matcher(pos, neg, allow_low_quality_matches=True)(ious)
    labels = torch.full_like(matches, IGNORE)
    labels[matches >= 0] = POSITIVE
    labels[matches == Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
    return labels


@SETTINGS
@given(count=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_label_anchors_equals_torchvision_rpn_labels(count, seed):
    anchors = rpn_anchors(8, 16, ratios=(0.5, 1.0, 2.0), scales=(2.0, 4.0), dtype=torch.float64)
    ious = box_iou(jittered_gt(anchors, count, seed), anchors)
    assert torch.equal(label_anchors(ious, 0.7, 0.3), labels_from_matcher(ious, 0.7, 0.3))


def test_forced_positive_below_neg_threshold_stays_positive():
    # The lesson's order (positives, then negatives) would turn anchor 1 back into a negative.
    ious = torch.tensor([[0.10, 0.20, 0.05],
                         [0.80, 0.00, 0.00]])
    labels = label_anchors(ious, pos=0.7, neg=0.3)
    assert labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE]


def test_label_anchors_ties_all_count():
    ious = torch.tensor([[0.25, 0.25, 0.10, 0.5]])
    ious[0, 3] = 0.4  # ignored band
    assert label_anchors(ious, 0.7, 0.3).tolist() == [NEGATIVE, NEGATIVE, NEGATIVE, POSITIVE]
    ious = torch.tensor([[0.25, 0.25, 0.10]])
    assert label_anchors(ious, 0.7, 0.3).tolist() == [POSITIVE, POSITIVE, NEGATIVE]


def test_object_touching_no_anchor_forces_nothing():
    ious = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.9, 0.2]])
    assert label_anchors(ious).tolist() == [NEGATIVE, POSITIVE, NEGATIVE]
    # (torchvision's Matcher would make every anchor positive for the first object's "best" 0.)


def test_no_ground_truth_and_no_anchors():
    anchors = grid_anchors((2,), (1.0,), ((1.0, 1.0),))
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [BELOW_LOW_THRESHOLD] * 4
    assert label_anchors(torch.zeros(0, 4)).tolist() == [NEGATIVE] * 4
    assert match_anchors(anchors, torch.zeros(0, 4)).shape == (0,)
    assert label_anchors(torch.zeros(3, 0)).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_matching_outputs_on_input_device(device):
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),), device=device, dtype=torch.float64)
    gt = lesson_boxes().to(device)
    assert match_anchors(gt, anchors).device == anchors.device
    labels = label_anchors(box_iou(gt, anchors))
    assert labels.device == anchors.device and labels.dtype == torch.int64
    assert sample_labels(labels, 4, generator=torch.Generator().manual_seed(0)).device == anchors.device


def test_matching_bad_input():
    anchors = grid_anchors((2,), (1.0,), ((1.0, 1.0),))
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \(N, 4\)"):
        match_anchors(torch.zeros(2, 5), anchors)
    with pytest.raises(ValueError, match="iou_threshold"):
        match_anchors(anchors, anchors, 1.5)
    with pytest.raises(ValueError, match="low_threshold"):
        match_anchors(anchors, anchors, 0.4, low_threshold=0.5)
    with pytest.raises(ValueError, match="one device"):
        match_anchors(anchors, torch.zeros(4, 4, device="meta"))
    with pytest.raises(ValueError, match=r"ious must have shape \(G, A\)"):
        label_anchors(torch.zeros(5))
    with pytest.raises(ValueError, match="neg"):
        label_anchors(torch.zeros(2, 5), pos=0.3, neg=0.7)
    with pytest.raises(TypeError, match="labels must be a signed integer"):
        sample_labels(torch.zeros(5))
    with pytest.raises(ValueError, match="num_samples"):
        sample_labels(torch.zeros(5, dtype=torch.int64), num_samples=-1)
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_labels(torch.zeros(5, dtype=torch.int64), positive_fraction=2.0)


# --------------------------------------------------------------------------- sampling


def make_labels(num_pos: int, num_neg: int, num_ignored: int, seed: int = 0) -> torch.Tensor:
    labels = torch.tensor([POSITIVE] * num_pos + [NEGATIVE] * num_neg + [IGNORE] * num_ignored)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(("num_pos", "num_neg", "kept_pos", "kept_neg"), [
    (500, 8000, 128, 128),  # plenty of both
    (10, 8000, 10, 246),  # few positives: negatives fill the batch (n_neg = 256 - n_pos)
    (500, 20, 128, 20),  # few negatives
    (0, 0, 0, 0),
])
def test_sample_counts(num_pos, num_neg, kept_pos, kept_neg):
    labels = make_labels(num_pos, num_neg, 300)
    sampled = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(1))
    assert int((sampled == POSITIVE).sum()) == kept_pos
    assert int((sampled == NEGATIVE).sum()) == kept_neg
    chosen = sampled != IGNORE
    assert torch.equal(sampled[chosen], labels[chosen])  # a subset, labels unchanged


def test_sample_detection_head_proposals_keep_their_classes():
    labels = torch.tensor([3, 0, 1, 0, 2, -1, 0, 5] * 40)
    sampled = sample_labels(labels, 128, 0.25, generator=torch.Generator().manual_seed(0))
    assert int((sampled >= 1).sum()) == 32 and int((sampled == 0).sum()) == 96
    chosen = sampled != IGNORE
    assert torch.equal(sampled[chosen], labels[chosen])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_labels_equals_torchvision_sampler(seed):
    labels = make_labels(300, 5000, 1000, seed)
    torch.manual_seed(seed)
    pos_mask, neg_mask = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    ours = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ours == POSITIVE, pos_mask[0].bool())
    assert torch.equal(ours == NEGATIVE, neg_mask[0].bool())


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    labels = make_labels(300, 5000, 1000)
    state = torch.get_rng_state()
    a = sample_labels(labels, generator=torch.Generator().manual_seed(7))
    b = sample_labels(labels, generator=torch.Generator().manual_seed(7))
    c = sample_labels(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
