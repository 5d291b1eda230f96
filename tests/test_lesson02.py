"""Lesson 2 (ConvNeXt) runs top to bottom offline and prints the measurements it teaches; its
pretrained-weights section also runs when a mirror holds the weight file."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision
from torchvision.models import ConvNeXt_Tiny_Weights

from course_lib.weights import weights_file_name
from notebooks import cell_outputs_text, execute_notebook

LESSON = Path(__file__).resolve().parents[1] / "notebooks" / "02_convnext.ipynb"
STEP_LINE = re.compile(
    r"\[(\d+)\] (.+?): ([\d,]+) parameters.*?, ([\d.]+) GMACs measured \| paper: ([\d.]+) GFLOPs, top-1 ([\d.]+)%"
)
PAPER_TOP1 = [78.8, 79.4, 79.5, 78.3, 80.5, 80.6, 79.9, 80.6, 80.6, 81.3, 81.4, 81.5, 82.0]


def _logit_differences(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"max \|difference of logits\| = ([\d.e+-]+)", text)]


@pytest.mark.notebook
def test_lesson_runs_offline_and_prints_its_measurements():
    text = cell_outputs_text(execute_notebook(LESSON))

    assert "torchvision resnet50: 25,557,032 parameters, 4.09 GMACs" in text
    # the seed's depthwise arithmetic, checked three ways
    assert "by hand 451,680, conv_params 451,680, PyTorch 451,680" in text
    assert "by hand 4,800, conv_params 4,800, PyTorch 4,800" in text
    assert "BatchNorm removes the bias: True" in text and "LayerNorm removes the bias: False" in text

    steps = STEP_LINE.findall(text)
    assert [int(s[0]) for s in steps] == list(range(13))
    assert [float(s[5]) for s in steps] == PAPER_TOP1
    assert steps[0][2] == "25,557,032"  # step 0 is exactly ResNet-50
    for index, name, _, measured, paper, _ in steps:
        # the network we wrote costs what the paper reports, to the paper's rounding
        assert abs(float(measured) - float(paper)) <= 0.06, (index, name, measured, paper)

    assert "roadmap end 28,582,504 + layer scale 6,624 = 28,589,128" in text
    assert "course_lib convnext_tiny: 28,589,128 parameters, 4.46 GMACs" in text
    assert "torchvision convnext_tiny: 28,589,128 parameters" in text
    assert "parameters: 70,400" in text and "parameters: 79,296" in text  # the two blocks side by side
    assert "(56, 56, 384)" in text  # the ConvNeXt block's channels-last MLP

    differences = _logit_differences(text)
    assert len(differences) == 1 and differences[0] < 1e-4  # random torchvision weights in our model
    notice = [line for line in text.splitlines() if "ConvNeXt_Tiny_Weights.IMAGENET1K_V1 unavailable" in line]
    assert len(notice) == 1 and "offline" in notice[0]
    assert "top-5" not in text


def _pretrained_section(tmp_path: Path) -> Path:
    """The lesson's import cell and its pretrained-weights section, as a notebook of their own."""
    nb = nbformat.read(LESSON, as_version=4)

    def first(condition) -> int:
        return next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and condition(cell.source))

    imports = first(lambda source: "import torchvision" in source)
    helper = first(lambda source: "def empty_model" in source)
    pretrained = first(lambda source: "try_pretrained(" in source)
    nb.cells = [nb.cells[imports], nb.cells[helper], *nb.cells[pretrained:]]
    path = tmp_path / LESSON.name
    nbformat.write(nb, path)
    return path


@pytest.mark.notebook
def test_pretrained_section_uses_weights_from_a_mirror(tmp_path):
    weights = ConvNeXt_Tiny_Weights.IMAGENET1K_V1
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    # Random weights stand in for torchvision's file (no network here); the code path is the same.
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in torchvision.models.convnext_tiny().state_dict().items()}
    state_dict = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    torch.save(state_dict, mirror / weights_file_name(weights))

    env = {"COURSE_WEIGHTS_MIRROR": str(mirror), "TORCH_HOME": str(tmp_path / "torch")}
    text = cell_outputs_text(execute_notebook(_pretrained_section(tmp_path), env=env))

    assert "unavailable" not in text
    differences = _logit_differences(text)
    assert len(differences) == 1 and differences[0] < 1e-4  # ours == torchvision(weights=...)
    top5 = re.search(r"top-5: (.*)", text)
    assert top5 and len(top5.group(1).split(", ")) == 5
