"""course_lib.detection.roi: the same values and gradients as torchvision.ops.roi_pool."""
from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.roi import roi_pool, rois_from_boxes

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def random_rois(count: int, batch: int, height: int, width: int, scale: float, seed: int, dtype=torch.float32):
    """(count, 5) rois in image pixels; some hang over the border, some are tiny or inverted."""
    g = torch.Generator().manual_seed(seed)
    image_size = torch.tensor([width, height], dtype=torch.float64) / scale
    corner = torch.rand(count, 2, generator=g, dtype=torch.float64) * image_size * 1.2 - 0.1 * image_size
    size = torch.rand(count, 2, generator=g, dtype=torch.float64) * image_size * 0.8 - 0.05 * image_size
    index = torch.randint(batch, (count, 1), generator=g).double()
    return torch.cat((index, corner, corner + size), dim=1).to(dtype)


@SETTINGS
@given(batch=st.integers(1, 3), channels=st.integers(1, 4), height=st.integers(1, 30), width=st.integers(1, 30),
       count=st.integers(0, 12), out_h=st.integers(1, 8), out_w=st.integers(1, 8),
       scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 16, 1 / 3]), seed=st.integers(0, 2**16), double=st.booleans())
def test_roi_pool_equals_torchvision(batch, channels, height, width, count, out_h, out_w, scale, seed, double):
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)
    rois = random_rois(count, batch, height, width, scale, seed, dtype)
    got = roi_pool(features, rois, (out_h, out_w), scale)
    expected = torchvision.ops.roi_pool(features, rois, (out_h, out_w), scale)
    assert got.shape == (count, channels, out_h, out_w) and got.dtype == dtype
    assert torch.equal(got, expected)


def test_roi_pool_gradients_equal_torchvision():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float64)
    rois = random_rois(15, 2, 20, 24, 0.5, 1, torch.float64)
    weights = torch.randn(15, 3, 4, 5, generator=g, dtype=torch.float64)
    a, b = features.clone().requires_grad_(), features.clone().requires_grad_()
    (roi_pool(a, rois, (4, 5), 0.5) * weights).sum().backward()
    (torchvision.ops.roi_pool(b, rois, (4, 5), 0.5) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_lesson_shapes():
    # VGG16 features of an 800 x 800 image (512 channels there; 16 here), 128 sampled ROIs, 7 x 7 bins.
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 16, 50, 50, generator=g)
    rois = random_rois(128, 1, 50, 50, 1 / 16, 2)
    pooled = roi_pool(features, rois, 7, spatial_scale=1 / 16)
    assert pooled.shape == (128, 16, 7, 7)
    assert torch.equal(pooled, torchvision.ops.roi_pool(features, rois, 7, 1 / 16))


def test_worked_example():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)  # row r, column c holds 4 r + c
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0],  # the whole map, 2 x 2 bins
                         [0, 2.0, 1.0, 2.0, 1.0],  # a single cell: (x 2, y 1) = 6
                         [0, 10.0, 10.0, 12.0, 12.0]])  # off the map: empty bins give 0
    pooled = roi_pool(features, rois, 2)
    assert pooled[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert pooled[1, 0].tolist() == [[6.0, 6.0], [6.0, 6.0]]
    assert pooled[2, 0].tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_list_of_boxes_per_image():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 16, 16, generator=g)
    boxes = [torch.tensor([[1.0, 2.0, 10.0, 12.0]]), torch.tensor([[0.0, 0.0, 15.0, 15.0], [4.0, 4.0, 8.0, 9.0]])]
    rois = rois_from_boxes(boxes)
    assert rois[:, 0].tolist() == [0.0, 1.0, 1.0]
    expected = torchvision.ops.roi_pool(features, boxes, 3)
    assert torch.equal(roi_pool(features, boxes, 3), expected)
    assert torch.equal(roi_pool(features, rois, 3), expected)


