"""Short video clips that need no download: moving shapes with known tracks, and camera moves over photos.

`shapes_clip` draws circles, squares and triangles exactly as `ShapesDataset` does (same drawing
code, sizes, colours, background and noise), now moving. Some objects stay in view, moving at
constant velocity and bouncing off the frame's edges and off each other like billiard balls (so
they do not pile up: the detector was trained on objects that overlap little); others enter
through an edge, cross faster and leave, passing in front of or behind the rest (the smaller one
in front, as in the dataset): occlusions now and then. Every frame comes with its ground truth:
tight boxes of the visible pixels, labels, track ids. At 64 x 64 pixels it is what the course's
shapes SSD (`course_lib.detection.load_shapes_ssd`) was trained to see, and it finds about as
many of the objects as on its own validation images.

`photo_clip` pans and zooms over the photographs that ship with scikit-image and matplotlib
(`sample_image`), with a cut between photographs: real objects for COCO detectors.

Both are drawn in memory in a fraction of a second, the same for the same arguments, and write
themselves to MP4 or GIF with ``clip.write(path)``:

    >>> clip = shapes_clip()                       # frames (96, 3, 64, 64) uint8, 12 fps
    >>> clip.targets[0]["boxes"], clip.targets[0]["track_ids"]
    >>> photos = photo_clip()                      # frames (72, 3, 240, 320) uint8, 12 fps
    >>> photos.write("photos.mp4")

`moving_shapes` draws the shapes clip, `camera_moves` the photo clip; both are importable from here.
"""
from __future__ import annotations

from .camera_moves import DEFAULT_PHOTOS, DEFAULT_ZOOM, PHOTO_CLIP_SIZE, PhotoClip, photo_clip
from .moving_shapes import (CROSSING_SPEEDUP, CROWDED_OVERLAP, ENTRY_WINDOW, FIRST_TRACK_ID, MAX_CROWDED_SHARE, MAX_DRIFT,
                            MOTION_CANDIDATES, PLACEMENT_CANDIDATES, SHAPES_CLIP_SIZE, ShapesClip, shapes_clip)

__all__ = [
    "ShapesClip", "PhotoClip", "shapes_clip", "photo_clip",
    "FIRST_TRACK_ID", "DEFAULT_PHOTOS", "SHAPES_CLIP_SIZE", "PHOTO_CLIP_SIZE",
]
