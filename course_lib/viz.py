"""Pictures for the detection lessons: boxes on images, anchors on grids, matches, grids of images.

Every function draws with matplotlib on the Axes it is given (or on a new figure), returns the
Axes (or Figure) and never calls ``plt.show()``: a notebook shows the figure by itself.

Images may be tensors ``(3, H, W)`` / ``(1, H, W)`` / ``(H, W)`` (float in [0, 1] or uint8, any
device) or numpy arrays ``(H, W, 3)`` / ``(H, W)``. Boxes are ``(N, 4)`` as (x1, y1, x2, y2) in
pixels, where pixel ``j`` spans ``[j, j + 1)``: the image is drawn with exactly that extent, so a
box's edge sits on the pixel's edge.
"""
from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "palette",
    "class_color",
    "draw_boxes",
    "draw_anchors",
    "show_matching",
    "image_grid",
    "plot_loss_curves",
]

Color = tuple[float, float, float]

#: Matplotlib's "tab10" colours: distinct and readable on photographs; labels 0..9 use them.
TAB10: tuple[Color, ...] = tuple(tuple(c) for c in plt.get_cmap("tab10").colors)  # type: ignore[attr-defined]
#: Labels from 10 on step around the hue circle by the golden ratio, so neighbours differ.
GOLDEN_RATIO_CONJUGATE = 0.618033988749895
EXTRA_SATURATION, EXTRA_VALUE = 0.75, 0.9
#: Text on a coloured label box is black above this luminance, white below.
DARK_TEXT_LUMINANCE = 0.6
UNMATCHED_COLOR: Color = (0.6, 0.6, 0.6)
UNMATCHED_ALPHA = 0.25
FIGURE_WIDTH_INCHES = 5.0
#: A label's height, in font sizes (the text and its padded background).
LABEL_LINE_HEIGHT = 1.8
POINTS_PER_INCH = 72.0


# -- colours -------------------------------------------------------------------------------------

def class_color(label: int) -> Color:
    """The colour of class ``label`` (the same in every picture of the course)."""
    label = int(label)
    if label < 0:
        raise ValueError(f"label must be >= 0, got {label}")
    if label < len(TAB10):
        return TAB10[label]
    hue = (label * GOLDEN_RATIO_CONJUGATE) % 1.0
    return colorsys.hsv_to_rgb(hue, EXTRA_SATURATION, EXTRA_VALUE)


def palette(n: int) -> list[Color]:
    """``n`` distinct RGB colours in [0, 1]: ``class_color(0) ... class_color(n - 1)``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return [class_color(i) for i in range(n)]


def _text_color(background: Color) -> str:
    r, g, b = background[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > DARK_TEXT_LUMINANCE else "white"


# -- converting inputs ---------------------------------------------------------------------------

def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _image_array(image: Any) -> np.ndarray:
    """Any supported image -> numpy (H, W, 3), float in [0, 1] or uint8."""
    is_tensor = isinstance(image, torch.Tensor)
    array = _to_numpy(image)
    shape = tuple(array.shape)
    if array.ndim == 3 and is_tensor:  # tensors are channels-first
        if shape[0] not in (1, 3):
            raise ValueError(f"image tensor must have shape (3, H, W), (1, H, W) or (H, W), got {shape}")
        array = array.transpose(1, 2, 0)
    elif array.ndim == 3 and shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must have shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got {shape}")
    elif array.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (H, W) or 3-D with 1 or 3 channels, got shape {shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    array = array[:, :, :3]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"image must hold numbers, got dtype {array.dtype}")
    return np.clip(array.astype(np.float32), 0.0, 1.0)  # e.g. small overshoots after resizing


def _boxes_array(boxes: Any, name: str = "boxes") -> np.ndarray:
    array = _to_numpy(boxes if boxes is not None else np.zeros((0, 4)))
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(array.shape)}")
    return array.astype(np.float64)


def _vector(values: Any, length: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    array = _to_numpy(values)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), one per box, got {tuple(array.shape)}")
    return array


def _size_pair(size: Any, name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    if isinstance(size, (Sequence, torch.Size)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise TypeError(f"{name} must be an int or an (H, W) pair, got {size!r}")


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _new_axes(height: float, width: float) -> Axes:
    aspect = height / width if width else 1.0
    _, ax = plt.subplots(figsize=(FIGURE_WIDTH_INCHES, FIGURE_WIDTH_INCHES * aspect))
    return ax


def _canvas(image: Any, image_size: Any, ax: Axes | None) -> tuple[Axes, tuple[int, int] | None]:
    """Show ``image`` (or set up an empty ``image_size`` canvas) on ``ax``: returns (ax, (H, W))."""
    if image is not None:
        array = _image_array(image)
        height, width = array.shape[:2]
        ax = ax if ax is not None else _new_axes(height, width)
        ax.imshow(array, extent=(0, width, height, 0), interpolation="nearest" if max(height, width) <= 256 else None)
        ax.set_axis_off()
        return ax, (height, width)
    if image_size is not None:
        height, width = _size_pair(image_size, "image_size")
        ax = ax if ax is not None else _new_axes(height, width)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)  # y grows downwards, as in images
        ax.set_aspect("equal")
        ax.add_patch(Rectangle((0, 0), width, height, fill=False, edgecolor="black", linewidth=1.0))
        return ax, (height, width)
    if ax is None:
        raise ValueError("give an image, an image_size or an ax to draw on")
    return ax, None


def _add_box(ax: Axes, box: Sequence[float], color: Color | str, linewidth: float, **style) -> Rectangle:
    x1, y1, x2, y2 = box
    return ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                  linewidth=linewidth, **style))


def _add_label(ax: Axes, box: Sequence[float], text: str, color: Color | str, fontsize: float) -> None:
    """Text on a patch of the box's colour, just above its top-left corner (inside if no room above)."""
    x1, y1 = float(box[0]), float(box[1])
    rgb = to_rgb(color)
    # Display coordinates grow upwards: room above = axes top - box top, compared with one text line.
    room_above = ax.transAxes.transform((0.0, 1.0))[1] - ax.transData.transform((x1, y1))[1]
    inside = room_above < LABEL_LINE_HEIGHT * fontsize * ax.figure.dpi / POINTS_PER_INCH
    ax.text(x1, y1, text, fontsize=fontsize, color=_text_color(rgb), va="top" if inside else "bottom",
            ha="left", clip_on=True, bbox={"facecolor": rgb, "edgecolor": "none", "alpha": 0.85, "pad": 1.5})


