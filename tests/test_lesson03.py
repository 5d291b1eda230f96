"""Lesson 3 (anchors and YOLO decoding): the lesson and its exercise run headless and offline, print
the exam's answers, and the interactive decoder works without a browser."""
from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib.widgets import YoloDecodingDemo
from notebooks import cell_outputs_text, execute_notebook

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "03_anchors_and_yolo_decoding.ipynb"
SOLUTION = ROOT / "solutions" / "03_anchors_and_yolo_decoding.ipynb"
QUESTION_POINTS = {"q1_tests": 2, "q2_tests": 2, "q3_tests": 2, "q4_tests": 2, "q5_tests": 3, "q6_tests": 2}


@pytest.mark.notebook
def test_lesson_runs_offline_and_prints_the_exam_answers():
    text = cell_outputs_text(execute_notebook(LESSON))

    # Exam exercise 1: 320 / 32 = 10, and 2 * (4 + 3) = 14 channels (background counted).
    assert "grid: (10, 10)  channels: 14" in text
    assert "a real detector with five stages on a 320x320 image: (1, 14, 10, 10)" in text
    # Exam exercise 2, answer by answer.
    for line in ("1. boxes: 1", "2. centre: (16, 32)", "3. size: 5 x 27.18", "4. most likely: dog",
                 "5. p(dog) = 0.95, p(cat) = 0.00, p(background) = 0.047"):
        assert line in text, line
    # The source's ResNet-50 detector and the caution example.
    assert "7x7 grid: (7, 7)  channels: 760  boxes: 392" in text
    assert "most likely class: background" in text
    assert "best non-background class: dog with p = 0.45; shown at threshold 0.4: True" in text
    # The step-by-step decoder agrees with the library; the class axis is the one that sums to 1.
    assert "same as course_lib.detection.yolo.decode: True" in text
    assert "softmax over classes: tensor([1., 1., 1.])" in text
    assert "yolo.softmax_with_infinities: [1.0, 0.0, 0.0]" in text
    # Our backbone: stride 16 after four stages, each cell sees 91 x 91 pixels.
    assert "after stage 4: stride 16 px, receptive field  91 x  91 px" in text
    # k-means anchors: mean IoU grows with k.
    mean_ious = [float(v) for v in re.findall(r"k = \d: mean IoU of a box with its best anchor ([\d.]+)", text)]
    assert len(mean_ious) == 8 and mean_ious == sorted(mean_ious) and 0.5 < mean_ious[0] < mean_ious[-1] < 1
    # The trained detector finds objects even in quick mode.
    map_50 = float(re.search(r"mAP@0.5 = ([\d.]+)", text).group(1))
    assert map_50 > 0.1, text[-2000:]
    assert "quick mode: True" in text


@pytest.mark.notebook
def test_solution_passes_every_visible_check():
    text = cell_outputs_text(execute_notebook(SOLUTION))
    for question in range(1, 7):
        assert re.search(rf"\u2714 Q{question} \w+: all visible checks passed", text), question
    assert "Answer questions" not in text  # both pictures were drawn


def test_exercise_source_has_six_graded_questions():
    source = nbformat.read(SOLUTION, as_version=4)
    points = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader["points"]
              for c in source.cells if c.metadata.get("nbgrader", {}).get("grade")}
    assert points == QUESTION_POINTS
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and meta["grade"]:
            assert "### BEGIN HIDDEN TESTS" in cell.source and "checks.passed(" in cell.source
        if meta and meta["solution"]:
            assert "### BEGIN SOLUTION" in cell.source and cell.source.lstrip().startswith("def ")
    # The answers are written from torch alone; the library only appears in tests and read-only cells.
    answers = "\n".join(c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("solution"))
    assert "course_lib" not in answers and "torchvision" not in answers


def test_decoding_demo_draws_the_exam_without_a_browser():
    demo = YoloDecodingDemo(grid_size=1, stride=32, anchor=(5, 10), cell=(0, 0))
    decoded = demo.update(t_x=0.0, t_y=math.inf, t_w=0.0, t_h=1.0, logits=[7.0, -2.0, 4.0])
    cx, cy, w, h = decoded["box"].tolist()
    assert (cx, cy, w) == (16.0, 32.0, 5.0) and h == pytest.approx(10 * math.e)
    assert [round(p, 3) for p in decoded["probs"].tolist()] == [0.952, 0.0, 0.047]
    assert decoded["label"] == 0 and decoded["shown"]
    assert demo.figure is not None and len(demo.figure.axes) == 2
    assert "dog 0.95" in demo.figure.axes[0].get_title()

    caution = YoloDecodingDemo().update(logits=[0.1, -2.0, 0.2])
    assert caution["label"] == 0 and caution["shown"] and caution["score"] == pytest.approx(0.449, abs=1e-3)
    hidden = YoloDecodingDemo().update(logits=[0.1, -2.0, 3.0])
    assert not hidden["shown"]


def test_decoding_demo_sliders_redraw_and_keep_the_centre_in_its_cell():
    demo = YoloDecodingDemo(grid_size=4, stride=32, anchor=(40, 64), cell=(1, 2))
    panel = demo.widget()
    offsets, logits = panel.sliders["offsets"], panel.sliders["logits"]
    assert [s.description for s in offsets] == ["t_x", "t_y", "t_w", "t_h"] and len(logits) == 3
    for value in (offsets[0].min, offsets[0].max):
        offsets[0].value = value  # what dragging the slider does
        box = panel.redraw()["box"]
        assert 32.0 <= float(box[0]) <= 64.0 and 64.0 <= float(box[1]) <= 96.0
    offsets[2].value = 1.0
    assert panel.redraw()["box"][2].item() == pytest.approx(40 * math.e, rel=1e-5)
    with pytest.raises(ValueError, match="logits"):
        demo.decode(logits=[1.0, 2.0])
    with pytest.raises(ValueError, match="cell"):
        YoloDecodingDemo(grid_size=2, cell=(2, 0))
    torch.testing.assert_close(demo.decode()["probs"], torch.full((3,), 1 / 3))
