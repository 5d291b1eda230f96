"""course_lib.detection.boxes against torchvision.ops and the box-encoding formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder

from course_lib.detection.boxes import (
    BOX_FORMATS,
    MAX_LOG_SCALE,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def random_boxes(n: int, seed: int, dtype=torch.float32, device="cpu", size: float = 100.0) -> torch.Tensor:
    """(n, 4) valid xyxy boxes: corners in [0, size), sides in [0, size / 2)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2
    return torch.cat((xy, xy + wh), dim=1).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- area and IoU


@SETTINGS
@given(n=st.integers(0, 40), m=st.integers(0, 40), seed=st.integers(0, 2**16), double=st.booleans())
def test_box_iou_equals_torchvision(n, m, seed, double):
    dtype = torch.float64 if double else torch.float32
    a, b = random_boxes(n, seed, dtype), random_boxes(m, seed + 1, dtype)
    got = box_iou(a, b)
    assert got.shape == (n, m) and got.dtype == dtype
    torch.testing.assert_close(got, torchvision.ops.box_iou(a, b), rtol=0, atol=0)
    torch.testing.assert_close(box_area(a), torchvision.ops.box_area(a), rtol=0, atol=0)


def test_box_iou_worked_numbers():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # 1 / (4 + 4 - 1); identical; touching edges; far apart
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.0]]))


def test_degenerate_boxes_give_zero_not_nan():
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    line = torch.tensor([[0.0, 3.0, 10.0, 3.0]])
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert torch.isnan(torchvision.ops.box_iou(point, point)).all()  # what we avoid
    for a, b in [(point, point), (point, box), (line, line), (line, box)]:
        iou = box_iou(a, b)
        assert torch.equal(iou, torch.zeros(1, 1)), (a, b, iou)
    assert torch.equal(box_area(torch.cat((point, line, box))), torch.tensor([0.0, 0.0, 100.0]))


def test_empty_inputs_give_empty_outputs():
    empty, some = torch.zeros(0, 4), random_boxes(3, 0)
    assert box_iou(empty, some).shape == (0, 3)
    assert box_iou(some, empty).shape == (3, 0)
    assert box_area(empty).shape == (0,)
    for fmt in BOX_FORMATS:
        assert box_convert(empty, "xyxy", fmt).shape == (0, 4)
    assert clip_boxes(empty, (10, 10)).shape == (0, 4)
    assert encode_boxes(empty, empty).shape == (0, 4)
    assert decode_boxes(empty, empty).shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_and_device_are_kept(device, dtype):
    a, b = random_boxes(5, 1, dtype, device), random_boxes(4, 2, dtype, device)
    outputs = [box_iou(a, b), box_area(a), box_convert(a, "xyxy", "cxcywh"), clip_boxes(a, (50, 50)),
               encode_boxes(a, b[:1]), decode_boxes(torch.zeros_like(a), a)]
    for out in outputs:
        assert out.dtype == dtype and out.device.type == torch.device(device).type


def test_integer_boxes_become_float():
    a = torch.tensor([[0, 0, 2, 2]])
    assert box_iou(a, a).dtype == torch.float32
    assert box_area(a).dtype == torch.float32


def test_bad_input_is_named():
    good = random_boxes(2, 0)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 4\), got \(2, 3\)"):
        box_iou(good[:, :3], good)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(good, good[0])
    with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor"):
        box_iou([[0, 0, 1, 1]], good)
    with pytest.raises(ValueError, match="one device"):
        box_iou(good, torch.zeros(2, 4, device="meta"))
    with pytest.raises(ValueError, match="x1 <= x2"):
        box_iou(torch.tensor([[5.0, 0.0, 1.0, 1.0]]), good)  # (x, y, w, h) passed as corners
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        box_convert(good, "yxyx", "xyxy")
    with pytest.raises(ValueError, match="out_fmt"):
        box_convert(good, "xyxy", "xyhw")
    with pytest.raises(ValueError, match="size must be"):
        clip_boxes(good, (-1, 10))
    with pytest.raises(ValueError, match="size must be"):
        clip_boxes(good, 10)
    with pytest.raises(ValueError, match="weights"):
        encode_boxes(good, good, weights=(1, 1, 1))
    with pytest.raises(ValueError, match="one device"):
        decode_boxes(good, torch.zeros(2, 4, device="meta"))


