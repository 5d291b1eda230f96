"""Lesson 6's threshold slider (`course_lib.widgets.DetectionThresholdDemo`): filters precomputed detections,
draws boxes and scores, and works without a browser."""
from __future__ import annotations

import base64

import matplotlib
import pytest
import torch
from matplotlib.colors import to_rgb

from course_lib.data.shapes import CLASSES, ShapesDataset
from course_lib.detection.annotate import class_rgb
from course_lib.detection.pretrained import load_detector, predict
from course_lib.widgets import DROPPED_COLOR, MAX_PLOTTED_SCORES, THRESHOLD_STEP, DetectionThresholdDemo


def _random_detections(count: int, seed: int, height: int = 48, width: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width - 8.0, height - 8.0])
    size = 2 + torch.rand(count, 2, generator=generator) * 6
    return {"boxes": torch.cat([corner, corner + size], dim=1),
            "labels": torch.randint(1, 4, (count,), generator=generator),
            "scores": torch.rand(count, generator=generator)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_filters_by_score_best_first_and_leaves_the_input_alone(seed):
    detections = _random_detections(30, seed)
    original = {key: value.clone() for key, value in detections.items()}
    demo = DetectionThresholdDemo(torch.zeros(3, 48, 64, dtype=torch.uint8), detections, CLASSES)
    for threshold in (0.0, 0.25, 0.5, 0.99, 1.0):
        kept = demo.keep(threshold)
        wanted = detections["scores"] >= threshold
        assert len(kept["scores"]) == int(wanted.sum())
        assert torch.equal(kept["scores"], detections["scores"][wanted].sort(descending=True).values)
        for box, label, score in zip(kept["boxes"], kept["labels"], kept["scores"]):  # rows stay together
            row = (detections["scores"] == score).nonzero()[0, 0]
            assert torch.equal(box, detections["boxes"][row]) and label == detections["labels"][row]
    for key, value in detections.items():
        assert torch.equal(value, original[key])


def test_update_draws_the_kept_boxes_and_every_score():
    detections = _random_detections(12, 3)
    demo = DetectionThresholdDemo(torch.rand(3, 48, 64), detections, CLASSES, title="random boxes")
    kept = demo.update(0.5)
    assert demo.threshold == 0.5 and len(kept["scores"]) == int((detections["scores"] >= 0.5).sum())
    image_ax, score_ax = demo.figure.axes
    assert f"score >= 0.50: {len(kept['scores'])} boxes" in image_ax.get_title()
    assert image_ax.get_title().startswith("random boxes")
    bars = score_ax.patches
    assert len(bars) == 12 and [bar.get_height() for bar in bars] == pytest.approx(
        detections["scores"].sort(descending=True).values.tolist())
    labels = demo.detections["labels"].tolist()
    for bar, label in zip(bars, labels):
        shown = bar.get_height() >= 0.5
        color = tuple(c / 255 for c in class_rgb(label)) if shown else DROPPED_COLOR
        assert to_rgb(bar.get_facecolor()) == pytest.approx(to_rgb(color))
    # the image panel is the frame with the boxes drawn into it: pixels differ where a kept box is
    drawn = image_ax.images[0].get_array()
    assert drawn.shape == (48, 64, 3)
    assert demo.update(1.0)["scores"].numel() == int((detections["scores"] >= 1.0).sum())


def test_many_detections_plot_only_the_best_and_none_is_fine():
    demo = DetectionThresholdDemo(torch.zeros(1, 40, 40), _random_detections(200, 4, 40, 40))
    demo.update(0.3)
    assert len(demo.figure.axes[1].patches) == MAX_PLOTTED_SCORES
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    nothing = DetectionThresholdDemo(torch.zeros(3, 20, 30, dtype=torch.uint8), empty)
    assert nothing.update(0.0)["boxes"].shape == (0, 4)
    assert "0 boxes" in nothing.figure.axes[0].get_title() and not nothing.figure.axes[1].patches


def test_slider_redraws_without_a_browser():
    detector = load_detector("shapes_ssd", device="cpu")
    images, _ = ShapesDataset("test", 2, image_size=64, seed=0).to_tensors()
    found = predict(detector, images[:1], score_threshold=0.0)[0]  # the detector runs once, here
    demo = DetectionThresholdDemo(images[0], found, detector.categories, threshold=0.3)
    panel = demo.widget()
    slider = panel.slider
    assert (slider.min, slider.max, slider.step, slider.value) == (0.0, 1.0, THRESHOLD_STEP, 0.3)
    counts = []
    for value in (0.0, 0.2, 0.5, 0.9):
        slider.value = value  # what dragging the slider does
        counts.append(len(panel.redraw()["scores"]))
        assert demo.threshold == value
    assert counts[0] == len(found["scores"]) and counts == sorted(counts, reverse=True)
    assert demo.widget(threshold=0.7).slider.value == 0.7


def test_the_first_picture_is_in_the_output_areas_state():
    """widget() writes its first picture into the Output's state (a PNG record), so that nothing is displayed
    through the widget while its cell runs; the slider's redraws display into it as usual."""
    detections = _random_detections(6, 5)
    demo = DetectionThresholdDemo(torch.rand(3, 48, 64), detections, CLASSES)
    panel = demo.widget(threshold=0.4)
    (record,) = panel.children[1].outputs
    assert record["output_type"] == "display_data"
    assert base64.b64decode(record["data"]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    kept = int((detections["scores"] >= 0.4).sum())
    assert record["data"]["text/plain"] == f"<threshold 0.40: {kept} boxes>" and demo.threshold == 0.4
    assert not matplotlib.pyplot.get_fignums()  # drawn, encoded, closed


@pytest.mark.parametrize(("image", "detections", "threshold", "error", "words"), [
    (torch.zeros(48, 64), None, 0.5, ValueError, "image must be a (3, H, W)"),
    ([[0]], None, 0.5, ValueError, "image"),
    (None, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}, 0.5, TypeError, "'labels'"),
    (None, [torch.zeros(0, 4)], 0.5, TypeError, "detections must be a dict"),
    (None, {"boxes": torch.zeros(2, 3), "labels": torch.zeros(2), "scores": torch.zeros(2)}, 0.5, ValueError, "(N, 4)"),
    (None, {"boxes": torch.zeros(2, 4), "labels": torch.zeros(2), "scores": torch.zeros(3)}, 0.5, ValueError,
     "one entry per box"),
    (None, None, 1.5, ValueError, "threshold must be a number in [0, 1]"),
    (None, None, True, ValueError, "threshold"),
    (None, None, "0.5", ValueError, "threshold"),
])
def test_bad_input_is_one_clear_error(image, detections, threshold, error, words):
    image = torch.zeros(3, 8, 8) if image is None else image
    detections = _random_detections(2, 0, 8, 8) if detections is None else detections
    with pytest.raises(error) as info:
        DetectionThresholdDemo(image, detections, threshold=threshold)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_later_thresholds_are_checked_too():
    demo = DetectionThresholdDemo(torch.zeros(3, 8, 8), _random_detections(2, 0, 8, 8))
    for bad in (-0.1, 2, float("nan"), None):
        with pytest.raises(ValueError, match="threshold"):
            demo.keep(bad)
