"""Video in and out: read any file ffmpeg reads, write browser-friendly MP4 and looping GIF.

torchvision 0.28+ no longer reads or writes video, so the course uses ffmpeg through
imageio-ffmpeg (its wheel ships an ffmpeg binary: nothing else to install) and Pillow for GIFs.
Frames are torchvision's format by default, uint8 tensors ``(3, H, W)``; ``as_numpy=True`` gives
``(H, W, 3)`` arrays instead (what matplotlib shows).

    >>> info = video_info("clip.mp4")              # fps, num_frames, height, width, duration
    >>> frames, fps = read_video("clip.mp4")       # (T, 3, H, W) uint8, frames per second
    >>> for frame in iter_frames("clip.mp4"):      # one (3, H, W) uint8 tensor at a time
    ...     ...
    >>> with MP4Writer("out.mp4", fps) as writer:  # encode while the detector runs
    ...     for frame in iter_frames("clip.mp4"):
    ...         writer.write(annotate(frame))
    >>> write_video("out.gif", frames, fps, step=2, max_size=320)   # a write-all shortcut
    >>> show_video("out.mp4")                      # plays in a notebook (embedded)

Writers accept one frame or many at a time: tensors ``(3, H, W)`` / ``(T, 3, H, W)``, arrays
``(H, W, 3)`` / ``(T, H, W, 3)``, PIL images or lists of them, uint8 or float in [0, 1].
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import subprocess
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "VideoInfo", "VideoFrames", "video_info", "iter_frames", "open_video", "iter_batches", "read_video",
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
#: Exact RGB <-> YUV rounding (ffmpeg's default darkens by about one level) and interpolated chroma.
SWS_FLAGS = ("-sws_flags", "bicubic+accurate_rnd+full_chroma_int")
#: ``-fps_mode`` (ffmpeg >= 5.1) replaced ``-vsync``, which ffmpeg 9 removed.
FPS_MODE_SINCE = (5, 1)
_VIDEO_EXAMPLES = "a video file such as .mp4, .gif, .avi, .mov or .webm"
_INSTALL_FFMPEG = ("ffmpeg is needed to read and write MP4 videos but was not found: install it with "
                   "`pip install imageio-ffmpeg` (its wheel ships ffmpeg), or set IMAGEIO_FFMPEG_EXE "
                   "to an ffmpeg executable")


class VideoInfo(NamedTuple):
    """What `video_info` tells about a file (sizes in pixels, after any rotation the file asks for)."""

    path: Path
    fps: float  # frames per second (the average for variable frame rates)
    num_frames: int
    height: int
    width: int
    duration: float  # seconds
    codec: str


class VideoFrames(NamedTuple):
    """`read_video`'s result; unpacks as ``frames, fps = read_video(path)``."""

    frames: torch.Tensor | np.ndarray  # (T, 3, H, W) uint8 tensor, or (T, H, W, 3) uint8 array
    fps: float  # of the returned frames: the file's fps / stride, so they play at the original speed


# -- ffmpeg --------------------------------------------------------------------------------------

def _imageio_ffmpeg():
    """The imageio_ffmpeg module, once it has found an ffmpeg executable; else one clear RuntimeError."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        raise RuntimeError(_INSTALL_FFMPEG) from None
    return imageio_ffmpeg


@functools.lru_cache(maxsize=4)
def _passthrough_options(exe: str) -> tuple[str, ...]:
    """ffmpeg options that output every stored frame once (no frames duplicated to a constant rate)."""
    try:
        banner = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        banner = ""
    match = re.search(r"version n?(\d+)\.(\d+)", banner)
    if match and tuple(map(int, match.groups())) < FPS_MODE_SINCE:
        return ("-vsync", "passthrough")
    return ("-fps_mode", "passthrough")  # also for git builds ("version N-1234-g...")


def _ffmpeg_reason(message: str) -> str:
    """ffmpeg's own reason, from its multi-line log: the last line that is not a progress report."""
    if "matches no streams" in message:  # what ffmpeg says when asked for a stream the file lacks
        return "the file has no video stream"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("frame=", "==="))]
    return lines[-1] if lines else "no details"