@pytest.mark.parametrize("output_size", [(7, 7), (2, 5), (1, 1)])
def test_large_regions_use_every_window_size(output_size):
    # Regions from 1 cell to the whole map: bins of 1 to 40 cells, table levels 0 to 5.
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 40, 33, generator=g)
    rois = random_rois(60, 2, 40, 33, 1.0, 5)
    rois[:10, 1:] = torch.tensor([-2.0, -3.0, 40.0, 45.0])  # the whole map and more
    pooled = roi_pool(features, rois, output_size)
    assert torch.equal(pooled, torchvision.ops.roi_pool(features, rois, output_size, 1.0))


def test_channels_last_and_non_contiguous_features():
    g = torch.Generator().manual_seed(6)
    features = torch.randn(2, 5, 12, 14, generator=g)
    rois = random_rois(20, 2, 12, 14, 0.5, 7)
    expected = torchvision.ops.roi_pool(features, rois, 3, 0.5)
    assert torch.equal(roi_pool(features.to(memory_format=torch.channels_last), rois, 3, 0.5), expected)
    wide = torch.randn(2, 5, 12, 28, generator=g)
    assert torch.equal(roi_pool(wide[..., ::2], rois, 3, 0.5), torchvision.ops.roi_pool(wide[..., ::2], rois, 3, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minus_infinity_and_huge_negative_values(dtype):
    # Torchvision's running maximum starts at -FLT_MAX: a bin of -inf (or of doubles below
    # -FLT_MAX) gives -FLT_MAX, an empty bin 0.
    features = torch.full((1, 2, 6, 6), float("-inf"), dtype=dtype)
    features[0, 0, :3] = -1e300 if dtype == torch.float64 else -1.0
    features[0, 1, 4:, 4:] = 2.5
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0], [0, 1.0, 0.0, 3.0, 2.0], [0, 20.0, 20.0, 30.0, 30.0]], dtype=dtype)
    pooled = roi_pool(features, rois, 3)
    assert torch.equal(pooled, torchvision.ops.roi_pool(features, rois, 3))
    assert pooled.min() == -torch.finfo(torch.float32).max


def test_regions_off_the_map_give_zeros_and_zero_gradients():
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 20.0, 20.0, 30.0, 30.0], [0, -9.0, -9.0, -7.0, -8.0]], dtype=torch.float64)
    pooled = roi_pool(features, rois, 2)
    expected = torchvision.ops.roi_pool(features, rois, 2)
    assert torch.equal(pooled, expected) and not pooled.any()
    pooled.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_constant_features_and_empty_rois():
    features = torch.full((1, 2, 8, 8), -3.5)
    pooled = roi_pool(features, torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]]), (3, 2))
    assert torch.equal(pooled, torch.full((1, 2, 3, 2), -3.5))
    assert roi_pool(features, torch.zeros(0, 5), 7).shape == (0, 2, 7, 7)


@pytest.mark.parametrize("device", DEVICES)
def test_output_on_input_device(device):
    features = torch.randn(1, 2, 8, 8, device=device)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], device=device)
    pooled = roi_pool(features, rois, 2)
    assert pooled.device.type == torch.device(device).type
    assert torch.equal(pooled.cpu(), torchvision.ops.roi_pool(features.cpu(), rois.cpu(), 2))


def test_roi_pool_bad_input():
    features = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    with pytest.raises(ValueError, match=r"features must have shape \(B, C, H, W\)"):
        roi_pool(features[0], rois, 2)
    with pytest.raises(ValueError, match=r"rois must have shape \(K, 5\)"):
        roi_pool(features, rois[:, 1:], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(features, rois, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_pool(features, rois, 2, spatial_scale=-1.0)
    with pytest.raises(ValueError, match="batch indices"):
        roi_pool(features, torch.tensor([[2, 1.0, 1.0, 6.0, 5.0]]), 2)
    with pytest.raises(ValueError, match="one device"):
        roi_pool(features, rois.to("meta"), 2)
    with pytest.raises(TypeError, match="floating-point"):
        roi_pool(features.long(), rois, 2)
    with pytest.raises(ValueError, match="non-empty list"):
        roi_pool(features, [], 2)
