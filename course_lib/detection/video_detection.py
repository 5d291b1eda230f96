"""Detection on a whole video, fast: decode -> detect -> draw -> encode with the stages overlapped.

The simplest loop (`frame_by_frame`, the lecture's) reads a frame, converts it, runs the detector
on it alone, draws, writes, and only then reads the next frame: every stage waits for all the
others. `detect_video` runs the same steps in threads joined by bounded queues (at most
`QUEUE_BATCHES` batches each, and a fixed number of batches between reading and writing: a long
video never fills the memory):

    reader thread       decodes frames (ffmpeg, in its own process) and stacks them into batches
    detection workers   each takes the next batch, moves it to the model's device once, converts it
                        to float and detects (`predict`: under ``torch.inference_mode()``); the
                        caller's thread is the first worker
    writer thread       puts the batches back in frame order, tracks (optional), draws and encodes
                        (ffmpeg, in its own process)

They overlap for real: ffmpeg works in subprocesses and torch releases Python's GIL inside its
operators, so the next batch is decoded and the last one encoded while the model computes.

On a CPU there are two ways to give a model several cores: torch's intra-op threads split each
operator of one forward pass, and several workers run whole forward passes on different batches at
the same time. Small mobile networks split badly (their operators are too small to share out), so
on a CPU `detect_video` starts one worker per torch thread by default and gives each worker an
equal share of torch's threads (one each, on a machine with as many cores as workers). Concurrent
forward passes of one model in eval mode are safe: they only read its weights.

    >>> result = detect_video("street.mp4", load_detector("ssdlite"), "street_boxes.mp4")
    >>> result.detections[0]["boxes"], result.timings.fps
    >>> detect_video(photo_clip(), retinanet, "both.gif", compare_with=fcos)         # side by side
    >>> detect_video(shapes_clip(), shapes_ssd_detector(), "ids.mp4", track=True)   # ids and trails

Errors reach the caller with a clear message (an error inside the model names its frames); when
`detect_video` returns or raises, also after a KeyboardInterrupt, its threads have stopped, its
ffmpeg processes have ended and torch's thread count and the models' train/eval modes are as they
were. Frames written before an error stay in a playable, shorter video.
"""
from __future__ import annotations

import contextlib
import copy
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.video import GIF_SUFFIX, MP4_SUFFIXES, SWS_FLAGS, open_video, video_writer
from .annotate import draw_detections, font_path, font_size_for, side_by_side
from .pretrained import LoadedDetector, predict
from .tracking import IoUTracker, Track
from .trails import draw_tracks

__all__ = ["STAGES", "DEFAULT_BATCH_SIZE", "QUEUE_BATCHES", "MAX_DEFAULT_WORKERS", "VideoTimings", "DetectorRun",
           "VideoDetections", "default_workers", "detect_video", "frame_by_frame"]

#: The pipeline's stages, in the order a frame goes through them.
STAGES = ("decode", "convert", "detect", "track", "draw", "encode")
#: Frames per forward pass. On a CPU the mobile detectors get slower per frame in larger batches
#: (their activations leave the caches; see benchmarks/video_detection.py); a GPU likes more.
DEFAULT_BATCH_SIZE = 4
#: Batches each queue holds: enough to absorb a slow frame, few enough to bound the memory.
QUEUE_BATCHES = 2
#: Most detection workers `detect_video` starts by itself on a CPU: with more cores, each worker
#: gets several of torch's threads instead (more workers would hold more batches in memory).
MAX_DEFAULT_WORKERS = 4
#: How often a waiting thread looks whether another one has failed or been stopped.
POLL_SECONDS = 0.05
#: The longest the reader or the writer may take to stop (ffmpeg gets 1.5 s to quit before it is
#: killed). A detection worker is waited for until its forward pass ends: nothing can cut one short.
JOIN_SECONDS = 10.0
#: The longest error text repeated in a message (the original error is chained as the cause).
ERROR_TEXT_LIMIT = 300
_END = object()  # what a thread puts in its queue after its last batch
_KEYS = ("boxes", "labels", "scores")


