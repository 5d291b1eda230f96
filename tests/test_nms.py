"""course_lib.detection.nms: the same kept boxes, in the same order, as torchvision.ops."""
from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.nms import _float_threshold, batched_nms, nms

NMS_MODULE = sys.modules["course_lib.detection.nms"]  # the package exports a function of that name

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]


def scattered_boxes(n: int, seed: int, dtype=torch.float32, image: float = 800.0, max_side: float = 200.0):
    """Realistic random boxes: centres uniform in the image, sides 10-max_side px, random scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * image
    size = 10 + torch.rand(n, 2, generator=g, dtype=torch.float64) * (max_side - 10)
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    return boxes.to(dtype), torch.rand(n, generator=g, dtype=torch.float64).to(dtype)


def clustered_boxes(n: int, seed: int, objects: int = 20, dtype=torch.float32):
    """Detector-like output: many jittered boxes around a few objects (dense overlaps)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 600 + 100
    sizes = 30 + torch.rand(objects, 2, generator=g) * 150
    which = torch.randint(objects, (n,), generator=g)
    centre = centres[which] + torch.randn(n, 2, generator=g) * sizes[which] * 0.15
    size = sizes[which] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    return boxes.to(dtype), torch.rand(n, generator=g).to(dtype)


def assert_same_as_torchvision(boxes, scores, threshold, classes=None):
    if classes is None:
        expected, got = torchvision.ops.nms(boxes, scores, threshold), nms(boxes, scores, threshold)
    else:
        expected = torchvision.ops.batched_nms(boxes, scores, classes, threshold)
        got = batched_nms(boxes, scores, classes, threshold)
    assert got.dtype == torch.int64 and got.device == boxes.device
    assert torch.equal(got.cpu(), expected.cpu()), (threshold, len(got), len(expected))


@SETTINGS
@given(n=st.integers(0, 300), seed=st.integers(0, 2**20), threshold=st.sampled_from(THRESHOLDS),
       double=st.booleans(), max_side=st.sampled_from([20.0, 200.0, 600.0]))
def test_nms_equals_torchvision_on_random_boxes(n, seed, threshold, double, max_side):
    dtype = torch.float64 if double else torch.float32
    boxes, scores = scattered_boxes(n, seed, dtype, max_side=max_side)
    assert_same_as_torchvision(boxes, scores, threshold)
    classes = torch.randint(4, (n,), generator=torch.Generator().manual_seed(seed))
    assert_same_as_torchvision(boxes, scores, threshold, classes)


@SETTINGS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**20), threshold=st.sampled_from([0.3, 0.5, 0.7]),
       levels=st.integers(1, 5))
def test_ties_in_scores_are_broken_like_torchvision(n, seed, threshold, levels):
    boxes, scores = clustered_boxes(n, seed, objects=5)
    scores = (scores * levels).floor() / levels  # a few distinct scores: many ties
    assert_same_as_torchvision(boxes, scores, threshold)
    classes = torch.randint(3, (n,), generator=torch.Generator().manual_seed(seed))
    assert_same_as_torchvision(boxes, scores, threshold, classes)


@pytest.mark.parametrize("make", [scattered_boxes, clustered_boxes])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_large_inputs_equal_torchvision(make, threshold):
    boxes, scores = make(3000, 1)
    assert_same_as_torchvision(boxes, scores, threshold)
    # Above 1,000 boxes torchvision's batched_nms switches to a loop over classes.
    classes = torch.randint(10, (3000,), generator=torch.Generator().manual_seed(2))
    assert_same_as_torchvision(boxes, scores, threshold, classes)


def test_large_batched_with_ties_keeps_torchvisions_set_in_stable_order():
    # Above 1,000 boxes torchvision's batched_nms sorts its result with an unstable sort, so
    # equal scores come in no particular order; the kept set is the same, ours is by index.
    boxes, scores = clustered_boxes(3000, 5)
    scores = (scores * 3).floor()
    classes = torch.randint(5, (3000,), generator=torch.Generator().manual_seed(5))
    got = batched_nms(boxes, scores, classes, 0.5)
    expected = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(got.sort().values, expected.sort().values)
    order_key = -4000 * scores[got].double() + got.double()  # (decreasing score, then index)
    assert torch.all(order_key[1:] > order_key[:-1])


