"""A track and what its history tells: the `Track` record (the frames and boxes matched to one object),
its velocity and image-plane speed, where its box is expected next (`predict_boxes`), and a frame's
tracks as tensors for the metrics.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["VELOCITY_WINDOW", "Track", "track_velocities", "track_speeds", "track_speed", "predict_boxes",
           "tracks_to_tensors"]

#: A track's velocity is measured over its last this many observations (a few frames: long
#: enough to average out detection noise, short enough to follow a turn).
VELOCITY_WINDOW = 5


# --------------------------------------------------------------------------- tracks


@dataclass(eq=False)
class Track:
    """One object followed through the video.

    ``frames[i]`` and ``boxes[i]`` (a (4,) xyxy tensor) record each frame in which a detection
    was matched to the track: its history, for trails and speeds. ``misses`` counts the frames
    since the last match; a track is ``confirmed`` once matched in ``min_hits`` frames in a row.
    """

    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[Tensor] = field(default_factory=list)
    label: int | None = None
    score: float | None = None
    misses: int = 0
    confirmed: bool = False

    @property
    def box(self) -> Tensor:
        """(4,) the last matched box."""
        return self.boxes[-1]

    @property
    def hits(self) -> int:
        """Number of frames in which the track was matched."""
        return len(self.frames)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def history(self) -> tuple[Tensor, Tensor]:
        """frames: (n,) int64 and boxes: (n, 4) of every matched frame, oldest first."""
        boxes = torch.stack(self.boxes)
        return torch.tensor(self.frames, dtype=torch.int64, device=boxes.device), boxes


def _centres(boxes: Tensor) -> Tensor:
    return 0.5 * (boxes[..., :2] + boxes[..., 2:])


def _endpoints(tracks: Sequence[Track], window: int | None) -> tuple[Tensor, Tensor]:
    """Centre displacement (N, 2) and frame span (N,) over each track's last ``window`` observations."""
    starts = [max(t.hits - window, 0) if window else 0 for t in tracks]  # index of the first observation used
    first = torch.stack([t.boxes[i] for t, i in zip(tracks, starts)])
    last = torch.stack([t.box for t in tracks])
    span = [t.last_frame - t.frames[i] for t, i in zip(tracks, starts)]
    return _centres(last) - _centres(first), torch.tensor(span, dtype=last.dtype, device=last.device)


def _check_window(window) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 2):
        raise ValueError(f"window must be None (whole history) or an int >= 2, got {window!r}")


def track_velocities(tracks: Sequence[Track], window: int | None = VELOCITY_WINDOW) -> Tensor:
    """Velocity (vx, vy) of each track's box centre in pixels per frame.

    Measured from the first to the last of the track's last ``window`` observations (the whole
    history when ``window`` is None). A track seen once has velocity (0, 0).
    tracks: N tracks  ->  (N, 2).
    """
    _check_window(window)
    if not tracks:
        return torch.zeros(0, 2)
    displacement, span = _endpoints(tracks, window)
    return displacement / span.clamp(min=1)[:, None]  # span 0 only with displacement 0


def track_speeds(tracks: Sequence[Track], window: int | None = None, fps: float | None = None) -> Tensor:
    """Speed of each track's box centre in the image: pixels per frame (pixels per second with ``fps``).

    Net displacement over the time between the first and last of the last ``window``
    observations (the whole history by default): detection noise does not add up as it does in
    a path length. NaN for a track seen only once (no speed can be measured yet).
    Image-plane speed only: without depth, pixels are not metres.
    tracks: N tracks  ->  (N,).
    """
    _check_window(window)
    if fps is not None and not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if not tracks:
        return torch.zeros(0)
    displacement, span = _endpoints(tracks, window)
    speed = displacement.norm(dim=1) / span
    speed = torch.where(span > 0, speed, torch.full_like(speed, float("nan")))
    return speed * fps if fps is not None else speed


def track_speed(track: Track, window: int | None = None, fps: float | None = None) -> float:
    """`track_speeds` of one track, as a float."""
    return float(track_speeds([track], window, fps)[0])


def predict_boxes(tracks: Sequence[Track], frame_index: int, use_velocity: bool = True) -> Tensor:
    """Where each track's box is expected in frame ``frame_index``.

    The last box, moved by the track's velocity (`track_velocities`) times the frames since it
    was seen when ``use_velocity``; its size is kept. tracks: N tracks  ->  (N, 4).
    """
    if not tracks:
        return torch.zeros(0, 4)
    last = torch.stack([t.box for t in tracks])
    if not use_velocity:
        return last
    elapsed = torch.tensor([frame_index - t.last_frame for t in tracks], dtype=last.dtype, device=last.device)
    shift = track_velocities(tracks) * elapsed[:, None]  # (N, 2)
    return last + shift.repeat(1, 2)


def tracks_to_tensors(tracks: Sequence[Track], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """ids: (N,) int64 and last boxes: (N, 4) of ``tracks`` (e.g. a frame's active tracks for
    `course_lib.detection.mot_metrics`)."""
    if not tracks:
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, 4, device=device)
    boxes = torch.stack([t.box for t in tracks])
    device = boxes.device if device is None else device
    return torch.tensor([t.id for t in tracks], dtype=torch.int64, device=device), boxes.to(device)
