"""course_lib.detection.video_detection: the overlapped decode -> detect -> draw -> encode pipeline,
checked against `predict`, the drawing functions and the video readers, for clean shutdowns, and with
several detection workers against one (the course's and torchvision's detectors); the lecture's
frame-by-frame loop against the pipeline."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from torch import nn

from course_lib.data.clips import shapes_clip
from course_lib.data.video import read_video, video_info, write_video
from course_lib.detection.video_detection import arguments as video_arguments
from course_lib.detection.video_detection import pipeline as video_pipeline
from course_lib.detection.annotate import annotate_frames, font_path, font_size_for, side_by_side
from course_lib.detection.pretrained import LoadedDetector, predict, shapes_ssd_detector
from course_lib.detection.tracking import IoUTracker, Track
from course_lib.detection.trails import draw_tracks
from course_lib.detection.video_detection import (DEFAULT_BATCH_SIZE, MAX_DEFAULT_WORKERS, QUEUE_BATCHES, STAGES,
                                                   VideoTimings, default_workers, detect_video, frame_by_frame)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NUM_FRAMES = 12
KEYS = ("boxes", "labels", "scores")


@pytest.fixture(scope="module")
def detector() -> LoadedDetector:
    return shapes_ssd_detector("cpu")


@pytest.fixture(scope="module")
def clip():
    return shapes_clip(num_frames=NUM_FRAMES, seed=3)


@pytest.fixture(scope="module")
def clip_file(clip, tmp_path_factory):
    return clip.write(tmp_path_factory.mktemp("clip") / "shapes.mp4", crf=0)


class Failing(nn.Module):
    """Wraps a detector and raises ``error`` on forward call number ``fail_on_call``."""

    def __init__(self, inner: nn.Module, fail_on_call: int, error: BaseException):
        super().__init__()
        self.inner, self.fail_on_call, self.error, self.calls = inner, fail_on_call, error, 0

    def forward(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error
        return self.inner(images)


class Shifted(nn.Module):
    """Another detector: the inner one's boxes moved ``shift`` pixels right (clipped to the frame)."""

    def __init__(self, inner: nn.Module, shift: float = 3.0):
        super().__init__()
        self.inner, self.shift = inner, shift

    def forward(self, images):
        found = self.inner(images)
        for image, one in zip(images, found):
            one["boxes"] = (one["boxes"] + torch.tensor([self.shift, 0, self.shift, 0])).clamp(max=image.shape[-1])
        return found


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in KEYS:
            assert torch.equal(x[key], y[key]), key


def _ffmpeg_children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "ffmpeg" in child.name():
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def _assert_cleaned_up(threads_before: set[threading.Thread]) -> None:
    """No pipeline thread and no ffmpeg process left; ffmpeg's log readers end within a moment."""
    assert not [t for t in threading.enumerate() if t.name.startswith("detect_video")]
    assert _ffmpeg_children() == []
    deadline = time.monotonic() + 3.0
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - threads_before == set()


# -- the same detections as predict -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_by_one(clip, detector) -> list[dict]:
    return [predict(detector, frame[None], 0.5)[0] for frame in clip.frames]


@pytest.mark.parametrize("batch_size", [1, 5, NUM_FRAMES, 100])
def test_detections_are_predicts(clip, detector, one_by_one, batch_size):
    """Identical to `predict` with the same batches; equal to frame-by-frame `predict` up to float rounding."""
    result = detect_video(clip, detector, batch_size=batch_size, progress=False)
    _same(result.detections, predict(detector, clip.frames, 0.5, batch_size=batch_size))
    for got, expected in zip(result.detections, one_by_one):
        assert torch.equal(got["labels"], expected["labels"])
        torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    assert sum(len(d["labels"]) for d in result.detections) > 0  # the clip really has objects found
    assert result.fps == clip.fps and result.frame_size == (64, 64) and result.output is None


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
def test_score_threshold_is_predicts(clip, detector, threshold):
    result = detect_video(clip.frames, detector, score_threshold=threshold, batch_size=4, progress=False)
    _same(result.detections, predict(detector, clip.frames, threshold, batch_size=4))


