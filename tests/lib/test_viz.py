"""Drawing utilities: what was drawn (patches, texts, colours), input formats, errors, saved PNGs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from course_lib import viz  # noqa: E402
from course_lib.data import CLASSES, ShapesDataset, sample_image  # noqa: E402

BOXES = torch.tensor([[10.0, 12.0, 50.0, 40.0], [60.0, 5.0, 120.0, 90.0], [30.0, 70.0, 70.0, 120.0]])
LABELS = torch.tensor([1, 3, 1])
SCORES = torch.tensor([0.93, 0.5, 0.271])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _image(height: int = 128, width: int = 128) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))


def _rectangles(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _box_of(rect: Rectangle) -> list[float]:
    x, y = rect.get_xy()
    return [x, y, x + rect.get_width(), y + rect.get_height()]


def _ssd_anchors(grid: int = 4) -> torch.Tensor:
    """(grid * grid * 3, 4) normalised xyxy: three shapes per cell, cell by cell."""
    centers = (torch.arange(grid) + 0.5) / grid
    cy, cx = torch.meshgrid(centers, centers, indexing="ij")
    xy = torch.stack([cx.flatten(), cy.flatten()], dim=1)
    sizes = torch.tensor([[0.25, 0.25], [0.35, 0.18], [0.18, 0.35]])
    return torch.cat([xy[:, None] - sizes / 2, xy[:, None] + sizes / 2], dim=2).reshape(-1, 4)


# -- colours -------------------------------------------------------------------------------------

def test_palette_colours_are_distinct_and_stable():
    colors = viz.palette(91)  # COCO's label range
    assert len(set(colors)) == 91
    assert all(0.0 <= c <= 1.0 for color in colors for c in color)
    assert viz.palette(3) == colors[:3] == [viz.class_color(i) for i in range(3)]
    assert viz.class_color(2) == to_rgb("tab:green")
    with pytest.raises(ValueError, match="label"):
        viz.class_color(-1)


# -- draw_boxes ----------------------------------------------------------------------------------

def test_draw_boxes_draws_one_rectangle_and_label_per_box(tmp_path):
    ax = viz.draw_boxes(_image(), BOXES, LABELS, SCORES, class_names=CLASSES)
    rects = _rectangles(ax)
    assert len(rects) == 3
    assert [_box_of(r) for r in rects] == BOXES.tolist()  # pixel edges: the image spans [0, W] x [0, H]
    assert ax.images[0].get_extent() == [0, 128, 128, 0]
    assert [t.get_text() for t in list(ax.texts)] == ["circle 0.93", "triangle 0.50", "circle 0.27"]
    # Colour per class: both circles alike, the triangle different.
    edges = [r.get_edgecolor()[:3] for r in rects]
    assert edges[0] == edges[2] == viz.class_color(1) and edges[1] == viz.class_color(3)
    ax.figure.savefig(tmp_path / "draw_boxes.png")
    assert (tmp_path / "draw_boxes.png").stat().st_size > 1000


def test_draw_boxes_label_text_is_readable_on_its_colour():
    ax = viz.draw_boxes(_image(), BOXES[:2], torch.tensor([1, 8]))  # orange and yellow-green: light
    for text in ax.texts:
        r, g, b = text.get_bbox_patch().get_facecolor()[:3]
        luminance = 0.299 * r + 0.587 * g + 0.114 * b
        assert to_rgb(text.get_color()) == ((0, 0, 0) if luminance > 0.6 else (1, 1, 1))
    ax = viz.draw_boxes(_image(), BOXES[:1], torch.tensor([0]))  # blue: white text
    assert to_rgb(ax.texts[0].get_color()) == (1.0, 1.0, 1.0)


def test_draw_boxes_without_boxes_or_labels():
    for empty in (torch.zeros(0, 4), np.zeros((0, 4)), [], None):
        ax = viz.draw_boxes(_image(), empty)
        assert _rectangles(ax) == [] and len(ax.texts) == 0
    ax = viz.draw_boxes(_image(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert _rectangles(ax) == []
    ax = viz.draw_boxes(_image(), BOXES)  # no labels: boxes, no text, one colour
    assert len(_rectangles(ax)) == 3 and len(ax.texts) == 0
    assert len({r.get_edgecolor() for r in _rectangles(ax)}) == 1
    ax = viz.draw_boxes(_image(), BOXES, scores=SCORES)
    assert [t.get_text() for t in list(ax.texts)] == ["0.93", "0.50", "0.27"]


def test_draw_boxes_accepts_tensors_and_numpy_in_every_image_format():
    image = _image(64, 96)
    reference = viz.draw_boxes(image, BOXES).images[0].get_array()
    assert reference.shape == (64, 96, 3)
    variants = [
        image.permute(1, 2, 0).numpy(),  # numpy HWC float
        image.to(torch.float64),
        image.to(torch.float16),
    ]
    for variant in variants:
        drawn = viz.draw_boxes(variant, BOXES.numpy()).images[0].get_array()
        np.testing.assert_allclose(drawn, reference, atol=1e-3)
    pixels = (image * 255).round().to(torch.uint8)
    for variant in (pixels, pixels.permute(1, 2, 0).numpy()):
        drawn = viz.draw_boxes(variant, BOXES.tolist()).images[0].get_array()
        assert drawn.dtype == np.uint8 and drawn.shape == (64, 96, 3)
    grey = viz.draw_boxes(image[0], BOXES).images[0].get_array()
    assert grey.shape == (64, 96, 3)
    assert viz.draw_boxes(image[:1], BOXES).images[0].get_array().shape == (64, 96, 3)
    rgba = viz.draw_boxes(np.ones((64, 96, 4), dtype=np.float32), BOXES).images[0].get_array()
    assert rgba.shape == (64, 96, 3)
    # Normalised images are clipped into [0, 1] for display.
    assert viz.draw_boxes(image * 4 - 2, BOXES).images[0].get_array().max() <= 1.0


def test_draw_boxes_colours_and_class_name_mappings():
    ax = viz.draw_boxes(_image(), BOXES, colors="red")
    assert {r.get_edgecolor()[:3] for r in _rectangles(ax)} == {(1.0, 0.0, 0.0)}
    ax = viz.draw_boxes(_image(), BOXES, colors=(0.0, 0.0, 1.0))
    assert {r.get_edgecolor()[:3] for r in _rectangles(ax)} == {(0.0, 0.0, 1.0)}
    ax = viz.draw_boxes(_image(), BOXES, colors=["red", "green", "blue"])
    assert [r.get_edgecolor()[:3] for r in _rectangles(ax)] == [to_rgb(c) for c in ("red", "green", "blue")]
    ax = viz.draw_boxes(_image(), BOXES, torch.tensor([47, 1, 99]), class_names={47: "cup", 1: "person"})
    assert [t.get_text() for t in list(ax.texts)] == ["cup", "person", "99"]


def test_draw_boxes_on_a_given_axes_and_a_sample_photo(tmp_path):
    fig, (left, right) = plt.subplots(1, 2)
    coffee = sample_image("coffee", max_size=300)
    assert viz.draw_boxes(coffee, torch.tensor([[95.0, 30.0, 210.0, 150.0]]), torch.tensor([47]),
                          torch.tensor([0.98]), class_names={47: "cup"}, ax=left) is left
    assert viz.draw_boxes(None, BOXES, ax=right) is right  # onto what is already there
    assert right.yaxis_inverted() and right.get_xlim()[1] >= 120 and max(right.get_ylim()) >= 120
    fig.savefig(tmp_path / "draw_boxes_photo.png")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "names"),
    [
        ((torch.rand(3, 8, 8), torch.zeros(2, 5)), {}, ValueError, r"boxes must have shape \(N, 4\).*\(2, 5\)"),
        ((torch.rand(3, 8, 8), torch.zeros(4)), {}, ValueError, "boxes"),
        ((torch.rand(3, 8, 8), BOXES, torch.tensor([1, 2])), {}, ValueError, r"labels must have shape \(3,\)"),
        ((torch.rand(3, 8, 8), BOXES, None, torch.ones(4)), {}, ValueError, "scores"),
        ((torch.rand(5, 8, 8), BOXES), {}, ValueError, r"image tensor.*\(5, 8, 8\)"),
        ((np.zeros((8, 8, 5)), BOXES), {}, ValueError, "image array"),
        ((torch.rand(1, 3, 8, 8), BOXES), {}, ValueError, "image"),
        ((None, BOXES), {}, ValueError, "image"),
        ((torch.rand(3, 8, 8), BOXES), {"colors": ["red", "blue"]}, ValueError, "colors"),
    ],
)
def test_draw_boxes_bad_input(args, kwargs, error, names):
    with pytest.raises(error, match=names):
        viz.draw_boxes(*args, **kwargs)


# -- draw_anchors --------------------------------------------------------------------------------

def test_draw_anchors_on_the_ssd_grid(tmp_path):
    anchors = _ssd_anchors(4)
    ax = viz.draw_anchors(anchors, image_size=128, grid=4, normalized=True)
    rects = _rectangles(ax)
    assert len(rects) == 1 + 48  # the canvas frame, then the anchors
    np.testing.assert_allclose([_box_of(r) for r in rects[1:]], (anchors * 128).numpy(), atol=1e-4)
    assert len(ax.lines) == 3 + 3  # inner grid lines
    # One colour per anchor shape, three shapes.
    assert len({r.get_edgecolor() for r in rects[1:]}) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["23 x 44.8 px", "32 x 32 px", "44.8 x 23 px"]
    # Anchors sticking out at the border stay in view.
    assert ax.get_xlim()[0] < 0 < 128 < ax.get_xlim()[1]
    ax.figure.savefig(tmp_path / "draw_anchors.png")


def test_draw_anchors_variants(tmp_path):
    anchors = _ssd_anchors(2)
    ax = viz.draw_anchors(anchors, normalized=True)  # the unit square
    assert len(_rectangles(ax)) == 1 + 12 and ax.get_legend().get_texts()[0].get_text() == "0.18 x 0.35"
    ax = viz.draw_anchors(anchors * 64, image_size=(64, 64), grid=(2, 2), indices=[0, 1, 2], legend=False)
    assert len(_rectangles(ax)) == 1 + 3 and ax.get_legend() is None
    ax = viz.draw_anchors((anchors * 128).numpy(), image=_image(), grid=2, show_centers=False)
    assert len(_rectangles(ax)) == 12 and len(ax.collections) == 0 and len(ax.images) == 1
    ax = viz.draw_anchors(torch.zeros(0, 4), image_size=32, grid=4)
    assert len(_rectangles(ax)) == 1
    ax.figure.savefig(tmp_path / "draw_anchors_empty.png")


def test_draw_anchors_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        viz.draw_anchors(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    with pytest.raises(ValueError, match="anchors"):
        viz.draw_anchors(torch.zeros(3, 3), image_size=32)
    with pytest.raises(TypeError, match="grid"):
        viz.draw_anchors(torch.zeros(1, 4), image_size=32, grid="4x4")


# -- show_matching -------------------------------------------------------------------------------

def test_show_matching_colours_anchors_like_their_ground_truth(tmp_path):
    gt = torch.tensor([[8.0, 8.0, 60.0, 56.0], [70.0, 64.0, 120.0, 124.0]])
    anchors = _ssd_anchors(4) * 128
    matches = torch.full((48,), -1)
    matches[[0, 1, 2]] = 0
    matches[[45, 46]] = 1
    matches[10] = -2  # ignored: shown like the unmatched
    ax = viz.show_matching(_image(), gt, anchors, matches, torch.tensor([1, 2]), CLASSES)
    rects = _rectangles(ax)
    faint = [r for r in rects if r.get_alpha() == viz.UNMATCHED_ALPHA]
    assert len(faint) == 48 - 5
    matched = [r for r in rects if r.get_linestyle() == "--"]
    assert len(matched) == 5
    gt_color = viz.palette(2)
    assert [r.get_edgecolor()[:3] for r in matched] == [gt_color[0]] * 3 + [gt_color[1]] * 2
    solid = [r for r in rects if r.get_alpha() is None and r.get_linestyle() in ("-", "solid")]
    assert [_box_of(r) for r in solid] == gt.tolist()
    assert [t.get_text() for t in list(ax.texts)] == ["gt 0 circle: 3 anchors", "gt 1 square: 2 anchors"]
    assert ax.get_xlim() == (0.0, 128.0)  # the view stays on the image
    ax.figure.savefig(tmp_path / "show_matching.png")


def test_show_matching_hidden_unmatched_and_empty_cases():
    gt = torch.tensor([[8.0, 8.0, 60.0, 56.0]])
    anchors = _ssd_anchors(2) * 64
    matches = torch.full((12,), -1)
    matches[4] = 0
    ax = viz.show_matching(None, gt, anchors, matches, image_size=64, unmatched="hidden")
    assert len(_rectangles(ax)) == 1 + 1 + 1  # canvas frame, one matched anchor, the ground truth
    assert ax.texts[0].get_text() == "gt 0: 1 anchor"
    ax = viz.show_matching(_image(64, 64), torch.zeros(0, 4), anchors, torch.full((12,), -1))
    assert len(_rectangles(ax)) == 12 and len(ax.texts) == 0
    ax = viz.show_matching(_image(64, 64), gt, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert ax.texts[0].get_text() == "gt 0: 0 anchors"
    ax = viz.show_matching(_image(64, 64).numpy().transpose(1, 2, 0), gt.tolist(), [], [])  # plain lists
    assert ax.texts[0].get_text() == "gt 0: 0 anchors"


def test_show_matching_bad_input():
    gt, anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]])
    with pytest.raises(ValueError, match=r"matches must have shape \(2,\)"):
        viz.show_matching(_image(8, 8), gt, anchors, torch.tensor([0, -1, -1]))
    with pytest.raises(ValueError, match="ground truth 1"):
        viz.show_matching(_image(8, 8), gt, anchors, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        viz.show_matching(_image(8, 8), gt, anchors, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unmatched"):
        viz.show_matching(_image(8, 8), gt, anchors, torch.tensor([0, -1]), unmatched="grey")
    with pytest.raises(ValueError, match="gt_boxes"):
        viz.show_matching(_image(8, 8), torch.zeros(1, 3), anchors, torch.tensor([0, -1]))


# -- image_grid and loss curves ------------------------------------------------------------------

def test_image_grid_of_dataset_items(tmp_path):
    dataset = ShapesDataset("val", 6, image_size=64)
    items = [dataset[i] for i in range(6)]
    fig = viz.image_grid(items, titles=[f"#{i}" for i in range(6)], ncols=4, class_names=CLASSES)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 8  # two rows of four; the last two are blank
    assert [ax.get_title() for ax in axes[:6]] == [f"#{i}" for i in range(6)]
    for ax, (_, target) in zip(axes, items):
        assert len(_rectangles(ax)) == len(target["boxes"])
        assert [t.get_text() for t in list(ax.texts)] == [CLASSES[int(label)] for label in target["labels"]]
    assert all(not ax.images and not ax.patches for ax in axes[6:])
    fig.savefig(tmp_path / "image_grid.png")


def test_image_grid_item_kinds_and_callback():
    batch = torch.rand(3, 3, 16, 16)
    fig = viz.image_grid(batch)
    assert len(fig.axes) == 3 and all(len(ax.images) == 1 for ax in fig.axes)
    fig = viz.image_grid(np.random.default_rng(0).random((2, 16, 16, 3)), ncols=1)
    assert len(fig.axes) == 2
    image = torch.rand(3, 32, 32)
    fig = viz.image_grid([image, (image, BOXES / 4), (image, BOXES / 4, LABELS), (image, BOXES / 4, LABELS, SCORES)],
                         class_names=CLASSES)
    assert [len(_rectangles(ax)) for ax in fig.axes] == [0, 3, 3, 3]
    assert fig.axes[3].texts[0].get_text() == "circle 0.93"
    seen = []
    fig = viz.image_grid(["a", "b"], draw=lambda ax, item: seen.append(item) or ax.text(0, 0, item))
    assert seen == ["a", "b"] and [ax.texts[0].get_text() for ax in fig.axes] == ["a", "b"]


def test_image_grid_bad_input():
    with pytest.raises(ValueError, match="items"):
        viz.image_grid([])
    with pytest.raises(ValueError, match="titles"):
        viz.image_grid([torch.rand(3, 8, 8)], titles=["a", "b"])
    with pytest.raises(ValueError, match="ncols"):
        viz.image_grid([torch.rand(3, 8, 8)], ncols=0)
    with pytest.raises(ValueError, match="item"):
        viz.image_grid([(torch.rand(3, 8, 8), BOXES, LABELS, SCORES, "extra")])


def test_plot_loss_curves(tmp_path):
    ax = viz.plot_loss_curves({"train": [3.0, 2.0, 1.5], "val": torch.tensor([3.2, 2.5, 2.1])})
    assert [line.get_label() for line in ax.lines] == ["train", "val"]
    assert list(ax.lines[1].get_ydata()) == pytest.approx([3.2, 2.5, 2.1])
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]
    ax.figure.savefig(tmp_path / "loss_curves.png")
    ax = viz.plot_loss_curves([{"loss": 2.0}, {"loss": 1.0, "box": 0.4}], log_scale=True, xlabel="step")
    assert [line.get_label() for line in ax.lines] == ["loss", "box"]
    assert np.isnan(ax.lines[1].get_ydata()[0]) and ax.get_yscale() == "log" and ax.get_xlabel() == "step"
    with pytest.raises(TypeError, match="history"):
        viz.plot_loss_curves(3.0)


# -- labels stay inside the picture --------------------------------------------------------------

#: Boxes touching each edge and corner of a 64 x 64 image, and the whole image (labels long enough to overflow).
EDGE_BOXES = torch.tensor([
    [0.0, 20.0, 20.0, 40.0],    # left edge
    [44.0, 20.0, 64.0, 40.0],   # right edge
    [20.0, 0.0, 40.0, 20.0],    # top edge
    [20.0, 44.0, 40.0, 64.0],   # bottom edge
    [0.0, 0.0, 12.0, 12.0],     # top-left corner
    [52.0, 0.0, 64.0, 12.0],    # top-right corner
    [0.0, 52.0, 12.0, 64.0],    # bottom-left corner
    [56.0, 58.0, 64.0, 64.0],   # a small box in the bottom-right corner
    [0.0, 0.0, 64.0, 64.0],     # the whole image
])


def _assert_labels_inside(fig) -> int:
    """Draw ``fig`` with Agg; every text and its coloured patch must lie inside its axes. Returns the count."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:
            extents = [text.get_window_extent(renderer)]
            if text.get_bbox_patch() is not None:
                extents.append(text.get_bbox_patch().get_window_extent(renderer))
            for extent in extents:
                assert (frame.x0 - 0.5 <= extent.x0 and extent.x1 <= frame.x1 + 0.5
                        and frame.y0 - 0.5 <= extent.y0 and extent.y1 <= frame.y1 + 0.5), (text.get_text(), extent, frame)
            checked += 1
    return checked


