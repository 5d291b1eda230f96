"""Drawing tracks on video frames: each track's box, labelled "id N", and the trail of its recent
box centres, in a colour of its own.

Frames are uint8 tensors (3, H, W), as ``torchvision.io.decode_image`` and the course's video
readers give them; pixel ``j`` spans ``[j, j + 1)``. Tracks are
`course_lib.detection.tracking.Track` records (boxes (x1, y1, x2, y2) in pixels). Drawing
returns a new frame on the input's device and never changes the input.
"""
from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from .tracking import Track

__all__ = ["TRAIL_FRAMES", "ID_COLORS", "id_color", "draw_tracks"]

#: A trail shows the box centres of this many frames (the current one included).
TRAIL_FRAMES = 30
#: Track colours: this many hues of seaborn's "husl" palette (equally bright, evenly spaced) ...
ID_COLORS = 12
#: ... visited in steps of this many (coprime with `ID_COLORS`), so that consecutive ids, which
#: are often neighbours in the picture, get hues far apart (5/12 of the colour circle).
ID_COLOR_STEP = 5
BOX_WIDTH = 2
TRAIL_WIDTH = 2


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[tuple[int, int, int], ...]:
    import seaborn as sns  # imported when first needed: it takes a moment

    return tuple(tuple(round(255 * c) for c in rgb) for rgb in sns.color_palette("husl", ID_COLORS))


def id_color(track_id: int) -> tuple[int, int, int]:
    """The RGB colour (0-255) of track ``track_id``: the same in every frame and every run."""
    if isinstance(track_id, bool) or not isinstance(track_id, int):
        raise TypeError(f"track_id must be an int, got {type(track_id).__name__}")
    return _palette()[(track_id * ID_COLOR_STEP) % ID_COLORS]


def _check_frame(frame) -> Tensor:
    if not isinstance(frame, Tensor):
        raise TypeError(f"frame must be a torch.Tensor (3, H, W) uint8, got {type(frame).__name__}")
    if frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"frame must have shape (3, H, W), got {tuple(frame.shape)}")
    if frame.dtype != torch.uint8:
        raise TypeError(f"frame must be uint8 (values 0-255), got {frame.dtype}")
    return frame


def _draw_polylines(image: Tensor, polylines: Sequence[Tensor], colors: Tensor, width: int) -> Tensor:
    """Draw polyline ``i`` (its (n_i, 2) x, y points) in ``colors[i]`` onto ``image`` in place.

    Each segment is sampled at steps under one pixel and each sample paints a ``width`` x
    ``width`` square, all segments at once. Where polylines overlap the later one wins.
    A polyline of one point is a dot.
    """
    height, img_width = image.shape[-2:]
    starts, ends, owners = [], [], []
    for i, points in enumerate(polylines):
        if points.shape[0] == 1:
            points = points.repeat(2, 1)
        starts.append(points[:-1])
        ends.append(points[1:])
        owners.append(torch.full((points.shape[0] - 1,), i, dtype=torch.int64))
    start, end = torch.cat(starts).double(), torch.cat(ends).double()
    owner = torch.cat(owners).to(image.device)
    start, end = start.to(image.device), end.to(image.device)

    # Samples 1 pixel apart or less along each segment, both ends included.
    samples = ((end - start).abs().amax(dim=1).ceil().long() + 1)  # (S,)
    segment = torch.repeat_interleave(torch.arange(samples.numel(), device=image.device), samples)
    first = torch.cumsum(samples, 0) - samples
    step = torch.arange(segment.numel(), device=image.device) - first[segment]
    t = (step / (samples[segment] - 1).clamp(min=1))[:, None]
    points = start[segment] + t * (end[segment] - start[segment])  # (P, 2)

    offsets = torch.arange(width, device=image.device) - (width - 1) // 2
    square = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1).reshape(-1, 2)  # (w*w, 2)
    pixels = (points.floor().long()[:, None, :] + square[None]).reshape(-1, 2)
    pixel_owner = owner[segment].repeat_interleave(square.shape[0])
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < img_width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    linear = pixels[inside, 1] * img_width + pixels[inside, 0]
    # One colour per pixel, deterministically: the highest polyline index that covers it. Sorting
    # (pixel, polyline) keys puts it last among each pixel's entries.
    key = torch.sort(linear * len(polylines) + pixel_owner[inside]).values
    last = torch.cumsum(torch.unique_consecutive(key // len(polylines), return_counts=True)[1], 0) - 1
    painted, top = key[last] // len(polylines), key[last] % len(polylines)
    image.view(3, -1)[:, painted] = colors[top].T
    return image


def draw_tracks(frame: Tensor, tracks: Sequence[Track], frame_index: int | None = None,
                trail_frames: int = TRAIL_FRAMES, class_names: Sequence[str] | Mapping[int, str] | None = None,
                box_width: int = BOX_WIDTH, trail_width: int = TRAIL_WIDTH, font: str | None = None,
                font_size: int | None = None) -> Tensor:
    """Draw the tracks seen in frame ``frame_index`` onto a copy of ``frame``.

    A track matched in that frame gets its box there, labelled ``"id N"`` (``"id N name"`` with
    ``class_names`` and labelled tracks), and a polyline through its box centres in the frames
    ``frame_index - trail_frames + 1 ... frame_index``; tracks not matched in that frame are not
    drawn. ``frame_index`` defaults to the latest frame of ``tracks``: pass the tracker's active
    tracks for the current frame, or all its tracks and any frame index to draw a past frame.
    ``font`` (a TrueType file) and ``font_size`` go to ``torchvision.utils.draw_bounding_boxes``;
    without ``font`` its small built-in bitmap font is used.

    frame: (3, H, W) uint8  ->  new (3, H, W) uint8 on the same device.
    """
    frame = _check_frame(frame)
    for name, value in (("trail_frames", trail_frames), ("box_width", box_width), ("trail_width", trail_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    out = frame.clone(memory_format=torch.contiguous_format)  # whatever the layout of the input
    if not tracks:
        return out
    if frame_index is None:
        frame_index = max(t.last_frame for t in tracks)

    shown, boxes, trails = [], [], []
    for track in tracks:
        i = bisect.bisect_right(track.frames, frame_index) - 1  # the observation at frame_index, if any
        if i < 0 or track.frames[i] != frame_index:
            continue
        j = bisect.bisect_right(track.frames, frame_index - trail_frames)  # first one in the trail
        trail = torch.stack(track.boxes[j:i + 1]).detach().to("cpu", torch.float64)
        shown.append(track)
        boxes.append(trail[-1])
        trails.append(0.5 * (trail[:, :2] + trail[:, 2:]))
    if not shown:
        return out

    colors = [id_color(t.id) for t in shown]
    _draw_polylines(out, trails, torch.tensor(colors, dtype=torch.uint8, device=out.device), trail_width)
    labels = [f"id {t.id}" + _name(t.label, class_names) for t in shown]
    text = {"font": font, "font_size": font_size} if font is not None else {}  # a size needs a font
    drawn = draw_bounding_boxes(out.cpu(), torch.stack(boxes), labels=labels, colors=colors, width=box_width,
                                fill_labels=True, **text)
    return drawn.to(frame.device)


def _name(label: int | None, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if label is None or class_names is None:
        return ""
    if isinstance(class_names, Mapping):
        return f" {class_names.get(label, label)}"
    return f" {class_names[label]}" if 0 <= label < len(class_names) else f" {label}"
