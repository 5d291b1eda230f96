"""A clip of moving shapes with its ground truth: circles, squares and triangles drawn by
`ShapesDataset`'s own code, bouncing off the edges and off each other, or crossing the frame and
leaving (occlusions now and then), with tight boxes, labels, track ids and visibility in every frame.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ..shapes import (
    CLASSES,
    MAX_OBJECTS_LIMIT,
    MIN_IMAGE_SIZE,
    MIN_VISIBLE_FRACTION,
    ShapesDataset,
    _Layout,
    _shape_masks,
    _single_threaded,
    _tight_boxes,
    _visible_masks,
)
from .clip_arguments import _UINT8_MAX, _check_count, _check_fps, _seeded

__all__ = ["ShapesClip", "shapes_clip", "FIRST_TRACK_ID", "SHAPES_CLIP_SIZE"]

#: Track ids count from 1 (as in MOTChallenge files).
FIRST_TRACK_ID = 1
#: The image size the course's shapes SSD was trained on.
SHAPES_CLIP_SIZE = 64
#: A crossing object enters during the first this fraction of the clip, so it has time to cross, ...
ENTRY_WINDOW = 0.4
#: ... and moves faster than the bouncing ones: between the fastest of them and this many times that.
CROSSING_SPEEDUP = 2.0
#: A crossing object drifts sideways by up to this fraction of its speed.
MAX_DRIFT = 0.5
#: Two objects "crowd" each other when one covers more than this fraction of the smaller one's box:
#: the most `ShapesDataset` allows by default (``max_overlap=0.3``), so the most the detector saw.
CROWDED_OVERLAP = 0.3
#: Object motions are drawn again (up to `MOTION_CANDIDATES` times) until objects crowd each other
#: in some frames (occlusions happen) but at most this share of them (the frames look like the data).
MAX_CROWDED_SHARE = 0.15
MOTION_CANDIDATES = 32
#: Random positions tried for each bouncing object so that it starts clear of the others.
PLACEMENT_CANDIDATES = 64


class ShapesClip(NamedTuple):
    """`shapes_clip`'s result; unpacks as ``frames, fps, targets, class_names = clip``.

    frames: (T, 3, H, W) uint8; fps: frames per second. targets: T dicts, one per frame, of the objects shown (N_t of them):
    ``boxes`` (N_t, 4) float32 xyxy pixels, tight around the visible pixels; ``labels`` (N_t,) int64
    in 1..3 (`CLASSES`); ``track_ids`` (N_t,) int64, the same object's id in every frame, from
    `FIRST_TRACK_ID`, numbered by first appearance; ``visibility`` (N_t,) float32, the fraction of
    the object's pixels that are visible (the rest is behind another object or outside the frame);
    with ``return_masks=True`` also ``masks`` (N_t, H, W) bool, the visible pixels.
    """

    frames: torch.Tensor
    fps: float
    targets: list[dict[str, torch.Tensor]]
    class_names: tuple[str, ...] = CLASSES

    def write(self, path: str | Path, *, draw_boxes: bool = False, **options) -> Path:
        """Save as MP4 or GIF (by ``path``'s ending; ``options`` go to `video.write_video`).

        ``draw_boxes`` draws each ground-truth box in its track's colour.
        """
        from ..video import write_video

        frames = self.frames
        if draw_boxes:
            from torchvision.utils import draw_bounding_boxes

            from ...viz import class_color

            def colors(ids: torch.Tensor) -> list[tuple[int, ...]]:
                return [tuple(round(_UINT8_MAX * c) for c in class_color(int(i))[:3]) for i in ids]

            frames = torch.stack([
                draw_bounding_boxes(frame, t["boxes"], colors=colors(t["track_ids"]), width=1) if len(t["boxes"])
                else frame for frame, t in zip(frames, self.targets)])
        return write_video(path, frames, self.fps, **options)


# -- moving shapes -------------------------------------------------------------------------------

class _Tracks(NamedTuple):
    """Every object's box at every frame, (K, T, 4) continuous xyxy (the box its shape is inscribed in)."""

    boxes: torch.Tensor  # (K, T, 4)
    labels: torch.Tensor  # (K,)
    apex_up: torch.Tensor  # (K,)
    colors: torch.Tensor  # (K, 3)


def _appearance(count: int, size: int, generator: torch.Generator) -> _Layout:
    """Sizes, classes, colours and triangle directions of ``count`` objects, by the dataset's own code."""
    if count == 0:
        return _Layout(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool),
                       torch.zeros(0, 3))
    # max_overlap=1: every drawn candidate is kept, so there are exactly ``count`` objects.
    return ShapesDataset("test", 1, image_size=size, min_objects=count, max_objects=count,
                         max_overlap=1.0)._layout(generator)


