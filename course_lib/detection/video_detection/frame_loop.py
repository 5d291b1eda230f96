"""`frame_by_frame`: the lecture's loop, one frame at a time, kept as the yardstick of `detect_video`."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.video import SWS_FLAGS, video_writer
from ..annotate import draw_detections
from ..pretrained import LoadedDetector
from .arguments import _check_output, _check_threshold, _count, _device, _eval_mode, _model, torch_threads
from .results import STAGES, DetectorRun, VideoDetections, VideoTimings

__all__ = ["frame_by_frame"]

_KEYS = ("boxes", "labels", "scores")


def frame_by_frame(
    video: str | Path,
    detector: nn.Module | LoadedDetector,
    output: str | Path | None = None,
    *,
    categories: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
    max_frames: int | None = None,
    threads: int | None = None,
    writer_options: Mapping[str, Any] | None = None,
) -> VideoDetections:
    """The lecture's loop, kept as the yardstick of `detect_video`: one frame at a time, every step
    done before the next frame is read.

    imageio reads frame ``index`` of the file, ``transforms.ToTensor()`` (built in the loop, as the
    lecture did) makes it a float image, the model sees it alone with autograd on (the lecture used
    neither ``torch.no_grad`` nor ``torch.inference_mode``), the detections at or above
    ``score_threshold`` are drawn with `draw_detections` and written with `video_writer`. Only
    the lecture's errata are fixed: the model's device instead of ``.cuda()``, and only the end of
    the video (IndexError) ends the loop, not every error. Same detector, same frames, same drawing
    and writing as `detect_video`: the outputs can be compared pixel for pixel.

    ``threads``: torch's intra-op threads for the run (restored afterwards); None: as they are.
    Returns a `VideoDetections` with one `DetectorRun`; its timings' stages: decode, convert,
    detect, draw, encode, one after the other.
    """
    import imageio.v2 as imageio
    from torchvision import transforms

    net, name, names = _model(detector, "detector")
    if not isinstance(video, (str, Path)):
        raise TypeError(f"video must be the path of a video file, got {type(video).__name__}")
    path, output = Path(video).expanduser(), _check_output(output)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    score_threshold = _check_threshold(score_threshold)
    max_frames = _count(max_frames, "max_frames", 0, optional=True)
    threads = _count(threads, "threads", 1, optional=True)
    categories = categories if categories is not None else names
    device, seconds, detections = _device(net), dict.fromkeys(STAGES, 0.0), []
    frame_size = fps = writer = None
    wall, cpu = time.perf_counter(), time.process_time()
    try:  # the course's readers ask ffmpeg for exact RGB conversion; the same flags give the same pixels
        reader = imageio.get_reader(path, "ffmpeg", output_params=list(SWS_FLAGS))
    except OSError as error:
        raise ValueError(f"cannot read {path} as a video ({' '.join(str(error).split()[:8])})") from None
    try:
        with torch_threads(threads), _eval_mode([net]), torch.inference_mode(False), torch.enable_grad():
            used_threads, fps = torch.get_num_threads(), float(reader.get_meta_data()["fps"])
            writer = video_writer(output, fps, **dict(writer_options or {})) if output is not None else None
            for index in range(max_frames if max_frames is not None else 2 ** 62):
                tick = time.perf_counter()
                try:
                    frame = reader.get_data(index)  # (H, W, 3) uint8
                except IndexError:  # the end of the video, and only that
                    break
                tick = _add(seconds, "decode", tick)
                transform = transforms.Compose([transforms.ToTensor()])
                image = transform(frame).to(device)
                tick = _add(seconds, "convert", tick)
                prediction = net([image])[0]
                keep = prediction["scores"] >= score_threshold
                found = {key: prediction[key][keep].detach().cpu() for key in _KEYS}
                detections.append(found)
                tick = _add(seconds, "detect", tick)
                frame_size = tuple(frame.shape[:2])
                drawn = draw_detections(torch.from_numpy(frame).permute(2, 0, 1), found, categories)
                tick = _add(seconds, "draw", tick)
                if writer is not None:
                    writer.write(drawn)
                    _add(seconds, "encode", tick)
            tick = time.perf_counter()
            if writer is not None and writer.frames_given:
                writer.close()  # ffmpeg finishes the file
            _add(seconds, "encode", tick)
    finally:
        reader.close()
        if writer is not None and not writer.closed and writer.frames_given:
            with contextlib.suppress(Exception):  # keep the frames written so far: a shorter video
                writer.close()
    timings = VideoTimings(len(detections), time.perf_counter() - wall, time.process_time() - cpu, seconds, 1,
                           used_threads)
    return VideoDetections((DetectorRun(name, categories, detections),), timings, fps, frame_size,
                           output if writer is not None and writer.frames_given else None)


def _add(seconds: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    seconds[stage] += now - since
    return now
