"""The demos' output area (`course_lib.widgets.output_area`): every demo's picture becomes the Output's one PNG
record, set directly (no display() captured in `with output:`, no IPython formatter), and its figure is closed."""
from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.widgets import DetectionThresholdDemo, RPNThresholdDemo, YoloDecodingDemo  # noqa: E402
from course_lib.widgets.output_area import figure_record, show_figure  # noqa: E402

widgets = pytest.importorskip("ipywidgets")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _png(record: dict) -> bytes:
    assert record["output_type"] == "display_data" and record["metadata"] == {}
    png = base64.b64decode(record["data"]["image/png"])
    assert png.startswith(PNG_SIGNATURE)
    return png


def test_figure_record_is_the_figures_png_and_its_text():
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    record = figure_record(fig)
    assert len(_png(record)) > 100 and record["data"]["text/plain"] == repr(fig)
    assert figure_record(fig, "<a line>")["data"]["text/plain"] == "<a line>"
    assert plt.fignum_exists(fig.number)  # encoding leaves the figure open: show_figure closes it


def test_show_figure_replaces_the_content_and_closes_the_figure():
    output = widgets.Output()
    pictures = []
    for colour in ("red", "blue"):
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.axhline(0.5, color=colour)
        show_figure(output, fig, colour)
        (record,) = output.outputs  # the new picture replaces the old one
        assert record["data"]["text/plain"] == colour and not plt.fignum_exists(fig.number)
        pictures.append(_png(record))
    assert pictures[0] != pictures[1]


def _yolo() -> tuple[YoloDecodingDemo, object, callable]:
    demo = YoloDecodingDemo()
    panel = demo.widget()

    def move():
        panel.sliders["offsets"][2].value = 1.0  # t_w: a wider box

    return demo, panel, move


def _threshold() -> tuple[DetectionThresholdDemo, object, callable]:
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(8, 2, generator=generator) * 40
    detections = {"boxes": torch.cat([corner, corner + 8], dim=1), "labels": torch.randint(1, 4, (8,), generator=generator),
                  "scores": torch.rand(8, generator=generator)}
    demo = DetectionThresholdDemo(torch.rand(3, 48, 64, generator=generator), detections, threshold=0.2)
    panel = demo.widget()

    def move():
        panel.slider.value = 0.8

    return demo, panel, move


def _rpn() -> tuple[RPNThresholdDemo, object, callable]:
    generator = torch.Generator().manual_seed(0)
    gt_boxes = torch.tensor([[10.0, 20.0, 70.0, 60.0]])
    xy = torch.rand(30, 2, generator=generator) * 80
    anchors = torch.cat((xy, xy + 24), dim=1)
    proposals = torch.cat((xy, xy + 4 + torch.rand(30, 2, generator=generator) * 30), dim=1)
    demo = RPNThresholdDemo(torch.rand(3, 128, 128, generator=generator), gt_boxes, anchors, proposals,
                            torch.rand(30, generator=generator))
    panel = demo.widget()

    def move():
        panel.sliders["nms_threshold"].value = 0.3

    return demo, panel, move


@pytest.mark.parametrize("make", [_yolo, _threshold, _rpn], ids=["lesson3-yolo", "lesson6-threshold", "lesson5-rpn"])
def test_every_demo_shows_one_png_in_its_output_area(make):
    demo, panel, move = make()
    output = panel.children[-1]
    assert isinstance(output, widgets.Output)
    (first,) = output.outputs
    before = _png(first)
    move()  # what dragging a slider does: the demo redraws
    (second,) = output.outputs
    assert _png(second) != before
    assert not plt.get_fignums()  # every picture drawn, encoded and closed
