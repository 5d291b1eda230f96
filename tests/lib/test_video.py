"""Video in and out: MP4/GIF round trips, odd sizes, frame formats, streaming, one-line errors."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.data import sample_image
from course_lib.data import video
from course_lib.data.video import (
    GIFWriter,
    MP4Writer,
    iter_batches,
    iter_frames,
    read_video,
    show_video,
    video_info,
    video_writer,
    write_video,
)


def _photo_frames(num_frames: int = 12, height: int = 96, width: int = 128, shift: int = 3) -> torch.Tensor:
    """(T, 3, H, W) uint8: a photograph sliding sideways, like a camera pan (natural-image statistics)."""
    image = sample_image("chelsea", as_uint8=True)
    return torch.stack([image[:, 100:100 + height, 50 + shift * t:50 + shift * t + width] for t in range(num_frames)])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# -- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("crf", "min_psnr"), [(0, 42.0), (20, 36.0), (30, 30.0)])
def test_mp4_round_trip_keeps_count_size_fps_and_pixels(tmp_path, crf, min_psnr):
    """H.264 is lossy (and yuv420p halves the colour resolution): PSNR bounds per quality, no bias."""
    frames = _photo_frames()
    path = write_video(tmp_path / "pan.mp4", frames, fps=12, crf=crf)
    info = video_info(path)
    assert (info.num_frames, info.height, info.width, info.fps, info.codec) == (12, 96, 128, 12.0, "h264")
    assert info.duration == pytest.approx(1.0, abs=0.1)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == torch.uint8 and fps == 12.0
    assert _psnr(back, frames) >= min_psnr
    assert abs((back.double() - frames.double()).mean().item()) < 0.5  # colours are not shifted


def test_mp4_keeps_fractional_frame_rates(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", _photo_frames(6), fps=30000 / 1001)
    assert video_info(path).fps == pytest.approx(29.97, abs=0.01)


def test_gif_round_trip_and_its_frame_rate(tmp_path):
    """GIF delays are whole hundredths of a second: 10 fps is exact, 12 fps becomes 12.5."""
    frames = _photo_frames()
    for fps, expected in ((10, 10.0), (12, 12.5), (25, 25.0)):
        with GIFWriter(tmp_path / f"pan{fps}.gif", fps) as writer:
            writer.write(frames)
        assert writer.fps == expected
        back, read_fps = read_video(writer.path)
        assert back.shape == frames.shape and read_fps == pytest.approx(expected, abs=0.01)
        assert _psnr(back, frames) >= 30.0  # 256 colours per frame
    assert video_info(tmp_path / "pan12.gif").num_frames == 12


def test_gif_step_and_max_size_make_it_smaller_at_the_same_speed(tmp_path):
    frames = _photo_frames(num_frames=11)
    full = write_video(tmp_path / "full.gif", frames, 10)
    small = write_video(tmp_path / "small.gif", frames, 10, step=2, max_size=64)
    info = video_info(small)
    assert (info.num_frames, info.height, info.width, info.fps) == (6, 48, 64, 5.0)
    # Same speed: 11 frames of 0.1 s vs 6 frames of 0.2 s (the last one covers a frame past the end).
    assert (video_info(full).duration, info.duration) == (pytest.approx(1.1), pytest.approx(1.2))
    assert small.stat().st_size < full.stat().st_size / 3
    with pytest.raises(ValueError, match="step=2"):
        GIFWriter(tmp_path / "fast.gif", fps=60)
    assert GIFWriter(tmp_path / "fast.gif", fps=60, step=2).fps == pytest.approx(33.33, abs=0.01)


@pytest.mark.parametrize(("height", "width"), [(33, 47), (32, 47), (33, 48), (1, 1)])
def test_odd_sizes_are_padded_in_mp4_never_rescaled(tmp_path, height, width):
    frames = _photo_frames(num_frames=4, height=height, width=width)
    with MP4Writer(tmp_path / "odd.mp4", 8, crf=0) as writer:
        writer.write(frames)
    even = (height + height % 2, width + width % 2)
    assert writer.video_size == even and writer.frame_size == (height, width)
    back, _ = read_video(writer.path)
    assert back.shape == (4, 3, *even)
    if height * width > 1:  # the frame itself is where it was, unscaled; the padding repeats the edge
        assert _psnr(back[:, :, :height, :width], frames) >= 35.0
        assert _psnr(back[:, :, -1, :width], back[:, :, even[0] - 1 - height % 2, :width]) >= 35.0
    gif = write_video(tmp_path / "odd.gif", frames, 8)
    assert read_video(gif).frames.shape == frames.shape  # GIFs take any size


# -- reading ---------------------------------------------------------------------------------------

def test_iter_frames_stride_max_frames_max_size_and_numpy(tmp_path):
    frames = _photo_frames(num_frames=10)
    path = write_video(tmp_path / "pan.mp4", frames, 10, crf=0)
    every = list(iter_frames(path))
    assert len(every) == 10 and all(f.shape == (3, 96, 128) and f.dtype == torch.uint8 for f in every)
    assert torch.equal(torch.stack(every), read_video(path).frames)
    strided = list(iter_frames(path, stride=3))
    assert len(strided) == 4 and all(torch.equal(a, every[3 * i]) for i, a in enumerate(strided))
    assert len(list(iter_frames(path, stride=3, max_frames=2))) == 2
    assert list(iter_frames(path, max_frames=0)) == []
    arrays = list(iter_frames(path, as_numpy=True, max_frames=2))
    assert arrays[0].shape == (96, 128, 3) and arrays[0].dtype == np.uint8 and arrays[0].flags.writeable
    np.testing.assert_array_equal(arrays[1], every[1].permute(1, 2, 0).numpy())
    shrunk = read_video(path, max_size=64, stride=2)
    assert shrunk.frames.shape == (5, 3, 48, 64) and shrunk.fps == 5.0
    # Shrinking is antialiased: close to torch's antialiased resize of the full frames.
    reference = torch.nn.functional.interpolate(every[0][None].float(), size=(48, 64), mode="area")[0]
    assert _psnr(shrunk.frames[0], reference) >= 30.0
    assert read_video(path, max_size=500).frames.shape == (10, 3, 96, 128)  # never enlarged
    numpy_frames, _ = read_video(path, as_numpy=True, progress=True)
    assert numpy_frames.shape == (10, 96, 128, 3)


def test_iter_batches(tmp_path):
    path = write_video(tmp_path / "pan.mp4", _photo_frames(num_frames=10), 10)
    batches = list(iter_batches(path, 4))
    assert [tuple(b.shape) for b in batches] == [(4, 3, 96, 128), (4, 3, 96, 128), (2, 3, 96, 128)]
    assert torch.equal(torch.cat(batches), read_video(path).frames)
    assert [len(b) for b in iter_batches(path, 4, stride=2)] == [4, 1]
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches(path, 0)


def _ffmpeg(*arguments: str) -> None:
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-nostdin", *map(str, arguments)], check=True)


def _rotate_tag(source, target) -> None:
    """Copy ``source`` with a tag that says "show me turned 90 degrees counter-clockwise", as phones do.

    ffmpeg 6 and later write it with ``-display_rotation``; older versions (imageio-ffmpeg < 0.6
    ships ffmpeg 4.2) with the ``rotate`` metadata, which newer ones no longer write.
    """
    import re
    import subprocess

    import imageio_ffmpeg

    banner = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    major = int(re.search(r"version n?(\d+)", banner)[1])
    if major >= 6:
        _ffmpeg("-display_rotation", "90", "-i", source, "-c", "copy", target)
    else:
        _ffmpeg("-i", source, "-c", "copy", "-metadata:s:v:0", "rotate=90", target)


def test_other_containers_codecs_sound_and_rotation(tmp_path):
    """A learner's own file: AVI/MPEG-4 with sound, WebM/VP9, a phone video stored sideways."""
    source = ("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1")
    sound = ("-f", "lavfi", "-i", "sine=duration=1")
    _ffmpeg(*source, *sound, "-c:v", "mpeg4", tmp_path / "talk.avi")
    _ffmpeg(*source, "-c:v", "libvpx-vp9", tmp_path / "web.webm")
    _ffmpeg(*source, "-c:v", "libx264", "-crf", "0", tmp_path / "upright.mp4")
    _rotate_tag(tmp_path / "upright.mp4", tmp_path / "sideways.mp4")
    for name, codec, size in (("talk.avi", "mpeg4", (48, 64)), ("web.webm", "vp9", (48, 64)),
                              ("sideways.mp4", "h264", (64, 48))):  # shown as the phone meant it: turned
        info = video_info(tmp_path / name)
        assert (info.num_frames, info.fps, (info.height, info.width), info.codec) == (10, 10.0, size, codec), name
        assert read_video(tmp_path / name).frames.shape == (10, 3, *size)
    upright, sideways = read_video(tmp_path / "upright.mp4").frames, read_video(tmp_path / "sideways.mp4").frames
    assert torch.equal(sideways, torch.rot90(upright, 1, dims=(2, 3)))  # 90 degrees counter-clockwise
    _ffmpeg(*sound, tmp_path / "only_sound.wav")
    with pytest.raises(ValueError, match="no video stream") as caught:
        read_video(tmp_path / "only_sound.wav")
    _one_line(caught)