class _Stopped(Exception):
    """Raised inside a thread that must stop because another one failed."""


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoTimings:
    """How long `detect_video` took.

    ``seconds``: wall clock, from the start until the output was finished. ``cpu_seconds``: CPU
    time of this process over that span (all its threads; not the ffmpeg processes).
    ``stage_seconds``: time spent in each of `STAGES`, each measured in its own thread; the
    stages overlap, so together they may add up to more than ``seconds`` (with several detection
    ``workers``, "detect" adds up the time of all of them). ``threads``: torch's intra-op threads
    per worker during the run.
    """

    frames: int
    seconds: float
    cpu_seconds: float
    stage_seconds: Mapping[str, float]
    workers: int = 1
    threads: int = 1

    @property
    def fps(self) -> float:
        """Frames per second, end to end."""
        return self.frames / self.seconds if self.seconds > 0 else math.inf

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(self.frames, 1)

    def stage_ms_per_frame(self) -> dict[str, float]:
        """Milliseconds per frame spent in each stage."""
        return {stage: 1000.0 * self.stage_seconds.get(stage, 0.0) / max(self.frames, 1) for stage in STAGES}

    def __str__(self) -> str:
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.stage_ms_per_frame().items())
        return (f"{self.frames} frames in {self.seconds:.2f} s: {self.fps:.1f} fps, {self.ms_per_frame:.1f} ms "
                f"per frame ({stages} ms per frame; {self.workers} detection "
                f"worker{'s' if self.workers > 1 else ''} x {self.threads} torch thread{'s' if self.threads > 1 else ''})")


@dataclass
class DetectorRun:
    """One detector's results, frame by frame.

    ``detections[t]``: frame t's ``boxes`` (D, 4) xyxy pixels, ``labels`` (D,), ``scores`` (D,), on the
    CPU. With tracking, ``tracks[t]`` lists the tracks active in frame t (the tracker's `Track`
    records, whose histories run to the end of the video) and ``all_tracks`` every track, by id.
    """

    name: str
    categories: Sequence[str] | Mapping[int, str] | None
    detections: list[dict[str, torch.Tensor]] = field(default_factory=list)
    tracks: list[list[Track]] | None = None
    all_tracks: list[Track] | None = None


@dataclass
class VideoDetections:
    """What `detect_video` returns: one `DetectorRun` per detector (left one first), the timings,
    the frame rate and (H, W) of the frames read, the output file, and with ``keep_frames`` the
    frames written (T, 3, H', W') uint8 (twice as wide and titled when two detectors are compared)."""

    runs: tuple[DetectorRun, ...]
    timings: VideoTimings
    fps: float | None
    frame_size: tuple[int, int] | None
    output: Path | None = None
    frames: torch.Tensor | None = None

    @property
    def detections(self) -> list[dict[str, torch.Tensor]]:
        """The (first) detector's detections, one dict per frame."""
        return self.runs[0].detections

    @property
    def tracks(self) -> list[list[Track]] | None:
        """The (first) detector's active tracks, one list per frame (None without tracking)."""
        return self.runs[0].tracks


# -- where frames come from -----------------------------------------------------------------------


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


# -- the pipeline ---------------------------------------------------------------------------------


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


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:ERROR_TEXT_LIMIT]}"