def _velocities(count: int, speed: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(count, 2) pixels per frame, speeds uniform in ``speed``, directions uniform."""
    speeds = speed[0] + (speed[1] - speed[0]) * torch.rand(count, generator=generator)
    angles = 2 * math.pi * torch.rand(count, generator=generator)
    return torch.stack([angles.cos(), angles.sin()], dim=1) * speeds[:, None]


def _place_apart(sides: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (B, 2) of squares of ``sides`` (B,) inside the frame, not touching each other
    when possible (else the least overlapping of the candidates). Sequential: each one avoids the earlier."""
    corners = torch.zeros(len(sides), 2)
    for i, side in enumerate(sides.tolist()):
        candidates = torch.rand(PLACEMENT_CANDIDATES, 2, generator=generator) * (size - side)
        gaps = (candidates[:, None] + side / 2 - corners[None, :i] - sides[None, :i, None] / 2).abs() \
            - (side + sides[None, :i, None]) / 2  # (C, i, 2); both negative = overlapping
        overlap = (-gaps).clamp(min=0).prod(-1).sum(-1)  # (C,) area shared with the placed ones
        corners[i] = candidates[overlap.argmin()]  # argmin: the first candidate that touches nothing
    return corners


def _swap_on_contact(corners: torch.Tensor, sides: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Elastic collisions of equal masses: two boxes that touch while closing in swap their velocities
    along the axis where they overlap least. Returns the new velocities (B, 2)."""
    centres = corners + sides[:, None] / 2
    offset = centres[:, None] - centres[None]  # (B, B, 2)
    gaps = offset.abs() - (sides[:, None, None] + sides[None, :, None]) / 2  # negative: overlap on that axis
    axis = gaps.argmax(-1, keepdim=True)  # the shallower overlap: where they hit
    closing = (offset.gather(-1, axis) * (velocity[:, None] - velocity[None]).gather(-1, axis)).squeeze(-1) < 0
    hits = ((gaps < 0).all(-1) & closing).triu(diagonal=1).nonzero().tolist()
    velocity = velocity.clone()
    for i, j in hits:  # a collision is between two objects; at most a few per frame
        k = int(axis[i, j])
        velocity[i, k], velocity[j, k] = velocity[j, k].clone(), velocity[i, k].clone()
    return velocity


def _bouncing(num_frames: int, size: int, sides: torch.Tensor, speed: tuple[float, float],
              generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (B, T, 2) of objects bouncing off the frame's edges and off each other."""
    corner, velocity = _place_apart(sides, size, generator), _velocities(len(sides), speed, generator)
    room = (size - sides)[:, None]
    path = []
    for _ in range(num_frames):  # a simulation: each step depends on the last
        path.append(corner)
        corner = corner + velocity
        low, high = corner < 0, corner > room
        corner = torch.where(low, -corner, torch.where(high, 2 * room - corner, corner))  # reflect at the edges
        velocity = _swap_on_contact(corner, sides, torch.where(low | high, -velocity, velocity))
    return torch.stack(path, dim=1) if path else torch.zeros(len(sides), 0, 2)


def _crossing(num_frames: int, size: int, sides: torch.Tensor, speed: tuple[float, float],
              generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (C, T, 2) of objects that wait outside an edge, enter, cross and leave (no bounce)."""
    count = len(sides)
    edge = torch.randint(0, 4, (count,), generator=generator)  # enter through the left, right, top, bottom edge
    entry = torch.floor(torch.rand(count, generator=generator) * ENTRY_WINDOW * num_frames)
    along = torch.rand(count, generator=generator) * (size - sides)
    speeds = speed[1] * (1 + (CROSSING_SPEEDUP - 1) * torch.rand(count, generator=generator))
    drift = (2 * torch.rand(count, generator=generator) - 1) * MAX_DRIFT * speeds
    inward = torch.where(edge % 2 == 0, speeds, -speeds)
    outside = torch.where(edge % 2 == 0, -sides, torch.full_like(sides, float(size)))  # just out of view
    horizontal = (edge < 2)[:, None]
    start = torch.where(horizontal, torch.stack([outside, along], 1), torch.stack([along, outside], 1))
    velocity = torch.where(horizontal, torch.stack([inward, drift], 1), torch.stack([drift, inward], 1))
    elapsed = (torch.arange(num_frames)[None, :] - entry[:, None]).clamp(min=0)  # (C, T)
    return start[:, None] + velocity[:, None] * elapsed[..., None]


def _crowded_share(boxes: torch.Tensor, size: int) -> float:
    """Share of frames in which two objects in view crowd each other; boxes: (K, T, 4)."""
    if boxes.shape[0] < 2:
        return 0.0
    frames = boxes.transpose(0, 1)  # (T, K, 4)
    in_view = (frames[..., :2] < size).all(-1) & (frames[..., 2:] > 0).all(-1)  # (T, K)
    top_left = torch.maximum(frames[:, :, None, :2], frames[:, None, :, :2])
    bottom_right = torch.minimum(frames[:, :, None, 2:], frames[:, None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)  # (T, K, K)
    area = (frames[..., 2:] - frames[..., :2]).prod(-1)
    covered = intersection / torch.minimum(area[:, :, None], area[:, None, :])
    both = in_view[:, :, None] & in_view[:, None, :] & ~torch.eye(boxes.shape[0], dtype=torch.bool)
    return float(((covered > CROWDED_OVERLAP) & both).flatten(1).any(1).float().mean())


def _motion(num_frames: int, size: int, num_objects: int, num_crossing: int, speed: tuple[float, float],
            generator: torch.Generator) -> _Tracks:
    """Looks from the dataset, then paths: bouncing objects first, then crossing ones, whose entries are
    drawn again (up to `MOTION_CANDIDATES` times) until they occlude others now and then, not most of the time."""
    looks = _appearance(num_objects + num_crossing, size, generator)  # largest first: the drawing order
    sides = looks.boxes[:, 2] - looks.boxes[:, 0]
    is_crossing = torch.zeros(len(sides), dtype=torch.bool)
    is_crossing[torch.randperm(len(sides), generator=generator)[:num_crossing]] = True
    corners = torch.zeros(len(sides), num_frames, 2)
    corners[~is_crossing] = _bouncing(num_frames, size, sides[~is_crossing], speed, generator)
    best, best_share = None, math.inf
    for _ in range(MOTION_CANDIDATES):
        corners[is_crossing] = _crossing(num_frames, size, sides[is_crossing], speed, generator)
        boxes = torch.cat([corners, corners + sides[:, None, None]], dim=-1)  # (K, T, 4)
        share = _crowded_share(boxes, size)
        if share < best_share:
            best, best_share = boxes, share
        if 0 < share <= MAX_CROWDED_SHARE:
            best = boxes
            break
    return _Tracks(best, looks.labels, looks.apex_up, looks.colors)


def shapes_clip(
    num_frames: int = 96,
    fps: float = 12.0,
    image_size: int = SHAPES_CLIP_SIZE,
    *,
    num_objects: int = 3,
    num_crossing: int = 2,
    speed: tuple[float, float] = (0.5, 1.5),
    noise_std: float = 0.03,
    min_visibility: float = MIN_VISIBLE_FRACTION,
    seed: int = 0,
    return_masks: bool = False,
) -> ShapesClip:
    """A clip of moving circles, squares and triangles with ground-truth boxes, labels and track ids.

    Args:
        num_frames, fps: length T and frame rate (the default: 8 seconds).
        image_size: S for S x S frames (64: what the course's shapes SSD detects).
        num_objects: objects in view all along, bouncing off the edges.
        num_crossing: objects that enter through an edge during the first 40% of the clip, cross
            the frame faster than the others (up to twice the fastest speed) and leave.
        speed: (slowest, fastest) speed of the bouncing objects in pixels per frame.
        noise_std: Gaussian pixel noise, fresh in every frame (the dataset's default).
        min_visibility: objects with a smaller visible fraction are drawn but have no target
            (as in `ShapesDataset`, where they are left out); 0 keeps every object with a visible pixel.
        seed: the same seed gives the same clip.
        return_masks: also give ``targets[t]["masks"]`` (N_t, S, S) bool, each object's visible pixels.

    Returns:
        `ShapesClip`: frames (T, 3, S, S) uint8, fps, T target dicts.
    """
    num_frames = _check_count(num_frames, "num_frames", 1)
    fps = _check_fps(fps)
    size = _check_count(image_size, "image_size", MIN_IMAGE_SIZE)
    _check_count(num_objects, "num_objects", 0)
    _check_count(num_crossing, "num_crossing", 0)
    if num_objects + num_crossing > MAX_OBJECTS_LIMIT:
        raise ValueError(f"num_objects + num_crossing must be at most {MAX_OBJECTS_LIMIT}, "
                         f"got {num_objects} + {num_crossing}")
    if not (isinstance(speed, Sequence) and len(speed) == 2 and 0 <= speed[0] <= speed[1]):
        raise ValueError(f"speed must be a (slowest, fastest) pair with 0 <= slowest <= fastest, got {speed!r}")
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0):
        raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
    if not (isinstance(min_visibility, (int, float)) and 0 <= min_visibility <= 1):
        raise ValueError(f"min_visibility must be a number in [0, 1], got {min_visibility!r}")

    generator = _seeded("shapes-clip", seed)
    with _single_threaded():
        tracks = _motion(num_frames, size, num_objects, num_crossing, (float(speed[0]), float(speed[1])), generator)
        # The dataset's own drawing; its background is drawn again from one seed for every frame (a fixed camera).
        renderer = ShapesDataset("test", 1, image_size=size, noise_std=0.0)
        background_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        sides = tracks.boxes[:, 0, 2] - tracks.boxes[:, 0, 0]
        margin = math.ceil(float(sides.max())) + 1 if sides.numel() else 1
        frames, objects = [], []
        for t in range(num_frames):
            # Masks on a canvas with a margin, so that the part of an object outside the frame counts too.
            layout = _Layout(tracks.boxes[:, t] + margin, tracks.labels, tracks.apex_up, tracks.colors)
            full = _shape_masks(layout, size + 2 * margin, size + 2 * margin)
            visible = _visible_masks(full)[:, margin:margin + size, margin:margin + size]
            image = renderer._draw(layout, visible, torch.Generator().manual_seed(background_seed))
            if noise_std > 0:
                image = image + torch.empty_like(image).normal_(0.0, noise_std, generator=generator)
            frames.append((image.clamp(0.0, 1.0) * _UINT8_MAX).round().to(torch.uint8))
            pixels = visible.sum(dim=(1, 2))
            visibility = pixels / full.sum(dim=(1, 2)).clamp(min=1)
            shown = (pixels > 0) & (visibility >= min_visibility)
            objects.append((shown, visible[shown], visibility[shown]))

    in_view = torch.stack([shown for shown, _, _ in objects], dim=1)  # (K, T)
    first_seen = torch.where(in_view.any(dim=1), in_view.float().argmax(dim=1), num_frames)
    ids = torch.empty(len(first_seen), dtype=torch.int64)
    ids[first_seen.argsort(stable=True)] = torch.arange(len(first_seen)) + FIRST_TRACK_ID
    targets = [{"boxes": _tight_boxes(masks) if masks.shape[0] else torch.zeros(0, 4),
                "labels": tracks.labels[shown].clone(), "track_ids": ids[shown],
                "visibility": visibility.float(), **({"masks": masks} if return_masks else {})}
               for shown, masks, visibility in objects]
    return ShapesClip(torch.stack(frames), fps, targets)