def test_variable_frame_rate_gives_every_stored_frame_once(tmp_path):
    """A GIF with uneven delays: ffmpeg would otherwise repeat frames to reach a constant rate."""
    frames = _photo_frames(num_frames=8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(f).quantize(256) for f in frames]
    path = tmp_path / "uneven.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=[200, 40] * 4, loop=0)
    assert len(read_video(path).frames) == 8
    assert video_info(path).num_frames == 8


def test_stopping_early_stops_ffmpeg(tmp_path):
    path = write_video(tmp_path / "pan.mp4", _photo_frames(num_frames=10), 10)
    frames = iter_frames(path)
    first = next(frames)
    frames.close()  # what a for loop's break does when the iterator is dropped
    assert first.shape == (3, 96, 128)
    with pytest.raises(StopIteration):
        next(frames)


# -- writing ---------------------------------------------------------------------------------------

def test_writers_accept_every_frame_format(tmp_path):
    """Tensors (uint8 or float, CHW), arrays (HWC, grey, RGBA), PIL images, batches and lists: the same GIF."""
    frames = _photo_frames(num_frames=3, height=32, width=48)
    arrays = frames.permute(0, 2, 3, 1).numpy()
    forms = {
        "uint8 batch": frames,
        "float list": [f.float() / 255 for f in frames],
        "numpy batch": arrays,
        "numpy float": [a.astype(np.float64) / 255 for a in arrays],
        "rgba": [np.concatenate([a, np.full((32, 48, 1), 7, np.uint8)], axis=2) for a in arrays],
        "pil": [Image.fromarray(a) for a in arrays],
        "float16 cuda-or-cpu": [(f.half() / 255) for f in frames],
    }
    reference = None
    for name, form in forms.items():
        path = tmp_path / f"{name.replace(' ', '_')}.gif"
        with GIFWriter(path, 10) as writer:
            if isinstance(form, list):
                for frame in form:
                    writer.write(frame)
            else:
                writer.write(form)
        back = read_video(path).frames
        reference = back if reference is None else reference
        assert torch.equal(back, reference), name
    grey = write_video(tmp_path / "grey.gif", [frames[0, 0].numpy(), frames[0, :1]], 10)
    back = read_video(grey).frames
    assert torch.equal(back[:, 0], back[:, 1]) and torch.equal(back[:, 1], back[:, 2])


