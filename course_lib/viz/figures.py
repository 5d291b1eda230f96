"""Whole figures: a grid of images (with their boxes), loss curves, and a model drawn as a block diagram.

Each function returns the Figure (``image_grid``) or the Axes it drew on, and never calls
``plt.show()``: a notebook shows the figure by itself.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from .box_drawings import draw_boxes
from .canvas import _canvas, class_color, palette

__all__ = [
    "PIPELINE_BLOCK_WIDTH",
    "PIPELINE_BLOCK_HEIGHT",
    "PIPELINE_GAP",
    "image_grid",
    "plot_loss_curves",
    "draw_pipeline",
]

#: `draw_pipeline`: a block's width and height, and the gap between blocks (data units).
PIPELINE_BLOCK_WIDTH, PIPELINE_BLOCK_HEIGHT, PIPELINE_GAP = 1.7, 0.9, 0.45


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


# -- block diagrams -------------------------------------------------------------------------------

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
