"""A clip of camera moves over real photographs: zooms in and out over the pictures that ship with
scikit-image and matplotlib (`sample_image`), one shot each, cut to the next: real objects for COCO
detectors, with no download.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ..images import sample_image, sample_image_names
from .clip_arguments import _UINT8_MAX, _check_count, _check_fps, _seeded

__all__ = ["PhotoClip", "photo_clip", "DEFAULT_PHOTOS", "PHOTO_CLIP_SIZE"]

#: Photographs with COCO objects in them: a person, a cat, a cup, a motorcycle.
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle")
#: (H, W) of the photo clip: 4:3, small enough for CPU detectors.
PHOTO_CLIP_SIZE = (240, 320)
#: A zoomed shot shows this fraction range of the largest crop with the clip's aspect ratio.
DEFAULT_ZOOM = (0.5, 0.8)


class PhotoClip(NamedTuple):
    """`photo_clip`'s result; unpacks as ``frames, fps, image_names, crop_boxes, cuts = clip``.

    frames: (T, 3, H, W) uint8; fps: frames per second. image_names: T names, the photograph each frame shows.
    crop_boxes: (T, 4) float32 xyxy, the part of that photograph (in its pixels) each frame shows.
    cuts: the first frame of every shot (0 first).
    """

    frames: torch.Tensor
    fps: float
    image_names: tuple[str, ...]
    crop_boxes: torch.Tensor
    cuts: tuple[int, ...]

    def write(self, path: str | Path, **options) -> Path:
        """Save as MP4 or GIF (by ``path``'s ending; ``options`` go to `video.write_video`)."""
        from ..video import write_video

        return write_video(path, self.frames, self.fps, **options)


# -- camera moves over photographs ---------------------------------------------------------------

def _full_crop(height: int, width: int, aspect: float) -> torch.Tensor:
    """(4,) the largest centred box of width/height ratio ``aspect`` inside an image."""
    crop_w, crop_h = min(width, height * aspect), min(height, width / aspect)
    x1, y1 = (width - crop_w) / 2, (height - crop_h) / 2
    return torch.tensor([x1, y1, x1 + crop_w, y1 + crop_h])


def photo_clip(
    names: Sequence[str] = DEFAULT_PHOTOS,
    *,
    size: tuple[int, int] = PHOTO_CLIP_SIZE,
    seconds_per_image: float = 1.5,
    fps: float = 12.0,
    zoom: tuple[float, float] = DEFAULT_ZOOM,
    seed: int = 0,
) -> PhotoClip:
    """Smooth camera moves over sample photographs, one shot per photograph, cut to the next.

    Each shot zooms from the whole photograph (the largest crop with the clip's aspect ratio) into
    a random part of it, or from there back out (alternately), easing in and out. Crops are
    resampled with antialiasing (`torchvision.ops.roi_align` averages several samples per output
    pixel), at sub-pixel positions, so slow moves do not jitter.

    Args:
        names: photographs, from `sample_image_names()`; one shot each, in this order.
        size: (H, W) of the frames.
        seconds_per_image, fps: the length of each shot and the frame rate.
        zoom: (smallest, largest) size of the zoomed crop, as a fraction of the whole photograph.
        seed: the same seed gives the same clip.

    Returns:
        `PhotoClip`: frames (T, 3, H, W) uint8 with T = len(names) * round(seconds_per_image * fps),
        fps, each frame's photograph name and crop box (T, 4), and the cuts.
    """
    from torchvision.ops import roi_align

    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"names must be a non-empty sequence of sample image names, got {names!r}")
    available = sample_image_names()
    for name in names:  # before any work: a typo in the last name should not wait for the others
        if not isinstance(name, str):
            raise TypeError(f"names must hold str names, got {type(name).__name__}")
        if name not in available:
            raise ValueError(f"unknown sample image {name!r} in names; available: {', '.join(available)}")
    if not (isinstance(size, Sequence) and len(size) == 2):
        raise ValueError(f"size must be an (H, W) pair, got {size!r}")
    height, width = (_check_count(s, "size", 8) for s in size)
    fps = _check_fps(fps)
    if not (isinstance(seconds_per_image, (int, float)) and seconds_per_image > 0):
        raise ValueError(f"seconds_per_image must be a positive number, got {seconds_per_image!r}")
    if not (isinstance(zoom, Sequence) and len(zoom) == 2 and 0 < zoom[0] <= zoom[1] <= 1):
        raise ValueError(f"zoom must be a (smallest, largest) pair in (0, 1], got {zoom!r}")
    per_shot = max(1, round(seconds_per_image * fps))
    generator = _seeded("photo-clip", seed)
    # Ease in and out (smoothstep): the camera starts and stops without a jerk.
    u = torch.linspace(0.0, 1.0, per_shot) if per_shot > 1 else torch.zeros(1)
    ease = (3 * u**2 - 2 * u**3)[:, None]

    frames, crops = [], []
    for shot, name in enumerate(names):
        image = sample_image(name, as_uint8=True).float()  # (3, h, w)
        full = _full_crop(*image.shape[1:], width / height)
        scale, x, y = torch.rand(3, generator=generator)
        scale = zoom[0] + (zoom[1] - zoom[0]) * float(scale)
        extent = (full[2:] - full[:2]) * scale
        # Anywhere in the photograph: a linear path between two crops inside it stays inside it.
        corner = torch.stack([x, y]) * (torch.tensor(image.shape[:0:-1]) - extent)
        zoomed = torch.cat([corner, corner + extent])
        start, end = (full, zoomed) if shot % 2 == 0 else (zoomed, full)
        boxes = start + (end - start) * ease  # (per_shot, 4)
        pixels = roi_align(image[None], [boxes], output_size=(height, width), spatial_scale=1.0,
                           sampling_ratio=-1, aligned=True)  # -1: as many samples as the shrink needs
        frames.append(pixels.round().clamp(0, _UINT8_MAX).to(torch.uint8))
        crops.append(boxes)
    image_names = tuple(name for name in names for _ in range(per_shot))
    cuts = tuple(range(0, per_shot * len(names), per_shot))
    return PhotoClip(torch.cat(frames), fps, image_names, torch.cat(crops).float(), cuts)
