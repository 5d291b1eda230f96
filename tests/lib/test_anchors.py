"""course_lib.detection.anchors: the lessons' anchor counts, orders and k-means anchors."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from course_lib.detection.anchors import (
    SSD_RATIOS,
    SSD_ZOOMS,
    KMeansAnchors,
    grid_anchors,
    inside_image,
    kmeans_anchors,
    rpn_anchors,
    wh_iou,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- SSD grid anchors


def seed_ssd_anchors(grids, zooms, ratios) -> torch.Tensor:
    """The SSD lesson's construction, in its (y, x) order, converted to our xyxy at the end."""
    scales = [(z * i, z * j) for z in zooms for (i, j) in ratios]  # (height, width) factors
    rows = []
    for g in grids:
        offset = 1 / (g * 2)
        line = torch.linspace(offset, 1 - offset, g, dtype=torch.float64)
        centre_y = line.repeat_interleave(g)  # numpy's repeat: the row changes slowest
        centre_x = line.repeat(g)  # numpy's tile
        for cy, cx in zip(centre_y.tolist(), centre_x.tolist()):
            for h, w in scales:
                h, w = h / g, w / g
                y1, x1, y2, x2 = cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2
                rows.append([x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float64)


def test_grid_anchors_counts():
    assert grid_anchors().shape == (189, 4)  # (16 + 4 + 1) cells x 3 zooms x 3 ratios
    assert grid_anchors((4,), (1.0,), ((1.0, 1.0),)).shape == (16, 4)
    assert grid_anchors((4, 2, 1), (1.0,), ((1.0, 1.0),)).shape == (21, 4)


def test_grid_anchors_4x4_match_the_lesson_printout():
    # The lesson prints (y1, x1, y2, x2) corners of the 16 cells; row-major: anchor i is row i // 4.
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),), dtype=torch.float64)
    for i in range(16):
        row, col = divmod(i, 4)
        expected = torch.tensor([col / 4, row / 4, (col + 1) / 4, (row + 1) / 4], dtype=torch.float64)
        torch.testing.assert_close(anchors[i], expected)


def test_grid_anchors_equal_the_lesson_construction():
    # The seed writes ratios as (height, width); ours are (width, height): the same boxes, same order.
    seed_ratios = [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0)]
    assert [(w, h) for (h, w) in seed_ratios] == [tuple(r) for r in SSD_RATIOS]
    expected = seed_ssd_anchors((4, 2, 1), SSD_ZOOMS, seed_ratios)
    torch.testing.assert_close(grid_anchors(dtype=torch.float64), expected)


def test_grid_anchor_shapes():
    anchors = grid_anchors((1,), (0.75, 1.0, 1.3))  # one cell, 9 anchors
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    expected_w = torch.tensor([z * rw for z in (0.75, 1.0, 1.3) for rw, _ in SSD_RATIOS])
    expected_h = torch.tensor([z * rh for z in (0.75, 1.0, 1.3) for _, rh in SSD_RATIOS])
    torch.testing.assert_close(width, expected_w)
    torch.testing.assert_close(height, expected_h)
    torch.testing.assert_close((anchors[:, :2] + anchors[:, 2:]) / 2, torch.full((9, 2), 0.5))
    assert anchors.min() < 0 and anchors.max() > 1  # zoom 1.3 reaches past the image: not clipped


@pytest.mark.parametrize("device", DEVICES)
def test_anchor_device_and_dtype(device):
    a = grid_anchors(device=device, dtype=torch.float64)
    b = rpn_anchors(4, 16, device=device, dtype=torch.float64)
    for t in (a, b):
        assert t.device.type == torch.device(device).type and t.dtype == torch.float64
    assert inside_image(b, 64, 64).device == b.device


# --------------------------------------------------------------------------- RPN anchors


def seed_rpn_anchors() -> torch.Tensor:
    """The Faster R-CNN walkthrough's loops: centres 8, 24, ..., 792; ratio, then scale."""
    sub_sample, size = 16, 50
    centres = [(16 * (i + 1) - 8) for i in range(size)]
    rows = []
    for cx in centres:  # the walkthrough loops over x outside, y inside
        for cy in centres:
            for ratio in (0.5, 1, 2):
                for scale in (8, 16, 32):
                    h = sub_sample * scale * math.sqrt(ratio)
                    w = sub_sample * scale * math.sqrt(1.0 / ratio)
                    rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float64)


def test_rpn_anchor_counts_of_the_lesson():
    anchors = rpn_anchors(50, 16, dtype=torch.float64)  # 800 x 800 image, VGG16 stride 16
    assert anchors.shape == (22_500, 4)  # 50 * 50 positions x 9 (not 16 * 16 = 2500 positions)
    inside = inside_image(anchors, 800, 800)
    assert inside.dtype == torch.bool and int(inside.sum()) == 8_940


def test_rpn_anchors_are_the_lessons_set_in_row_major_order():
    ours = rpn_anchors(50, 16, dtype=torch.float64)
    theirs = seed_rpn_anchors()
    # Same boxes; ours row by row (y outside), the walkthrough column by column.
    reordered = theirs.reshape(50, 50, 9, 4).transpose(0, 1).reshape(-1, 4)
    torch.testing.assert_close(ours, reordered)


