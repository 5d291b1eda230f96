"""Writing video files: H.264 MP4 (`MP4Writer`, through ffmpeg) and looping GIF (`GIFWriter`, through
Pillow), frame by frame or all at once (`write_video`), and playing the result in a notebook
(`show_video`).

Writers accept one frame or many at a time: tensors ``(3, H, W)`` / ``(T, 3, H, W)``, arrays
``(H, W, 3)`` / ``(T, H, W, 3)``, PIL images or lists of them, uint8 or float in [0, 1].
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ffmpeg_support import SWS_FLAGS, _imageio_ffmpeg
from .reading import _existing_file, _optional_count

__all__ = [
    "MP4Writer", "GIFWriter", "video_writer", "write_video", "show_video",
    "MP4_SUFFIXES", "GIF_SUFFIX", "DEFAULT_CRF", "MAX_GIF_FPS",
]

#: File endings written as H.264 video (what browsers and notebooks play); ``.gif`` is a GIF.
MP4_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
GIF_SUFFIX = ".gif"
#: x264 constant rate factor: 0 is lossless, 23 is x264's default, 18-20 looks like the source.
DEFAULT_CRF = 20
DEFAULT_PRESET = "medium"
#: GIF frame delays are whole hundredths of a second, and browsers slow delays under 2/100 s down
#: to 1/10 s: 50 fps is the fastest GIF that plays as written.
GIF_TIME_UNITS_PER_SECOND = 100
MIN_GIF_DELAY = 2
MAX_GIF_FPS = GIF_TIME_UNITS_PER_SECOND / MIN_GIF_DELAY
GIF_COLORS = 256
#: Channels a frame may have: grey, RGB, RGBA (the alpha channel is dropped).
FRAME_CHANNELS = (1, 3, 4)


# -- frames given to the writers ----------------------------------------------------------------

def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"{name} must be uint8 (0..255) or float (0..1), got dtype {array.dtype}")


def _frame_array(frame: Any, name: str) -> np.ndarray:
    """One frame (tensor (C, H, W), array (H, W, C) or (H, W), PIL image) -> (H, W, 3) uint8 array."""
    if isinstance(frame, torch.Tensor):
        if frame.ndim != 3 or frame.shape[0] not in FRAME_CHANNELS:
            raise ValueError(f"{name} must be a (3, H, W) tensor, or (T, 3, H, W) for several frames, "
                             f"got shape {tuple(frame.shape)}")
        frame = frame.detach().cpu()
        frame = (frame.float() if frame.is_floating_point() else frame).permute(1, 2, 0).numpy()
    elif isinstance(frame, np.ndarray):
        frame = frame[:, :, None] if frame.ndim == 2 else frame
        if frame.ndim != 3 or frame.shape[2] not in FRAME_CHANNELS:
            raise ValueError(f"{name} must be an (H, W, 3) array, or (T, H, W, 3) for several frames, "
                             f"got shape {frame.shape}")
    elif type(frame).__module__.startswith("PIL."):
        frame = np.asarray(frame.convert("RGB"))
    else:
        raise TypeError(f"{name} must be a tensor, a numpy array or a PIL image, got {type(frame).__name__}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got a frame of {frame.shape[0]}x{frame.shape[1]} pixels")
    frame = _to_uint8(frame, name)
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return np.ascontiguousarray(frame[:, :, :3])  # RGBA: the alpha channel is dropped


def _frame_arrays(frames: Any, name: str = "frames") -> Iterator[np.ndarray]:
    """One frame or several (a 4-D tensor/array or an iterable of frames) -> (H, W, 3) uint8 arrays."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 4:
        for index in range(frames.shape[0]):
            yield _frame_array(frames[index], f"{name}[{index}]")
    elif isinstance(frames, (torch.Tensor, np.ndarray)) or type(frames).__module__.startswith("PIL."):
        yield _frame_array(frames, name)
    elif isinstance(frames, Iterable) and not isinstance(frames, (str, bytes)):
        for index, frame in enumerate(frames):
            yield _frame_array(frame, f"{name}[{index}]")
    else:
        raise TypeError(f"{name} must be a frame or frames (tensor, numpy array, PIL image, or a list of them), "
                        f"got {type(frames).__name__}")


# -- writing -------------------------------------------------------------------------------------