def test_mp4_file_in_mp4_file_out(clip_file, detector, tmp_path):
    result = detect_video(clip_file, detector, tmp_path / "out" / "boxes.mp4", batch_size=4, progress=False)
    frames, _ = read_video(clip_file)
    _same(result.detections, predict(detector, frames, 0.5, batch_size=4))
    info = video_info(tmp_path / "out" / "boxes.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (NUM_FRAMES, 64, 64, 12.0)
    assert result.output == tmp_path / "out" / "boxes.mp4" and result.fps == 12.0
    assert result.timings.frames == NUM_FRAMES


def test_written_frames_are_the_drawn_detections(clip, detector, tmp_path):
    result = detect_video(clip, detector, tmp_path / "boxes.gif", keep_frames=True, progress=False)
    expected = annotate_frames(clip.frames, result.detections, detector.categories)
    assert torch.equal(result.frames, expected)
    back, fps = read_video(tmp_path / "boxes.gif")
    assert back.shape == (NUM_FRAMES, 3, 64, 64) and fps == pytest.approx(12.5)  # GIF delays: 8/100 s
    reference, _ = read_video(write_video(tmp_path / "reference.gif", expected, clip.fps))
    assert torch.equal(back, reference)  # the very GIF that writing the drawn frames gives


def test_stride_and_max_frames(clip, clip_file, detector):
    from_file = detect_video(clip_file, detector, stride=2, max_frames=4, progress=False)
    frames, _ = read_video(clip_file, stride=2, max_frames=4)
    _same(from_file.detections, predict(detector, frames, 0.5, batch_size=DEFAULT_BATCH_SIZE))
    assert from_file.fps == 6.0 and from_file.timings.frames == 4
    in_memory = detect_video(clip, detector, stride=3, max_frames=100, progress=False)
    _same(in_memory.detections, predict(detector, clip.frames[::3], 0.5, batch_size=DEFAULT_BATCH_SIZE))
    assert in_memory.fps == 4.0 and len(in_memory.detections) == 4
    nothing = detect_video(clip, detector, max_frames=0, progress=False)
    assert nothing.detections == [] and nothing.timings.frames == 0 and nothing.frame_size is None


def test_max_size_shrinks_a_file_while_decoding(clip_file, detector):
    result = detect_video(clip_file, detector, max_size=32, max_frames=3, keep_frames=True, progress=False)
    assert result.frame_size == (32, 32) and result.frames.shape == (3, 3, 32, 32)


# -- tracking and two detectors ----------------------------------------------------------------------


def test_tracking_follows_the_detections_and_draws_ids(clip, detector, tmp_path):
    tracker = IoUTracker(max_age=2)
    result = detect_video(clip, detector, tmp_path / "ids.mp4", track=tracker, keep_frames=True, progress=False)
    assert len(result.tracks) == NUM_FRAMES and tracker.frame_index == NUM_FRAMES
    assert all(isinstance(t, Track) for frame in result.tracks for t in frame)
    assert result.runs[0].all_tracks == tracker.all_tracks and len(tracker.all_tracks) > 0
    # the same tracker run by hand over the same detections gives the same ids and the same pictures
    again = IoUTracker(max_age=2)
    for index, (frame, found) in enumerate(zip(clip.frames, result.detections)):
        active = again.update(found["boxes"], found["labels"], found["scores"])
        assert [t.id for t in active] == [t.id for t in result.tracks[index]]
        drawn = draw_tracks(frame, active, index, class_names=detector.categories, font=font_path(),
                            font_size=font_size_for(64, 64))
        assert torch.equal(result.frames[index], drawn)
    assert video_info(tmp_path / "ids.mp4").num_frames == NUM_FRAMES
    plain, default = detect_video(clip, detector, track=True, progress=False), IoUTracker()  # default settings
    expected = [[t.id for t in default.update(d["boxes"], d["labels"], d["scores"])] for d in plain.detections]
    assert [[t.id for t in frame] for frame in plain.tracks] == expected


def test_two_detectors_side_by_side(clip, detector, tmp_path):
    right = Shifted(detector.model).eval()
    result = detect_video(clip, detector, tmp_path / "both.mp4", compare_with=right, titles=("SSD", "shifted"),
                          keep_frames=True, track=True, progress=False)
    left_found, right_found = result.runs[0].detections, result.runs[1].detections
    _same(left_found, predict(detector, clip.frames, 0.5, batch_size=DEFAULT_BATCH_SIZE))
    _same(right_found, predict(right, clip.frames, 0.5, batch_size=DEFAULT_BATCH_SIZE))
    assert result.runs[1].name == "Shifted" and result.runs[1].tracks is not None
    first = side_by_side(clip.frames[0], clip.frames[0], ("SSD", "shifted"))
    assert result.frames.shape == (NUM_FRAMES, *first.shape)
    info = video_info(tmp_path / "both.mp4")
    assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, first.shape[1] + first.shape[1] % 2,
                                                          first.shape[2] + first.shape[2] % 2)
    untitled = detect_video(clip, detector, compare_with=detector, keep_frames=True, progress=False)
    halves = annotate_frames(clip.frames, untitled.detections, detector.categories)
    assert torch.equal(untitled.frames, side_by_side(halves, halves, ("shapes_ssd", "shapes_ssd")))


