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

`reading` holds the readers, `writing` the writers (and `show_video`), `ffmpeg_support` what both
need to find and run ffmpeg; everything is importable from here.
"""
from __future__ import annotations

from .ffmpeg_support import FPS_MODE_SINCE, SWS_FLAGS
from .reading import VideoFrames, VideoInfo, iter_batches, iter_frames, open_video, read_video, video_info
from .writing import (DEFAULT_CRF, DEFAULT_PRESET, FRAME_CHANNELS, GIF_COLORS, GIF_SUFFIX, GIF_TIME_UNITS_PER_SECOND,
                      MAX_GIF_FPS, MIN_GIF_DELAY, MP4_SUFFIXES, GIFWriter, MP4Writer, show_video, video_writer,
                      write_video)

__all__ = [
    "VideoInfo", "VideoFrames", "video_info", "iter_frames", "open_video", "iter_batches", "read_video",
    "MP4Writer", "GIFWriter", "video_writer", "write_video", "show_video",
    "MP4_SUFFIXES", "GIF_SUFFIX", "DEFAULT_CRF", "MAX_GIF_FPS",
]