@contextlib.contextmanager
def _quiet_size_warning() -> Iterator[None]:
    """imageio_ffmpeg warns whenever frames are read at another size than stored: wanted with max_size."""
    logger = logging.getLogger("imageio_ffmpeg")

    def quiet(record: logging.LogRecord) -> bool:
        return "frame size for reading" not in record.getMessage()

    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# -- reading -------------------------------------------------------------------------------------

def _existing_file(path: Any, name: str = "path") -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name} must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; expected {_VIDEO_EXAMPLES}")
    return path


def _optional_count(value: Any, name: str, low: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _scale_filter(max_size: int) -> str:
    """ffmpeg filter shrinking the longer side to ``max_size`` (antialiased); smaller frames stay as they are."""
    return (f"scale='if(gte(iw,ih),min({max_size},iw),-1)':'if(gte(iw,ih),-1,min({max_size},ih))'"
            ":flags=area")


def _open_reader(path: Path, max_size: int | None):
    """Start ffmpeg on ``path``: (frame generator, metadata dict). Errors are one line each."""
    ffmpeg = _imageio_ffmpeg()
    output = ["-map", "0:v:0", *_passthrough_options(ffmpeg.get_ffmpeg_exe()), *SWS_FLAGS]
    if max_size is not None:
        output += ["-vf", _scale_filter(max_size)]
    reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=["-nostdin"], output_params=output)
    try:
        with _quiet_size_warning():
            meta = next(reader)
    except (OSError, RuntimeError, StopIteration, IndexError, AttributeError) as error:
        reader.close()
        raise ValueError(f"cannot read {path} as a video (expected {_VIDEO_EXAMPLES}); ffmpeg says: "
                         f"{_ffmpeg_reason(str(error))}") from None
    return reader, meta


def _count_frames(path: Path) -> int:
    """Frames stored in the first video stream, counted without decoding (packets copied to nowhere)."""
    exe = _imageio_ffmpeg().get_ffmpeg_exe()
    command = [exe, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    log = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False).stderr
    counts = re.findall(r"frame=\s*(\d+)", log)
    if not counts:
        raise ValueError(f"cannot count the frames of {path}; ffmpeg says: {_ffmpeg_reason(log)}")
    return int(counts[-1])


def video_info(path: str | Path) -> VideoInfo:
    """fps, frame count, size and duration of a video file (any format ffmpeg reads).

    The frame count comes from the file's packets (fast: nothing is decoded).
    """
    path = _existing_file(path)
    reader, meta = _open_reader(path, max_size=None)
    reader.close()
    num_frames = _count_frames(path)
    width, height = meta["size"]
    fps = float(meta["fps"])
    duration = float(meta["duration"]) or (num_frames / fps if fps else 0.0)
    return VideoInfo(path, fps, num_frames, int(height), int(width), duration, str(meta["codec"]).rstrip(","))


def _decode(reader, meta: dict, path: Path, stride: int, max_frames: int | None,
            as_numpy: bool) -> Iterator[torch.Tensor | np.ndarray]:
    """Frames from a started reader, every ``stride``-th, at most ``max_frames``."""
    width, height = meta["size"]
    kept = index = 0
    try:
        if max_frames == 0:
            return
        for index, raw in enumerate(reader):
            if index % stride:
                continue
            pixels = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            yield pixels.copy() if as_numpy else torch.from_numpy(pixels.transpose(2, 0, 1).copy())
            kept += 1
            if max_frames is not None and kept >= max_frames:
                return
    except RuntimeError as error:  # imageio_ffmpeg's multi-line report of a broken stream
        raise ValueError(f"cannot read frame {index} of {path}; ffmpeg says: {_ffmpeg_reason(str(error))}") from None
    finally:
        reader.close()  # stops ffmpeg when the caller stops early


