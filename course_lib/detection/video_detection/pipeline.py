"""`detect_video`: decode -> detect -> draw -> encode in threads joined by bounded queues.

A reader thread decodes and batches, detection workers (the caller's thread first) convert and
detect, a writer thread puts the batches back in frame order, tracks, draws and encodes (the
package's docstring tells why they overlap and how many workers a CPU gets). `_Pipeline` holds the
threads, queues and clocks of one call; `detect_video` checks the arguments and runs it.
"""
from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.video import video_writer
from ..annotate import draw_detections, font_path, font_size_for, side_by_side
from ..pretrained import LoadedDetector, predict
from ..tracking import IoUTracker
from ..trails import draw_tracks
from .arguments import (_check_output, _check_threshold, _count, _device, _eval_mode, _model, _Opener, _source,
                        torch_threads)
from .results import STAGES, DetectorRun, VideoDetections, VideoTimings

__all__ = ["DEFAULT_BATCH_SIZE", "QUEUE_BATCHES", "MAX_DEFAULT_WORKERS", "default_workers", "detect_video"]

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


class _Stopped(Exception):
    """Raised inside a thread that must stop because another one failed."""


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:ERROR_TEXT_LIMIT]}"


def default_workers(device: torch.device | str) -> int:
    """Detection workers for a model on ``device``: one on a GPU (one forward pass already keeps it
    busy, and its kernels queue up one after the other anyway); on a CPU one per torch thread
    (``torch.get_num_threads()``, by default the number of cores), at most `MAX_DEFAULT_WORKERS`."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, torch.get_num_threads()))


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
    with torch_threads(threads), _eval_mode(nets):
        used_threads = torch.get_num_threads()
        seconds, cpu_seconds = pipeline.run()
    for run, tracker in zip(runs, trackers):
        if tracker is not None:
            run.all_tracks = tracker.all_tracks
    timings = VideoTimings(pipeline.frames_done, seconds, cpu_seconds, dict(pipeline.seconds), workers, used_threads)
    frames = torch.stack(pipeline.kept) if pipeline.kept else None
    return VideoDetections(tuple(runs), timings, pipeline.fps, pipeline.frame_size,
                           output if output is not None and pipeline.frames_done else None, frames)
