"""Boxes on pictures: detections with their labels, anchors on a grid, matches, region proposals.

Every function draws on the Axes it is given (or on a new figure) and returns that Axes; boxes are
``(N, 4)`` as (x1, y1, x2, y2) in pixels (see `course_lib.viz` for the images accepted).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from .canvas import (TAB10, Color, _add_box, _add_label, _boxes_array, _canvas, _class_name, _size_pair, _to_numpy,
                     _vector, class_color, palette)

__all__ = [
    "UNMATCHED_COLOR",
    "UNMATCHED_ALPHA",
    "PROPOSAL_CMAP",
    "draw_boxes",
    "draw_anchors",
    "show_matching",
    "draw_proposals",
]

UNMATCHED_COLOR: Color = (0.6, 0.6, 0.6)
UNMATCHED_ALPHA = 0.25
#: Proposals are coloured by score with this colormap (dark: low, bright: high).
PROPOSAL_CMAP = "viridis"


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
        box_colors = [class_color(int(label)) for label in label_array] if label_array is not None else [TAB10[0]] * n
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


# -- proposals -----------------------------------------------------------------------------------

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
