"""What every course picture shares: class colours, reading images and boxes, the canvas and its labels.

Images may be tensors ``(3, H, W)`` / ``(1, H, W)`` / ``(H, W)`` (float in [0, 1] or uint8, any
device) or numpy arrays ``(H, W, 3)`` / ``(H, W)``; boxes are ``(N, 4)`` as (x1, y1, x2, y2) in
pixels. `_canvas` draws an image with the extent that puts pixel ``j`` on ``[j, j + 1)``, so a box's
edge sits on the pixel's edge; `class_color` gives each class the same colour in every picture.
"""
from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle
from matplotlib.text import Text

__all__ = [
    "Color",
    "TAB10",
    "FIGURE_WIDTH_INCHES",
    "palette",
    "class_color",
]

Color = tuple[float, float, float]

#: Matplotlib's "tab10" colours: distinct and readable on photographs; labels 0..9 use them.
TAB10: tuple[Color, ...] = tuple(tuple(c) for c in plt.get_cmap("tab10").colors)  # type: ignore[attr-defined]
#: Labels from 10 on step around the hue circle by the golden ratio, so neighbours differ.
GOLDEN_RATIO_CONJUGATE = 0.618033988749895
EXTRA_SATURATION, EXTRA_VALUE = 0.75, 0.9
#: Text on a coloured label box is black above this luminance, white below.
DARK_TEXT_LUMINANCE = 0.6
FIGURE_WIDTH_INCHES = 5.0
#: The coloured patch behind a label: its margin around the text (points) and its opacity.
LABEL_PAD_POINTS = 1.5
LABEL_ALPHA = 0.85
#: A label wider than its axes is shrunk to this fraction of the room (text metrics do not scale exactly).
LABEL_SHRINK_MARGIN = 0.95


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


class _BoxLabel(Text):
    """A box's label that keeps itself inside the axes, placed again at every draw.

    Preferred place: just above the box's top-left corner. With no room above it goes inside the box,
    under its top edge; a label that would leave the axes on the right moves left, one that would
    leave at the bottom moves up, and one wider than the axes gets a smaller font. The place depends
    on the axes' size on screen, which layout steps (``tight_layout``, a saved figure's dpi) change
    after drawing: hence the work happens in ``draw``.
    """

    def __init__(self, box: Sequence[float], text: str, fontsize: float, color: Color | str) -> None:
        rgb = to_rgb(color)
        super().__init__(float(box[0]), float(box[1]), text, fontsize=fontsize, color=_text_color(rgb),
                         ha="left", va="bottom", clip_on=False,
                         bbox={"facecolor": rgb, "edgecolor": "none", "alpha": LABEL_ALPHA, "pad": LABEL_PAD_POINTS})
        self._box = tuple(float(v) for v in box)
        self._fontsize = fontsize

    def place(self, renderer) -> None:
        """Move the label (in data coordinates) so that it and its coloured patch lie inside the axes."""
        ax = self.axes
        x1, y1, x2, y2 = self._box
        corners = ax.transData.transform([(x1, y1), (x2, y2)])          # display: y grows upwards
        left, top = corners[:, 0].min(), corners[:, 1].max()
        self.set_position((x1, y1))                                     # measure the text where it is
        self.set_fontsize(self._fontsize)
        pad = renderer.points_to_pixels(LABEL_PAD_POINTS)
        frame = ax.bbox
        width = super().get_window_extent(renderer).width + 2 * pad
        if width > frame.width:  # a label wider than a small picture: shrink the font to fit
            self.set_fontsize(self._fontsize * LABEL_SHRINK_MARGIN * (frame.width - 2 * pad) / (width - 2 * pad))
        size = super().get_window_extent(renderer)
        width, height = size.width + 2 * pad, size.height + 2 * pad
        bottom = top if top + height <= frame.y1 else top - height  # above the box, else inside it
        left = min(left, frame.x1 - width)                            # shift left at the right edge
        left, bottom = max(left, frame.x0), max(bottom, frame.y0)    # never past the left or bottom
        self.set_position(ax.transData.inverted().transform((left + pad, bottom + pad)))

    def draw(self, renderer) -> None:
        if self.axes is not None and self.get_visible():
            self.place(renderer)
        super().draw(renderer)


def _add_label(ax: Axes, box: Sequence[float], text: str, color: Color | str, fontsize: float) -> Text:
    """Text on a patch of the box's colour above its top-left corner, kept inside the axes (`_BoxLabel`)."""
    label = _BoxLabel(box, text, fontsize, color)
    ax.add_artist(label)  # a Text: listed in ax.texts like ax.text's
    return label