# -- boxes ---------------------------------------------------------------------------------------

def draw_boxes(
    image: Any,
    boxes: Any,
    labels: Any = None,
    scores: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    ax: Axes | None = None,
    colors: Color | str | Sequence[Color | str] | None = None,
    *,
    linewidth: float = 2.0,
    fontsize: float = 9.0,
    title: str | None = None,
) -> Axes:
    """Draw ``boxes`` (N, 4) on ``image`` with "name score" labels.

    Args:
        image: the picture (see the module docstring), or ``None`` to draw on ``ax`` as it is.
        boxes: (N, 4) xyxy pixels; N may be 0.
        labels: (N,) class indices, named by ``class_names`` (a list, or a dict such as COCO's).
        scores: (N,) confidences, printed with two decimals.
        colors: by default each class gets its ``class_color`` (one colour without labels); or one
            colour for all boxes, or one per box.
    """
    ax, _ = _canvas(image, None, ax)
    box_array = _boxes_array(boxes)
    n = len(box_array)
    label_array = _vector(labels, n, "labels")
    score_array = _vector(scores, n, "scores")
    if colors is None:
        box_colors = [class_color(int(l)) for l in label_array] if label_array is not None else [TAB10[0]] * n
    elif isinstance(colors, str) or (len(colors) in (3, 4) and all(isinstance(c, (int, float)) for c in colors)):
        box_colors = [colors] * n
    else:
        if len(colors) != n:
            raise ValueError(f"colors must be one colour or one per box ({n}), got {len(colors)} colours")
        box_colors = list(colors)

    for i, box in enumerate(box_array):
        _add_box(ax, box, box_colors[i], linewidth)
        parts = []
        if label_array is not None:
            parts.append(_class_name(int(label_array[i]), class_names))
        if score_array is not None:
            parts.append(f"{float(score_array[i]):.2f}")
        if parts:
            _add_label(ax, box, " ".join(parts), box_colors[i], fontsize)
    if image is None and not ax.images:  # a bare canvas: fit the view to the boxes, y downwards
        ax.autoscale_view()
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
    if title is not None:
        ax.set_title(title)
    return ax


# -- anchors -------------------------------------------------------------------------------------

