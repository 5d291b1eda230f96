"""One tracking step and the tracker that repeats it: predict each track's box, associate the
predictions with the new detections, update the matched tracks, age the missed ones and start new
tracks (`update_tracks`); `IoUTracker` keeps the tracks, the next id and the frame count between frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..boxes import _as_float, _check_boxes, _check_corners, _check_tensor
from .association import ASSOCIATION_METHODS, DEFAULT_IOU_THRESHOLD, _check_labels, _check_threshold, associate
from .tracks import Track, predict_boxes

__all__ = ["FIRST_ID", "DEFAULT_MAX_AGE", "DEFAULT_MIN_HITS", "TrackUpdate", "update_tracks", "IoUTracker"]

#: The first track id (as in the MOTChallenge files, ids count from 1).
FIRST_ID = 1
#: Defaults of `IoUTracker` and `update_tracks` (with `DEFAULT_IOU_THRESHOLD`).
DEFAULT_MAX_AGE = 5
DEFAULT_MIN_HITS = 1


class TrackUpdate(NamedTuple):
    """What `update_tracks` returns."""

    active: list[Track]  # confirmed tracks matched in this frame: what to draw and evaluate
    tracks: list[Track]  # every live track (tentative and missed ones too), by id
    ended: list[Track]  # tracks that ended in this frame
    next_id: int  # the id the next new track gets


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