# --------------------------------------------------------------------------- formats and clipping


@pytest.mark.parametrize("in_fmt", BOX_FORMATS)
@pytest.mark.parametrize("out_fmt", BOX_FORMATS)
def test_box_convert_equals_torchvision(in_fmt, out_fmt):
    boxes = random_boxes(50, 3, torch.float64)
    boxes = torchvision.ops.box_convert(boxes, "xyxy", in_fmt)
    got = box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(got, torchvision.ops.box_convert(boxes, in_fmt, out_fmt))
    torch.testing.assert_close(box_convert(got, out_fmt, in_fmt), boxes)


def test_box_convert_worked_example_and_batched_shapes():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    torch.testing.assert_close(box_convert(xyxy, "xyxy", "xywh"), torch.tensor([[10.0, 20.0, 40.0, 60.0]]))
    torch.testing.assert_close(box_convert(xyxy, "xyxy", "cxcywh"), torch.tensor([[30.0, 50.0, 40.0, 60.0]]))
    batched = random_boxes(12, 4).reshape(3, 4, 4)
    assert box_convert(batched, "xyxy", "cxcywh").shape == (3, 4, 4)
    assert box_area(batched).shape == (3, 4)


def test_clip_boxes_equals_torchvision():
    boxes = random_boxes(100, 5, size=200.0) - 50
    size = (90, 120)  # (height, width)
    torch.testing.assert_close(clip_boxes(boxes, size), torchvision.ops.clip_boxes_to_image(boxes, size))
    clipped = clip_boxes(boxes, size)
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 120
    assert clipped[:, 1::2].min() >= 0 and clipped[:, 1::2].max() <= 90


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_decode_equal_torchvision_box_coder(weights, dtype):
    gt = random_boxes(64, 7, dtype) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)  # positive sizes
    anchors = random_boxes(64, 8, dtype) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
    coder = BoxCoder(weights)
    deltas = encode_boxes(gt, anchors, weights)
    torch.testing.assert_close(deltas, coder.encode_single(gt, anchors))
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), coder.decode_single(deltas, anchors))
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), gt)  # round trip


def test_decode_per_class_deltas_broadcast_like_torchvision():
    anchors = random_boxes(10, 9) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    deltas = torch.randn(10, 3 * 4, generator=torch.Generator().manual_seed(0))
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    expected = coder.decode_single(deltas, anchors).reshape(10, 3, 4)
    got = decode_boxes(deltas.reshape(10, 3, 4), anchors[:, None, :], (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(got, expected)


def test_encode_worked_numbers():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), 20 x 20
    expected = torch.tensor([[(12 - 5) / 10, (14 - 10) / 20, math.log(2.0), math.log(1.0)]])
    torch.testing.assert_close(encode_boxes(gt, anchor), expected)
    torch.testing.assert_close(encode_boxes(gt, anchor, (10, 10, 5, 5)), expected * torch.tensor([10, 10, 5, 5]))


def test_decode_clamps_the_log_scale():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    box = decode_boxes(huge, anchor)
    assert torch.isfinite(box).all()
    width = box[0, 2] - box[0, 0]
    torch.testing.assert_close(width, torch.tensor(16.0 * math.exp(MAX_LOG_SCALE)))
    torch.testing.assert_close(width, torch.tensor(1000.0))


def test_decode_has_gradients_and_encode_is_finite():
    gt = random_boxes(4, 11) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    anchors = (random_boxes(4, 12) + torch.tensor([0.0, 0.0, 1.0, 1.0])).requires_grad_()
    deltas = torch.zeros(4, 4, requires_grad=True)
    decode_boxes(deltas, anchors).sum().backward()
    assert deltas.grad is not None and anchors.grad is not None
    assert torch.isfinite(encode_boxes(gt, anchors)).all()


def test_box_iou_gradients_equal_torchvision():
    a = random_boxes(30, 21, torch.float64).requires_grad_()
    b = random_boxes(20, 22, torch.float64).requires_grad_()
    weights = torch.rand(30, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = torch.autograd.grad((box_iou(a, b) * weights).sum(), (a, b))
    theirs = torch.autograd.grad((torchvision.ops.box_iou(a, b) * weights).sum(), (a, b))
    for got, expected in zip(ours, theirs):
        torch.testing.assert_close(got, expected)