def test_rpn_anchors_agree_with_torchvision_anchor_generator():
    # torchvision centres anchors on the cell corner (no +stride/2) and rounds half sizes.
    stride, ratios, scales = 16, (0.5, 1.0, 2.0), (8.0, 16.0, 32.0)
    generator = AnchorGenerator(sizes=(tuple(s * stride for s in scales),), aspect_ratios=(ratios,))
    features = [torch.zeros(1, 1, 5, 7)]
    images = ImageList(torch.zeros(1, 3, 5 * stride, 7 * stride), [(5 * stride, 7 * stride)])
    theirs = generator(images, features)[0]
    ours = rpn_anchors((5, 7), stride, ratios, scales, dtype=torch.float64)
    assert ours.shape == theirs.shape == (5 * 7 * 9, 4)
    centres = (ours[:, :2] + ours[:, 2:]) / 2
    half_sizes = (ours - centres.repeat(1, 2)).round()
    torch.testing.assert_close((half_sizes + centres.repeat(1, 2) - stride / 2).float(), theirs)


def test_rpn_anchor_sizes():
    anchors = rpn_anchors(1, 16)
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(width * height, torch.tensor([128.0, 256.0, 512.0] * 3) ** 2)
    torch.testing.assert_close(height / width, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3))


def test_anchor_bad_input():
    with pytest.raises(ValueError, match="grid_sizes"):
        grid_anchors((4, 0))
    with pytest.raises(ValueError, match="zooms"):
        grid_anchors((4,), (-1.0,))
    with pytest.raises(ValueError, match="ratios"):
        grid_anchors((4,), (1.0,), (1.0, 1.0))
    with pytest.raises(ValueError, match="feature_size must not be negative"):
        rpn_anchors((-1, 5), 16)
    with pytest.raises(ValueError, match="stride"):
        rpn_anchors(5, 0)
    with pytest.raises(ValueError, match="anchors must have shape"):
        inside_image(torch.zeros(3, 2), 10, 10)
    with pytest.raises(ValueError, match="height"):
        inside_image(torch.zeros(3, 4), -10, 10)


def test_empty_feature_map_gives_no_anchors():
    assert rpn_anchors((0, 5), 16).shape == (0, 4)
    assert inside_image(torch.zeros(0, 4), 10, 10).shape == (0,)


# --------------------------------------------------------------------------- k-means anchors


def three_shape_clusters(n_per_cluster: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[10.0, 30.0], [60.0, 60.0], [150.0, 50.0]])
    noise = 1 + 0.05 * torch.randn(3, n_per_cluster, 2, generator=g)
    return (shapes[:, None, :] * noise).reshape(-1, 2), shapes


def test_wh_iou_worked_numbers():
    a = torch.tensor([[2.0, 2.0]])
    b = torch.tensor([[2.0, 2.0], [4.0, 4.0], [1.0, 4.0], [0.0, 5.0]])
    # identical; nested (4 / 16); crossing (2 / (4 + 4 - 2)); zero-size
    torch.testing.assert_close(wh_iou(a, b), torch.tensor([[1.0, 0.25, 2 / 6, 0.0]]))


def test_kmeans_recovers_clusters_sorted_by_area():
    wh, shapes = three_shape_clusters()
    result = kmeans_anchors(wh, 3, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, KMeansAnchors)
    anchors, mean_iou = result
    assert anchors.shape == (3, 2)
    areas = anchors.prod(dim=1)
    assert torch.all(areas[1:] >= areas[:-1])
    torch.testing.assert_close(anchors, shapes, rtol=0.03, atol=0)  # areas 300, 3600, 7500 px^2
    assert 0.85 < mean_iou <= 1.0


def test_kmeans_is_seeded_and_leaves_the_global_rng_alone():
    wh, _ = three_shape_clusters(seed=1)
    state = torch.get_rng_state()
    a = kmeans_anchors(wh, 5, generator=torch.Generator().manual_seed(3))
    b = kmeans_anchors(wh, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.wh, b.wh) and a.mean_iou == b.mean_iou


def test_kmeans_mean_iou_grows_with_k():
    g = torch.Generator().manual_seed(0)
    wh = torch.exp(torch.randn(400, 2, generator=g) * 0.6 + 3.5)
    curve = [kmeans_anchors(wh, k, generator=torch.Generator().manual_seed(0)).mean_iou for k in (1, 2, 4, 8)]
    assert all(later > earlier for earlier, later in zip(curve, curve[1:])), curve
    assert kmeans_anchors(wh[:6], 6, generator=torch.Generator().manual_seed(0)).mean_iou == pytest.approx(1.0)


def test_kmeans_bad_input():
    wh, _ = three_shape_clusters()
    with pytest.raises(ValueError, match="k must be"):
        kmeans_anchors(wh, 0)
    with pytest.raises(ValueError, match="k must be"):
        kmeans_anchors(wh[:2], 3)
    with pytest.raises(ValueError, match=r"wh must have shape \(N, 2\)"):
        kmeans_anchors(torch.ones(5, 4), 2)
    with pytest.raises(ValueError, match="positive"):
        kmeans_anchors(torch.tensor([[1.0, 0.0], [2.0, 2.0]]), 1)


