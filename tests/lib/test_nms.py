"""course_lib.detection.suppression (nms, batched_nms): the same kept boxes, in the same order, as torchvision.ops."""
from __future__ import annotations

import contextlib
import sys

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.suppression import _float_threshold, batched_nms, nms

NMS_MODULE = sys.modules["course_lib.detection.suppression"]

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


PHASES = {
    "blocks only": {"DENSE_REMOVAL": 0.0, "BLOCK": 16},  # phase 1 never hands over
    "pairs only": {"DENSE_REMOVAL": float("inf")},  # phase 2 does everything, in one chunk
    "pairs in chunks": {"DENSE_REMOVAL": float("inf"), "CHUNK": 40},  # kept boxes checked across chunks
    "tiny tiles": {"DENSE_REMOVAL": float("inf"), "TILE_BYTES": 1024, "TILE_ROWS": 4, "CHUNK": 100},  # cut windows
    "one-row tiles": {"DENSE_REMOVAL": float("inf"), "TILE_ROWS": 1},
    "default": {},
}


@contextlib.contextmanager
def phase_settings(mode: str):
    """The module's settings of ``mode`` (`PHASES`) for the duration of a ``with`` block."""
    saved = {name: getattr(NMS_MODULE, name) for name in PHASES[mode]}
    try:
        for name, value in PHASES[mode].items():
            setattr(NMS_MODULE, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(NMS_MODULE, name, value)


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


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("n", [2000, 5000])
def test_dense_clustered_boxes_equal_torchvision(n, threshold):
    # A detector's raw output: many overlapping candidates per object. Phase 1 settles blocks
    # and removes most boxes; what is left goes to phase 2.
    for seed in range(2):
        boxes, scores = clustered_boxes(n, 10 + seed, objects=20 + 30 * seed)
        assert_same_as_torchvision(boxes, scores, threshold)
        classes = torch.randint(3, (n,), generator=torch.Generator().manual_seed(seed))
        assert_same_as_torchvision(boxes, scores, threshold, classes)


def test_phase_one_hands_over_to_phase_two(monkeypatch):
    calls = []
    original = NMS_MODULE._settle_sparse
    monkeypatch.setattr(NMS_MODULE, "_settle_sparse", lambda *a: calls.append(a[0].shape[1]) or original(*a))
    # Crowded objects with the best scores, then scattered boxes: dense blocks first, then sparse.
    dense, dense_scores = clustered_boxes(1000, 7)
    sparse, sparse_scores = scattered_boxes(2000, 8)
    boxes, scores = torch.cat((dense, sparse)), torch.cat((dense_scores + 1, sparse_scores))
    assert_same_as_torchvision(boxes, scores, 0.5)
    assert len(calls) == 1 and 1000 < calls[0] < 2500  # blocks settled first, the rest in phase 2
    classes = torch.randint(4, (3000,), generator=torch.Generator().manual_seed(1))
    assert_same_as_torchvision(boxes, scores, 0.5, classes)
    assert len(calls) == 2 and 1000 < calls[1] < 2500


@SETTINGS
@given(n=st.integers(0, 400), seed=st.integers(0, 2**20), threshold=st.sampled_from(THRESHOLDS),
       double=st.booleans(), max_side=st.sampled_from([20.0, 200.0, 600.0]),
       mode=st.sampled_from(["pairs in chunks", "tiny tiles", "blocks only"]))
def test_each_phase_equals_torchvision_on_random_boxes(n, seed, threshold, double, max_side, mode):
    dtype = torch.float64 if double else torch.float32
    boxes, scores = scattered_boxes(n, seed, dtype, max_side=max_side)
    classes = torch.randint(4, (n,), generator=torch.Generator().manual_seed(seed))
    with phase_settings(mode):
        assert_same_as_torchvision(boxes, scores, threshold)
        assert_same_as_torchvision(boxes, scores, threshold, classes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["default", "pairs in chunks"])
def test_both_phases_on_each_device(device, mode):
    boxes, scores = clustered_boxes(800, 9)
    sparse, sparse_scores = scattered_boxes(800, 10)
    boxes, scores = torch.cat((boxes, sparse)), torch.cat((scores + 1, sparse_scores))
    classes = torch.randint(3, (1600,), generator=torch.Generator().manual_seed(9))
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    expected_batched = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    with phase_settings(mode):
        got = nms(boxes.to(device), scores.to(device), 0.5)
        got_batched = batched_nms(boxes.to(device), scores.to(device), classes.to(device), 0.5)
    assert got.device.type == torch.device(device).type and got_batched.device == got.device
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(got_batched.cpu().sort().values, expected_batched.sort().values)


@pytest.mark.parametrize("mode", [mode for mode in PHASES if mode != "default"])
def test_each_phase_and_tiling_equals_torchvision(mode):
    for seed in range(14):
        make = scattered_boxes if seed % 2 else clustered_boxes
        boxes, scores = make(50 + 37 * seed, seed)
        if seed % 3 == 0:
            scores = (scores * 4).floor()  # ties
        threshold = THRESHOLDS[seed % len(THRESHOLDS)]
        classes = torch.randint(3, (len(boxes),), generator=torch.Generator().manual_seed(seed))
        with phase_settings(mode):
            assert_same_as_torchvision(boxes, scores, threshold)
            assert_same_as_torchvision(boxes, scores, threshold, classes)
            assert_same_as_torchvision(boxes.double(), scores.double(), threshold)


@pytest.mark.parametrize("mode", ["pairs only", "pairs in chunks", "tiny tiles"])
def test_pairs_with_many_classes_and_dense_windows(mode):
    # Phase 2 on crowded boxes: long windows (cut into pieces), many (class, band) groups.
    boxes, scores = clustered_boxes(1500, 3, objects=8)
    classes = torch.randint(40, (1500,), generator=torch.Generator().manual_seed(3)) * 7 - 100
    with phase_settings(mode):
        assert_same_as_torchvision(boxes, scores, 0.5)
        assert_same_as_torchvision(boxes, scores, 0.5, classes)


@pytest.mark.parametrize("mode", ["default", "pairs in chunks"])
@pytest.mark.parametrize("scale, dtype", [(1e-3, torch.float32), (1e5, torch.float64), (1.0, torch.float64)])
def test_coordinates_of_any_scale(mode, scale, dtype):
    # Normalised coordinates, huge coordinates with small boxes: the windows never miss a pair.
    boxes, scores = scattered_boxes(1200, 11, torch.float64, image=800.0, max_side=60.0)
    boxes = (boxes * scale + (3e4 if scale > 1 else 0)).to(dtype)
    with phase_settings(mode):
        assert_same_as_torchvision(boxes, scores.to(dtype), 0.3)
        assert_same_as_torchvision(boxes, scores.to(dtype), 0.7)


@pytest.mark.parametrize("mode", ["default", "pairs only", "pairs in chunks"])
def test_threshold_zero_and_flat_boxes(mode):
    boxes, scores = scattered_boxes(400, 5)
    flat = boxes.clone()
    flat[:, 3] = flat[:, 1]  # zero height: IoU 0 (or 0/0) with everything, nothing suppressed
    mixed = torch.cat((boxes[:200], flat[200:]))
    with phase_settings(mode):
        assert_same_as_torchvision(boxes, scores, 0.0)  # any overlap at all suppresses
        assert nms(flat, scores, 0.0).tolist() == torch.sort(scores, descending=True, stable=True).indices.tolist()
        assert_same_as_torchvision(flat, scores, 0.0)
        assert_same_as_torchvision(mixed, scores, 0.2)


def test_threshold_one_or_more_keeps_everything():
    boxes, scores = clustered_boxes(300, 2)
    boxes[1] = boxes[0]  # identical boxes: IoU exactly 1, not above 1
    for threshold in (1.0, 1.5):
        assert torch.equal(nms(boxes, scores, threshold), torch.sort(scores, descending=True, stable=True).indices)
        assert_same_as_torchvision(boxes, scores, threshold)


def test_batched_is_nms_class_by_class():
    boxes, scores = clustered_boxes(600, 4, objects=6)
    classes = torch.randint(5, (600,), generator=torch.Generator().manual_seed(4)) * 3
    per_class = torch.cat([torch.nonzero(classes == c).squeeze(1)[nms(boxes[classes == c], scores[classes == c], 0.5)]
                           for c in classes.unique()])
    by_score = per_class[torch.sort(scores[per_class], descending=True, stable=True).indices]
    assert torch.equal(batched_nms(boxes, scores, classes, 0.5).sort().values, per_class.sort().values)
    assert torch.equal(scores[batched_nms(boxes, scores, classes, 0.5)], scores[by_score])


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
        assert torch.tensor(value, dtype=torch.float32).item() == value  # exactly a float32
        above = torch.nextafter(torch.tensor(value, dtype=torch.float32), torch.tensor(float("inf")))
        assert value <= t < float(above)
    assert _float_threshold(0.3, torch.float64) == 0.3
    # float32(0.3) is a little above 0.3: an IoU of exactly that value is above a 0.3 threshold.
    iou = float(torch.tensor(0.3, dtype=torch.float32))
    assert iou > 0.3 and iou > _float_threshold(0.3, torch.float32)


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