@pytest.mark.parametrize("device", DEVICES)
def test_model_device_is_used_and_results_come_back_to_the_cpu(clip, device):
    loaded = shapes_ssd_detector(device)
    result = detect_video(clip, loaded, batch_size=4, progress=False)
    assert all(value.device.type == "cpu" for found in result.detections for value in found.values())
    expected = predict(loaded, clip.frames.to(device), 0.5, batch_size=4)
    for got, want in zip(result.detections, expected):
        assert torch.equal(got["labels"], want["labels"].cpu())
        torch.testing.assert_close(got["boxes"], want["boxes"].cpu())


def test_timings(clip, detector, tmp_path):
    timings = detect_video(clip, detector, tmp_path / "t.mp4", progress=False).timings
    assert isinstance(timings, VideoTimings) and timings.frames == NUM_FRAMES
    assert timings.fps == pytest.approx(NUM_FRAMES / timings.seconds)
    assert timings.ms_per_frame == pytest.approx(1000 * timings.seconds / NUM_FRAMES)
    assert set(timings.stage_ms_per_frame()) == set(STAGES) and timings.cpu_seconds > 0
    assert all(timings.stage_seconds[s] > 0 for s in ("decode", "detect", "draw", "encode"))
    assert "fps" in str(timings) and "\n" not in str(timings)


def test_progress_bar(clip, detector, capsys):
    detect_video(clip, detector, progress=True)
    assert f"{NUM_FRAMES}/{NUM_FRAMES}" in capsys.readouterr().err


# -- errors and clean shutdowns ----------------------------------------------------------------------


def test_an_error_in_the_model_names_the_frames_and_cleans_up(clip_file, detector, tmp_path):
    before = set(threading.enumerate())
    model = Failing(detector.model, fail_on_call=2, error=ValueError("boom\nsecond line")).eval()
    with pytest.raises(RuntimeError) as caught:
        detect_video(clip_file, model, tmp_path / "broken.mp4", batch_size=4, workers=1, progress=False)
    message = str(caught.value)
    assert "Failing failed on frames 4..7 of shapes.mp4: ValueError: boom second line" in message
    assert "\n" not in message and isinstance(caught.value.__cause__, ValueError)
    _assert_cleaned_up(before)
    assert not model.inner.training  # predict restored the mode it found


