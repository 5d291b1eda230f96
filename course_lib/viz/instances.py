"""What instance-level models output, drawn: masks (Mask R-CNN), person keypoints (Keypoint R-CNN)
and the four vision tasks side by side (classification, semantic segmentation, detection, instance
segmentation), with COCO's keypoint names and skeleton.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .box_drawings import draw_boxes
from .canvas import Color, _canvas, _class_name, _image_array, _to_numpy, _vector, class_color, palette

__all__ = [
    "MASK_ALPHA",
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "draw_masks",
    "draw_keypoints",
    "draw_vision_tasks",
]

#: Opacity of a mask's colour over the image.
MASK_ALPHA = 0.5
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