@pytest.mark.parametrize("cell_size", [1.0, 1.8, 4.0])
def test_labels_stay_inside_the_axes_for_boxes_touching_every_edge(cell_size):
    labels = torch.tensor([3] * len(EDGE_BOXES))  # "triangle", the longest name
    scores = torch.linspace(0.5, 0.99, len(EDGE_BOXES))
    fig, axes = plt.subplots(1, 2, figsize=(2 * cell_size, cell_size))
    viz.draw_boxes(_image(64, 64), EDGE_BOXES, labels, scores, CLASSES, ax=axes[0])
    matches = torch.arange(len(EDGE_BOXES))
    viz.show_matching(_image(64, 64), EDGE_BOXES, EDGE_BOXES, matches, labels, CLASSES, ax=axes[1])
    fig.subplots_adjust(left=0.02, right=0.98, wspace=0.05)  # a layout step after drawing: labels follow
    assert _assert_labels_inside(fig) == 2 * len(EDGE_BOXES)
    assert {t.get_text() for t in axes[1].texts} == {"gt %d triangle: 1 anchor" % g for g in range(len(EDGE_BOXES))}


def test_labels_stay_inside_in_an_image_grid_and_a_saved_figure(tmp_path):
    items = [(_image(64, 64), EDGE_BOXES[i:i + 1], torch.tensor([2]), torch.tensor([0.87])) for i in range(len(EDGE_BOXES))]
    fig = viz.image_grid(items, ncols=5, class_names=CLASSES, cell_size=1.8)
    assert _assert_labels_inside(fig) == len(EDGE_BOXES)
    fig.savefig(tmp_path / "edges.png", dpi=200)  # another dpi: the labels are placed again
    assert _assert_labels_inside(fig) == len(EDGE_BOXES)


def test_labels_go_above_the_box_when_there_is_room_and_inside_when_not():
    ax = viz.draw_boxes(_image(64, 64), torch.tensor([[10.0, 30.0, 30.0, 50.0], [10.0, 0.0, 30.0, 20.0]]),
                        torch.tensor([1, 1]), class_names=CLASSES)
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    box_tops = ax.transData.transform([(10.0, 30.0), (10.0, 0.0)])[:, 1]   # display y grows upwards
    below_room, at_top = (t.get_window_extent(renderer) for t in ax.texts)
    assert below_room.y0 >= box_tops[0] - 0.5          # above the first box's top edge
    assert at_top.y1 <= box_tops[1] + 0.5              # under the second box's top edge (the image's top)
    assert below_room.x0 == pytest.approx(ax.transData.transform((10.0, 0.0))[0], abs=3)  # at the left corner