def test_keyboard_interrupt_in_the_model_stops_everything(clip_file, detector, tmp_path):
    before = set(threading.enumerate())
    model = Failing(detector.model, fail_on_call=2, error=KeyboardInterrupt()).eval()
    with pytest.raises(KeyboardInterrupt):
        detect_video(clip_file, model, tmp_path / "stopped.mp4", batch_size=2, workers=1, progress=False)
    _assert_cleaned_up(before)
    if (tmp_path / "stopped.mp4").exists():  # what was written before the interrupt still plays
        assert video_info(tmp_path / "stopped.mp4").num_frames <= 2


@pytest.mark.parametrize("error, expected", [(OSError("disk full"), RuntimeError),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_errors_while_drawing_surface_in_the_caller(clip_file, detector, tmp_path, monkeypatch, error, expected):
    before = set(threading.enumerate())
    real = video_pipeline.draw_detections  # where the writer thread looks it up
    calls = []

    def draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(video_pipeline, "draw_detections", draw)
    with pytest.raises(expected) as caught:
        detect_video(clip_file, detector, tmp_path / "half.mp4", batch_size=2, progress=False)
    if expected is RuntimeError:
        assert "drawing or writing frame 5 of shapes.mp4 failed: OSError: disk full" in str(caught.value)
        assert caught.value.__cause__ is error
        assert video_info(tmp_path / "half.mp4").num_frames == 5  # the frames before the error stay playable
    _assert_cleaned_up(before)


def test_an_error_while_decoding_surfaces_and_cleans_up(clip, clip_file, detector, monkeypatch, tmp_path):
    before = set(threading.enumerate())
    real = video_arguments.open_video  # where detect_video's file opener looks it up

    def open_video(path, **options):
        frames, meta = real(path, **options)

        def broken():
            for index, frame in enumerate(frames):
                if index == 7:
                    raise ValueError(f"cannot read frame 7 of {path}; ffmpeg says: invalid data")
                yield frame

        return broken(), meta

    monkeypatch.setattr(video_arguments, "open_video", open_video)
    with pytest.raises(ValueError, match="cannot read frame 7"):
        detect_video(clip_file, detector, tmp_path / "cut.mp4", batch_size=3, progress=False)
    _assert_cleaned_up(before)


def test_missing_and_unreadable_files(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_video(tmp_path / "nowhere.mp4", detector, progress=False)
    (tmp_path / "notes.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        detect_video(tmp_path / "notes.mp4", detector, progress=False)
    assert _ffmpeg_children() == []


@pytest.mark.parametrize("kwargs, error, words", [
    ({"detector": "ssd"}, TypeError, "detector must be"),
    ({"compare_with": 3}, TypeError, "compare_with must be"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int"),
    ({"workers": 0}, ValueError, "workers must be >= 1"),
    ({"workers": 1.5}, TypeError, "workers must be an int or None"),
    ({"score_threshold": 1.5}, ValueError, "score_threshold"),
    ({"output": "out.avi"}, ValueError, "output must end in .gif"),
    ({"output": 7}, TypeError, "output must be a str"),
    ({"titles": ("a", "b")}, ValueError, "need compare_with"),
    ({"track": "yes"}, TypeError, "track must be"),
    ({"stride": 0}, ValueError, "stride must be >= 1"),
    ({"max_frames": -1}, ValueError, "max_frames must be >= 0"),
    ({"max_size": 32}, ValueError, "max_size"),
    ({"fps": -2}, ValueError, "fps must be"),
    ({"video": torch.zeros(2, 3, 8, 8)}, TypeError, "uint8"),
    ({"video": torch.zeros(3, 8, 8, dtype=torch.uint8)}, ValueError, "(T, 3, H, W)"),
    ({"video": [1, 2]}, TypeError, "video must be"),
    ({"video": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "output": "x.mp4"}, ValueError, "pass fps="),
])
def test_bad_arguments_are_one_line_errors(clip, detector, tmp_path, kwargs, error, words):
    arguments = {"video": clip, "detector": detector, "progress": False, **kwargs}
    if isinstance(arguments.get("output"), str):
        arguments["output"] = tmp_path / arguments["output"]
    with pytest.raises(error) as caught:
        detect_video(**arguments)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("detect_video")]


# -- several detection workers ---------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Recording(nn.Module):
    """Wraps a detector; records, per forward call, its thread, torch's thread count, grad and
    inference modes, its batch, and whether the model was in training mode. The first call of each
    of the first ``meet`` threads waits for the others there: the passes provably overlap."""

    def __init__(self, inner: nn.Module, meet: int = 0):
        super().__init__()
        self.inner, self.calls, self.lock = inner, [], threading.Lock()
        self.barrier = threading.Barrier(meet) if meet > 1 else None
        self.met: set[str] = set()

    def forward(self, images):
        name = threading.current_thread().name
        with self.lock:
            first = self.barrier is not None and name not in self.met and len(self.met) < self.barrier.parties
            self.met.add(name)
            self.calls.append({"thread": name, "threads": torch.get_num_threads(), "batch": len(images),
                               "grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
                               "training": self.training})
        if first:
            self.barrier.wait(timeout=20)  # BrokenBarrierError if the passes did not run at the same time
        return self.inner(images)


@pytest.mark.parametrize("workers, batch_size", [(2, 1), (2, 5), (3, 2), (4, NUM_FRAMES)])
def test_workers_give_the_detections_of_one(clip, detector, tmp_path, workers, batch_size):
    """Detections, tracks and pictures in frame order, identical to one worker's (same kernels: 1 thread)."""
    with torch_threads(1):
        one = detect_video(clip, detector, track=True, keep_frames=True, batch_size=batch_size, workers=1,
                           progress=False)
        several = detect_video(clip, detector, tmp_path / "w.mp4", track=True, keep_frames=True,
                               batch_size=batch_size, workers=workers, progress=False)
    _same(several.detections, one.detections)
    _same(several.detections, predict(detector, clip.frames, 0.5, batch_size=batch_size))
    assert [[t.id for t in frame] for frame in several.tracks] == [[t.id for t in frame] for frame in one.tracks]
    assert torch.equal(several.frames, one.frames)
    assert video_info(tmp_path / "w.mp4").num_frames == NUM_FRAMES
    assert (several.timings.workers, one.timings.workers) == (workers, 1)


def test_workers_run_at_the_same_time_on_one_torch_thread_each(clip, detector):
    before = set(threading.enumerate())
    model = Recording(detector.model, meet=2).eval()
    with torch_threads(2):
        result = detect_video(clip, model, batch_size=2, workers=2, progress=False)
        assert torch.get_num_threads() == 2  # restored
    threads = {call["thread"] for call in model.calls}
    assert threads == {threading.current_thread().name, "detect_video-detector-1"}  # the caller is a worker
    assert {call["threads"] for call in model.calls} == {1}  # 2 threads shared by 2 workers
    assert all(call["inference"] and not call["training"] for call in model.calls)
    assert sum(call["batch"] for call in model.calls) == NUM_FRAMES and result.timings.threads == 1
    _same(result.detections, predict(detector, clip.frames, 0.5, batch_size=2))
    _assert_cleaned_up(before)


@pytest.mark.parametrize("budget, workers, per_worker", [(4, 2, 2), (4, 3, 1), (2, 4, 1), (3, 1, 3)])
def test_workers_share_torch_s_threads(clip, detector, budget, workers, per_worker):
    model = Recording(detector.model).eval()
    with torch_threads(budget):
        result = detect_video(clip, model, batch_size=3, workers=workers, progress=False)
        assert torch.get_num_threads() == budget
    assert {call["threads"] for call in model.calls} == {per_worker} and result.timings.threads == per_worker


def test_default_workers():
    with torch_threads(2):
        assert default_workers("cpu") == 2 and default_workers(torch.device("cpu")) == 2
        assert default_workers("cuda") == 1  # a GPU is already parallel
    with torch_threads(1):
        assert default_workers("cpu") == 1
    with torch_threads(MAX_DEFAULT_WORKERS + 3):
        assert default_workers("cpu") == MAX_DEFAULT_WORKERS


def test_workers_default_follows_the_device(clip, detector):
    with torch_threads(2):
        assert detect_video(clip, detector, max_frames=2, progress=False).timings.workers == 2
    with torch_threads(1):
        assert detect_video(clip, detector, max_frames=2, progress=False).timings.workers == 1


class Slow(nn.Module):
    """Wraps a detector; its first forward call sleeps up to ``seconds`` (ends early when ``release`` is
    set) and counts the calls the other workers start meanwhile."""

    def __init__(self, inner: nn.Module, seconds: float):
        super().__init__()
        self.inner, self.seconds, self.lock = inner, seconds, threading.Lock()
        self.calls, self.during_first, self.first_done = 0, 0, threading.Event()

    def forward(self, images):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
            if not first and not self.first_done.is_set():
                self.during_first += 1
        if first:
            time.sleep(self.seconds)
            self.first_done.set()
        return self.inner(images)


def test_a_slow_batch_keeps_its_place_and_the_memory_stays_bounded(detector):
    """The other workers go on while one batch is slow; the writer keeps the frame order, and no more
    than a fixed number of batches wait between reading and writing."""
    frames = shapes_clip(num_frames=24, seed=5)
    model = Slow(detector.model, seconds=1.0).eval()
    workers = 2
    with torch_threads(2):
        result = detect_video(frames, model, batch_size=1, workers=workers, keep_frames=True,
                              categories=detector.categories, progress=False)
    assert 0 < model.during_first <= 2 * QUEUE_BATCHES + workers + 1  # all the other 23 without the bound
    _same(result.detections, predict(detector, frames.frames, 0.5, batch_size=1))
    assert torch.equal(result.frames, annotate_frames(frames.frames, result.detections, detector.categories))


class FailsOnFrame(nn.Module):
    """Wraps a detector; raises ``error`` on a batch holding ``frame`` (whichever worker runs it)."""

    def __init__(self, inner: nn.Module, frame: torch.Tensor, error: BaseException):
        super().__init__()
        self.inner, self.frame, self.error = inner, frame.float() / 255, error

    def forward(self, images):
        if any(torch.equal(image, self.frame) for image in images):
            raise self.error
        return self.inner(images)


@pytest.mark.parametrize("error, expected", [(ValueError("boom"), RuntimeError), (KeyboardInterrupt(), KeyboardInterrupt)])
def test_errors_in_any_worker_surface_and_clean_up(clip, clip_file, detector, tmp_path, error, expected):
    before = set(threading.enumerate())
    frames, _ = read_video(clip_file)
    model = FailsOnFrame(detector.model, frames[7], error)
    model.training = True  # the wrapper alone in training mode: detect_video runs it in eval mode, then restores
    with torch_threads(2):
        with pytest.raises(expected) as caught:
            detect_video(clip_file, model, tmp_path / "broken.mp4", batch_size=3, workers=2, progress=False)
        assert torch.get_num_threads() == 2
    if expected is RuntimeError:
        assert "FailsOnFrame failed on frames 6..8 of shapes.mp4: ValueError: boom" in str(caught.value)
        assert caught.value.__cause__ is error
    assert model.training and not model.inner.training  # each module's mode as it was
    _assert_cleaned_up(before)
    if (tmp_path / "broken.mp4").exists():  # what was written before the error still plays
        assert video_info(tmp_path / "broken.mp4").num_frames <= 6


def test_torch_threads_are_restored_after_an_error(clip, detector):
    model = FailsOnFrame(detector.model, clip.frames[4], ValueError("boom")).eval()
    with torch_threads(2):
        with pytest.raises(RuntimeError, match="frames 4..5"):
            detect_video(clip, model, batch_size=2, workers=2, progress=False)
        assert torch.get_num_threads() == 2


def _torchvision_detectors():
    from torchvision.models import detection

    random = {"weights": None, "weights_backbone": None}  # nothing to download
    small = {"min_size": 128, "max_size": 128, **random}  # a small input keeps the ResNet-50 detectors fast
    return {  # with random weights every score is low: the detectors' own thresholds at 0 keep all boxes
        "ssdlite320_mobilenet_v3_large": lambda: detection.ssdlite320_mobilenet_v3_large(score_thresh=0.0, **random),
        "fasterrcnn_mobilenet_v3_large_320_fpn": lambda: detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            box_score_thresh=0.0, **random),
        "retinanet_resnet50_fpn": lambda: detection.retinanet_resnet50_fpn(score_thresh=0.0, **small),
        "fcos_resnet50_fpn": lambda: detection.fcos_resnet50_fpn(score_thresh=0.0, **small),
    }


CONCURRENT_MODELS = ["shapes_ssd", "shapes_faster_rcnn", *_torchvision_detectors()]


@pytest.mark.parametrize("name", CONCURRENT_MODELS)
def test_concurrent_forward_passes_of_one_model_are_identical_to_serial_ones(name):
    """Three threads run one eval-mode model at the same time, each on its own batches: every result is
    bit for bit the one a single thread gets (the passes only read the model; nothing is cached in it)."""
    if name == "shapes_ssd":
        net = shapes_ssd_detector("cpu").model
    elif name == "shapes_faster_rcnn":
        from course_lib.detection.faster_rcnn.train_shapes import shapes_faster_rcnn_detector

        net = shapes_faster_rcnn_detector("cpu").model  # FixedSizeDetector around the two-stage detector
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = _torchvision_detectors()[name]().eval()
    generator = torch.Generator().manual_seed(1)
    batches = [list(torch.randint(0, 256, (2, 3, 96, 128), generator=generator).float() / 255) for _ in range(6)]
    with torch_threads(1), torch.inference_mode():
        serial = [net(batch) for batch in batches]
        results: dict[int, list] = {}
        barrier = threading.Barrier(3)

        def work(first: int) -> None:
            with torch.inference_mode():
                barrier.wait(timeout=20)
                for index in range(first, len(batches), 3):
                    results[index] = net(batches[index])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(results) == list(range(len(batches)))
    assert sum(len(found["scores"]) for batch in serial for found in batch) > 0  # something to compare
    for expected, got in zip(serial, (results[k] for k in range(len(batches)))):
        _same(got, expected)


# -- the lecture's loop ------------------------------------------------------------------------------


def test_frame_by_frame_is_the_lecture_s_loop(clip_file, detector, tmp_path):
    """One frame per forward pass, autograd on, the detections of `predict` and the very video of `detect_video`."""
    model = Recording(detector.model).eval()
    loop = frame_by_frame(clip_file, LoadedDetector(model, detector.info), tmp_path / "loop.mp4")
    assert [call["batch"] for call in model.calls] == [1] * NUM_FRAMES
    assert all(call["grad"] and not call["inference"] and not call["training"] for call in model.calls)
    frames, fps = read_video(clip_file)
    for got, expected in zip(loop.detections, predict(detector, frames, 0.5, batch_size=1)):
        assert torch.equal(got["labels"], expected["labels"])
        torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    assert loop.runs[0].name == "shapes_ssd" and loop.runs[0].categories == detector.categories
    assert (loop.fps, loop.frame_size, loop.output) == (fps, (64, 64), tmp_path / "loop.mp4")
    pipeline = detect_video(clip_file, detector, tmp_path / "pipeline.mp4", progress=False)
    assert torch.equal(read_video(tmp_path / "loop.mp4")[0], read_video(tmp_path / "pipeline.mp4")[0])
    assert [d["labels"].tolist() for d in pipeline.detections] == [d["labels"].tolist() for d in loop.detections]
    timings = loop.timings
    assert timings.frames == NUM_FRAMES and timings.workers == 1 and timings.cpu_seconds > 0
    assert all(timings.stage_seconds[s] > 0 for s in ("decode", "convert", "detect", "draw", "encode"))
    assert timings.stage_seconds["track"] == 0
    assert sum(timings.stage_seconds.values()) <= timings.seconds  # one stage after the other
    assert _ffmpeg_children() == []


def test_frame_by_frame_threads_limits_and_gif(clip_file, detector, tmp_path):
    model = Recording(detector.model).eval()
    with torch_threads(2):
        loop = frame_by_frame(clip_file, model, tmp_path / "loop.gif", max_frames=3, threads=1, score_threshold=0.2,
                              categories=detector.categories)
        assert torch.get_num_threads() == 2
    assert {call["threads"] for call in model.calls} == {1} and loop.timings.threads == 1
    assert len(loop.detections) == 3 and video_info(tmp_path / "loop.gif").num_frames == 3
    assert all((found["scores"] >= 0.2).all() for found in loop.detections)
    assert loop.runs[0].name == "Recording"
    nothing = frame_by_frame(clip_file, detector, max_frames=0)
    assert nothing.detections == [] and nothing.output is None and nothing.timings.frames == 0


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_frame_by_frame_errors_end_ffmpeg_and_restore_the_model(clip_file, detector, tmp_path, error):
    model = Failing(detector.model, fail_on_call=3, error=error)
    model.training = True  # the wrapper alone: the loop runs it in eval mode, then restores each module's mode
    with torch_threads(2):
        with pytest.raises(type(error)):
            frame_by_frame(clip_file, model, tmp_path / "cut.mp4", threads=1)
        assert torch.get_num_threads() == 2
    assert model.training and not model.inner.training
    assert _ffmpeg_children() == []
    assert video_info(tmp_path / "cut.mp4").num_frames == 2  # the frames before the error stay playable


@pytest.mark.parametrize("kwargs, error, words", [
    ({"video": "nowhere.mp4"}, FileNotFoundError, "no video file at"),
    ({"video": "notes.mp4"}, ValueError, "cannot read"),
    ({"video": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, TypeError, "video must be the path"),
    ({"detector": "ssd"}, TypeError, "detector must be"),
    ({"output": "out.avi"}, ValueError, "output must end in"),
    ({"score_threshold": -0.1}, ValueError, "score_threshold"),
    ({"max_frames": -1}, ValueError, "max_frames must be >= 0"),
    ({"threads": 0}, ValueError, "threads must be >= 1"),
])
def test_frame_by_frame_bad_arguments(clip_file, detector, tmp_path, kwargs, error, words):
    (tmp_path / "notes.mp4").write_bytes(b"not a video")
    arguments = {"video": clip_file, "detector": detector, **kwargs}
    for key in ("video", "output"):
        if isinstance(arguments.get(key), str):
            arguments[key] = tmp_path / arguments[key]
    with pytest.raises(error) as caught:
        frame_by_frame(**arguments)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert _ffmpeg_children() == []



# -- the benchmark -----------------------------------------------------------------------------------


def test_benchmark_runs_quickly_and_prints_its_table(repo_root):
    done = subprocess.run([sys.executable, "benchmarks/video_detection.py", "--quick"], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "| model | params (M) | box mAP |" in out and "speed-up" in out
    for model in ("shapes_ssd", "ssdlite320_mobilenet_v3_large"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {model} | "))
        assert "| yes: video" in row  # the two paths found the same detections and wrote the same video
        assert f"target {model} on cpu" in out
    assert "load average" in out
