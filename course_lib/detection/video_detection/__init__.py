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

One module per part: `results` (`STAGES`, `VideoTimings`, `DetectorRun`, `VideoDetections`),
`arguments` (the checks of the arguments and what both paths need around a run), `pipeline`
(`detect_video`, its threads and queues, `default_workers`) and `frame_loop` (`frame_by_frame`);
everything is importable from here.
"""
from __future__ import annotations

from .results import STAGES, DetectorRun, VideoDetections, VideoTimings
from .pipeline import DEFAULT_BATCH_SIZE, MAX_DEFAULT_WORKERS, QUEUE_BATCHES, default_workers, detect_video
from .frame_loop import frame_by_frame

__all__ = ["STAGES", "DEFAULT_BATCH_SIZE", "QUEUE_BATCHES", "MAX_DEFAULT_WORKERS", "VideoTimings", "DetectorRun",
           "VideoDetections", "default_workers", "detect_video", "frame_by_frame"]