def _check_fps(fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise TypeError(f"fps must be a number, got {type(fps).__name__}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return float(fps)


def _output_path(path: Any) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    return Path(path).expanduser()


class _Writer:
    """Shared part of the writers: frame checks, sizes, the context manager."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = _output_path(path)
        self.input_fps = _check_fps(fps)
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the frames given to write()
        self.frames_given = 0
        self.closed = False

    def write(self, frames: Any) -> None:
        """Add one frame or several (see the module docstring for the accepted forms)."""
        if self.closed:
            raise ValueError(f"the writer of {self.path} is closed")
        for array in _frame_arrays(frames):
            if self.frame_size is None:
                self.frame_size = array.shape[:2]
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._start(*self.frame_size)
            elif array.shape[:2] != self.frame_size:
                raise ValueError(f"frame {self.frames_given} is {array.shape[0]}x{array.shape[1]} (H x W) but the "
                                 f"video is {self.frame_size[0]}x{self.frame_size[1]}: all frames must have one size")
            self._add(array)
            self.frames_given += 1

    def close(self) -> None:
        """Finish the file (idempotent). Closing a writer that got no frame raises ValueError."""
        if self.closed:
            return
        self.closed = True
        if self.frames_given == 0:
            raise ValueError(f"no frames were written to {self.path}: a video needs at least one frame")
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.frames_given:  # keep what was written before the error: a playable, shorter video
            with contextlib.suppress(Exception):
                self.close()

    def _start(self, height: int, width: int) -> None:
        raise NotImplementedError

    def _add(self, array: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class MP4Writer(_Writer):
    """Writes frames into an H.264 MP4 (libx264, yuv420p, fast start): plays in browsers and notebooks.

    ``MP4Writer(path, fps, crf=20, preset="medium")``, then ``write(frames)`` as often as needed
    and ``close()`` (or use it as a context manager). yuv420p stores colour at half resolution, so
    it needs an even height and width: a frame with an odd side is padded by repeating its last
    row or column (never rescaled); ``video_size`` is the (H, W) stored in the file.
    ``crf``: quality, 0 (lossless) to 51 (worst), 18-23 is typical; ``preset``: x264's speed
    ("ultrafast" ... "veryslow"; slower gives smaller files at the same quality).
    """

    def __init__(self, path: str | Path, fps: float, *, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET):
        self._ffmpeg = _imageio_ffmpeg()  # fail before any frame is computed
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
        if not isinstance(preset, str):
            raise TypeError(f"preset must be a str, got {type(preset).__name__}")
        super().__init__(path, fps)
        self.fps = self.input_fps
        self.crf, self.preset = crf, preset
        self.video_size: tuple[int, int] | None = None
        self._encoder = None

    def _start(self, height: int, width: int) -> None:
        self.video_size = (height + height % 2, width + width % 2)
        self._encoder = self._ffmpeg.write_frames(
            str(self.path), (self.video_size[1], self.video_size[0]), fps=Fraction(self.fps).limit_denominator(1001),
            codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=None,
            macro_block_size=1,  # no resizing: the size is made even above, by padding
            ffmpeg_log_level="error", input_params=["-nostdin"],
            output_params=["-crf", str(self.crf), "-preset", self.preset, "-movflags", "+faststart", *SWS_FLAGS])
        self._encoder.send(None)

    def _add(self, array: np.ndarray) -> None:
        pad = (self.video_size[0] - array.shape[0], self.video_size[1] - array.shape[1])
        if any(pad):
            array = np.pad(array, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
        try:
            self._encoder.send(np.ascontiguousarray(array))
        except OSError as error:
            self.closed = True
            raise RuntimeError(f"ffmpeg stopped while writing {self.path} ({str(error).splitlines()[0]}); "
                               "its messages are on the standard error stream") from None

    def _finish(self) -> None:
        self._encoder.close()  # waits for ffmpeg to finish the file
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise RuntimeError(f"ffmpeg did not write {self.path}; its messages are on the standard error stream")


class GIFWriter(_Writer):
    """Writes frames into a looping animated GIF (Pillow; no ffmpeg needed).

    GIFs store 256 colours per frame and no inter-frame compression, so they get large: ``step``
    keeps every ``step``-th frame (playback stays real-time: each kept frame lasts ``step``
    frames' time) and ``max_size`` shrinks frames (antialiased) so the longer side is at most this.
    Frame delays are whole hundredths of a second, so the written rate ``fps`` is the nearest
    100 / n (12 fps -> 12.5); at most 50 fps (browsers slow faster GIFs down). ``loop=0`` loops
    forever. Pillow merges identical consecutive frames into one longer frame.
    """

    def __init__(self, path: str | Path, fps: float, *, step: int = 1, max_size: int | None = None, loop: int = 0):
        super().__init__(path, fps)
        self.step = _optional_count(step, "step", 1)
        self.max_size = _optional_count(max_size, "max_size", 2)
        self.loop = _optional_count(loop, "loop", 0)
        if self.step is None or self.loop is None:
            raise TypeError("step and loop must be ints")
        wanted = self.input_fps / self.step
        if wanted > MAX_GIF_FPS:
            raise ValueError(f"fps / step must be at most {MAX_GIF_FPS:g} for a GIF, got {wanted:g}; "
                             f"use step={math.ceil(self.input_fps / MAX_GIF_FPS)} or more")
        self.delay = max(MIN_GIF_DELAY, round(GIF_TIME_UNITS_PER_SECOND / wanted))  # hundredths of a second
        self.fps = GIF_TIME_UNITS_PER_SECOND / self.delay
        self.video_size: tuple[int, int] | None = None
        self._images: list = []

    def _start(self, height: int, width: int) -> None:
        scale = 1.0
        if self.max_size is not None and max(height, width) > self.max_size:
            scale = self.max_size / max(height, width)
        self.video_size = (max(1, round(height * scale)), max(1, round(width * scale)))

    def _add(self, array: np.ndarray) -> None:
        from PIL import Image

        if self.frames_given % self.step:
            return
        image = Image.fromarray(array)  # (H, W, 3) uint8: RGB
        if self.video_size != array.shape[:2]:
            image = image.resize(self.video_size[::-1], Image.Resampling.LANCZOS)
        # Quantise now: a palette image takes a third of the memory of an RGB one until close().
        # Fast octree: about 100x faster than median cut on photographs, a dB of PSNR less, smaller files.
        self._images.append(image.quantize(GIF_COLORS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))

    def _finish(self) -> None:
        first, *rest = self._images
        first.save(self.path, format="GIF", save_all=True, append_images=rest, loop=self.loop,
                   duration=self.delay * (1000 // GIF_TIME_UNITS_PER_SECOND), disposal=1)
        self._images = []


def video_writer(path: str | Path, fps: float, **options) -> MP4Writer | GIFWriter:
    """The writer for ``path``'s ending: `GIFWriter` for ``.gif``, `MP4Writer` for ``MP4_SUFFIXES``."""
    suffix = Path(path).suffix.lower() if isinstance(path, (str, Path)) else ""
    if suffix == GIF_SUFFIX:
        return GIFWriter(path, fps, **options)
    if suffix in MP4_SUFFIXES:
        return MP4Writer(path, fps, **options)
    raise ValueError(f"path must end in {GIF_SUFFIX} or one of {', '.join(MP4_SUFFIXES)}, got {str(path)!r}")


def write_video(path: str | Path, frames: Any, fps: float, *, progress: bool = False, **options) -> Path:
    """Write all ``frames`` to ``path`` (MP4 or GIF by its ending) and return the path.

    frames: (T, 3, H, W) tensor, (T, H, W, 3) array or an iterable of frames; ``options`` go to
    the writer (`MP4Writer`: crf, preset; `GIFWriter`: step, max_size, loop).
    """
    with video_writer(path, fps, **options) as writer:
        arrays = _frame_arrays(frames)
        if progress:
            from tqdm.auto import tqdm

            total = frames.shape[0] if getattr(frames, "ndim", 0) == 4 else (
                len(frames) if isinstance(frames, (list, tuple)) else None)
            arrays = tqdm(arrays, total=total, desc=writer.path.name, unit="frame")
        for array in arrays:
            writer.write(array)
    return writer.path


def show_video(path: str | Path, *, width: int | None = None):
    """A notebook display object playing ``path``: the video embedded in the notebook, looping.

    MP4 (and other videos) give ``IPython.display.Video``, GIFs ``IPython.display.Image``. Embedding
    copies the file into the notebook: fine for short clips, heavy for long ones.
    """
    path = _existing_file(path)
    from IPython.display import Image, Video

    if path.suffix.lower() == GIF_SUFFIX:
        return Image(filename=str(path), width=width)
    return Video(str(path), embed=True, width=width, html_attributes="controls autoplay loop muted playsinline")
