"""course_lib.detection.annotate: detections drawn into uint8 frames, clips, two detectors side by side."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_lib.detection.annotate import (
    BACKGROUND_RGB,
    MAX_FONT_SIZE,
    MIN_FONT_SIZE,
    MIN_LINE_WIDTH,
    annotate_frames,
    class_rgb,
    draw_detections,
    font_path,
    font_size_for,
    label_text,
    line_width_for,
    side_by_side,
)
from course_lib.detection.pretrained import coco_categories

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GREY = 90


def _frame(height=120, width=160, device="cpu"):
    return torch.full((3, height, width), GREY, dtype=torch.uint8, device=device)


def _detections(device="cpu"):
    return {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 5.0, 150.0, 60.0]], device=device),
            "labels": torch.tensor([1, 3], device=device), "scores": torch.tensor([0.87, 0.6], device=device)}


def _pixel(image, x, y):
    return tuple(int(v) for v in image[:, y, x])


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtypes_device_and_the_input_left_alone(device):
    frame = _frame(device=device)
    before = frame.clone()
    out = draw_detections(frame, _detections(device), coco_categories())
    assert out.shape == frame.shape and out.dtype == torch.uint8 and out.device.type == device
    assert torch.equal(frame, before) and not torch.equal(out, frame)
    grey = draw_detections(frame[:1], _detections(device))
    assert grey.shape == (3, 120, 160)
    as_float = draw_detections(frame.float() / 255, _detections(device), coco_categories())
    assert as_float.dtype == torch.uint8 and torch.equal(as_float, out)


def test_no_detections_give_the_same_frame_as_a_new_tensor():
    frame = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    out = draw_detections(frame, nothing, coco_categories())
    assert torch.equal(out, frame) and out.data_ptr() != frame.data_ptr()
    outside = {"boxes": torch.tensor([[60.0, 0.0, 80.0, 10.0], [-20.0, -20.0, 0.0, 0.0]]),
               "labels": torch.tensor([1, 2])}
    assert torch.equal(draw_detections(frame, outside), frame)  # boxes entirely outside are not drawn


def test_colours_are_fixed_per_class():
    assert class_rgb(3) == class_rgb(3) == class_rgb(23)  # the palette has 20 colours, then repeats
    assert len({class_rgb(k) for k in range(20)}) == 20
    assert all(0 <= c <= 255 and isinstance(c, int) for c in class_rgb(7))
    frame = _frame()
    for label in (1, 3, 18):
        one = {"boxes": torch.tensor([[20.0, 30.0, 100.0, 110.0]]), "labels": torch.tensor([label])}
        out = draw_detections(frame, one, show_labels=False, line_width=3)
        assert _pixel(out, 20, 70) == _pixel(out, 99, 70) == class_rgb(label)  # left and right edges
        assert _pixel(out, 60, 70) == (GREY,) * 3  # inside untouched
    assert class_rgb(1, palette="deep") != class_rgb(1)


def test_label_less_mode_leaves_the_inside_of_boxes_alone():
    frame = _frame()
    box = {"boxes": torch.tensor([[20.0, 20.0, 140.0, 110.0]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.9])}
    plain = draw_detections(frame, box, coco_categories(), show_labels=False)
    labelled = draw_detections(frame, box, coco_categories())
    inside = (slice(None), slice(25, 40), slice(25, 60))  # where the label goes, top left inside the box
    assert (plain[inside] == GREY).all()
    assert (labelled[inside] != GREY).any()
    edges = plain != frame
    assert (labelled[edges] == plain[edges]).float().mean() > 0.9  # the same outline (the label covers a bit)


def test_boxes_are_clipped_to_the_frame():
    frame = _frame(60, 80)
    out = draw_detections(frame, {"boxes": torch.tensor([[-30.0, 10.0, 200.0, 40.0]]), "labels": torch.tensor([2])},
                          show_labels=False, line_width=1)
    assert _pixel(out, 0, 25) == class_rgb(2) and _pixel(out, 79, 25) == class_rgb(2)
    assert _pixel(out, 40, 10) == class_rgb(2) and _pixel(out, 40, 25) == (GREY,) * 3


def test_label_text():
    categories = coco_categories()
    assert label_text(3, 0.8712, categories) == "car 0.87"
    assert label_text(1, None, categories) == "person"
    assert label_text(5, 0.5) == "5 0.50"
    assert label_text(2, 0.25, {2: "square"}) == "square 0.25"
    assert label_text(200, None, categories) == "200"


def test_text_and_lines_grow_with_the_frame():
    assert Path(font_path()).suffix == ".ttf" and Path(font_path()).is_file()
    sizes = [(64, 64), (240, 320), (480, 854), (1080, 1920), (4000, 4000)]
    fonts = [font_size_for(*s) for s in sizes]
    widths = [line_width_for(*s) for s in sizes]
    assert fonts == sorted(fonts) and fonts[0] < fonts[3] and widths == sorted(widths) and widths[0] < widths[3]
    assert fonts[0] == MIN_FONT_SIZE and fonts[-1] == MAX_FONT_SIZE and widths[0] == MIN_LINE_WIDTH

    def label_height(height, width):
        frame = _frame(height, width)
        box = {"boxes": torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]]), "labels": torch.tensor([1]),
               "scores": torch.tensor([0.5])}
        changed = (draw_detections(frame, box, coco_categories()) != frame).any(dim=0)
        edge = line_width_for(height, width)
        return int(changed[edge:height - edge, edge + 2].sum())  # a column through the label, between the edges

    heights = [label_height(120, 213), label_height(480, 854), label_height(1080, 1920)]
    assert heights == sorted(heights) and heights[2] > 2 * heights[0]


@pytest.mark.parametrize("detections, words", [
    ({"boxes": torch.zeros(2, 5)}, "(N, 4)"),
    ({"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]])}, "x2 >= x1"),
    ({"boxes": torch.tensor([[float("nan"), 0.0, 5.0, 5.0]])}, "finite"),
    ({"boxes": torch.zeros(2, 4), "labels": torch.tensor([1])}, "labels"),
    ({"boxes": torch.zeros(2, 4), "scores": torch.zeros(3)}, "scores"),
])
def test_bad_detections_are_one_line_errors(detections, words):
    with pytest.raises(ValueError) as info:
        draw_detections(_frame(), detections)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_frames_are_one_line_errors():
    with pytest.raises(ValueError, match="frame"):
        draw_detections(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _detections())
    with pytest.raises(TypeError, match="int32"):
        draw_detections(torch.zeros(3, 8, 8, dtype=torch.int32), _detections())
    with pytest.raises(TypeError, match="dict"):
        draw_detections(_frame(), [torch.zeros(1, 4)])


def test_annotate_frames_draws_every_frame():
    frames = torch.stack([_frame(), _frame() + 20])
    detections = [_detections(), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    clip = annotate_frames(frames, detections, coco_categories())
    assert clip.shape == frames.shape and clip.dtype == torch.uint8
    assert torch.equal(clip[0], draw_detections(frames[0], detections[0], coco_categories()))
    assert torch.equal(clip[1], frames[1])
    with pytest.raises(ValueError, match="one dict per frame"):
        annotate_frames(frames, detections[:1])


@pytest.mark.parametrize("device", DEVICES)
def test_side_by_side(device):
    left, right = (torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
                   .to(device) for seed in (0, 1))
    plain = side_by_side(left, right, gap=6)
    assert plain.shape == (3, 90, 246) and plain.device.type == device
    assert torch.equal(plain[:, :, :120], left) and torch.equal(plain[:, :, 126:], right)
    assert (plain[:, :, 120:126] == torch.tensor(BACKGROUND_RGB, device=device).view(3, 1, 1)).all()
    titled = side_by_side(left, right, ("RetinaNet", "FCOS"), gap=6)
    bar = titled.shape[1] - 90
    assert titled.shape == (3, 90 + bar, 246) and bar > 0 and torch.equal(titled[:, bar:], plain)
    assert (titled[:, :bar, :120] != 255).any() and (titled[:, :bar, 126:] != 255).any()  # both titles written
    clip = side_by_side(torch.stack([left, right]), torch.stack([right, left]), ("a", "b"), gap=6)
    assert clip.shape == (2, 3, 90 + bar, 246)
    assert torch.equal(clip[1], side_by_side(right, left, ("a", "b"), gap=6))


def test_side_by_side_refuses_mismatches():
    frame = _frame()
    with pytest.raises(ValueError, match="same shape"):
        side_by_side(frame, _frame(100, 160))
    with pytest.raises(TypeError, match="uint8"):
        side_by_side(frame.float(), frame.float())
    with pytest.raises(ValueError, match="titles"):
        side_by_side(frame, frame, ("only one",))
    with pytest.raises(ValueError, match="gap"):
        side_by_side(frame, frame, gap=-1)
