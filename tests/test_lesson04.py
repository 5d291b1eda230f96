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
    from test_voc import _write_voc

    root = _write_voc(tmp_path / "pascal")
    nb = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## 14."))
    nb.cells = nb.cells[:3] + nb.cells[start:start + 2]  # title, Colab set-up, imports, then the VOC section
    path = tmp_path / "section14.ipynb"
    nbformat.write(nb, path)
    out = cell_outputs_text(execute_notebook(path, env={**INLINE_FIGURES, "COURSE_VOC_ROOT": str(root)}))
    assert "Pascal VOC 2007 trainval: 3 images" in out
    assert re.search(r"the same loss on VOC: \d+\.\d{3} \(\d+ positive anchors in 3 images\)", out)
