"""Lesson 5's pictures: block diagrams, masks, keypoints, the four vision tasks, proposals, and ROI
pooling grids that show exactly the cells torchvision's roi_pool and roi_align read."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

from course_lib import viz  # noqa: E402

SEEDS = [0, 1, 2, 3]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _image(height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))


def _rectangles(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _box_of(rect: Rectangle) -> list[float]:
    x, y = rect.get_xy()
    return [x, y, x + rect.get_width(), y + rect.get_height()]


# -- draw_pipeline -------------------------------------------------------------------------------

def test_draw_pipeline_draws_blocks_arrows_and_links(tmp_path):
    blocks = [("image", "800 x 800"), ("VGG16", "(1, 512, 50, 50)"), "RPN", ("ROI pooling", "7 x 7"), "head"]
    ax = viz.draw_pipeline(blocks, links=[(1, 3, "features")], title="Faster R-CNN")
    assert len([p for p in ax.patches if isinstance(p, FancyBboxPatch)]) == 5
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 4 + 1  # one between neighbours, plus the link
    texts = [t.get_text() for t in ax.texts]
    for word in ("image", "800 x 800", "VGG16", "(1, 512, 50, 50)", "RPN", "ROI pooling", "head", "features"):
        assert word in texts, word
    assert ax.get_title() == "Faster R-CNN" and not ax.axison
    ax.figure.savefig(tmp_path / "pipeline.png")
    # Without links: the row only; given axes are used.
    fig, given = plt.subplots()
    assert viz.draw_pipeline(["a", "b"], ax=given) is given
    assert len([p for p in given.patches if isinstance(p, FancyArrowPatch)]) == 1


@pytest.mark.parametrize(("blocks", "links", "message"), [
    ([], (), "blocks must be a non-empty"),
    ([("a", "b", "c")], (), "blocks must be a non-empty"),
    (["a", "b"], [(0, 2, "x")], "links must be"),
    (["a", "b"], [(1, 1, "x")], "links must be"),
    (["a", "b"], [(0, 1)], "links must be"),
])
def test_draw_pipeline_bad_input(blocks, links, message):
    with pytest.raises(ValueError, match=message):
        viz.draw_pipeline(blocks, links)


# -- masks and keypoints -------------------------------------------------------------------------

def _two_masks(height: int = 48, width: int = 64) -> torch.Tensor:
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 15:40, 25:60] = True  # overlaps the first: drawn over it
    return masks


def test_draw_masks_colours_exactly_the_mask_pixels(tmp_path):
    masks = _two_masks()
    ax = viz.draw_masks(_image(), masks, torch.tensor([1, 3]))
    overlay = np.asarray(ax.images[-1].get_array())
    assert overlay.shape == (48, 64, 4) and ax.images[-1].get_extent() == [0, 64, 48, 0]
    only_first = masks[0] & ~masks[1]
    np.testing.assert_allclose(overlay[only_first.numpy()][:, :3], np.tile(viz.class_color(1), (int(only_first.sum()), 1)))
    np.testing.assert_allclose(overlay[masks[1].numpy()][:, :3], np.tile(viz.class_color(3), (int(masks[1].sum()), 1)))
    assert (overlay[masks.any(0).numpy()][:, 3] == viz.MASK_ALPHA).all()
    assert (overlay[~masks.any(0).numpy()][:, 3] == 0).all()
    ax.figure.savefig(tmp_path / "masks.png")
    # Mask R-CNN's form: (N, 1, H, W) probabilities, counted from the threshold on.
    probabilities = masks[:, None].float() * 0.6 + 0.2
    ax = viz.draw_masks(_image(), probabilities, threshold=0.5, colors=["red", "blue"], alpha=0.3)
    overlay = np.asarray(ax.images[-1].get_array())
    assert tuple(overlay[6, 11, :3]) == to_rgb("red") and overlay[6, 11, 3] == pytest.approx(0.3)
    assert overlay[0, 0, 3] == 0
    ax = viz.draw_masks(_image(), probabilities, threshold=0.9)  # nothing reaches 0.9
    assert np.asarray(ax.images[-1].get_array())[..., 3].max() == 0
    # No masks at all, and instance colours by default.
    assert viz.draw_masks(_image(), torch.zeros(0, 48, 64)).images[-1].get_array()[..., 3].max() == 0
    default = np.asarray(viz.draw_masks(_image(), masks).images[-1].get_array())
    assert tuple(default[30, 50, :3]) == pytest.approx(viz.palette(2)[1])


def test_draw_masks_bad_input():
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        viz.draw_masks(_image(), torch.zeros(48, 64))
    with pytest.raises(ValueError, match=r"masks must have the image's size \(48, 64\)"):
        viz.draw_masks(_image(), torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="colors must give one colour per mask"):
        viz.draw_masks(_image(), _two_masks(), colors=["red"])
    with pytest.raises(ValueError, match="labels"):
        viz.draw_masks(_image(), _two_masks(), torch.tensor([1]))


def test_draw_keypoints_draws_visible_points_and_their_skeleton(tmp_path):
    g = torch.Generator().manual_seed(0)
    keypoints = torch.cat((torch.rand(2, 17, 2, generator=g) * 40, torch.ones(2, 17, 1)), dim=2)
    keypoints[1, 0, 2] = 0  # person 1's nose is not visible
    keypoints[0, 5, 0] = 500.0  # far off the image: the view stays on the image
    ax = viz.draw_keypoints(_image(), keypoints, title="people")
    points = [len(c.get_offsets()) for c in ax.collections]
    assert points == [17, 16]
    nose_pairs = sum(0 in pair for pair in viz.COCO_SKELETON)
    assert len(ax.lines) == 2 * len(viz.COCO_SKELETON) - nose_pairs
    assert ax.get_xlim() == (0.0, 64.0) and ax.get_title() == "people"
    ax.figure.savefig(tmp_path / "keypoints.png")
    # (N, K, 2), no skeleton, given colours; no people at all.
    ax = viz.draw_keypoints(_image(), keypoints[:1, :, :2], skeleton=None, colors=["red"])
    assert len(ax.lines) == 0 and len(ax.collections[0].get_offsets()) == 17
    ax = viz.draw_keypoints(_image(), torch.zeros(0, 17, 3))
    assert len(ax.lines) == 0 and all(len(c.get_offsets()) == 0 for c in ax.collections)
    assert len(viz.COCO_KEYPOINT_NAMES) == 17 and max(max(pair) for pair in viz.COCO_SKELETON) == 16
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 3\)"):
        viz.draw_keypoints(_image(), torch.zeros(17, 3))
    with pytest.raises(ValueError, match="colors must give one colour per person"):
        viz.draw_keypoints(_image(), keypoints, colors=["red"])


def test_draw_vision_tasks_four_panels_from_masks(tmp_path):
    masks = _two_masks()
    fig = viz.draw_vision_tasks(_image(), masks, torch.tensor([2, 1]), ["background", "cat", "dog"])
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "classification:\ncat" or titles[0] == "classification:\ndog"
    assert "semantic segmentation" in titles[1] and "cat, dog" in titles[1]
    assert titles[2] == "object detection:\n2 boxes with classes"
    assert titles[3] == "instance segmentation:\n2 objects, a mask each"
    # Boxes around the masks, on pixel edges, labelled by class.
    assert [_box_of(r) for r in _rectangles(fig.axes[2])] == [[10, 5, 30, 20], [25, 15, 60, 40]]
    assert [t.get_text() for t in fig.axes[2].texts] == ["dog", "cat"]
    # Semantic: one colour per class; instance: one per object.
    semantic = np.asarray(fig.axes[1].images[-1].get_array())
    assert tuple(semantic[10, 15, :3]) == pytest.approx(viz.class_color(2))
    fig.savefig(tmp_path / "tasks.png")
    fig = viz.draw_vision_tasks(_image(), masks, image_label="a picture")
    assert fig.axes[0].get_title() == "classification:\na picture" and "1" in fig.axes[1].get_title()
    fig = viz.draw_vision_tasks(_image(), torch.zeros(0, 48, 64, dtype=torch.bool))
    assert fig.axes[0].get_title() == "classification:\nnothing" and _rectangles(fig.axes[2]) == []
    with pytest.raises(ValueError, match="masks must have the image's size"):
        viz.draw_vision_tasks(_image(), torch.zeros(1, 10, 10, dtype=torch.bool))


# -- proposals -----------------------------------------------------------------------------------

def test_draw_proposals_colours_by_score_best_on_top(tmp_path):
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [10, 10, 30, 30], [2, 2, 8, 40]])
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1])
    ax = viz.draw_proposals(_image(), boxes, scores, max_boxes=3, title="proposals")
    rects = _rectangles(ax)
    assert [_box_of(r) for r in rects] == boxes[[0, 2, 1]].tolist()  # the 3 best, worst first
    cmap = plt.get_cmap(viz.PROPOSAL_CMAP)
    assert rects[-1].get_edgecolor()[:3] == pytest.approx(cmap(1.0)[:3])  # the best: top of the scale
    assert rects[0].get_edgecolor()[:3] == pytest.approx(cmap(0.0)[:3])  # the worst drawn: bottom
    assert len(ax.figure.axes) == 2 and ax.get_title() == "proposals"  # the colour bar
    ax.figure.savefig(tmp_path / "proposals.png")
    # A shared scale; no colour bar; no scores: the first boxes, one colour.
    ax = viz.draw_proposals(_image(), boxes, scores, vmin=0.0, vmax=1.0, colorbar=False)
    assert _rectangles(ax)[-1].get_edgecolor()[:3] == pytest.approx(cmap(0.9)[:3]) and len(ax.figure.axes) == 1
    ax = viz.draw_proposals(_image(), boxes, max_boxes=2)
    assert [_box_of(r) for r in _rectangles(ax)] == boxes[:2].tolist()
    assert len({r.get_edgecolor() for r in _rectangles(ax)}) == 1
    ax = viz.draw_proposals(_image(), torch.zeros(0, 4), torch.zeros(0))
    assert _rectangles(ax) == []
    equal = viz.draw_proposals(_image(), boxes, torch.full((4,), 0.5))  # one score: no division by zero
    assert len(_rectangles(equal)) == 4
    with pytest.raises(ValueError, match=r"scores must have shape \(4,\)"):
        viz.draw_proposals(_image(), boxes, scores[:2])
    with pytest.raises(ValueError, match="max_boxes"):
        viz.draw_proposals(_image(), boxes, scores, max_boxes=-1)


# -- ROI bins ------------------------------------------------------------------------------------

def _random_rois(seed: int, count: int, image_size: float):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * image_size * 1.1 - image_size * 0.1  # some start off the map
    wh = torch.rand(count, 2, generator=g) * image_size * 0.6
    boxes = torch.cat((xy, xy + wh), dim=1)
    boxes[0] = torch.tensor([8.0, 24.0, 8.0, 24.0])  # a zero-size box: one cell (pool) / one-cell bins (align)
    boxes[1] = torch.tensor([-60.0, -60.0, -20.0, -20.0])  # entirely off the map: empty bins
    boxes[2] = torch.tensor([24.0, 40.0, 56.0, 72.0])  # coordinates that scale to halves: C's rounding
    return boxes


def _bilinear(feature: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """torchvision's roi_align interpolation (aligned=False) at points (y, x): feature (C, H, W) -> (C, N)."""
    height, width = feature.shape[1:]
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = np.maximum(y, 0.0), np.maximum(x, 0.0)
    y_low, x_low = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    y = np.where(y_low >= height - 1, height - 1, y)
    x = np.where(x_low >= width - 1, width - 1, x)
    y_low, x_low = np.minimum(y_low, height - 1), np.minimum(x_low, width - 1)
    y_high, x_high = np.minimum(y_low + 1, height - 1), np.minimum(x_low + 1, width - 1)
    ly, lx = y - y_low, x - x_low
    value = ((1 - ly) * (1 - lx) * feature[:, y_low, x_low] + (1 - ly) * lx * feature[:, y_low, x_high]
             + ly * (1 - lx) * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])
    return np.where(outside, 0.0, value)


