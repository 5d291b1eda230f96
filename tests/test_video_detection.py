"""course_lib.detection.video_detection: the overlapped decode -> detect -> draw -> encode pipeline,
checked against `predict`, the drawing functions and the video readers, and for clean shutdowns."""
from __future__ import annotations

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
from course_lib.detection import video_detection
from course_lib.detection.annotate import annotate_frames, font_path, font_size_for, side_by_side
from course_lib.detection.pretrained import LoadedDetector, predict, shapes_ssd_detector
from course_lib.detection.tracking import IoUTracker, Track
from course_lib.detection.trails import draw_tracks
from course_lib.detection.video_detection import DEFAULT_BATCH_SIZE, STAGES, VideoTimings, detect_video

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
        detect_video(clip_file, model, tmp_path / "broken.mp4", batch_size=4, progress=False)
    message = str(caught.value)
    assert "Failing failed on frames 4..7 of shapes.mp4: ValueError: boom second line" in message
    assert "\n" not in message and isinstance(caught.value.__cause__, ValueError)
    _assert_cleaned_up(before)
    assert not model.inner.training  # predict restored the mode it found


def test_keyboard_interrupt_in_the_model_stops_everything(clip_file, detector, tmp_path):
    before = set(threading.enumerate())
    model = Failing(detector.model, fail_on_call=2, error=KeyboardInterrupt()).eval()
    with pytest.raises(KeyboardInterrupt):
        detect_video(clip_file, model, tmp_path / "stopped.mp4", batch_size=2, progress=False)
    _assert_cleaned_up(before)
    if (tmp_path / "stopped.mp4").exists():  # what was written before the interrupt still plays
        assert video_info(tmp_path / "stopped.mp4").num_frames <= 2


@pytest.mark.parametrize("error, expected", [(OSError("disk full"), RuntimeError),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_errors_while_drawing_surface_in_the_caller(clip_file, detector, tmp_path, monkeypatch, error, expected):
    before = set(threading.enumerate())
    real = video_detection.draw_detections
    calls = []

    def draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(video_detection, "draw_detections", draw)
    with pytest.raises(expected) as caught:
        detect_video(clip_file, detector, tmp_path / "half.mp4", batch_size=2, progress=False)
    if expected is RuntimeError:
        assert "drawing or writing frame 5 of shapes.mp4 failed: OSError: disk full" in str(caught.value)
        assert caught.value.__cause__ is error
        assert video_info(tmp_path / "half.mp4").num_frames == 5  # the frames before the error stay playable
    _assert_cleaned_up(before)


def test_an_error_while_decoding_surfaces_and_cleans_up(clip, clip_file, detector, monkeypatch, tmp_path):
    before = set(threading.enumerate())
    real = video_detection.open_video

    def open_video(path, **options):
        frames, meta = real(path, **options)

        def broken():
            for index, frame in enumerate(frames):
                if index == 7:
                    raise ValueError(f"cannot read frame 7 of {path}; ffmpeg says: invalid data")
                yield frame

        return broken(), meta

    monkeypatch.setattr(video_detection, "open_video", open_video)
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
