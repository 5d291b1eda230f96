"""Real photographs that ship inside installed packages, so lessons can show them offline.

scikit-image's ``skimage.data`` and matplotlib's sample data carry a few photographs in their
wheels (others are fetched on demand, which needs the network; those are not offered here).

    >>> sample_image_names()
    ('astronaut', 'camera', 'chelsea', 'coffee', 'coins', 'grace_hopper', ...)
    >>> image = sample_image("chelsea")                  # (3, 300, 451) float32 in [0, 1]
    >>> pixels = sample_image("chelsea", as_uint8=True)  # (3, 300, 451) uint8, torchvision's format
    >>> array = sample_image("chelsea", as_numpy=True)   # (300, 451, 3) float32, for matplotlib
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SampleImage", "SAMPLE_IMAGES", "sample_image", "sample_image_names", "sample_image_info"]


@dataclass(frozen=True)
class SampleImage:
    name: str
    package: str  # "scikit-image" or "matplotlib"
    filename: str  # inside the package's data folder
    description: str  # what is in it, in a few words (the objects a detector could find)


SAMPLE_IMAGES: tuple[SampleImage, ...] = (
    SampleImage("astronaut", "scikit-image", "astronaut.png", "astronaut Eileen Collins: a person, a flag"),
    SampleImage("camera", "scikit-image", "camera.png", "a man with a camera on a tripod (greyscale)"),
    SampleImage("chelsea", "scikit-image", "chelsea.png", "Chelsea the cat"),
    SampleImage("coffee", "scikit-image", "coffee.png", "a cup of coffee on a saucer with a spoon"),
    SampleImage("coins", "scikit-image", "coins.png", "24 coins on a flat background (greyscale)"),
    SampleImage("grace_hopper", "matplotlib", "grace_hopper.jpg", "portrait of Grace Hopper: a person, a tie"),
    SampleImage("hubble_deep_field", "scikit-image", "hubble_deep_field.jpg", "galaxies of the Hubble deep field"),
    SampleImage("immunohistochemistry", "scikit-image", "ihc.png", "stained tissue under a microscope"),
    SampleImage("motorcycle", "scikit-image", "motorcycle_left.png", "a motorcycle in a room (stereo left view)"),
    SampleImage("retina", "scikit-image", "retina.jpg", "a human retina (large: 1411 x 1411)"),
    SampleImage("rocket", "scikit-image", "rocket.jpg", "a rocket on its launch pad"),
)
_BY_NAME = {image.name: image for image in SAMPLE_IMAGES}
_UINT8_MAX = 255


def _data_folder(package: str) -> Path | None:
    try:
        if package == "scikit-image":
            import skimage.data

            return Path(skimage.data.__file__).parent
        if package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        return None
    raise ValueError(f"package must be 'scikit-image' or 'matplotlib', got {package!r}")


def _path(image: SampleImage) -> Path | None:
    folder = _data_folder(image.package)
    if folder is None:
        return None
    path = folder / image.filename
    return path if path.is_file() else None


def sample_image_names() -> tuple[str, ...]:
    """Names of the sample images available offline with the installed packages, sorted."""
    return tuple(sorted(image.name for image in SAMPLE_IMAGES if _path(image) is not None))


def sample_image_info(name: str) -> SampleImage:
    """Where a sample image comes from and what it shows."""
    if name not in _BY_NAME:
        raise ValueError(f"name must be one of {sample_image_names()}, got {name!r}")
    return _BY_NAME[name]


@functools.lru_cache(maxsize=4)
def _read_rgb_uint8(name: str) -> np.ndarray:
    """(H, W, 3) uint8, read-only (callers copy)."""
    import imageio.v3 as iio

    info = sample_image_info(name)
    path = _path(info)
    if path is None:
        raise ValueError(
            f"sample image {name!r} ({info.filename}) is not shipped with the installed {info.package}; "
            f"available offline: {sample_image_names()}"
        )
    array = np.asarray(iio.imread(path))
    if array.dtype == bool:
        array = array.astype(np.uint8) * _UINT8_MAX
    if array.dtype != np.uint8:
        raise ValueError(f"sample image {name!r} has dtype {array.dtype}, expected uint8")
    if array.ndim == 2:  # greyscale: the same value in the three channels
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:  # RGBA: drop the alpha channel
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"sample image {name!r} has shape {array.shape}, expected (H, W) or (H, W, 3|4)")
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def sample_image(
    name: str,
    *,
    as_uint8: bool = False,
    as_numpy: bool = False,
    max_size: int | None = None,
) -> torch.Tensor | np.ndarray:
    """A bundled photograph as an RGB image.

    Args:
        name: one of ``sample_image_names()``.
        as_uint8: values 0..255 as uint8 instead of float32 in [0, 1].
        as_numpy: a numpy array (H, W, 3) instead of a tensor (3, H, W).
        max_size: if given, shrink the image (keeping its aspect ratio, with antialiasing) so that
            its longer side is at most this many pixels. Smaller images are left as they are.

    Returns:
        (3, H, W) tensor, or (H, W, 3) array with ``as_numpy=True``; a fresh copy each call.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _BY_NAME:
        raise ValueError(f"unknown sample image {name!r}; known names: {', '.join(sample_image_names())}")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
        raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")

    pixels = torch.from_numpy(_read_rgb_uint8(name).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    image = pixels.float() / _UINT8_MAX
    height, width = image.shape[1:]
    if max_size is not None and max(height, width) > max_size:
        scale = max_size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        image = image.clamp_(0.0, 1.0)
        pixels = (image * _UINT8_MAX).round_().to(torch.uint8)
    result = pixels if as_uint8 else image.contiguous()
    if as_numpy:
        return result.permute(1, 2, 0).contiguous().numpy()
    return result
