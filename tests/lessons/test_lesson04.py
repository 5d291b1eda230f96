"""Lesson 4 notebook: runs headless offline in quick mode, prints the lesson's facts."""
from __future__ import annotations

import re

import nbformat
import pytest

from notebooks import INLINE_FIGURES, cell_outputs_text, execute_notebook

NOTEBOOK = "notebooks/04_ssd_matching_and_focal_loss.ipynb"


@pytest.fixture(scope="module")
def executed(repo_root):
    return execute_notebook(repo_root / NOTEBOOK, env=INLINE_FIGURES)


@pytest.fixture(scope="module")
def text(executed):
    return cell_outputs_text(executed)


def test_committed_without_the_seeds_fastai_idioms(repo_root):
    """Layout, clean outputs and CPU/GPU idioms are checked for every notebook in test_project.py."""
    nb = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    assert nb.cells[0].source.startswith("# Lesson 4")
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "1 - pos" not in code  # ERRATA 002-1: ~pos
    assert "PLACEHOLDER" not in "\n".join(cell.source for cell in nb.cells)
    # The largest-object warm-up is lesson 3's: lesson 4 refers back to it instead of repeating it.
    assert "LargestObjectNet" not in code and "Lesson 3 started from one object per image" in nb.cells[5].source
    # The core is written out in the open before the library is used.
    for written_out in ("def match_by_hand(", "matched[best_anchor] = torch.arange(len(gt_boxes))",
                        ".permute(0, 2, 3, 1).reshape(", "def train_by_hand(", "optimizer.step()"):
        assert written_out in code, written_out
    prose = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "0.3985" in prose and "0.3986" in prose  # the printed value, and why the original lesson shows another
    for fact in ("3 negatives per positive", "log(1000 / 16)", "β = 1/9", "fastai", "feature maps of several scales",
                 "background at\nindex 0", "437 seconds", "209 seconds"):
        assert fact in prose, fact


@pytest.mark.notebook
def test_the_lessons_worked_matching_example(text):
    assert "each object's best anchor: [14, 13, 11] with IoU [0.398" in text
    assert "each anchor's best object:  [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2, 1, 1, 0, 0]" in text
    bg = "'bg', "
    assert f"[{bg * 11}'sofa', 'bg', 'diningtable', 'chair', 'bg']" in text
    assert "with threshold 0.25, anchor 12 goes to: diningtable" in text
    for value in ("0.3986", "0.4538", "0.1897", "0.2599"):
        assert value in text, value


@pytest.mark.notebook
def test_matching_written_out_agrees_with_match_anchors(text):
    assert "chair and anchor 14: 0.3986 from the printed boxes, 0.3985 from pixels" in text
    assert "-> the same: True" in text
    assert "a box over four anchors, matched by hand: [0] ; by match_anchors: [0, 1, 4, 5]" in text
    assert "two objects sharing anchor 5: by hand it goes to object 1 ; match_anchors gives it to object 0" in text
    agree = int(re.search(r"training images where the two agree, with the 16 anchors: (\d+) of 200", text)[1])
    assert 150 <= agree < 200  # the refinements matter on real data, and most images agree


@pytest.mark.notebook
def test_head_targets_and_training_written_out(text):
    assert "features (8, 96, 4, 4) -> class maps (8, 4, 4, 4), box maps (8, 4, 4, 4)" in text
    assert "by hand = flatten_conv: True ; = the model's outputs: True" in text
    assert "anchor 6 (row 1, column 2) of image 0: True" in text
    assert "k = 9: class maps (2, 36, 4, 4) -> rows (2, 144, 4); the same as flatten_conv: True" in text
    assert "ssd_targets gives the same: True" in text
    assert "3 steps by hand and with fit: largest difference in the weights 0.0e+00" in text
    assert "offsets of a box 2.00 times the anchor's width" in text
    assert "clamp at log(1000 / 16) = 4.1352: dw = 100 decodes to 62.5 times the anchor's width" in text
    by_hand, library, torch_ = re.search(r"by hand (\[.*?\])\n\s+course_lib: (\[.*?\]) ; torch: (\[.*?\])", text).groups()
    assert by_hand == library == torch_
    positives, kept, negatives = map(int, re.search(
        r"(\d+) positive anchors of 189: hard-negative mining \(3:1\) keeps the (\d+) background anchors with the "
        r"highest loss, of (\d+)", text).groups())
    assert kept == min(3 * positives, negatives) and positives + negatives == 189


