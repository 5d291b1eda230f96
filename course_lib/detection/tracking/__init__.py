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

`association` matches tracks with detections, `tracks` holds the `Track` record and what its
history tells (velocity, speed, the predicted box), `tracker` the tracking step and `IoUTracker`;
everything is importable from here.
"""
from __future__ import annotations

from .association import ASSOCIATION_METHODS, DEFAULT_IOU_THRESHOLD, Association, associate
from .tracks import VELOCITY_WINDOW, Track, predict_boxes, track_speed, track_speeds, track_velocities, tracks_to_tensors
from .tracker import DEFAULT_MAX_AGE, DEFAULT_MIN_HITS, FIRST_ID, IoUTracker, TrackUpdate, update_tracks

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
