"""Tracking by detection: give the boxes of a video identities that last from frame to frame.

A detector looks at each frame on its own: its boxes have no identity, so it cannot say that the
car in frame 7 is the car of frame 6, nor how fast it moves. An IoU tracker adds that layer:

1. *predict* where each track's box should be in the new frame (its last box, moved by the
   track's recent velocity when ``use_velocity`` is on);
2. *associate* the predicted boxes with the new detections by IoU (`associate`);
3. *update* the matched tracks with their detections, count a miss for the others and end those
   missed for more than ``max_age`` frames in a row; every unmatched detection starts a new track
   with a new id (ids are never reused).

`update_tracks` is that step as a function on plain `Track` records; `IoUTracker` keeps the state
(tracks, next id, frame counter) between frames. Boxes are (x1, y1, x2, y2) in pixels.

Default: ``use_velocity=True``. Without a motion model a track waits at its last box, so an object
that is missed for a few frames has moved on when it reappears, and two objects that cross can
swap ids; moving the box by the track's velocity (averaged over the last `VELOCITY_WINDOW`
observations so that one noisy box does not throw it off) keeps it on the object. Only the
centre moves: the size is kept, so a prediction is always a valid box. A new track has no
velocity yet: between its first two frames an object must still overlap its own last box.

Speeds (`track_speeds`) are measured in the image plane, in pixels per frame: a camera sees no
depth, so a far, fast car and a near, slow one can have the same pixel speed. Real-world speeds
need the camera's geometry (calibration, a ground plane, or 3-D detections).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .boxes import _as_float, _check_boxes, _check_corners, _check_same_device, _check_tensor, box_iou

__all__ = [
    "ASSOCIATION_METHODS",
    "FIRST_ID",
    "VELOCITY_WINDOW",
    "Association",
    "Track",
    "TrackUpdate",
    "IoUTracker",
    "associate",
    "update_tracks",
    "predict_boxes",
    "track_velocities",
    "track_speeds",
    "track_speed",
    "tracks_to_tensors",
]

#: ``"hungarian"``: the matching with the largest total IoU; ``"greedy"``: best IoU first.
ASSOCIATION_METHODS = ("hungarian", "greedy")
#: The first track id (as in the MOTChallenge files, ids count from 1).
FIRST_ID = 1
#: A track's velocity is measured over its last this many observations (a few frames: long
#: enough to average out detection noise, short enough to follow a turn).
VELOCITY_WINDOW = 5
#: Defaults of `IoUTracker` and `update_tracks`.
DEFAULT_IOU_THRESHOLD = 0.3
DEFAULT_MAX_AGE = 5
DEFAULT_MIN_HITS = 1


# --------------------------------------------------------------------------- association


class Association(NamedTuple):
    """What `associate` returns (indices into its two inputs)."""

    matches: Tensor  # (K, 2) int64 rows (track index, detection index), by track index
    unmatched_tracks: Tensor  # (T - K,) int64, increasing
    unmatched_detections: Tensor  # (D - K,) int64, increasing


def _check_labels(labels, n: int, name: str, boxes_name: str) -> Tensor:
    _check_tensor(labels, name)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per row of {boxes_name}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    return labels


def _check_threshold(iou_threshold) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    return float(iou_threshold)


def associate(track_boxes: Tensor, detection_boxes: Tensor, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
              method: str = "hungarian", track_labels: Tensor | None = None,
              detection_labels: Tensor | None = None) -> Association:
    """Match tracks with detections by IoU; each track and each detection is used at most once.

    A pair can match only when its IoU is >= ``iou_threshold`` (and, when both label tensors are
    given, when the labels are equal: class-aware association).

    - ``"hungarian"``: the matching with the largest total IoU over the pairs that can match
      (``scipy.optimize.linear_sum_assignment`` on the IoU, the other pairs set to 0, which is the
      same as minimising the summed ``1 - IoU``); the zero pairs it may add are dropped.
    - ``"greedy"``: repeatedly take the pair with the highest IoU whose track and detection are
      both still free. Equal IoUs are taken by track index, then detection index.

    track_boxes: (T, 4) xyxy, detection_boxes: (D, 4) xyxy, labels: (T,) and (D,) int
    ->  `Association` of (K, 2), (T - K,), (D - K,) int64 indices on the inputs' device.
    """
    _check_boxes(track_boxes, "track_boxes")
    _check_boxes(detection_boxes, "detection_boxes")
    _check_same_device(track_boxes=track_boxes, detection_boxes=detection_boxes)
    _check_corners(track_boxes, "track_boxes")
    _check_corners(detection_boxes, "detection_boxes")
    iou_threshold = _check_threshold(iou_threshold)
    if method not in ASSOCIATION_METHODS:
        raise ValueError(f"method must be one of {ASSOCIATION_METHODS}, got {method!r}")
    if (track_labels is None) != (detection_labels is None):
        raise ValueError("track_labels and detection_labels must be given together (class-aware) or not at all")

    iou = box_iou(track_boxes, detection_boxes).detach()  # (T, D)
    allowed = iou >= iou_threshold
    if track_labels is not None:
        _check_labels(track_labels, track_boxes.shape[0], "track_labels", "track_boxes")
        _check_labels(detection_labels, detection_boxes.shape[0], "detection_labels", "detection_boxes")
        _check_same_device(track_boxes=track_boxes, track_labels=track_labels, detection_labels=detection_labels)
        allowed &= track_labels[:, None] == detection_labels[None, :]
    iou = torch.where(allowed, iou, torch.zeros_like(iou))

    matches = _hungarian(iou, allowed) if method == "hungarian" else _greedy(iou, allowed)
    return Association(matches, *_unmatched(matches, iou.shape))


def _hungarian(iou: Tensor, allowed: Tensor) -> Tensor:
    """(K, 2) pairs of largest total IoU, by row; ``iou`` is 0 where not ``allowed``."""
    if iou.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.int64, device=iou.device)
    from scipy.optimize import linear_sum_assignment  # imported here: scipy costs ~0.4 s to import

    rows, cols = linear_sum_assignment(iou.double().cpu().numpy(), maximize=True)  # rows increasing
    pairs = torch.from_numpy(np.stack((rows, cols), axis=1)).to(device=iou.device, dtype=torch.int64)
    return pairs[allowed[pairs[:, 0], pairs[:, 1]]]


def _greedy(iou: Tensor, allowed: Tensor) -> Tensor:
    """(K, 2) pairs chosen best IoU first, by row.

    Greedy matching is sequential by nature; it is settled here in rounds instead of pair by
    pair: a pair that is the best remaining pair of both its row and its column is exactly a
    pair the sequential greedy loop would take, so every round takes all of those at once.
    """
    n_rows, n_cols = iou.shape
    # Rank of every pair in greedy order: IoU descending; a stable sort of the row-major
    # flattening breaks ties by row, then column. Pairs that cannot match rank last.
    order = torch.sort(iou.flatten(), descending=True, stable=True).indices
    not_allowed = n_rows * n_cols  # larger than every rank
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=iou.device))
    rank = torch.where(allowed.flatten(), rank, not_allowed).reshape(n_rows, n_cols)
    matches = []
    row_ids = torch.arange(n_rows, device=iou.device)
    while rank.numel() and bool((rank < not_allowed).any()):
        best_col = rank.argmin(dim=1)  # (T,) best remaining detection of each track
        best_row = rank.argmin(dim=0)  # (D,) best remaining track of each detection
        mutual = (rank.gather(1, best_col[:, None])[:, 0] < not_allowed) & (best_row[best_col] == row_ids)
        rows, cols = row_ids[mutual], best_col[mutual]
        matches.append(torch.stack((rows, cols), dim=1))
        rank[rows, :] = not_allowed
        rank[:, cols] = not_allowed
    if not matches:
        return torch.zeros(0, 2, dtype=torch.int64, device=iou.device)
    pairs = torch.cat(matches)
    return pairs[pairs[:, 0].argsort()]


def _unmatched(matches: Tensor, shape: tuple[int, int]) -> list[Tensor]:
    """The indices of each side that are in no pair, increasing."""
    used = [torch.zeros(size, dtype=torch.bool, device=matches.device).index_fill_(0, matches[:, side], True)
            for side, size in enumerate(shape)]
    return [torch.nonzero(~u)[:, 0] for u in used]


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


class TrackUpdate(NamedTuple):
    """What `update_tracks` returns."""

    active: list[Track]  # confirmed tracks matched in this frame: what to draw and evaluate
    tracks: list[Track]  # every live track (tentative and missed ones too), by id
    ended: list[Track]  # tracks that ended in this frame
    next_id: int  # the id the next new track gets


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


# --------------------------------------------------------------------------- one tracking step


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_detections(boxes, labels, scores) -> Tensor:
    _check_boxes(boxes, "boxes")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite (no NaN or inf coordinates)")
    _check_corners(boxes, "boxes")
    if labels is not None:
        _check_labels(labels, boxes.shape[0], "labels", "boxes")
    if scores is not None:
        _check_tensor(scores, "scores")
        if scores.shape != (boxes.shape[0],):
            raise ValueError(f"scores must have shape ({boxes.shape[0]},), one per row of boxes, "
                             f"got {tuple(scores.shape)}")
    # A private copy: the history must not change when the caller reuses its tensor.
    return _as_float(boxes.detach()).clone()


def update_tracks(tracks: Sequence[Track], boxes: Tensor, frame_index: int, next_id: int = FIRST_ID, *,
                  labels: Tensor | None = None, scores: Tensor | None = None,
                  iou_threshold: float = DEFAULT_IOU_THRESHOLD, max_age: int = DEFAULT_MAX_AGE,
                  min_hits: int = DEFAULT_MIN_HITS, method: str = "hungarian",
                  use_velocity: bool = True, class_aware: bool = True) -> TrackUpdate:
    """One tracking step: match frame ``frame_index``'s detections to ``tracks`` and update them.

    - Matched tracks get the detection's box (and label, score) appended; ``misses`` = 0.
    - An unmatched track counts a miss; it ends when missed more than ``max_age`` frames in a row,
      or at its first miss while still tentative (fewer than ``min_hits`` hits in a row), so
      that a flickering false detection does not linger.
    - Each unmatched detection starts a track with id ``next_id``, ``next_id + 1``, ... in
      detection order.

    With ``labels`` and ``class_aware``, a detection matches only a track of its own label.
    Labels must be given in every frame or in none. Matched tracks are updated in place.

    tracks: live tracks from the previous step, boxes: (D, 4) xyxy, labels: (D,) int,
    scores: (D,)  ->  `TrackUpdate`.
    """
    boxes = _check_detections(boxes, labels, scores)
    _check_count(max_age, "max_age", 0)
    _check_count(min_hits, "min_hits", 1)
    frame_index = _check_count(frame_index, "frame_index", 0)
    if tracks and frame_index <= max(t.last_frame for t in tracks):
        raise ValueError(f"frame_index must increase from frame to frame, got {frame_index} after "
                         f"{max(t.last_frame for t in tracks)}")
    if tracks and (tracks[0].label is None) != (labels is None):
        raise ValueError("labels must be given in every frame or in none")
    next_id = _check_count(next_id, "next_id", 0)

    track_boxes = predict_boxes(tracks, frame_index, use_velocity).to(boxes)
    by_label = class_aware and labels is not None
    track_labels = torch.tensor([t.label for t in tracks], dtype=torch.int64, device=boxes.device) if by_label else None
    detection_labels = labels.to(device=boxes.device, dtype=torch.int64) if by_label else None
    matches, lost, new = associate(track_boxes, boxes, iou_threshold, method, track_labels, detection_labels)

    labels_list = labels.tolist() if labels is not None else [None] * boxes.shape[0]
    scores_list = scores.tolist() if scores is not None else [None] * boxes.shape[0]
    for t, d in matches.tolist():
        track = tracks[t]
        track.frames.append(frame_index)
        track.boxes.append(boxes[d])
        track.label, track.score, track.misses = labels_list[d], scores_list[d], 0
        track.confirmed = track.confirmed or track.hits >= min_hits

    alive, ended = [], []
    lost_set = set(lost.tolist())
    for i, track in enumerate(tracks):
        if i in lost_set:
            track.misses += 1
            if track.misses > max_age or not track.confirmed:
                ended.append(track)
                continue
        alive.append(track)
    for d in new.tolist():
        alive.append(Track(next_id, [frame_index], [boxes[d]], labels_list[d], scores_list[d],
                           confirmed=min_hits <= 1))
        next_id += 1
    alive.sort(key=lambda track: track.id)
    active = [t for t in alive if t.confirmed and t.misses == 0]
    return TrackUpdate(active, alive, ended, next_id)


# --------------------------------------------------------------------------- the tracker


class IoUTracker:
    """An IoU tracker: call `update` once per frame with that frame's detections.

    ``iou_threshold``: least IoU between a track's predicted box and a detection to match them.
    ``max_age``: frames a track may go unmatched before it ends (an object hidden for up to
    ``max_age`` frames keeps its id). ``min_hits``: frames in a row a new track must be matched
    before it is reported. ``method``: ``"hungarian"`` or ``"greedy"`` (`associate`).
    ``use_velocity``: predict boxes with the tracks' velocities (see the module's docstring).
    ``class_aware``: with labels, match detections only to tracks of the same label.

    Deterministic: the same detections give the same ids. A track gets its id at birth, so with
    ``min_hits > 1`` the reported ids skip those of tracks that were never confirmed.
    """

    def __init__(self, iou_threshold: float = DEFAULT_IOU_THRESHOLD, max_age: int = DEFAULT_MAX_AGE,
                 min_hits: int = DEFAULT_MIN_HITS, method: str = "hungarian", use_velocity: bool = True,
                 class_aware: bool = True) -> None:
        self.iou_threshold = _check_threshold(iou_threshold)
        self.max_age = _check_count(max_age, "max_age", 0)
        self.min_hits = _check_count(min_hits, "min_hits", 1)
        if method not in ASSOCIATION_METHODS:
            raise ValueError(f"method must be one of {ASSOCIATION_METHODS}, got {method!r}")
        self.method, self.use_velocity, self.class_aware = method, bool(use_velocity), bool(class_aware)
        self.reset()

    def reset(self) -> None:
        """Forget every track; the next `update` is frame 0 and the next id is `FIRST_ID`."""
        self.tracks: list[Track] = []  # live tracks
        self.ended: list[Track] = []  # tracks that have ended, in the order they ended
        self.frame_index = 0  # the frame the next `update` processes
        self.next_id = FIRST_ID

    def update(self, boxes: Tensor, labels: Tensor | None = None, scores: Tensor | None = None) -> list[Track]:
        """Process the next frame's detections; return its active tracks (confirmed and matched
        in this frame), by id. boxes: (D, 4) xyxy, labels: (D,) int, scores: (D,)."""
        step = update_tracks(self.tracks, boxes, self.frame_index, self.next_id, labels=labels, scores=scores,
                             iou_threshold=self.iou_threshold, max_age=self.max_age, min_hits=self.min_hits,
                             method=self.method, use_velocity=self.use_velocity, class_aware=self.class_aware)
        self.tracks, self.next_id = step.tracks, step.next_id
        self.ended.extend(step.ended)
        self.frame_index += 1
        return step.active

    @property
    def all_tracks(self) -> list[Track]:
        """Every track so far, ended or live, by id."""
        return sorted(self.ended + self.tracks, key=lambda track: track.id)