@pytest.mark.parametrize("seed", SEEDS)
def test_roi_bins_are_the_cells_torchvision_roi_pool_reads(seed):
    g = torch.Generator().manual_seed(seed)
    size, stride, out = (9 + seed, 12), 16, 7
    features = torch.randn(1, 3, *size, generator=g, dtype=torch.float64)
    boxes = _random_rois(seed, 12, stride * size[1])
    expected = torchvision.ops.roi_pool(features, [boxes.double()], out, 1 / stride)
    for box, pooled in zip(boxes, expected):
        bins = viz.roi_bins(box, 1 / stride, out, feature_size=size)
        (x_lo, x_hi), (y_lo, y_hi) = bins["x"], bins["y"]
        assert x_lo.dtype == np.int64 and (x_lo <= x_hi).all() and (y_lo <= y_hi).all()
        for i in range(out):
            for j in range(out):
                cells = features[0, :, y_lo[i]:y_hi[i], x_lo[j]:x_hi[j]]
                value = cells.amax(dim=(1, 2)) if cells.numel() else torch.zeros(3, dtype=torch.float64)
                assert torch.equal(value, pooled[:, i, j]), (box.tolist(), i, j)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_bins_samples_are_where_torchvision_roi_align_interpolates(seed, sampling_ratio):
    g = torch.Generator().manual_seed(seed)
    size, stride, out = (10, 8 + seed), 16, 7
    features = torch.randn(1, 2, *size, generator=g, dtype=torch.float64)
    boxes = _random_rois(seed, 10, stride * size[0])
    expected = torchvision.ops.roi_align(features, [boxes.double()], out, 1 / stride, sampling_ratio, aligned=False)
    feature = features[0].numpy()
    for box, pooled in zip(boxes, expected):
        bins = viz.roi_bins(box, 1 / stride, out, method="roi_align", sampling_ratio=sampling_ratio)
        sy, sx = bins["samples_y"], bins["samples_x"]  # (7, r)
        np.testing.assert_allclose(sy[:, 0] - bins["y"][0], sy[0, 0] - bins["y"][0][0])  # same place in each bin
        for i in range(out):
            for j in range(out):
                yy, xx = np.meshgrid(sy[i], sx[j], indexing="ij")
                value = _bilinear(feature, yy.reshape(-1), xx.reshape(-1)).mean(axis=1)
                np.testing.assert_allclose(value, pooled[:, i, j].numpy(), rtol=1e-10, atol=1e-12)


