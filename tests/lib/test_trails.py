"""course_lib.detection.trails: tracks drawn onto frames (boxes with ids, trails of centres)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.tracking import IoUTracker, Track
from course_lib.detection.trails import ID_COLORS, _draw_polylines, draw_tracks, id_color

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
H, W = 120, 200


def box(cx: float, cy: float, w: float = 20.0, h: float = 20.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def moving_track(track_id: int = 1, n: int = 10, y: float = 60.0, step: float = 8.0, first: int = 0) -> Track:
    """A track moving right along the row ``y``, seen in frames first .. first + n - 1."""
    frames = list(range(first, first + n))
    boxes = [torch.tensor(box(30 + step * (f - first), y)) for f in frames]
    return Track(track_id, frames, boxes, confirmed=True)


def colour_at(image: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(image[:, y, x].tolist())


def gray_frame(device="cpu") -> torch.Tensor:
    return torch.full((3, H, W), 40, dtype=torch.uint8, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_box_and_trail_are_drawn_in_the_track_colour_on_a_copy(device):
    frame = gray_frame(device)
    before = frame.clone()
    track = moving_track()  # centres (30, 60) ... (102, 60); last box x 92..112, y 50..70
    out = draw_tracks(frame, [track])
    assert out.shape == frame.shape and out.dtype == torch.uint8 and out.device == frame.device
    assert torch.equal(frame, before)  # the input is not changed
    colour = id_color(1)
    out = out.cpu()
    assert colour_at(out, 111, 62) == colour  # the box's right edge
    assert colour_at(out, 100, 69) == colour  # its bottom edge
    assert colour_at(out, 50, 60) == colour  # the trail, between two old centres
    assert colour_at(out, 30, 60) == colour  # the oldest centre
    assert colour_at(out, 150, 100) == (40, 40, 40)  # far from everything
    changed = (out != before.cpu()).any(dim=0)
    assert not changed[:, 130:].any() and not changed[90:].any()  # nothing right of or below the track


def test_a_frame_permuted_from_height_width_channels():
    # video readers give (H, W, 3) arrays; .permute(2, 0, 1) makes a non-contiguous view
    hwc = gray_frame().permute(1, 2, 0).contiguous()
    frame = hwc.permute(2, 0, 1)
    out = draw_tracks(frame, [moving_track()])
    assert torch.equal(out, draw_tracks(gray_frame(), [moving_track()]))
    assert torch.equal(hwc.permute(2, 0, 1), gray_frame())  # the reader's array is untouched


def test_no_tracks_or_none_in_the_frame_gives_an_identical_frame():
    frame = gray_frame()
    for tracks, index in [([], None), ([moving_track()], 50)]:
        out = draw_tracks(frame, tracks, index)
        assert torch.equal(out, frame) and out.data_ptr() != frame.data_ptr()


def test_trail_length_and_past_frames():
    frame = gray_frame()
    track = moving_track(n=10)
    short = draw_tracks(frame, [track], trail_frames=3)  # centres of frames 7, 8, 9 only: x 86 .. 102
    assert colour_at(short, 90, 60) == id_color(1) and colour_at(short, 50, 60) == (40, 40, 40)
    # a past frame: the box where the track was in frame 4 (centre 62), the trail up to there
    past = draw_tracks(frame, [track], frame_index=4)
    assert colour_at(past, 71, 62) == id_color(1) and colour_at(past, 95, 60) == (40, 40, 40)
    gap = Track(2, [0, 5], [torch.tensor(box(40, 30)), torch.tensor(box(90, 30))])
    assert torch.equal(draw_tracks(frame, [gap], frame_index=3), frame)  # not seen in frame 3


def test_each_id_has_its_own_colour_and_later_tracks_are_on_top():
    frame = gray_frame()
    first, second = moving_track(1, y=60), moving_track(2, y=61)  # 2 px trails: rows 60-61 and 61-62
    out = draw_tracks(frame, [first, second])
    assert colour_at(out, 50, 60) == id_color(1)
    assert colour_at(out, 50, 61) == colour_at(out, 50, 62) == id_color(2)
    assert colour_at(draw_tracks(frame, [second, first]), 50, 61) == id_color(1)
    assert torch.equal(out, draw_tracks(frame, [first, second]))  # deterministic
    assert id_color(3) == id_color(3) and id_color(3) == id_color(3 + ID_COLORS)
    assert len({id_color(i) for i in range(ID_COLORS)}) == ID_COLORS
    assert all(id_color(i) != id_color(i + 1) for i in range(50))


def test_tracker_output_and_class_names():
    tracker = IoUTracker()
    for f in range(6):
        active = tracker.update(torch.tensor([box(30 + 5 * f, 40), box(150, 30 + 6 * f)]), labels=torch.tensor([0, 1]))
    frame = gray_frame()
    plain = draw_tracks(frame, active)
    named = draw_tracks(frame, active, class_names=["car", "person"])
    assert colour_at(plain, 64, 40) == id_color(1) and colour_at(plain, 159, 60) == id_color(2)
    assert not torch.equal(plain, named)  # the longer labels "id 1 car", "id 2 person"
    assert torch.equal(named, draw_tracks(frame, active, class_names={0: "car", 1: "person"}))
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"  # a TrueType font at hand
    large = draw_tracks(frame, active, font=str(font), font_size=14)
    assert not torch.equal(large, plain) and colour_at(large, 159, 60) == id_color(2)


def test_a_single_observation_is_a_dot():
    frame = torch.zeros(3, 20, 20, dtype=torch.uint8)
    out = _draw_polylines(frame.clone(), [torch.tensor([[10.5, 5.5]])], torch.tensor([[1, 2, 3]], dtype=torch.uint8), 1)
    assert colour_at(out, 10, 5) == (1, 2, 3) and int((out != 0).any(dim=0).sum()) == 1


@SETTINGS
@given(points=st.lists(st.tuples(st.floats(-10, 60), st.floats(-10, 40)), min_size=1, max_size=6),
       width=st.integers(1, 3))
def test_polylines_touch_their_points_and_stay_near_them(points, width):
    frame = torch.zeros(3, 30, 50, dtype=torch.uint8)
    line = torch.tensor(points, dtype=torch.float64)
    out = _draw_polylines(frame, [line], torch.tensor([[255, 255, 255]], dtype=torch.uint8), width)
    painted = out[0] == 255
    for x, y in line.floor().long().tolist():
        if 0 <= x < 50 and 0 <= y < 30:
            assert painted[y, x]
    ys, xs = torch.nonzero(painted, as_tuple=True)
    if xs.numel():
        reach = width // 2 + 1
        assert xs.min() >= line[:, 0].min().floor() - reach and xs.max() <= line[:, 0].max() + reach
        assert ys.min() >= line[:, 1].min().floor() - reach and ys.max() <= line[:, 1].max() + reach


def test_bad_input_is_named():
    track = moving_track()
    with pytest.raises(TypeError, match="frame must be uint8"):
        draw_tracks(gray_frame().float(), [track])
    with pytest.raises(ValueError, match=r"frame must have shape \(3, H, W\), got \(120, 200, 3\)"):
        draw_tracks(gray_frame().permute(1, 2, 0), [track])
    with pytest.raises(TypeError, match="frame must be a torch.Tensor"):
        draw_tracks(gray_frame().numpy(), [track])
    with pytest.raises(ValueError, match="trail_frames must be an int >= 1"):
        draw_tracks(gray_frame(), [track], trail_frames=0)
    with pytest.raises(TypeError, match="track_id must be an int"):
        id_color("1")
