"""Finding ffmpeg and speaking to it: the binary that imageio-ffmpeg ships, options that depend on its
version, and its multi-line logs turned into one-line reasons. Reading and writing MP4 both need it
(GIFs are written with Pillow alone).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import re
import subprocess
from collections.abc import Iterator

__all__ = ["SWS_FLAGS", "FPS_MODE_SINCE"]

#: Exact RGB <-> YUV rounding (ffmpeg's default darkens by about one level) and interpolated chroma.
SWS_FLAGS = ("-sws_flags", "bicubic+accurate_rnd+full_chroma_int")
#: ``-fps_mode`` (ffmpeg >= 5.1) replaced ``-vsync``, which ffmpeg 9 removed.
FPS_MODE_SINCE = (5, 1)
_INSTALL_FFMPEG = ("ffmpeg is needed to read and write MP4 videos but was not found: install it with "
                   "`pip install imageio-ffmpeg` (its wheel ships ffmpeg), or set IMAGEIO_FFMPEG_EXE "
                   "to an ffmpeg executable")


# -- ffmpeg --------------------------------------------------------------------------------------

def _imageio_ffmpeg():
    """The imageio_ffmpeg module, once it has found an ffmpeg executable; else one clear RuntimeError."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        raise RuntimeError(_INSTALL_FFMPEG) from None
    return imageio_ffmpeg


@functools.lru_cache(maxsize=4)
def _passthrough_options(exe: str) -> tuple[str, ...]:
    """ffmpeg options that output every stored frame once (no frames duplicated to a constant rate)."""
    try:
        banner = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        banner = ""
    match = re.search(r"version n?(\d+)\.(\d+)", banner)
    if match and tuple(map(int, match.groups())) < FPS_MODE_SINCE:
        return ("-vsync", "passthrough")
    return ("-fps_mode", "passthrough")  # also for git builds ("version N-1234-g...")


def _ffmpeg_reason(message: str) -> str:
    """ffmpeg's own reason, from its multi-line log: the last line that is not a progress report."""
    if "matches no streams" in message:  # what ffmpeg says when asked for a stream the file lacks
        return "the file has no video stream"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("frame=", "==="))]
    return lines[-1] if lines else "no details"


@contextlib.contextmanager
def _quiet_size_warning() -> Iterator[None]:
    """imageio_ffmpeg warns whenever frames are read at another size than stored: wanted with max_size."""
    logger = logging.getLogger("imageio_ffmpeg")

    def quiet(record: logging.LogRecord) -> bool:
        return "frame size for reading" not in record.getMessage()

    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