@pytest.mark.parametrize(("frames", "error", "words"), [
    (torch.zeros(2, 3, 8, 8, 1, dtype=torch.uint8), ValueError, "frames"),
    (torch.zeros(5, 8, 8, dtype=torch.uint8), ValueError, r"\(3, H, W\)"),
    (np.zeros((8, 8, 2), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((8, 8, 3), np.int64), TypeError, "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.bool), TypeError, "uint8"),
    (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
    ("frame.png", TypeError, "frames"),
    (42, TypeError, "frames"),
])
def test_bad_frames_are_named(tmp_path, frames, error, words):
    for suffix in (".mp4", ".gif"):
        writer = video_writer(tmp_path / f"bad{suffix}", 10)
        with pytest.raises(error, match=words) as caught:
            writer.write(frames)
        _one_line(caught)


def test_frames_must_keep_one_size_and_a_video_needs_frames(tmp_path):
    for suffix in (".mp4", ".gif"):
        writer = video_writer(tmp_path / f"sizes{suffix}", 10)
        writer.write(torch.zeros(3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="frame 1 is 16x18"):
            writer.write(torch.zeros(3, 16, 18, dtype=torch.uint8))
        writer.close()
        writer.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            writer.write(torch.zeros(3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="no frames"):
            write_video(tmp_path / f"empty{suffix}", [], 10)
        with pytest.raises(ValueError, match="no frames"):
            write_video(tmp_path / f"empty{suffix}", torch.zeros(0, 3, 8, 8, dtype=torch.uint8), 10)
        assert not (tmp_path / f"empty{suffix}").exists()


def test_an_error_while_writing_keeps_the_frames_written_so_far(tmp_path):
    frames = _photo_frames(num_frames=5)
    for suffix in (".mp4", ".gif"):
        path = tmp_path / "sub" / f"partial{suffix}"  # missing folders are created
        with pytest.raises(KeyError):
            with video_writer(path, 10) as writer:
                writer.write(frames[:3])
                raise KeyError("the detector failed")
        assert video_info(path).num_frames == 3


@pytest.mark.parametrize("fps", [0, -5, float("nan"), float("inf"), "12", True])
def test_bad_fps(tmp_path, fps):
    for suffix in (".mp4", ".gif"):
        with pytest.raises((ValueError, TypeError), match="fps"):
            video_writer(tmp_path / f"x{suffix}", fps)


def test_writer_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="crf"):
        MP4Writer(tmp_path / "x.mp4", 10, crf=60)
    with pytest.raises(ValueError, match="step"):
        GIFWriter(tmp_path / "x.gif", 10, step=0)
    with pytest.raises(ValueError, match="must end in"):
        video_writer(tmp_path / "x.avi", 10)
    assert isinstance(video_writer(tmp_path / "x.MP4", 10), MP4Writer)
    assert isinstance(video_writer(tmp_path / "x.Gif", 10), GIFWriter)


def test_show_video_embeds_the_file(tmp_path):
    frames = _photo_frames(num_frames=3)
    html = show_video(write_video(tmp_path / "a.mp4", frames, 10), width=200)._repr_html_()
    assert "data:video/mp4;base64," in html and 'width="200"' in html and "loop" in html
    gif = show_video(write_video(tmp_path / "a.gif", frames, 10))
    assert gif.format == "gif" and gif.data[:6] == b"GIF89a"


# -- errors: one line each -------------------------------------------------------------------------

def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "clip.mp4"
    for read in (read_video, iter_frames, video_info, show_video, lambda p: iter_batches(p, 2)):
        with pytest.raises(FileNotFoundError, match="nowhere") as caught:
            read(missing)
        _one_line(caught)
    with pytest.raises(ValueError, match="not a file"):
        read_video(tmp_path)
    with pytest.raises(TypeError, match="path"):
        read_video(123)


@pytest.mark.parametrize("content", [b"hello, I am not a video\n", b"", bytes(range(256)) * 20])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "notes.mp4"
    path.write_bytes(content)
    for read in (read_video, iter_frames, video_info):
        with pytest.raises(ValueError, match="notes.mp4") as caught:
            read(path)
        message = _one_line(caught)
        assert "expected a video" in message and "ffmpeg version" not in message and len(message) < 300


def test_no_ffmpeg_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_video(tmp_path / "pan.mp4", _photo_frames(num_frames=2), 10)
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found. Install ffmpeg on your system, ...")

    for simulate in ("binary missing", "package missing"):
        with monkeypatch.context() as patch:
            if simulate == "binary missing":
                patch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
            else:
                patch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
            for call in (lambda: read_video(path), lambda: iter_frames(path), lambda: video_info(path),
                         lambda: MP4Writer(tmp_path / "out.mp4", 10)):
                with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg") as caught:
                    call()
                _one_line(caught)
            gif = write_video(tmp_path / "still_works.gif", _photo_frames(num_frames=2), 10)  # Pillow only
            assert gif.stat().st_size > 0
    assert video_info(path).num_frames == 2  # back to normal


def test_module_has_no_global_side_effects(tmp_path):
    import logging

    state = torch.random.get_rng_state()
    filters = list(logging.getLogger("imageio_ffmpeg").filters)
    path = write_video(tmp_path / "pan.mp4", _photo_frames(num_frames=2), 10)
    read_video(path, max_size=32)
    assert torch.equal(state, torch.random.get_rng_state())
    assert logging.getLogger("imageio_ffmpeg").filters == filters
    assert set(video.__all__) <= set(dir(video))
