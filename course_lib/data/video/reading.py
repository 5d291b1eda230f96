"""Reading video files: their header (`video_info`), their frames one at a time (`iter_frames`,
`open_video`), in batches (`iter_batches`) or all at once (`read_video`), decoded by ffmpeg.

Frames are torchvision's format by default, uint8 tensors ``(3, H, W)``; ``as_numpy=True`` gives
``(H, W, 3)`` arrays instead (what matplotlib shows).
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .ffmpeg_support import SWS_FLAGS, _ffmpeg_reason, _imageio_ffmpeg, _passthrough_options, _quiet_size_warning

__all__ = ["VideoInfo", "VideoFrames", "video_info", "iter_frames", "open_video", "iter_batches", "read_video"]

_VIDEO_EXAMPLES = "a video file such as .mp4, .gif, .avi, .mov or .webm"


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
