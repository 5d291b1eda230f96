"""Detections drawn into the frames themselves (uint8 tensors), ready to be written out as a GIF or MP4.

`course_lib.viz` draws with matplotlib for figures in a notebook; here the boxes and labels become
pixels, with torchvision's ``draw_bounding_boxes``, so a clip of annotated frames can be saved as a
video. Each class keeps one colour from a seaborn palette in every frame and every clip, labels read
"name 0.87" on a filled background, and the font (matplotlib's DejaVu Sans, a TrueType font:
torchvision's built-in bitmap font is a few pixels high) and line width grow with the frame.

    >>> frame = draw_detections(frames[0], detections[0], categories)          # (3, H, W) uint8
    >>> clip = annotate_frames(frames, detections, categories)                 # (N, 3, H, W) uint8
    >>> both = side_by_side(clip_a, clip_b, titles=("RetinaNet", "FCOS"))      # two detectors, one clip
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torchvision.utils import draw_bounding_boxes

__all__ = [
    "class_rgb",
    "label_text",
    "font_path",
    "font_size_for",
    "line_width_for",
    "draw_detections",
    "annotate_frames",
    "side_by_side",
]

#: Class k takes colour k mod 20 of seaborn's "bright" palette followed by its "dark" one: labels
#: 0-9 bright, 10-19 dark, then again. The classes that share a street scene (person 1, bicycle 2,
#: car 3, motorcycle 4, bus 6, truck 8, traffic light 10, cat 17, dog 18) all differ clearly, which
#: a hue circle cut into 91 or 24 steps does not give; so do the shapes' circle, square, triangle.
PALETTE: tuple[str, ...] = ("bright", "dark")
COLORS_PER_PALETTE = 10
#: Label text is black on a background brighter than this (relative luminance), white otherwise.
DARK_TEXT_LUMINANCE = 0.5
#: Font size and line width as fractions of the frame's shorter side, and their limits in pixels.
FONT_FRACTION, MIN_FONT_SIZE, MAX_FONT_SIZE = 1 / 30, 9, 40
LINE_FRACTION, MIN_LINE_WIDTH, MAX_LINE_WIDTH = 1 / 200, 1, 8
#: A title bar is this many font sizes high; frames shown side by side are this far apart (pixels).
TITLE_BAR_LINES = 1.6
SIDE_BY_SIDE_GAP = 4
BACKGROUND_RGB = (255, 255, 255)
TITLE_RGB = (0, 0, 0)
FONT_FILES = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")

RGB = tuple[int, int, int]
#: Labels on a background of the box's colour need torchvision 0.23 (``fill_labels``); older
#: versions write the text in the box's colour instead.
_FILLED_LABELS = "fill_labels" in inspect.signature(draw_bounding_boxes).parameters


# -- colours, text, sizes -------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _palette(names: tuple[str, ...]) -> tuple[RGB, ...]:
    import seaborn as sns  # imported when first needed: it takes a moment

    colors = [rgb for name in names for rgb in sns.color_palette(name, COLORS_PER_PALETTE)]
    return tuple(tuple(int(round(255 * c)) for c in rgb) for rgb in colors)


def class_rgb(label: int, palette: str | Sequence[str] = PALETTE) -> RGB:
    """The (r, g, b) colour, 0..255, of class ``label``: the same in every frame and every clip.

    ``palette``: seaborn palette names whose first 10 colours are used one after the other.
    """
    colors = _palette((palette,) if isinstance(palette, str) else tuple(palette))
    return colors[int(label) % len(colors)]


def _text_rgb(background: RGB) -> RGB:
    red, green, blue = (c / 255 for c in background)
    return (0, 0, 0) if 0.2126 * red + 0.7152 * green + 0.0722 * blue > DARK_TEXT_LUMINANCE else (255, 255, 255)


def label_text(label: int, score: float | None = None,
               categories: Sequence[str] | Mapping[int, str] | None = None) -> str:
    """``"car 0.87"``: the class name (or the label number without ``categories``) and the score."""
    label = int(label)
    if categories is None:
        name = str(label)
    elif isinstance(categories, Mapping):
        name = str(categories.get(label, label))
    else:
        name = str(categories[label]) if 0 <= label < len(categories) else str(label)
    return name if score is None else f"{name} {float(score):.2f}"


@functools.lru_cache(maxsize=1)
def font_path() -> str:
    """A TrueType font for labels: matplotlib's DejaVu Sans (bold), which every course install has."""
    import matplotlib
    from matplotlib import font_manager

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name in FONT_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"))


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


