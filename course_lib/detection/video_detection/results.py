"""What `detect_video` and `frame_by_frame` return: the detections and tracks of each detector,
frame by frame, and the timings of the run, stage by stage (`STAGES`)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..tracking import Track

__all__ = ["STAGES", "VideoTimings", "DetectorRun", "VideoDetections"]

#: The pipeline's stages, in the order a frame goes through them.
STAGES = ("decode", "convert", "detect", "track", "draw", "encode")


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