def _shape_groups(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sizes: (A, 2) widths and heights -> (unique sizes (K, 2), group index per anchor (A,))."""
    rounded = np.round(sizes, 4)
    unique, inverse = np.unique(rounded, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def draw_anchors(
    anchors: Any,
    image_size: int | tuple[int, int] | None = None,
    grid: int | tuple[int, int] | None = None,
    ax: Axes | None = None,
    *,
    image: Any = None,
    normalized: bool = False,
    indices: Any = None,
    linewidth: float = 1.5,
    show_centers: bool = True,
    legend: bool = True,
    title: str | None = None,
) -> Axes:
    """Draw anchor boxes (A, 4) xyxy over an image or an empty canvas, with the grid's cell lines.

    Anchors of the same width and height share a colour (the legend gives their sizes), so a
    grid's k anchors per cell read as k colours.

    Args:
        image_size: ``S`` or ``(H, W)`` of the canvas; taken from ``image`` if that is given.
            With ``normalized=True`` and no size, the canvas is the unit square.
        grid: ``n`` or ``(rows, cols)``: draws the cell boundaries (e.g. SSD's 4 x 4 grid).
        normalized: anchors are in [0, 1] (fractions of the width and height); they are scaled
            to the canvas.
        indices: draw only these anchors (e.g. those of one cell); the others are left out.
    """
    anchor_array = _boxes_array(anchors, "anchors")
    if image is None and image_size is None and not normalized:
        raise ValueError("draw_anchors needs image_size (or image) for pixel anchors; pass normalized=True "
                         "for anchors in [0, 1]")
    canvas_size = image_size if image is not None or image_size is not None else (1, 1)
    ax, (height, width) = _canvas(image, canvas_size, ax)
    if normalized:
        anchor_array = anchor_array * np.array([width, height, width, height], dtype=np.float64)
    if indices is not None:
        anchor_array = anchor_array[np.asarray(_to_numpy(indices), dtype=np.int64).reshape(-1)]

    if grid is not None:
        rows, cols = _size_pair(grid, "grid")
        line = {"color": "white" if image is not None else "black", "linewidth": 1.0, "alpha": 0.8, "linestyle": ":"}
        for y in np.linspace(0, height, rows + 1)[1:-1]:
            ax.plot([0, width], [y, y], **line)
        for x in np.linspace(0, width, cols + 1)[1:-1]:
            ax.plot([x, x], [0, height], **line)

    sizes = anchor_array[:, 2:] - anchor_array[:, :2]
    unique_sizes, group = _shape_groups(sizes)
    colors = palette(len(unique_sizes))
    for box, g in zip(anchor_array, group):
        _add_box(ax, box, colors[g], linewidth)
    if show_centers and len(anchor_array):
        centers = (anchor_array[:, :2] + anchor_array[:, 2:]) / 2
        ax.scatter(centers[:, 0], centers[:, 1], s=8, color="black", edgecolors="white", linewidths=0.5, zorder=3)
    if legend and len(unique_sizes):
        unit = "" if normalized and image_size is None and image is None else " px"
        handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor=colors[k], linewidth=linewidth)
                   for k in range(len(unique_sizes))]
        names = [f"{w:.3g} x {h:.3g}{unit}" for w, h in unique_sizes]
        ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="w x h")

    # Anchors at the border may stick out of the image: show them whole.
    if len(anchor_array):
        x_low, y_low = np.minimum(anchor_array[:, :2].min(0), 0)
        x_high, y_high = np.maximum(anchor_array[:, 2:].max(0), [width, height])
        margin = 0.02 * max(width, height)
        ax.set_xlim(x_low - margin, x_high + margin)
        ax.set_ylim(y_high + margin, y_low - margin)
    if title is not None:
        ax.set_title(title)
    return ax


# -- matching ------------------------------------------------------------------------------------

def show_matching(
    image: Any,
    gt_boxes: Any,
    anchors: Any,
    matches: Any,
    gt_labels: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    ax: Axes | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    unmatched: str = "faint",
    linewidth: float = 2.5,
    fontsize: float = 9.0,
    title: str | None = None,
) -> Axes:
    """Which anchors were matched to which ground-truth box.

    Each ground-truth box gets its own colour (thick line); the anchors matched to it are drawn
    dashed in the same colour, with a dot at their centre. Unmatched anchors are drawn faint grey
    (``unmatched="faint"``) or not at all (``"hidden"``).

    Args:
        gt_boxes: (G, 4) xyxy pixels.
        anchors: (A, 4) xyxy pixels.
        matches: (A,) integer: the index of the ground truth each anchor is matched to, or a
            negative value (-1 background, -2 ignored: torchvision's Matcher) for none.
        image: the picture, or ``None`` with ``image_size`` for an empty canvas.
    """
    if unmatched not in ("faint", "hidden"):
        raise ValueError(f"unmatched must be 'faint' or 'hidden', got {unmatched!r}")
    gt_array = _boxes_array(gt_boxes, "gt_boxes")
    anchor_array = _boxes_array(anchors, "anchors")
    match_array = _to_numpy(matches)
    if match_array.shape != (len(anchor_array),):
        raise ValueError(f"matches must have shape ({len(anchor_array)},), one per anchor, "
                         f"got {tuple(match_array.shape)}")
    if match_array.size and not np.issubdtype(match_array.dtype, np.integer):
        raise TypeError(f"matches must hold integer indices, got dtype {match_array.dtype}")
    if match_array.size and match_array.max() >= len(gt_array):
        raise ValueError(f"matches refers to ground truth {int(match_array.max())}, "
                         f"but gt_boxes has only {len(gt_array)} boxes")
    match_array = match_array.astype(np.int64)  # an empty list arrives as float
    label_array = _vector(gt_labels, len(gt_array), "gt_labels")

    ax, _ = _canvas(image, image_size, ax)
    limits = ax.get_xlim(), ax.get_ylim()
    colors = palette(len(gt_array))
    matched = match_array >= 0
    if unmatched == "faint":
        for box in anchor_array[~matched]:
            _add_box(ax, box, UNMATCHED_COLOR, 0.8, alpha=UNMATCHED_ALPHA)
    for box, g in zip(anchor_array[matched], match_array[matched]):
        _add_box(ax, box, colors[g], linewidth * 0.6, linestyle="--")
    if matched.any():
        centers = (anchor_array[matched, :2] + anchor_array[matched, 2:]) / 2
        ax.scatter(centers[:, 0], centers[:, 1], s=18, c=[colors[g] for g in match_array[matched]],
                   edgecolors="black", linewidths=0.5, zorder=3)
    counts = np.bincount(match_array[matched], minlength=len(gt_array)) if len(gt_array) else []
    for g, box in enumerate(gt_array):
        _add_box(ax, box, colors[g], linewidth)
        name = f" {_class_name(int(label_array[g]), class_names)}" if label_array is not None else ""
        plural = "" if counts[g] == 1 else "s"
        _add_label(ax, box, f"gt {g}{name}: {counts[g]} anchor{plural}", colors[g], fontsize)
    ax.set_xlim(*limits[0])  # the scatter must not widen the view beyond the image
    ax.set_ylim(*limits[1])
    if title is not None:
        ax.set_title(title)
    return ax


# -- grids of images and curves ------------------------------------------------------------------

def _draw_item(ax: Axes, item: Any, class_names: Sequence[str] | Mapping[int, str] | None) -> None:
    """An image, (image, target dict), or (image, boxes[, labels[, scores]])."""
    if isinstance(item, tuple):
        if len(item) == 2 and isinstance(item[1], Mapping):
            target = item[1]
            draw_boxes(item[0], target.get("boxes"), target.get("labels"), target.get("scores"),
                       class_names=class_names, ax=ax)
            return
        if 2 <= len(item) <= 4:
            draw_boxes(item[0], *item[1:], class_names=class_names, ax=ax)
            return
        raise ValueError(f"an item must be an image, (image, target) or (image, boxes[, labels[, scores]]), "
                         f"got a tuple of {len(item)}")
    _canvas(item, None, ax)


def image_grid(
    items: Any,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    draw: Callable[[Axes, Any], Any] | None = None,
    cell_size: float = 3.0,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images, each optionally with its boxes.

    Args:
        items: a batch tensor (B, C, H, W), or a sequence whose items are images, ``(image,
            target)`` pairs as a detection dataset returns them, or ``(image, boxes[, labels[,
            scores]])`` tuples.
        draw: ``draw(ax, item)`` to draw each item yourself instead.
    """
    if isinstance(items, torch.Tensor) and items.ndim == 4:
        items = list(items)
    elif isinstance(items, np.ndarray) and items.ndim == 4:
        items = list(items)
    items = list(items)
    if not items:
        raise ValueError("items must hold at least one image, got none")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"titles must have one entry per item ({len(items)}), got {len(titles)}")
    ncols = min(ncols, len(items))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(items):
            continue
        if draw is not None:
            draw(ax, items[k])
        else:
            _draw_item(ax, items[k], class_names)
        if titles is not None:
            ax.set_title(titles[k], fontsize=10)
    if suptitle is not None:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_loss_curves(
    history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]],
    ax: Axes | None = None,
    *,
    xlabel: str = "epoch",
    log_scale: bool = False,
    title: str | None = None,
) -> Axes:
    """Loss curves from ``{"train": [...], "val": [...]}`` or a list of per-epoch dicts."""
    if isinstance(history, Mapping):
        series = {name: list(values) for name, values in history.items()}
    elif isinstance(history, Sequence) and all(isinstance(row, Mapping) for row in history):
        names = list(dict.fromkeys(name for row in history for name in row))
        series = {name: [row.get(name, float("nan")) for row in history] for name in names}
    else:
        raise TypeError(f"history must be a dict of lists or a list of dicts, got {type(history).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for k, (name, values) in enumerate(series.items()):
        values = [float(v) for v in values]
        ax.plot(range(1, len(values) + 1), values, label=name, color=class_color(k), marker="o" if len(values) <= 30 else None,
                markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax


# -- two-stage detectors (lesson 5): pipelines, tasks, masks, keypoints, proposals, ROI bins ------

from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

__all__ += [
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "draw_pipeline",
    "draw_masks",
    "draw_keypoints",
    "draw_vision_tasks",
    "draw_proposals",
    "roi_bins",
    "draw_roi_bins",
]

#: `draw_pipeline`: a block's width and height, and the gap between blocks (data units).
PIPELINE_BLOCK_WIDTH, PIPELINE_BLOCK_HEIGHT, PIPELINE_GAP = 1.7, 0.9, 0.45
#: Opacity of a mask's colour over the image.
MASK_ALPHA = 0.5
#: Proposals are coloured by score with this colormap (dark: low, bright: high).
PROPOSAL_CMAP = "viridis"
#: COCO's 17 person keypoints, in the order of torchvision's Keypoint R-CNN outputs ...
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
#: ... and the pairs COCO joins into a skeleton (0-based indices into the names above).
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
#: ROI pooling methods `roi_bins` knows (those of `torchvision.ops`).
ROI_BIN_METHODS = ("roi_pool", "roi_align")


def draw_pipeline(
    blocks: Sequence[str | tuple[str, str]],
    links: Sequence[tuple[int, int, str]] = (),
    ax: Axes | None = None,
    *,
    fontsize: float = 9.0,
    title: str | None = None,
) -> Axes:
    """A left-to-right block diagram: ``blocks`` in a row, each joined to the next by an arrow.

    Args:
        blocks: names, or ``(name, detail)`` pairs; the detail (e.g. a tensor shape) is printed
            smaller under the name, and may hold line breaks.
        links: ``(from, to, label)`` block indices for extra arrows, drawn as arcs under the row
            (e.g. the feature map that skips the RPN and goes straight to ROI pooling).
    """
    items = [(b, "") if isinstance(b, str) else tuple(b) for b in blocks]
    if not items or not all(len(item) == 2 for item in items):
        raise ValueError("blocks must be a non-empty sequence of names or (name, detail) pairs")
    n = len(items)
    for link in links:
        if len(link) != 3 or not all(isinstance(i, int) and 0 <= i < n for i in link[:2]) or link[0] == link[1]:
            raise ValueError(f"links must be (from, to, label) with two different block indices in 0..{n - 1}, "
                             f"got {link!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.75 * n + 0.4, 2.4 if links else 1.6))
    step = PIPELINE_BLOCK_WIDTH + PIPELINE_GAP
    half_w, half_h = PIPELINE_BLOCK_WIDTH / 2, PIPELINE_BLOCK_HEIGHT / 2
    colors = palette(n)
    for i, (name, detail) in enumerate(items):
        x = i * step
        ax.add_patch(FancyBboxPatch((x - half_w, -half_h), PIPELINE_BLOCK_WIDTH, PIPELINE_BLOCK_HEIGHT,
                                    boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=(*colors[i], 0.18),
                                    edgecolor=colors[i], linewidth=1.5))
        if detail:
            ax.text(x, 0.12, name, ha="center", va="center", fontsize=fontsize, fontweight="bold")
            ax.text(x, -0.17, detail, ha="center", va="center", fontsize=fontsize * 0.8, linespacing=1.1)
        else:
            ax.text(x, 0.0, name, ha="center", va="center", fontsize=fontsize, fontweight="bold")
        if i + 1 < n:
            ax.add_patch(FancyArrowPatch((x + half_w, 0.0), (x + step - half_w, 0.0), arrowstyle="-|>",
                                         mutation_scale=12, linewidth=1.2, color="black"))
    for start, end, label in links:
        x0, x1 = start * step, end * step
        ax.add_patch(FancyArrowPatch((x0, -half_h), (x1, -half_h), arrowstyle="-|>", mutation_scale=12,
                                     linewidth=1.2, color="dimgray", linestyle="--",
                                     connectionstyle=f"arc3,rad={0.25 if x1 > x0 else -0.25}"))
        if label:  # under the arc's lowest point: an arc of rad 0.25 dips an eighth of its length
            ax.text((x0 + x1) / 2, -half_h - abs(x1 - x0) / 8 - 0.08, label, ha="center", va="top",
                    fontsize=fontsize * 0.8, color="dimgray")
    bottom = -half_h - (max(abs(b - a) for a, b, _ in links) * step / 8 + 0.4 if links else 0.1)
    ax.set_xlim(-half_w - 0.1, (n - 1) * step + half_w + 0.1)
    ax.set_ylim(bottom, half_h + 0.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def _masks_array(masks: Any, threshold: float) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) masks (bool, or probabilities compared with ``threshold``) -> (N, H, W) bool."""
    array = _to_numpy(masks)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W) or (N, 1, H, W), got {tuple(array.shape)}")
    return array.astype(bool) if array.dtype == bool else array > threshold


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) xyxy boxes around each mask, pixel edges (an empty mask: zeros)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    for i, mask in enumerate(masks):  # a handful of objects
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if len(rows):
            boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def draw_masks(
    image: Any,
    masks: Any,
    labels: Any = None,
    ax: Axes | None = None,
    *,
    colors: Sequence[Color | str] | None = None,
    threshold: float = 0.5,
    alpha: float = MASK_ALPHA,
    title: str | None = None,
) -> Axes:
    """Colour each mask's pixels over ``image`` (later masks over earlier ones).

    Args:
        masks: (N, H, W) or (N, 1, H, W) as Mask R-CNN returns them: bool, or probabilities that
            count from ``threshold`` on. The masks must have the image's size.
        labels: (N,) colour the masks by class (`class_color`); by default each mask gets its own
            colour (instance by instance), or give ``colors``, one per mask.
    """
    ax, (height, width) = _canvas(image, None, ax)
    mask_array = _masks_array(masks, threshold)
    n = len(mask_array)
    if n and mask_array.shape[1:] != (height, width):
        raise ValueError(f"masks must have the image's size ({height}, {width}), got {tuple(mask_array.shape[1:])}")
    label_array = _vector(labels, n, "labels")
    if colors is not None:
        if len(colors) != n:
            raise ValueError(f"colors must give one colour per mask ({n}), got {len(colors)}")
        mask_colors = [to_rgb(c) for c in colors]
    elif label_array is not None:
        mask_colors = [class_color(int(label)) for label in label_array]
    else:
        mask_colors = palette(n)
    overlay = np.zeros((height, width, 4), dtype=np.float32)
    for mask, color in zip(mask_array, mask_colors):
        overlay[mask] = (*color, alpha)
    ax.imshow(overlay, extent=(0, width, height, 0), interpolation="nearest")
    if title is not None:
        ax.set_title(title)
    return ax


def draw_keypoints(
    image: Any,
    keypoints: Any,
    ax: Axes | None = None,
    *,
    skeleton: Sequence[tuple[int, int]] | None = COCO_SKELETON,
    colors: Sequence[Color | str] | None = None,
    markersize: float = 16.0,
    title: str | None = None,
) -> Axes:
    """Draw each person's keypoints and the skeleton joining them.

    Args:
        keypoints: (N, K, 3) ``(x, y, visibility)`` as Keypoint R-CNN returns them (points with
            visibility 0 are left out), or (N, K, 2) ``(x, y)``; pixels.
        skeleton: pairs of keypoint indices to join (COCO's for its 17 keypoints); ``None``: points only.
        colors: one colour per person (default: `palette`).
    """
    ax, _ = _canvas(image, None, ax)
    array = _to_numpy(keypoints).astype(np.float64) if keypoints is not None else np.zeros((0, 0, 3))
    if array.ndim != 3 or array.shape[2] not in (2, 3):
        raise ValueError(f"keypoints must have shape (N, K, 3) or (N, K, 2), got {tuple(array.shape)}")
    n, k = array.shape[:2]
    visible = array[..., 2] > 0 if array.shape[2] == 3 else np.ones((n, k), dtype=bool)
    if colors is not None and len(colors) != n:
        raise ValueError(f"colors must give one colour per person ({n}), got {len(colors)}")
    person_colors = [to_rgb(c) for c in colors] if colors is not None else palette(n)
    pairs = [(a, b) for a, b in (skeleton or ()) if a < k and b < k]
    limits = ax.get_xlim(), ax.get_ylim()
    for points, seen, color in zip(array, visible, person_colors):
        for a, b in pairs:
            if seen[a] and seen[b]:
                ax.plot(points[[a, b], 0], points[[a, b], 1], color=color, linewidth=2.0, alpha=0.9)
        ax.scatter(points[seen, 0], points[seen, 1], s=markersize, color=color, edgecolors="white",
                   linewidths=0.6, zorder=3)
    ax.set_xlim(*limits[0])  # points off the image must not widen the view
    ax.set_ylim(*limits[1])
    if title is not None:
        ax.set_title(title)
    return ax


def draw_vision_tasks(
    image: Any,
    masks: Any,
    labels: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    image_label: str | None = None,
    cell_size: float = 3.2,
) -> Figure:
    """The four tasks on one photo: classification, semantic segmentation, object detection and
    instance segmentation, from its objects' masks.

    Args:
        masks: (N, H, W) bool, one per object.
        labels: (N,) class of each object (default: all 1).
        image_label: what a classifier would say about the whole image (default: the most
            frequent class's name).
    """
    height, width = _image_array(image).shape[:2]
    mask_array = _masks_array(masks, 0.5)
    n = len(mask_array)
    if mask_array.shape[1:] != (height, width):
        raise ValueError(f"masks must have the image's size ({height}, {width}), got {tuple(mask_array.shape[1:])}")
    label_array = np.ones(n, dtype=np.int64) if labels is None else _vector(labels, n, "labels").astype(np.int64)
    if image_label is None:
        image_label = _class_name(int(np.bincount(label_array).argmax()), class_names) if n else "nothing"
    fig, axes = plt.subplots(1, 4, figsize=(4 * cell_size, cell_size * height / width + 0.5))
    _canvas(image, None, axes[0])
    axes[0].set_title(f"classification:\n{image_label}", fontsize=10)
    classes = sorted(set(label_array.tolist()))
    semantic = np.stack([mask_array[label_array == c].any(axis=0) for c in classes]) if n else mask_array
    draw_masks(image, semantic, np.array(classes, dtype=np.int64), ax=axes[1])
    names = ", ".join(_class_name(c, class_names) for c in classes) or "none"
    axes[1].set_title(f"semantic segmentation:\na class per pixel ({names})", fontsize=10)
    draw_boxes(image, _mask_boxes(mask_array), label_array, class_names=class_names, ax=axes[2], fontsize=6)
    axes[2].set_title(f"object detection:\n{n} boxes with classes", fontsize=10)
    draw_masks(image, mask_array, ax=axes[3])
    axes[3].set_title(f"instance segmentation:\n{n} objects, a mask each", fontsize=10)
    fig.tight_layout()
    return fig


def draw_proposals(
    image: Any,
    boxes: Any,
    scores: Any = None,
    ax: Axes | None = None,
    *,
    max_boxes: int | None = None,
    cmap: str = PROPOSAL_CMAP,
    vmin: float | None = None,
    vmax: float | None = None,
    linewidth: float = 1.0,
    colorbar: bool = True,
    title: str | None = None,
) -> Axes:
    """Draw region proposals coloured by score, the best on top.

    Args:
        boxes: (N, 4) xyxy pixels.
        scores: (N,) e.g. objectness probabilities; the ``max_boxes`` best are drawn. Without
            scores the first ``max_boxes`` boxes are drawn in one colour.
        vmin, vmax: the score range of the colours (default: the drawn scores' range), so that
            two pictures can share one scale.
    """
    ax, _ = _canvas(image, None, ax)
    box_array = _boxes_array(boxes)
    score_array = _vector(scores, len(box_array), "scores")
    if max_boxes is not None and (isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 0):
        raise ValueError(f"max_boxes must be an int >= 0 or None, got {max_boxes!r}")
    order = np.arange(len(box_array)) if score_array is None else np.argsort(-score_array, kind="stable")
    order = order[:max_boxes]
    if score_array is None:
        for box in box_array[order]:
            _add_box(ax, box, TAB10[0], linewidth)
    else:
        drawn = score_array[order].astype(np.float64)
        low = float(drawn.min()) if vmin is None and len(drawn) else (0.0 if vmin is None else vmin)
        high = float(drawn.max()) if vmax is None and len(drawn) else (1.0 if vmax is None else vmax)
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-9)
        colormap = plt.get_cmap(cmap)
        for index in order[::-1]:  # the worst first: the best end up on top
            _add_box(ax, box_array[index], colormap(norm(float(score_array[index])))[:3], linewidth)
        if colorbar:
            ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=ax, fraction=0.046, pad=0.02,
                               label="score")
    if title is not None:
        ax.set_title(title)
    return ax


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """C's ``round`` (what torchvision's ``roi_pool`` uses): halves go away from zero."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def roi_bins(
    box: Any,
    spatial_scale: float,
    output_size: int = 7,
    *,
    method: str = "roi_pool",
    feature_size: tuple[int, int] | None = None,
    sampling_ratio: int = 2,
) -> dict[str, np.ndarray]:
    """Where ``torchvision.ops.roi_pool`` / ``roi_align`` (``aligned=False``) look for one box.

    Coordinates are feature-map cells: cell ``j`` sits at coordinate ``j`` (the convention of both
    ops). Returns ``{"x": (lo, hi), "y": (lo, hi)}``, each ``(output_size,)``:

    - ``"roi_pool"``: bin ``i`` is the cells ``lo[i] <= j < hi[i]`` (integers): the box is rounded
      to whole cells, then cut into bins with floor and ceil, clipped to ``feature_size = (H, W)``
      when given; the op takes the maximum over each bin (0 for an empty one);
    - ``"roi_align"``: the exact bin edges (floats), plus ``"samples_x"``, ``"samples_y"``
      ``(output_size, sampling_ratio)``: where each bin is sampled by bilinear interpolation; the op
      averages the samples of a bin (sampling_ratio <= 0: as many as the bin is cells wide, rounded up).

    box: (4,) xyxy image pixels; spatial_scale: cells per pixel (1 / stride).
    """
    if method not in ROI_BIN_METHODS:
        raise ValueError(f"method must be one of {ROI_BIN_METHODS}, got {method!r}")
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    coords = _to_numpy(box).astype(np.float64).reshape(-1)
    if coords.shape != (4,):
        raise ValueError(f"box must have 4 numbers (x1, y1, x2, y2), got shape {tuple(_to_numpy(box).shape)}")
    steps = np.arange(output_size + 1, dtype=np.float64)
    result: dict[str, np.ndarray] = {}
    for axis, (start, end, limit) in (("x", (coords[0], coords[2], None if feature_size is None else feature_size[1])),
                                      ("y", (coords[1], coords[3], None if feature_size is None else feature_size[0]))):
        if method == "roi_pool":
            first, last = _round_half_away(np.array([start, end]) * spatial_scale)
            bin_size = max(last - first + 1, 1) / output_size
            lo = np.floor(steps[:-1] * bin_size) + first
            hi = np.ceil(steps[1:] * bin_size) + first
            if limit is not None:
                lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
            result[axis] = (lo.astype(np.int64), hi.astype(np.int64))
        else:
            first = start * spatial_scale
            bin_size = max(end * spatial_scale - first, 1.0) / output_size
            result[axis] = (first + steps[:-1] * bin_size, first + steps[1:] * bin_size)
            count = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_size))
            offsets = (np.arange(count) + 0.5) * bin_size / count
            result[f"samples_{axis}"] = result[axis][0][:, None] + offsets[None, :]
    return result


def draw_roi_bins(
    box: Any,
    spatial_scale: float,
    output_size: int = 7,
    ax: Axes | None = None,
    *,
    feature_map: Any = None,
    feature_size: tuple[int, int] | None = None,
    method: str = "roi_pool",
    sampling_ratio: int = 2,
    margin: float = 1.5,
    cmap: str = "magma",
    title: str | None = None,
) -> Axes:
    """One box's ``output_size x output_size`` pooling grid on the feature map (see `roi_bins`).

    The feature map (its mean over channels for (C, H, W)) is drawn cell by cell, cell ``j``
    centred on coordinate ``j``; the box scaled to the map is dashed white; the bins are cyan:
    for ``"roi_pool"`` whole cells (the box rounded to the grid, bins of unequal sizes), for
    ``"roi_align"`` the exact bins with their bilinear sample points. The view is the box plus
    ``margin`` cells.
    """
    if feature_map is not None:
        array = _to_numpy(feature_map).astype(np.float64)
        if array.ndim == 3:
            array = array.mean(axis=0)
        if array.ndim != 2:
            raise ValueError(f"feature_map must have shape (H, W) or (C, H, W), got {tuple(_to_numpy(feature_map).shape)}")
        feature_size = array.shape
    if feature_size is None:
        raise ValueError("give a feature_map or its feature_size (H, W)")
    height, width = _size_pair(feature_size, "feature_size")
    bins = roi_bins(box, spatial_scale, output_size, method=method, feature_size=(height, width),
                    sampling_ratio=sampling_ratio)
    if ax is None:
        _, ax = plt.subplots(figsize=(FIGURE_WIDTH_INCHES, FIGURE_WIDTH_INCHES))
    if feature_map is not None:
        ax.imshow(array, cmap=cmap, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    (x_lo, x_hi), (y_lo, y_hi) = bins["x"], bins["y"]
    shift = 0.5 if method == "roi_pool" else 0.0  # whole cells span [j - 0.5, j + 0.5]
    for i in range(output_size):
        for j in range(output_size):
            x0, y0 = x_lo[j] - shift, y_lo[i] - shift
            ax.add_patch(Rectangle((x0, y0), x_hi[j] - x_lo[j], y_hi[i] - y_lo[i], fill=False, edgecolor="cyan",
                                   linewidth=1.0))
    if method == "roi_align":
        sx, sy = bins["samples_x"].reshape(-1), bins["samples_y"].reshape(-1)
        grid_x, grid_y = np.meshgrid(sx, sy)
        ax.scatter(grid_x.reshape(-1), grid_y.reshape(-1), s=4, color="cyan", zorder=3)
    scaled = _to_numpy(box).astype(np.float64).reshape(-1) * spatial_scale
    ax.add_patch(Rectangle((scaled[0], scaled[1]), scaled[2] - scaled[0], scaled[3] - scaled[1], fill=False,
                           edgecolor="white", linestyle="--", linewidth=1.8))
    x_low, x_high = min(scaled[0], x_lo[0] - shift), max(scaled[2], x_hi[-1] - shift)
    y_low, y_high = min(scaled[1], y_lo[0] - shift), max(scaled[3], y_hi[-1] - shift)
    ax.set_xlim(x_low - margin, x_high + margin)
    ax.set_ylim(y_high + margin, y_low - margin)
    ax.set_aspect("equal")
    ax.set_xlabel("feature-map column")
    ax.set_ylabel("feature-map row")
    if title is not None:
        ax.set_title(title)
    return ax