def test_roi_bins_lesson_numbers_and_bad_input():
    # A 200 x 120 px box on VGG16's stride-16 map spans 12.5 x 7.5 cells; roi_pool rounds its edges
    # to cells 6..19 and 4..11 (14 x 8 whole cells): 7 bins of 2 columns, and 7 overlapping bins of
    # 2 rows (8 / 7 = 1.14 rows each, floored and ceiled). roi_align keeps the exact box.
    box = torch.tensor([100.0, 60.0, 300.0, 180.0])
    pool = viz.roi_bins(box, 1 / 16, 7, feature_size=(50, 50))
    assert pool["x"][0].tolist() == list(range(6, 20, 2)) and pool["x"][1].tolist() == list(range(8, 22, 2))
    assert pool["y"][0].tolist() == list(range(4, 11)) and pool["y"][1].tolist() == list(range(6, 13))
    align = viz.roi_bins(box, 1 / 16, 7, method="roi_align")
    np.testing.assert_allclose([align["x"][0][0], align["x"][1][-1]], [6.25, 18.75])
    np.testing.assert_allclose(align["x"][1] - align["x"][0], 12.5 / 7)
    assert align["samples_x"].shape == (7, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        viz.roi_bins(box, 1 / 16, method="max")
    with pytest.raises(ValueError, match="output_size"):
        viz.roi_bins(box, 1 / 16, 0)
    with pytest.raises(ValueError, match="box must have 4 numbers"):
        viz.roi_bins(box[:3], 1 / 16)


def test_draw_roi_bins_shows_the_grid_on_the_feature_map(tmp_path):
    features = torch.rand(8, 50, 50, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([100.0, 60.0, 300.0, 180.0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    viz.draw_roi_bins(box, 1 / 16, ax=left, feature_map=features, title="roi_pool")
    rects = _rectangles(left)
    assert len(rects) == 49 + 1  # the bins, then the box itself (dashed)
    bins = viz.roi_bins(box, 1 / 16, feature_size=(50, 50))
    assert _box_of(rects[0]) == [bins["x"][0][0] - 0.5, bins["y"][0][0] - 0.5, bins["x"][1][0] - 0.5,
                                 bins["y"][1][0] - 0.5]  # whole cells, cell j centred on j
    assert _box_of(rects[-1]) == pytest.approx([6.25, 3.75, 18.75, 11.25]) and rects[-1].get_linestyle() == "--"
    np.testing.assert_allclose(left.images[0].get_array(), features.mean(0).numpy(), rtol=1e-6)
    assert left.get_xlim()[0] < 6.25 and left.get_xlim()[1] > 18.75 and left.yaxis_inverted()
    viz.draw_roi_bins(box, 1 / 16, ax=right, feature_map=features[0], method="roi_align", sampling_ratio=2)
    assert len(_rectangles(right)) == 50 and len(right.collections[0].get_offsets()) == 49 * 4
    assert _box_of(_rectangles(right)[0])[:2] == pytest.approx([6.25, 3.75])
    fig.savefig(tmp_path / "roi_bins.png")
    ax = viz.draw_roi_bins(box, 1 / 16, feature_size=(50, 50))  # the grid alone
    assert len(ax.images) == 0 and len(_rectangles(ax)) == 50
    with pytest.raises(ValueError, match="give a feature_map or its feature_size"):
        viz.draw_roi_bins(box, 1 / 16)
    with pytest.raises(ValueError, match=r"feature_map must have shape \(H, W\)"):
        viz.draw_roi_bins(box, 1 / 16, feature_map=torch.zeros(1, 2, 5, 5))