def default_workers(device: torch.device | str) -> int:
    """Detection workers for a model on ``device``: one on a GPU (one forward pass already keeps it
    busy, and its kernels queue up one after the other anyway); on a CPU one per torch thread
    (``torch.get_num_threads()``, by default the number of cores), at most `MAX_DEFAULT_WORKERS`."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, torch.get_num_threads()))


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
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


class _Pipeline:
    """The threads, queues and clocks of one `detect_video` call."""

    def __init__(self, source: tuple[str, _Opener], nets: list[nn.Module], runs: list[DetectorRun], trackers: list,
                 score_threshold: float, batch_size: int, workers: int, output: Path | None, writer_options: dict,
                 titles: tuple[str, str] | None, keep_frames: bool, progress: bool) -> None:
        (self.name, self.open), self.nets, self.runs, self.trackers = source, nets, runs, trackers
        self.score_threshold, self.batch_size, self.workers, self.output = score_threshold, batch_size, workers, output
        self.writer_options, self.titles, self.keep_frames = writer_options, titles, keep_frames
        self.progress = progress
        self.drawing = output is not None or keep_frames
        self.devices = [_device(net) for net in nets]
        self.pin = any(device.type == "cuda" for device in self.devices)  # pinned memory: asynchronous copies
        self.decoded: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.detected: queue.Queue = queue.Queue(QUEUE_BATCHES)
        # Batches between reading and writing: both queues full, one in each worker, one being written.
        # Workers may finish out of order; the writer holds early batches back, never more than this.
        self.tickets = threading.Semaphore(2 * QUEUE_BATCHES + workers + 1)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.clock = threading.Lock()  # several workers add to the same stage's seconds
        self.detectors: list[threading.Thread] = []
        self.frames_done, self.frame_size, self.fps = 0, None, None
        self.writer = self.bar = None
        self.kept: list[torch.Tensor] = []

    # ---- plumbing shared by the threads
    def _time(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        with self.clock:
            self.seconds[stage] += now - since
        return now

    def _put(self, where: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                where.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _get(self, where: queue.Queue, producers: Sequence[threading.Thread]) -> Any:
        while True:
            try:
                return where.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.stop.is_set() or not any(producer.is_alive() for producer in producers):
                    try:  # a producer may have finished just now
                        return where.get_nowait()
                    except queue.Empty:
                        raise _Stopped from None

    def _thread(self, body: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                body(*args)
            except _Stopped:
                pass
            except BaseException as error:  # KeyboardInterrupt too: the caller's thread re-raises it
                self.errors.append(error)
                self.stop.set()

        return threading.Thread(target=run, name=f"detect_video-{name}", daemon=True)

    # ---- reader thread: decode and batch
    def _read(self, frames: Iterator[torch.Tensor]) -> None:
        try:
            start, batch = 0, []
            while True:
                tick = time.perf_counter()
                frame = next(frames, None)
                if frame is not None:
                    batch.append(frame)
                if batch and (frame is None or len(batch) == self.batch_size):
                    stacked = torch.stack(batch)
                    stacked = stacked.pin_memory() if self.pin else stacked
                    self._time("decode", tick)
                    while not self.tickets.acquire(timeout=POLL_SECONDS):  # the writer frees one per batch
                        if self.stop.is_set():
                            raise _Stopped
                    self._put(self.decoded, (start, stacked))
                    start, batch = start + len(batch), []
                else:
                    self._time("decode", tick)
                if frame is None:
                    for _ in range(self.workers):  # one end mark for each worker
                        self._put(self.decoded, _END)
                    return
                if self.stop.is_set():
                    return
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # ends ffmpeg when the video was not read to its end

    # ---- detection workers (the caller's thread and workers - 1 more): convert and detect
    def _detect(self, reader: threading.Thread) -> None:
        with torch.inference_mode():  # per thread: each worker enters it
            while (item := self._get(self.decoded, [reader])) is not _END:
                start, batch = item
                results, on_device = [], {}
                for net, run, device in zip(self.nets, self.runs, self.devices):
                    tick = time.perf_counter()
                    if device not in on_device:  # one copy per batch and device; uint8 travels, 4x smaller
                        on_device[device] = batch.to(device, non_blocking=True).float() / 255.0
                    tick = self._time("convert", tick)
                    try:
                        found = predict(net, on_device[device], self.score_threshold, batch_size=len(batch))
                    except RuntimeError as error:  # predict's message counts frames within the batch: say which
                        cause = error.__cause__ if error.__cause__ is not None else error
                        raise RuntimeError(f"{run.name} failed on frames {start}..{start + len(batch) - 1} of "
                                           f"{self.name}: {_short(cause)}") from cause
                    results.append([{key: value.cpu() for key, value in one.items()} for one in found])
                    self._time("detect", tick)
                self.frame_size = tuple(batch.shape[-2:])
                self._put(self.detected, (start, batch, results))
        self._put(self.detected, _END)

    # ---- writer thread: frame order, track, draw, encode
    def _write(self) -> None:
        index, ends, early, next_start = 0, 0, {}, 0
        try:
            while ends < self.workers:
                item = self._get(self.detected, self.detectors)
                if item is _END:
                    ends += 1
                    continue
                early[item[0]] = item[1:]
                while next_start in early:  # the batches that are next in frame order
                    batch, results = early.pop(next_start)
                    for run, found in zip(self.runs, results):
                        run.detections.extend(found)
                    for offset, frame in enumerate(batch):
                        index = next_start + offset
                        self._write_frame(frame, [found[offset] for found in results])
                        self.frames_done += 1
                    next_start += len(batch)
                    self.tickets.release()
                    if self.bar is not None:
                        self.bar.update(len(batch))
            if early:  # cannot happen: batches are numbered by their first frame, without gaps
                raise RuntimeError(f"batches from frame {min(early)} on never found their place")
            tick = time.perf_counter()
            if self.writer is not None:
                self.writer.close()  # waits for ffmpeg to finish the file
            self._time("encode", tick)
        except _Stopped:
            raise
        except Exception as error:  # a KeyboardInterrupt goes through as it is
            raise RuntimeError(f"drawing or writing frame {index} of {self.name} failed: "
                               f"{_short(error)}") from error
        finally:
            if self.writer is not None and not self.writer.closed and self.writer.frames_given:
                with contextlib.suppress(Exception):  # keep the frames written so far: a shorter video
                    self.writer.close()

    def _write_frame(self, frame: torch.Tensor, found: list[dict[str, torch.Tensor]]) -> None:
        images = []
        for run, tracker, one in zip(self.runs, self.trackers, found):
            active = None
            if tracker is not None:
                tick = time.perf_counter()
                active = tracker.update(one["boxes"], one["labels"], one["scores"])
                run.tracks.append(active)
                self._time("track", tick)
            if self.drawing:
                tick = time.perf_counter()
                if tracker is None:
                    images.append(draw_detections(frame, one, run.categories))
                else:  # ids and trails instead of class boxes
                    images.append(draw_tracks(frame, active, tracker.frame_index - 1, class_names=run.categories,
                                              font=font_path(), font_size=font_size_for(*frame.shape[-2:])))
                self._time("draw", tick)
        if not self.drawing:
            return
        tick = time.perf_counter()
        image = side_by_side(images[0], images[1], self.titles) if len(images) == 2 else images[0]
        tick = self._time("draw", tick)
        if self.keep_frames:
            self.kept.append(image)
        if self.writer is not None:
            self.writer.write(image)
            self._time("encode", tick)

    # ---- the whole run, from the caller's thread
    def run(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        frames, self.fps, total = self.open()  # a missing file or a non-video fails here, at once
        reader = self._thread(self._read, "reader", frames)  # it owns the frames and closes them (ending ffmpeg)
        helpers = [self._thread(self._detect, f"detector-{k}", reader) for k in range(1, self.workers)]
        self.detectors = [threading.current_thread(), *helpers]
        writer = None
        try:
            reader.start()
            if self.output is not None:
                if self.fps is None:
                    raise ValueError("fps is needed to write a video from a tensor of frames: pass fps=")
                self.writer = video_writer(self.output, self.fps, **self.writer_options)
            if self.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=self.name, unit="frame")
            writer = self._thread(self._write, "writer")
            writer.start()
            for helper in helpers:
                helper.start()
            self._detect(reader)
            while writer.is_alive():  # a timeout keeps the wait interruptible (Ctrl-C)
                writer.join(POLL_SECONDS)
        except _Stopped:
            pass  # another thread failed: its error is raised below
        finally:
            self.stop.set()  # a no-op after success; after an error every thread stops
            for helper in helpers:  # a forward pass cannot be cut short: wait for it to end
                while helper.is_alive():
                    helper.join(POLL_SECONDS)
            for thread in (reader, writer):
                if thread is not None and thread.is_alive():
                    thread.join(JOIN_SECONDS)
            if self.bar is not None:
                self.bar.close()
        if self.errors:
            raise self.errors[0]
        return time.perf_counter() - wall, time.process_time() - cpu


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


def detect_video(
    video: str | Path | torch.Tensor | Any,
    detector: nn.Module | LoadedDetector,
    output: str | Path | None = None,
    *,
    compare_with: nn.Module | LoadedDetector | None = None,
    titles: tuple[str, str] | None = None,
    categories: Sequence[str] | Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    track: bool | IoUTracker = False,
    fps: float | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    max_size: int | None = None,
    keep_frames: bool = False,
    writer_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> VideoDetections:
    """Detect objects in every frame of a video, draw them and write the annotated video.

    Args:
        video: a file ffmpeg reads (MP4, GIF, AVI, ...), a (T, 3, H, W) uint8 tensor, or a clip with
            ``.frames`` and ``.fps`` (`shapes_clip`, `photo_clip`, `read_video`'s result).
        detector: a torchvision-style detector or a `LoadedDetector`, already on its device; the
            frames go there, one copy per batch. It runs in eval mode (its mode is restored).
        output: ``.mp4`` (or another of `MP4_SUFFIXES`) or ``.gif``; None writes nothing.
        compare_with: a second detector: the output shows both, side by side (``detector`` on the
            left), under ``titles`` (default: the detectors' names).
        categories: names by label for the labels drawn (default: a `LoadedDetector`'s own).
        score_threshold, batch_size: as in `predict`.
        workers: forward passes that run at the same time, each on its own batch; None:
            `default_workers` (a CPU: one per torch thread; a GPU: one). With more than one on a CPU,
            torch's intra-op threads are set to ``torch.get_num_threads() // workers`` (at least 1)
            for the duration of the call and restored afterwards: the setting is the process's, so
            other torch work running meanwhile in other threads gets that many threads too.
        track: True (or an `IoUTracker` to use its settings) follows the detections with an IoU
            tracker, per detector, and draws track ids and trails instead of class boxes.
        fps: frame rate of a tensor of frames (files and clips know theirs; this overrides it).
        stride, max_frames: keep every ``stride``-th frame, at most ``max_frames`` of them.
        max_size: files only: ffmpeg shrinks the frames so that the longer side is at most this.
        keep_frames: also return the written frames in memory (``result.frames``).
        writer_options: for `video_writer` (MP4: ``crf``, ``preset``; GIF: ``step``, ``max_size``).
        progress: a progress bar (tqdm).

    Returns a `VideoDetections`: detections (and tracks) per frame per detector, in frame order
    whatever the workers' order, and `VideoTimings`.
    """
    models = [_model(detector, "detector")] + ([_model(compare_with, "compare_with")] if compare_with is not None
                                                else [])
    batch_size = _count(batch_size, "batch_size", 1)
    workers = _count(workers, "workers", 1, optional=True)
    score_threshold = _check_threshold(score_threshold)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if titles is not None and (compare_with is None or len(titles) != 2):
        raise ValueError(f"titles must be two strings (left, right) and need compare_with, got {titles!r}")
    output = _check_output(output)
    if not (isinstance(track, bool) or isinstance(track, IoUTracker)):
        raise TypeError(f"track must be True, False or an IoUTracker, got {type(track).__name__}")
    source = _source(video, fps, _count(stride, "stride", 1), _count(max_frames, "max_frames", 0, optional=True),
                     _count(max_size, "max_size", 2, optional=True))

    runs = [DetectorRun(run_name, categories if categories is not None else names,
                        tracks=[] if track is not False else None) for _, run_name, names in models]
    trackers: list[IoUTracker | None] = [None] * len(models)
    if isinstance(track, IoUTracker):  # the caller's tracker for one detector, copies of it for two
        trackers = [track] if len(models) == 1 else [copy.deepcopy(track) for _ in models]
    elif track:
        trackers = [IoUTracker() for _ in models]
    for tracker in filter(None, trackers):
        tracker.reset()  # frame 0 is this video's first frame
    titles = titles or ((runs[0].name, runs[1].name) if len(runs) == 2 else None)
    nets = [m[0] for m in models]
    on_cpu = all(_device(net).type == "cpu" for net in nets)
    workers = workers if workers is not None else min(default_workers(_device(net)) for net in nets)
    threads = max(1, torch.get_num_threads() // workers) if on_cpu and workers > 1 else None
    pipeline = _Pipeline(source, nets, runs, trackers, score_threshold, batch_size, workers, output,
                         dict(writer_options or {}), titles, bool(keep_frames), bool(progress))
    with _torch_threads(threads), _eval_mode(nets):
        used_threads = torch.get_num_threads()
        seconds, cpu_seconds = pipeline.run()
    for run, tracker in zip(runs, trackers):
        if tracker is not None:
            run.all_tracks = tracker.all_tracks
    timings = VideoTimings(pipeline.frames_done, seconds, cpu_seconds, dict(pipeline.seconds), workers, used_threads)
    frames = torch.stack(pipeline.kept) if pipeline.kept else None
    return VideoDetections(tuple(runs), timings, pipeline.fps, pipeline.frame_size,
                           output if output is not None and pipeline.frames_done else None, frames)


# -- the lecture's loop, for comparison -------------------------------------------------------------


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
        with _torch_threads(threads), _eval_mode([net]), torch.inference_mode(False), torch.enable_grad():
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
