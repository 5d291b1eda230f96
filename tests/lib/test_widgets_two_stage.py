"""Lesson 5's threshold demo: anchor labels and proposal counts as the library computes them, a picture
without a browser, and sliders (ipywidgets 7 and 8 API) that redraw and keep negative <= positive."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.detection.anchors import rpn_anchors  # noqa: E402
from course_lib.detection.boxes import box_iou  # noqa: E402
from course_lib.detection.faster_rcnn.rpn import rpn_targets  # noqa: E402
from course_lib.detection.matching import label_anchors  # noqa: E402
from course_lib.detection.suppression import nms  # noqa: E402
from course_lib.widgets import RPNThresholdDemo  # noqa: E402

IMAGE_SIZE = 128
GT_BOXES = torch.tensor([[10.0, 20.0, 70.0, 60.0], [30.0, 90.0, 110.0, 102.0]])  # the second thin: forced


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _demo(seed: int = 0, **kwargs) -> RPNThresholdDemo:
    g = torch.Generator().manual_seed(seed)
    anchors = rpn_anchors(8, 16, scales=(1.5, 3.0, 5.0), convention="seed")  # 8 x 8 cells x 9 anchors
    xy = torch.rand(300, 2, generator=g) * IMAGE_SIZE * 0.8
    proposals = torch.cat((xy, xy + 4 + torch.rand(300, 2, generator=g) * 40), dim=1).clamp(max=IMAGE_SIZE)
    scores = torch.rand(300, generator=g)
    image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return RPNThresholdDemo(image, GT_BOXES, anchors, proposals, scores, gt_labels=torch.tensor([1, 2]),
                            class_names=["background", "helmet", "person"], **kwargs)


def test_counts_are_the_libraries_labels_and_nms():
    demo = _demo(post_nms_top_n=40)
    for positive, negative, threshold in ((0.7, 0.3, 0.7), (0.5, 0.2, 0.3), (0.4, 0.4, 1.0), (0.9, 0.0, 0.0)):
        state = demo.compute(positive, negative, threshold)
        expected = label_anchors(box_iou(GT_BOXES, demo.anchors), positive, negative)
        assert torch.equal(state["labels"], expected)
        assert (state["positive"], state["negative"], state["ignored"]) == (
            int((expected == 1).sum()), int((expected == 0).sum()), int((expected == -1).sum()))
        assert state["positive"] + state["negative"] + state["ignored"] == len(demo.anchors)
        best = box_iou(GT_BOXES, demo.anchors).max(0).values
        assert state["forced"] == int(((expected == 1) & (best < positive)).sum())
        kept = nms(demo.proposals, demo.proposal_scores, threshold)[:40]
        assert torch.equal(state["kept"], kept) and state["proposals_after"] == len(kept) <= 40
        assert state["proposals_before"] == 300 and state["thresholds"] == (positive, negative, threshold)
    # The lesson's thresholds give rpn_targets' labels (every anchor taking part).
    default = demo.compute()
    assert torch.equal(default["labels"], rpn_targets(demo.anchors, GT_BOXES).labels)
    assert default["positive"] > 0 and default["forced"] > 0  # small objects: their best anchors are forced
    # Proposals are ranked best first; NMS results are kept per threshold.
    assert bool((demo.proposal_scores[:-1] >= demo.proposal_scores[1:]).all())
    assert demo.kept_proposals(0.7) is demo.kept_proposals(0.7)


def test_lower_thresholds_keep_fewer_proposals_and_label_more_positives():
    demo = _demo()
    strict, loose = demo.compute(0.7, 0.3, 0.3), demo.compute(0.5, 0.3, 0.9)
    assert loose["proposals_after"] > strict["proposals_after"]
    assert loose["positive"] >= strict["positive"] and loose["ignored"] <= strict["ignored"]
    everything = demo.compute(0.7, 0.3, 1.0)  # an IoU never exceeds 1: NMS keeps everything
    assert everything["proposals_after"] == 300


def test_update_draws_anchors_histogram_and_proposals(tmp_path):
    demo = _demo(max_drawn=25)
    state = demo.update(0.6, 0.25, 0.5)
    fig = demo.figure
    assert fig is not None and len(fig.axes) == 4  # three panels and the proposals' colour bar
    anchors_ax, histogram_ax, proposals_ax = fig.axes[:3]
    assert f"{state['positive']} positive anchors" in anchors_ax.get_title()
    assert f"negative {state['negative']:,}, ignored {state['ignored']:,}" in histogram_ax.get_title()
    assert f"NMS at 0.50: 300 -> {state['proposals_after']} proposals (best 25 drawn)" in proposals_ax.get_title()
    assert len(proposals_ax.patches) == 25
    assert len(anchors_ax.patches) == state["positive"] + len(GT_BOXES)
    fig.savefig(tmp_path / "rpn_thresholds.png")
    again = demo.update(0.6, 0.25, 0.5)  # redraws into the same figure
    assert demo.figure is fig and again["positive"] == state["positive"]


def test_sliders_redraw_and_keep_negative_below_positive():
    pytest.importorskip("ipywidgets")
    demo = _demo()
    panel = demo.widget(positive_iou=0.7, negative_iou=0.3, nms_threshold=0.7)
    sliders = panel.sliders
    assert [s.description for s in sliders.values()] == ["positive IoU", "negative IoU", "NMS IoU"]
    assert demo.thresholds == (0.7, 0.3, 0.7)
    sliders["nms_threshold"].value = 0.4  # what dragging the slider does
    assert demo.thresholds == (0.7, 0.3, 0.4)
    assert panel.redraw()["proposals_after"] == demo.compute(0.7, 0.3, 0.4)["proposals_after"]
    sliders["negative_iou"].value = 0.8  # past the positive threshold: the positive one follows
    assert sliders["positive_iou"].value == pytest.approx(0.8) and demo.thresholds[:2] == pytest.approx((0.8, 0.8))
    sliders["positive_iou"].value = 0.5  # below the negative threshold: the negative one follows
    assert sliders["negative_iou"].value == pytest.approx(0.5) and demo.thresholds[:2] == pytest.approx((0.5, 0.5))


def test_bad_input_gives_one_line_errors():
    demo = _demo()
    anchors = demo.anchors
    cases = [
        (lambda: demo.compute(0.3, 0.7), r"negative_iou \(0.7\) must not exceed positive_iou \(0.3\)"),
        (lambda: demo.compute(1.5), "positive_iou must be a number in"),
        (lambda: demo.compute(0.7, 0.3, -0.1), "nms_threshold must be a number in"),
        (lambda: RPNThresholdDemo(torch.rand(64, 64), GT_BOXES, anchors, GT_BOXES, torch.ones(2)), "image must be"),
        (lambda: RPNThresholdDemo(torch.rand(3, 64, 64), GT_BOXES[0], anchors, GT_BOXES, torch.ones(2)), "gt_boxes"),
        (lambda: RPNThresholdDemo(torch.rand(3, 64, 64), GT_BOXES, anchors, GT_BOXES, torch.ones(3)),
         r"proposal_scores must have shape \(2,\)"),
        (lambda: RPNThresholdDemo(torch.rand(3, 64, 64), GT_BOXES, anchors, GT_BOXES, torch.ones(2),
                                  gt_labels=torch.ones(3)), "gt_labels"),
        (lambda: RPNThresholdDemo(torch.rand(3, 64, 64), GT_BOXES, anchors, GT_BOXES, torch.ones(2),
                                  post_nms_top_n=-1), "post_nms_top_n"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_no_objects_and_no_proposals():
    empty = RPNThresholdDemo(torch.rand(3, 32, 32), torch.zeros(0, 4), rpn_anchors(2, 16, convention="seed"),
                             torch.zeros(0, 4), torch.zeros(0))
    state = empty.update()
    assert state["positive"] == 0 and state["negative"] == 36 and state["proposals_after"] == 0
    assert empty.figure is not None