@pytest.mark.parametrize("mode", ["blocks only", "sweep only", "tiny tiles"])
def test_both_phases_and_tiling_equal_torchvision(monkeypatch, mode):
    if mode == "blocks only":  # phase 1 never hands over
        monkeypatch.setattr(NMS_MODULE, "DENSE_REMOVAL", 0.0)
        monkeypatch.setattr(NMS_MODULE, "BLOCK", 16)
    elif mode == "sweep only":  # phase 2 does (almost) everything
        monkeypatch.setattr(NMS_MODULE, "DENSE_REMOVAL", float("inf"))
        monkeypatch.setattr(NMS_MODULE, "BLOCK", 4)
    else:  # many row blocks, windows cut into several column tiles
        monkeypatch.setattr(NMS_MODULE, "TILE_PAIRS", 64)
        monkeypatch.setattr(NMS_MODULE, "TILE_ROWS", 4)
        monkeypatch.setattr(NMS_MODULE, "TILE_COLS", 16)
    for seed in range(12):
        make = scattered_boxes if seed % 2 else clustered_boxes
        boxes, scores = make(50 + 37 * seed, seed)
        if seed % 3 == 0:
            scores = (scores * 4).floor()  # ties
        threshold = THRESHOLDS[seed % len(THRESHOLDS)]
        assert_same_as_torchvision(boxes, scores, threshold)
        classes = torch.randint(3, (len(boxes),), generator=torch.Generator().manual_seed(seed))
        assert_same_as_torchvision(boxes, scores, threshold, classes)


def test_worked_example():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # best
                          [1.0, 1.0, 11.0, 11.0],  # IoU 81/119 = 0.68 with the best: dropped
                          [20.0, 20.0, 30.0, 30.0],  # far away: kept
                          [0.0, 0.0, 10.0, 5.0]])  # IoU 0.5 with the best: kept at 0.5 (not > 0.5)
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms(boxes, scores, 0.49).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 3, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.49).tolist() == [0, 1, 2]


def test_suppression_chain_alternates():
    # Each box overlaps only its neighbours (IoU 0.6); scores fall along the chain, so the
    # greedy result keeps every other box: a long dependency chain for the rounds.
    n = 201
    left = torch.arange(n, dtype=torch.float64) * 0.25
    boxes = torch.stack((left, torch.zeros(n), left + 1.0, torch.ones(n).double()), dim=1)
    scores = torch.linspace(1, 0, n, dtype=torch.float64)
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


def test_identical_and_degenerate_boxes():
    box = [10.0, 10.0, 20.0, 20.0]
    boxes = torch.tensor([box, box, box, [5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 3.0, 9.0, 3.0]])
    scores = torch.tensor([0.5, 0.9, 0.9, 0.8, 0.8, 0.1])
    # Identical boxes: the first of the best scores survives; zero-area boxes never suppress.
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 4, 5]
    assert_same_as_torchvision(boxes, scores, 0.5)


def test_float_threshold_compares_like_double():
    for t in (0.3, 0.5, 0.7, 0.1, 1 / 3):
        value = _float_threshold(t, torch.float32)
        above = torch.nextafter(value, torch.tensor(float("inf")))
        assert float(value) <= t < float(above)
    assert float(_float_threshold(0.3, torch.float64)) == 0.3


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_single_inputs(device):
    empty = nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64 and empty.device.type == torch.device(device).type
    empty = batched_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                        torch.zeros(0, dtype=torch.int64, device=device), 0.5)
    assert empty.shape == (0,)
    one = nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device), torch.tensor([0.3], device=device), 0.5)
    assert one.tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_output_sorted_by_score_on_input_device(device):
    boxes, scores = scattered_boxes(500, 3)
    keep = nms(boxes.to(device), scores.to(device), 0.5)
    assert keep.device.type == torch.device(device).type
    kept_scores = scores[keep.cpu()]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_does_not_track_gradients():
    boxes, scores = scattered_boxes(50, 4)
    boxes.requires_grad_()
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes.detach(), scores, 0.5))


def test_nms_bad_input():
    boxes, scores = scattered_boxes(5, 0)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\), got \(5, 5\)"):
        nms(torch.zeros(5, 5), scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(5,\)"):
        nms(boxes, scores[:3], 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(boxes, scores, -0.1)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(boxes, scores, float("nan"))
    with pytest.raises(ValueError, match="one device"):
        nms(boxes, scores.to("meta"), 0.5)
    with pytest.raises(ValueError, match="x1 <= x2"):
        nms(boxes[:, [2, 1, 0, 3]], scores, 0.5)
    with pytest.raises(ValueError, match="finite"):
        nms(torch.cat((boxes[:4], torch.tensor([[0.0, 0.0, float("nan"), 1.0]]))), scores, 0.5)
    with pytest.raises(TypeError, match="classes must be an integer"):
        batched_nms(boxes, scores, torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match=r"classes must have shape \(5,\)"):
        batched_nms(boxes, scores, torch.zeros(4, dtype=torch.int64), 0.5)