@pytest.mark.notebook
def test_shapes_and_the_loss_by_hand(text):
    assert "images (8, 3, 64, 64) -> class logits (8, 16, 4), box outputs (8, 16, 4)" in text
    by_hand = re.search(r"by hand:  localization (\S+), classification (\S+)", text).groups()
    library = re.search(r"ssd_loss: localization (\S+), classification (\S+)", text).groups()
    assert by_hand == library
    assert "189 anchors = (16 + 4 + 1) cells x 9" in text
    assert "the largest box tanh can reach from this anchor: tensor([[0.3125, 0.3125, 0.6875, 0.6875]])" in text
    assert "course_lib focal_loss vs torchvision.ops.sigmoid_focal_loss: difference 0.0e+00" in text
    assert "p_t =  0.9: cross-entropy 0.1054, focal (γ = 2, no α) 0.001054, 100.0 times smaller" in text


@pytest.mark.notebook
def test_trained_detector_and_map_by_hand(text):
    assert "trained with: python -m course_lib.detection.train_shapes_ssd" in text
    shipped = float(re.search(r"held-out images: mAP@0.5 (\S+),", text)[1])
    assert shipped >= 0.9
    for name in ("mAP@0.5", "mAP@0.75", r"mAP@\[.5:.95\]"):
        by_hand, library = re.search(name + r":\s+by hand (\S+), torchmetrics (\S+)", text).groups()
        assert abs(float(by_hand) - float(library)) < 1e-3, (name, by_hand, library)
    assert float(re.search(r"mAP@0.5:\s+by hand ([\d.]+)", text)[1]) >= 0.85
    nms_counts = re.search(r"(\d+) boxes above 0.3 -> (\d+) after NMS", text).groups()
    assert int(nms_counts[0]) > int(nms_counts[1]) > 0


@pytest.mark.notebook
def test_the_pictures_of_the_shipped_detector_are_counted_honestly(text):
    """The prose quotes these numbers (shipped weights, the first 100 held-out images: the same in quick and full mode)."""
    assert ("score >= 0.3 on 100 held-out images: 219 boxes: 187 right, 27 another class on an object, "
            "5 on no object") in text
    assert "scores of the wrong boxes: 0.30 to 0.46; of the right ones: median 0.55" in text
    assert "score >= 0.5: 113 of 230 objects found, 0 wrong boxes" in text
    assert ("image 15: 2 objects; NMS per class keeps 3 boxes (square 0.94, circle 0.69, square 0.36), "
            "across classes 2") in text
    assert "NMS per class: 21 of the 27 boxes of another class sit on an object also found with its own class" in text
    assert ("class-agnostic NMS: 196 boxes: 184 right, 9 another class on an object, 3 on no object; "
            "184 of 230 objects found (per class: 187)") in text
    assert "4 circle as square, 2 circle as triangle" in text


@pytest.mark.notebook
def test_quick_mode_trains_and_says_so(executed, text):
    assert "quick mode: True" in text
    assert "(quick mode: 20 steps only, so both models are barely trained)" in text
    assert re.search(r"^bce\s+\d\.\d{3}", text, re.M) and re.search(r"^focal\s+\d\.\d{3}", text, re.M)
    notices = [line for line in text.splitlines() if "not found" in line]
    assert notices == ["Pascal VOC 2007 not found (put VOCdevkit/ in the course's data/ folder or set COURSE_VOC_ROOT);"
                       " skipping."]
    images = [out for cell in executed.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) >= 12


@pytest.mark.notebook
def test_pascal_voc_section_with_a_local_copy(repo_root, tmp_path):
    """Section 14 alone, on a tiny data set in VOC's layout."""
    from voc_layout import write_voc

    root = write_voc(tmp_path / "pascal")
    nb = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## 13. Pascal VOC"))
    nb.cells = nb.cells[:3] + nb.cells[start:start + 2]  # title, Colab set-up, imports, then the VOC section
    path = tmp_path / "section14.ipynb"
    nbformat.write(nb, path)
    out = cell_outputs_text(execute_notebook(path, env={**INLINE_FIGURES, "COURSE_VOC_ROOT": str(root)}))
    assert "Pascal VOC 2007 trainval: 3 images" in out
    assert re.search(r"the same loss on VOC: \d+\.\d{3} \(\d+ positive anchors in 3 images\)", out)