# --------------------------------------------------------------------------- RPN anchor conventions


def torchvision_anchors(feature_size, stride, ratios, scales, dtype=torch.float32) -> torch.Tensor:
    height, width = feature_size
    generator = AnchorGenerator(sizes=(tuple(s * stride for s in scales),), aspect_ratios=(tuple(ratios),))
    images = ImageList(torch.zeros(1, 3, height * stride, width * stride, dtype=dtype),
                       [(height * stride, width * stride)])
    return generator(images, [torch.zeros(1, 1, height, width, dtype=dtype)])[0]


@pytest.mark.parametrize("feature_size", [(50, 50), (5, 7), (1, 1), (13, 4), (38, 63)])
@pytest.mark.parametrize(("stride", "ratios", "scales"), [
    (16, (0.5, 1.0, 2.0), (8.0, 16.0, 32.0)),  # the lesson: 128, 256, 512 px
    (4, (0.5, 1.0, 2.0), (2.0, 3.0, 4.0, 6.0, 8.0, 12.0)),  # the shapes detector: 8 to 48 px
    (8, (0.25, 0.7, 1.3), (1.5, 5.0)),  # sizes whose half sides round up, down and to even
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rpn_anchors_torchvision_convention_equals_anchor_generator(feature_size, stride, ratios, scales, dtype):
    ours = rpn_anchors(feature_size, stride, ratios, scales, convention="torchvision", dtype=dtype)
    theirs = torchvision_anchors(feature_size, stride, ratios, scales, dtype)
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


def test_rpn_anchor_counts_inside_the_image_per_convention():
    for convention, inside in (("seed", 8_940), ("torchvision", 9_321)):
        anchors = rpn_anchors(50, 16, convention=convention)
        assert anchors.shape == (22_500, 4)
        assert (anchors.shape[0] // 9) == 2_500  # anchor points: 50 * 50
        assert int(inside_image(anchors, 800, 800).sum()) == inside, convention
    assert torch.equal(rpn_anchors(7, 16), rpn_anchors(7, 16, convention="seed"))  # the default


def test_rpn_anchor_conventions_differ_by_half_a_stride():
    seed = rpn_anchors((4, 6), 16, convention="seed", dtype=torch.float64)
    torchvision = rpn_anchors((4, 6), 16, convention="torchvision", dtype=torch.float64)
    centre = lambda a: (a[:, :2] + a[:, 2:]) / 2  # noqa: E731
    torch.testing.assert_close(centre(seed) - centre(torchvision), torch.full((4 * 6 * 9, 2), 8.0, dtype=torch.float64))
    # sizes equal up to the rounding of torchvision's half sides (at most one pixel per side)
    size = lambda a: a[:, 2:] - a[:, :2]  # noqa: E731
    assert (size(seed) - size(torchvision)).abs().max() <= 1.0


def seed_source_order_anchors(height: int, width: int, stride: int, ratios, scales) -> torch.Tensor:
    """The order of the lesson's source: x in the outer loop, y in the inner one."""
    rows = []
    for col in range(width):
        for row in range(height):
            cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
            for ratio in ratios:
                for scale in scales:
                    h, w = stride * scale * math.sqrt(ratio), stride * scale / math.sqrt(ratio)
                    rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows)


def test_anchor_order_lines_up_with_the_rpn_heads_flattened_predictions():
    """Erratum 001-8: the source builds anchors x-outer but flattens predictions y-outer."""
    from course_lib.detection.faster_rcnn.rpn import RPNHead

    height, width, stride, ratios, scales = 6, 9, 16, (0.5, 1.0, 2.0), (2.0, 4.0)
    # A head whose objectness is a known function of position: the cell's index row * W + col.
    head = RPNHead(1, num_anchors=6)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0  # the 3x3 conv passes the cell's own value through
        head.cls_logits.weight.fill_(1.0)
        head.bbox_pred.weight.zero_()
        cell_index = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width)
        objectness = head(cell_index).objectness[0]  # (H * W * 6,), flattened with permute(0, 2, 3, 1)

    def cell_of(anchors):
        centre = (anchors[:, :2] + anchors[:, 2:]) / 2
        col, row = (centre / stride).floor().unbind(1)
        return row * width + col

    ours = rpn_anchors((height, width), stride, ratios, scales)
    assert torch.equal(cell_of(ours), objectness)  # every anchor gets its own cell's prediction
    theirs = seed_source_order_anchors(height, width, stride, ratios, scales)
    assert torch.equal(cell_of(theirs).sort().values, objectness.sort().values)  # the same anchors ...
    wrong = cell_of(theirs) != objectness
    assert wrong.float().mean() > 0.9  # ... but nearly all paired with another cell's prediction
    # (only cells on the "diagonal", where both orders happen to agree, line up by chance).


def test_rpn_anchor_convention_bad_input():
    with pytest.raises(ValueError, match="convention must be one of"):
        rpn_anchors(5, 16, convention="centre")