def _start_reading(path: Any, stride: Any, max_frames: Any, max_size: Any, as_numpy: bool):
    path = _existing_file(path)
    stride = _optional_count(stride, "stride", 1)
    if stride is None:
        raise TypeError("stride must be an int, got None")
    max_frames = _optional_count(max_frames, "max_frames", 0)
    reader, meta = _open_reader(path, _optional_count(max_size, "max_size", 2))
    return _decode(reader, meta, path, stride, max_frames, bool(as_numpy)), meta, path, stride


def iter_frames(
    path: str | Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    max_size: int | None = None,
    as_numpy: bool = False,
) -> Iterator[torch.Tensor | np.ndarray]:
    """Frames of a video one at a time, decoded as they are asked for (a long video never fills memory).

    Args:
        path: any file ffmpeg reads (MP4, GIF, AVI, MOV, WebM, ...; a learner's own video works the same).
        stride: keep every ``stride``-th frame (the first, then ``1 + stride``, ...).
        max_frames: stop after this many kept frames.
        max_size: shrink frames (antialiased, aspect ratio kept) so that the longer side is at
            most this; smaller videos are left as they are.
        as_numpy: yield (H, W, 3) uint8 arrays instead of (3, H, W) uint8 tensors.

    Every frame stored in the file comes out once, also for variable frame rates. A missing file
    or one that is not a video raises here, before the first frame is asked for.
    """
    frames, *_ = _start_reading(path, stride, max_frames, max_size, as_numpy)
    return frames


def open_video(path: str | Path, *, stride: int = 1, max_frames: int | None = None,
               max_size: int | None = None) -> tuple[Iterator[torch.Tensor], dict]:
    """Frames as `iter_frames` gives them, and the header ffmpeg read (``fps``, ``duration``, ``size``).

    One ffmpeg process gives both, where `video_info` followed by `iter_frames` would start more:
    for a pipeline that must know the frame rate before the first frame arrives.
    """
    frames, meta, _, _ = _start_reading(path, stride, max_frames, max_size, False)
    return frames, meta


def iter_batches(path: str | Path, batch_size: int, **options) -> Iterator[torch.Tensor]:
    """Frames in batches (B, 3, H, W) uint8, for batched inference; the last batch may be smaller.

    ``options`` are `iter_frames`' (``stride``, ``max_frames``, ``max_size``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if options.get("as_numpy"):
        raise ValueError("iter_batches gives tensors; use iter_frames(..., as_numpy=True) for arrays")
    frames = iter_frames(path, **options)

    def batches() -> Iterator[torch.Tensor]:
        batch: list[torch.Tensor] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    return batches()


def read_video(
    path: str | Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    max_size: int | None = None,
    as_numpy: bool = False,
    progress: bool = False,
) -> VideoFrames:
    """All frames of a video in memory, with its frame rate.

    Returns ``(frames, fps)``: frames (T, 3, H, W) uint8 (or (T, H, W, 3) with ``as_numpy``);
    fps is the rate of the returned frames, the file's divided by ``stride``. Arguments as in
    `iter_frames`; ``progress`` shows a progress bar. A video without frames raises ValueError.
    """
    frames, meta, path, stride = _start_reading(path, stride, max_frames, max_size, as_numpy)
    if progress:
        from tqdm.auto import tqdm

        estimate = round(meta["duration"] * meta["fps"] / stride) or None
        frames = tqdm(frames, total=estimate if max_frames is None else max_frames, desc=path.name, unit="frame")
    kept = list(frames)
    if not kept:
        raise ValueError(f"no frames read from {path} (max_frames={max_frames})")
    return VideoFrames(np.stack(kept) if as_numpy else torch.stack(kept), float(meta["fps"]) / stride)


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
