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
from notebooks import INLINE_FIGURES, cell_outputs_text, execute_notebook

LESSON = Path(__file__).resolve().parents[2] / "notebooks" / "02_convnext.ipynb"
STEP_LINE = re.compile(
    r"\[(\d+)\] (.+?): ([\d,]+) parameters.*?, ([\d.]+) GMACs measured \| paper: ([\d.]+) GFLOPs, top-1 ([\d.]+)%"
)
PAPER_TOP1 = [78.8, 79.4, 79.5, 78.3, 80.5, 80.6, 79.9, 80.6, 80.6, 81.3, 81.4, 81.5, 82.0]


def _logit_differences(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"max \|difference of logits\| = ([\d.e+-]+)", text)]


@pytest.fixture(scope="module")
def executed():
    """The lesson run top to bottom, offline, with figures as image outputs."""
    return execute_notebook(LESSON, env=INLINE_FIGURES)


@pytest.fixture(scope="module")
def text(executed):
    return cell_outputs_text(executed)


def _section(nb, heading: str) -> list:
    """The cells from the markdown cell starting with ``heading`` up to the next ``## `` heading."""
    start = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" and cell.source.startswith(heading))
    end = next((i for i in range(start + 1, len(nb.cells))
                if nb.cells[i].cell_type == "markdown" and nb.cells[i].source.startswith("## ")), len(nb.cells))
    return nb.cells[start:end]


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.notebook
def test_lesson_runs_offline_and_prints_its_measurements(text):

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


@pytest.mark.notebook
def test_the_block_written_out_step_by_step(text):
    steps = re.findall(r"^(.+?)\s{2,}(\(1, \d+, \d+, \d+\))$", text, flags=re.M)
    assert steps == [
        ("input x (B, C, H, W)", "(1, 96, 56, 56)"),
        ("depthwise 7x7 conv", "(1, 96, 56, 56)"),
        ("permute to channels-last (B, H, W, C)", "(1, 56, 56, 96)"),
        ("LayerNorm over the C values of a pixel", "(1, 56, 56, 96)"),
        ("Linear C -> 4C (a 1x1 conv)", "(1, 56, 56, 384)"),
        ("GELU", "(1, 56, 56, 384)"),
        ("Linear 4C -> C", "(1, 56, 56, 96)"),
        ("x layer scale (C values, start at 1e-6)", "(1, 56, 56, 96)"),
        ("permute back to (B, C, H, W)", "(1, 96, 56, 56)"),
        ("+ x (the shortcut)", "(1, 96, 56, 56)"),
    ]
    # the plain block agrees with course_lib's and with torchvision's CNBlock, weights copied over
    differences = dict(re.findall(r"^(course_lib ConvNeXtBlock|torchvision CNBlock): max \|difference\| = (\S+)$",
                                  text, flags=re.M))
    assert set(differences) == {"course_lib ConvNeXtBlock", "torchvision CNBlock"}
    assert all(float(value) < 1e-6 for value in differences.values())
    branch = float(re.search(r"our block: output \(2, 96, 28, 28\), branch up to ([\d.]+)", text)[1])
    assert branch > 1.0  # the branch is not hidden behind a tiny layer scale: the comparison means something
    dropped = float(re.search(r"share of the 400 samples left with the shortcut only = ([\d.]+)", text)[1])
    assert 0.4 < dropped < 0.6  # p = 0.5; 400 samples put the share within 0.1 of it with probability > 0.99


@pytest.mark.notebook
def test_the_roadmap_switches_are_explained_before_use(executed, text):
    cells = executed.cells
    table = next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and "| switch |" in cell.source)
    design = next(i for i, cell in enumerate(cells) if cell.cell_type == "code" and "class Design" in cell.source)
    block = next(i for i, cell in enumerate(cells) if cell.cell_type == "code" and "class RoadmapBlock" in cell.source)
    assert table < design < block
    fields = re.findall(r"^    (\w+): ", cells[design].source, flags=re.M)
    assert len(fields) == 12
    for field in fields:
        assert f"| `{field}` |" in cells[table].source, field
    assert "ResNet bottleneck    1x1 256 -> 64 | spatial 64 -> 64 | 1x1 64 -> 256" in text
    assert "inverted bottleneck  1x1 64 -> 256 | spatial 256 -> 256 | 1x1 256 -> 64" in text
    assert "spatial conv first   spatial 64 -> 64 | 1x1 64 -> 256 | 1x1 256 -> 64" in text


@pytest.mark.notebook
def test_the_last_section_shows_a_picture_offline(executed, text):
    section = _section(executed, "## 7.")
    code = [cell for cell in section if cell.cell_type == "code"]
    assert _images(code[-1]) == 1  # the photo and the five highest scores, with random weights
    assert "Continuing with a randomly initialised ConvNeXt-T" in text
    ranking = re.search(r"^random weights, five highest scores: (.*)$", text, flags=re.M)
    scores = [float(item.rsplit(" ", 1)[1].rstrip("%")) for item in ranking[1].split(", ")]
    assert len(scores) == 5 and max(scores) < 1.0  # what the text says: no class above about 1%
    assert "RANDOM weights" in code[-1].source  # the picture says so in its title


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

    env = {"COURSE_WEIGHTS_MIRROR": str(mirror), "TORCH_HOME": str(tmp_path / "torch"), **INLINE_FIGURES}
    executed = execute_notebook(_pretrained_section(tmp_path), env=env)
    text = cell_outputs_text(executed)

    assert "unavailable" not in text
    differences = _logit_differences(text)
    assert len(differences) == 1 and differences[0] < 1e-4  # ours == torchvision(weights=...)
    top5 = re.search(r"top-5: (.*)", text)
    assert top5 and len(top5.group(1).split(", ")) == 5
    assert "randomly initialised" not in text
    picture = next(cell for cell in executed.cells if cell.cell_type == "code" and "ax_photo" in cell.source)
    assert _images(picture) == 1