def font_size_for(height: int, width: int) -> int:
    """Label font size in pixels: about 1/30 of the shorter side (16 px at 480p), within 9..40."""
    return _clamp(min(height, width) * FONT_FRACTION, MIN_FONT_SIZE, MAX_FONT_SIZE)


def line_width_for(height: int, width: int) -> int:
    """Box line width in pixels: about 1/200 of the shorter side, within 1..8."""
    return _clamp(min(height, width) * LINE_FRACTION, MIN_LINE_WIDTH, MAX_LINE_WIDTH)


# -- one frame, a clip ----------------------------------------------------------------------------


def _check_frame(frame, name: str) -> torch.Tensor:
    """(3, H, W) or (1, H, W), uint8 or float in [0, 1] -> (3, H, W) uint8 on the CPU (a copy)."""
    if not isinstance(frame, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (3, H, W), got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[0] not in (1, 3) or frame.shape[1] == 0 or frame.shape[2] == 0:
        raise ValueError(f"{name} must be (3, H, W) or (1, H, W) with H, W >= 1, got shape {tuple(frame.shape)}")
    if frame.is_floating_point():
        frame = (frame.detach().clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    elif frame.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (0..255) or float (0..1), got {frame.dtype}")
    return frame.detach().to("cpu", copy=True).expand(3, -1, -1).contiguous()


def _detection_parts(detections: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                      torch.Tensor | None]:
    if not isinstance(detections, Mapping) or "boxes" not in detections:
        raise TypeError(f"detections must be a dict with 'boxes' (N, 4) and optionally 'labels', 'scores', "
                        f"got {type(detections).__name__}")
    boxes = torch.as_tensor(detections["boxes"]).detach().to("cpu", torch.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"detections['boxes'] must be (N, 4) xyxy, got shape {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError("detections['boxes'] must be finite (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
    parts = []
    for key in ("labels", "scores"):
        value = detections.get(key)
        if value is not None:
            value = torch.as_tensor(value).detach().to("cpu").reshape(-1)
            if value.shape[0] != boxes.shape[0]:
                raise ValueError(f"detections['{key}'] must have one entry per box ({boxes.shape[0]}), "
                                 f"got {value.shape[0]}")
        parts.append(value)
    return boxes, parts[0], parts[1]


def draw_detections(
    frame: torch.Tensor,
    detections: Mapping[str, torch.Tensor],
    categories: Sequence[str] | Mapping[int, str] | None = None,
    *,
    show_labels: bool = True,
    show_scores: bool = True,
    palette: str | Sequence[str] = PALETTE,
    font_size: int | None = None,
    line_width: int | None = None,
) -> torch.Tensor:
    """A new (3, H, W) uint8 frame with the detections drawn on it, on ``frame``'s device.

    Args:
        frame: (3, H, W) or (1, H, W), uint8 or float in [0, 1]; left unchanged.
        detections: ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) and ``scores`` (N,) (both optional),
            as `course_lib.detection.pretrained.predict` returns them.
        categories: names by label (a list or a dict); without it labels print as numbers.
        show_labels: False draws the boxes only; ``show_scores`` adds the score to each label.
        font_size, line_width: pixels; by default they grow with the frame (`font_size_for`).

    Boxes are clipped to the frame; boxes entirely outside it are not drawn. The most confident box
    is drawn last (its label on top). Without labels every box takes the colour of class 0.
    """
    image = _check_frame(frame, "frame")
    boxes, labels, scores = _detection_parts(detections)
    height, width = image.shape[-2:]
    inside = (boxes[:, 0] < width) & (boxes[:, 2] > 0) & (boxes[:, 1] < height) & (boxes[:, 3] > 0)
    if inside.any():
        keep = inside.nonzero().squeeze(1)
        if scores is not None:  # the most confident last, so that its label ends up on top
            keep = keep[scores[keep].argsort(stable=True)]
        # clipped to the last pixel row/column so that the whole outline stays visible
        limits = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=boxes.dtype)
        clipped = torch.minimum(boxes[keep].clamp(min=0), limits)
        kept_labels = labels[keep].tolist() if labels is not None else [0] * len(clipped)
        kept_scores = scores[keep].tolist() if scores is not None and show_scores else [None] * len(clipped)
        colors = [class_rgb(label, palette) for label in kept_labels]
        texts = None
        if show_labels and (labels is not None or scores is not None and show_scores):
            texts = [label_text(label, score, categories) if labels is not None else f"{score:.2f}"
                     for label, score in zip(kept_labels, kept_scores)]
        filled = {"fill_labels": True, "label_colors": [_text_rgb(c) for c in colors]} if _FILLED_LABELS else {}
        image = draw_bounding_boxes(
            image, clipped, labels=texts, colors=colors, width=line_width or line_width_for(height, width),
            font=font_path(), font_size=font_size or font_size_for(height, width), **filled)
    return image.to(frame.device)


def annotate_frames(
    frames: torch.Tensor | Sequence[torch.Tensor],
    detections: Sequence[Mapping[str, torch.Tensor]],
    categories: Sequence[str] | Mapping[int, str] | None = None,
    **options,
) -> torch.Tensor:
    """`draw_detections` on every frame of a clip: (N, 3, H, W) -> (N, 3, H, W) uint8, same device."""
    frames = list(frames)
    if len(frames) != len(detections):
        raise ValueError(f"detections must have one dict per frame ({len(frames)}), got {len(detections)}")
    if not frames:
        raise ValueError("frames must hold at least one frame, got none")
    return torch.stack([draw_detections(f, d, categories, **options) for f, d in zip(frames, detections)])


# -- two detectors, one clip ----------------------------------------------------------------------


def _title_bar(title: str, width: int, height: int, font_size: int) -> torch.Tensor:
    """(3, height, width) uint8: ``title`` centred in black on white."""
    from PIL import Image, ImageDraw, ImageFont

    bar = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(bar)
    font = ImageFont.truetype(font_path(), font_size)
    draw.text((width / 2, height / 2), title, fill=TITLE_RGB, font=font, anchor="mm")
    return torch.frombuffer(bytearray(bar.tobytes()), dtype=torch.uint8).reshape(height, width, 3).permute(2, 0, 1)


def side_by_side(
    left: torch.Tensor,
    right: torch.Tensor,
    titles: tuple[str, str] | None = None,
    *,
    gap: int = SIDE_BY_SIDE_GAP,
    font_size: int | None = None,
) -> torch.Tensor:
    """Two frames (or clips) of the same size next to each other, each under its title.

    ``left``, ``right``: (3, H, W) or (N, 3, H, W), uint8 (e.g. from `annotate_frames`), same shape.
    Returns uint8 (3, T + H, 2W + gap) or (N, 3, T + H, 2W + gap) on ``left``'s device, where T is the
    title bar's height (0 without titles); the gap and the bar are white.
    """
    for name, value in (("left", left), ("right", right)):
        if not isinstance(value, torch.Tensor) or value.ndim not in (3, 4) or value.shape[-3] != 3:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be (3, H, W) or (N, 3, H, W), got {shape}")
        if value.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 (annotated frames), got {value.dtype}")
    if left.shape != right.shape:
        raise ValueError(f"left and right must have the same shape, got {tuple(left.shape)} and {tuple(right.shape)}")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be an int >= 0, got {gap!r}")
    clip = left.ndim == 4
    left_clip, right_clip = (left, right.to(left.device)) if clip else (left[None], right[None].to(left.device))
    count, _, height, width = left_clip.shape
    white = torch.tensor(BACKGROUND_RGB, dtype=torch.uint8, device=left.device).view(1, 3, 1, 1)
    row = torch.cat([left_clip, white.expand(count, 3, height, gap), right_clip], dim=3)
    if titles is not None:
        if len(titles) != 2:
            raise ValueError(f"titles must be two strings (left, right), got {titles!r}")
        size = font_size or font_size_for(height, width)
        bar_height = round(size * TITLE_BAR_LINES)
        bars = [_title_bar(str(t), width, bar_height, size).to(left.device) for t in titles]
        bar = torch.cat([bars[0], white[0].expand(3, bar_height, gap), bars[1]], dim=2)
        row = torch.cat([bar.expand(count, -1, -1, -1), row], dim=2)
    return row if clip else row[0]
