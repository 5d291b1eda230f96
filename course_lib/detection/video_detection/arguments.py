"""The checks of `detect_video`'s and `frame_by_frame`'s arguments, and what both need around a run.

Bad input gives a one-line TypeError or ValueError naming the argument. `_source` turns the
``video`` argument into a name and an opener (the file is only opened when the run starts);
`torch_threads` and `_eval_mode` set torch's thread count and the models' modes for a run and
restore them afterwards, also after an error.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.video import GIF_SUFFIX, MP4_SUFFIXES, open_video
from ..pretrained import LoadedDetector


def _count(value: Any, name: str, low: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


_Opener = Callable[[], tuple[Iterator[torch.Tensor], float | None, int | None]]  # -> frames, fps, frame count


def _source(video: Any, fps: float | None, stride: int, max_frames: int | None,
            max_size: int | None) -> tuple[str, _Opener]:
    """(name, opener) of a file (read by ffmpeg), a (T, 3, H, W) uint8 tensor, or a clip with ``frames`` and ``fps``."""
    if isinstance(video, (str, Path)):
        path = Path(video).expanduser()

        def open_file() -> tuple[Iterator[torch.Tensor], float, int | None]:
            # One ffmpeg process gives the frames and the header (frame rate, duration): `video_info`
            # would start two more, which costs as much as a few frames of a short clip.
            frames, meta = open_video(path, stride=stride, max_frames=max_frames, max_size=max_size)
            rate = fps if fps is not None else float(meta["fps"])
            total = round(float(meta.get("duration") or 0.0) * float(meta["fps"]) / stride) or None
            return frames, rate / stride, total if max_frames is None or total is None else min(total, max_frames)

        return path.name, open_file
    frames = getattr(video, "frames", video)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"video must be a file path, a (T, 3, H, W) uint8 tensor or a clip with .frames and .fps, "
                        f"got {type(video).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] == 0 or frames.shape[3] == 0:
        raise ValueError(f"video frames must be (T, 3, H, W) with H, W >= 1, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"video frames must be uint8 (0..255) like decoded video, got {frames.dtype}")
    if max_size is not None:
        raise ValueError("max_size shrinks frames while ffmpeg decodes a file; resize an in-memory clip yourself")
    chosen = frames[::stride][:max_frames]
    rate = fps if fps is not None else getattr(video, "fps", None)  # of the frames given, before the stride
    return type(video).__name__, lambda: (iter(chosen), None if rate is None else float(rate) / stride, len(chosen))


def _model(detector: Any, name: str) -> tuple[nn.Module, str, Any]:
    if isinstance(detector, LoadedDetector):
        return detector.model, detector.info.name, detector.categories
    if isinstance(detector, nn.Module):
        return detector, type(detector).__name__, None
    raise TypeError(f"{name} must be a torch.nn.Module or a LoadedDetector, got {type(detector).__name__}")


def _device(net: nn.Module) -> torch.device:
    tensor = next(net.parameters(), None)
    tensor = tensor if tensor is not None else next(net.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_output(output: Any) -> Path | None:
    if output is None:
        return None
    if not isinstance(output, (str, Path)):
        raise TypeError(f"output must be a str or pathlib.Path, got {type(output).__name__}")
    output = Path(output).expanduser()
    if output.suffix.lower() not in (*MP4_SUFFIXES, GIF_SUFFIX):
        raise ValueError(f"output must end in {GIF_SUFFIX} or one of {', '.join(MP4_SUFFIXES)}, got {str(output)!r}")
    return output


def _check_threshold(score_threshold: Any) -> float:
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
            or not 0 <= score_threshold <= 1:
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    return float(score_threshold)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for a while (None: unchanged). The setting is the
    process's: every thread that starts a torch operator meanwhile gets ``count`` threads too."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _eval_mode(nets: Sequence[nn.Module]) -> Iterator[None]:
    """The models in eval mode for a while, their modes restored afterwards. Set once here, not per
    batch: a worker that restored a training mode would pull it from under another one's pass."""
    modes = [(module, module.training) for net in nets for module in net.modules()]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training

