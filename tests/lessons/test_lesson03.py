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

ROOT = Path(__file__).resolve().parents[2]
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
    _check_notation_and_objectness(text)
    _check_targets_and_loss_written_in_the_open(text)
    _check_what_nms_leaves(text)


def _check_notation_and_objectness(text: str) -> None:
    """C counts the object classes; the library's num_classes is C + 1; objectness x class = class score."""
    assert "C = 3 object classes + background at index 0" in text
    assert "head output: (2, 24, 4, 4) = (batch, 3 x (4 + 3 + 1), 4, 4)" in text
    dog, cat, background = (math.exp(v) for v in (0.1, -2.0, 0.2))
    total = dog + cat + background
    objectness, dog_given_object = 1 - background / total, dog / (dog + cat)
    assert (f"1 - p(background) = {objectness:.3f}, p(dog | object) = {dog_given_object:.3f}, "
            f"p(cat | object) = {1 - dog_given_object:.3f}") in text
    assert f"= (p(dog), p(cat)) = ({dog / total:.3f}, {cat / total:.3f})" in text
    products = re.search(r"objectness x p\(class \| object\) = \(([\d.]+), ([\d.]+)\) = \(p\(dog\), p\(cat\)\) = "
                         r"\(([\d.]+), ([\d.]+)\)", text)
    assert products and products.group(1, 2) == products.group(3, 4)


def _check_targets_and_loss_written_in_the_open(text: str) -> None:
    """The lesson's own targets and loss agree with course_lib's, and its printed assignments are right."""
    assert "same labels: True  same objects: True  same responsible: True" in text
    offsets = float(re.search(r"largest offset difference from yolo.build_targets: ([\d.e+-]+)", text).group(1))
    assert offsets < 1e-5
    differences = [float(d) for d in re.findall(r"yolo.yolo_loss [\d.]+, difference ([\d.e+-]+)", text)]
    assert len(differences) == 3 and max(differences) < 1e-5
    objects, responsible, lost = map(int, re.search(
        r"training objects: (\d+), responsible predictions: (\d+) \((\d+) lost", text).groups())
    assert objects - responsible == lost and 0 <= lost < objects / 10
    # Every printed assignment: the centre lies in the cell, and the index is (c_y W + c_x) k + a on a 4x4 grid.
    grid, stride, anchors = 4, 16, 3
    rows = re.findall(r"centre \(\s*([\d.]+),\s*([\d.]+)\)\): cell \((\d), (\d)\), anchor (\d) -> prediction (\d+)", text)
    assert len(rows) >= 3
    for x, y, cell_x, cell_y, anchor, index in rows:
        assert (int(cell_x), int(cell_y)) == (min(int(float(x) // stride), grid - 1), min(int(float(y) // stride), grid - 1))
        assert int(index) == (int(cell_y) * grid + int(cell_x)) * anchors + int(anchor)
    shown = re.search(r"responsible predictions: \[([\d, ]+)\]", text).group(1)
    assert sorted(int(i) for i in shown.split(",")) == sorted({int(row[-1]) for row in rows})


def _check_what_nms_leaves(text: str) -> None:
    """The pictures' captions: NMS removes boxes, and nested pairs it leaves overlap by IoU <= 0.5."""
    summary = re.search(r"(\d+) detections for (\d+) objects in the 100 validation images; "
                        r"nested pairs of one class: (\d+)(?:, largest IoU ([\d.]+))?", text)
    assert summary, text[-3000:]
    if int(summary.group(3)):
        assert float(summary.group(4)) <= 0.5
    removed, kept_before = map(int, re.search(r"validation image \d+: NMS removed (\d+) of (\d+) boxes", text).groups())
    assert 1 <= removed <= kept_before
    left = re.search(r"nested pairs of one class left: (.*)", text).group(1)
    assert left == "none" or all(float(iou) <= 0.5 for iou in re.findall(r"IoU ([\d.]+)", left))


def test_lesson_says_before_each_training_loop_how_long_it_takes():
    cells = nbformat.read(LESSON, as_version=4).cells
    loops = [i for i, c in enumerate(cells) if c.cell_type == "code" and ("fit(" in c.source or "for step in" in c.source)]
    assert len(loops) == 2
    for i in loops:
        before = next(c.source for c in reversed(cells[:i]) if c.cell_type == "markdown")
        assert "quick mode" in before and "full mode" in before and "second" in before, before


def test_lesson_writes_the_notation_once_and_passes_c_plus_one_scores():
    source = "\n".join(c.source for c in nbformat.read(LESSON, as_version=4).cells)
    assert "background included** in $C$" not in source and "C$ class scores, background included" not in source
    assert "num_classes=C + 1" in source and "num_classes=len(CLASSES)" not in source
    assert "largest_object" in source  # the localization warm-up lives in this lesson
    for year, name in (("2014", "MultiBox"), ("2014", "R-CNN"), ("2015", "Fast R-CNN"), ("2015", "Faster R-CNN"),
                       ("2016", "YOLO"), ("2016", "SSD"), ("2017", "RetinaNet")):
        assert f"**{year}, {name}" in source, name
    assert "objectness" in source and "yolo.build_targets" in source and "yolo.yolo_loss" in source


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
