"""Lesson 1 notebook: runs headless offline in quick mode, prints the lesson's facts."""
from __future__ import annotations

import re

import nbformat
import pytest
import torch
import torchvision

from notebooks import INLINE_FIGURES, cell_outputs_text, execute_notebook

NOTEBOOK = "notebooks/01_blocks_and_resnets.ipynb"


@pytest.fixture(scope="module")
def executed(repo_root):
    return execute_notebook(repo_root / NOTEBOOK, env=INLINE_FIGURES)


@pytest.fixture(scope="module")
def text(executed):
    return cell_outputs_text(executed)


@pytest.mark.notebook
def test_parameter_counts_agree(text):
    for name, count in [("ResNet18", "11,689,512"), ("ResNet34", "21,797,672"), ("ResNet50", "25,557,032")]:
        assert f"{name}: ours {count} | course_lib {count} | torchvision {count} parameters; all equal: True" in text
    assert "total parameters: ours 25,557,032, torchvision 25,557,032" in text
    assert "same output as course_lib: False" not in text
    assert text.count("same output as course_lib: True") == 4
    assert "ResNet18 and course_lib's give the same logits: True" in text


@pytest.mark.notebook
def test_shapes_and_downsampling(text):
    assert "block with downsampling      -> (1, 128, 28, 28)" in text
    assert "block without downsampling   -> (1, 64, 56, 56)" in text
    assert "5 halvings: 224 / 2 ** 5 = 7; the total downsampling factor is 2 ** 5 = 32" in text
    assert "stage5 (512, 7, 7) -> logits (1, 1000)" in text
    assert "stage5 (512, 10, 10) -> logits (1, 1000)" in text  # 320x320 input
    assert "feature map (1, 512, 25, 25) -> pooled (1, 512, 1, 1)" in text
    assert "one stem object in two models, same weight tensor: True" in text
    assert "a fresh stem per model, same weight tensor:        False" in text


@pytest.mark.notebook
def test_parameter_arithmetic(text):
    for number in ["1,180,160", "3,671,552", "13,110,784", "6,034,432", "4,459,520", "14,953,472",
                   "13,114,368", "14,964,736", "209,729,536"]:
        assert number in text, number
    assert "BN(conv with bias) == BN(conv without): True" in text
    assert "3x3x256 -> 512 with bias: 1,180,160; without: 1,179,648" in text


@pytest.mark.notebook
def test_memory_budget(text):
    table_row = r"^(parameters|gradients|Adam state|activations)\s+([\d.]+ MB\s+[\d.]+ MB)$"
    rows = dict(re.findall(table_row, text, flags=re.M))
    assert set(rows) == {"parameters", "gradients", "Adam state", "activations"}
    for key in ("parameters", "gradients"):
        assert rows[key].split() == ["102.2", "MB", "102.2", "MB"]
    assert rows["Adam state"].split() == ["204.5", "MB", "204.5", "MB"]
    arithmetic, measured = (float(v) for v in re.findall(r"[\d.]+", rows["activations"]))
    assert 0.9 < measured / arithmetic < 1.1


@pytest.mark.notebook
def test_offline_weights_notice_and_pictures(executed, text):
    notices = [line for line in text.splitlines() if "unavailable" in line]
    assert len(notices) == 1
    assert notices[0].startswith(
        "\u26a0 ResNet50_Weights.IMAGENET1K_V2 unavailable (offline, no local resnet50-11ad3fa6.pth): "
        "download https://download.pytorch.org/models/resnet50-11ad3fa6.pth into "
    )
    assert notices[0].endswith("or set COURSE_WEIGHTS_MIRROR to a folder or URL holding resnet50-11ad3fa6.pth.")
    assert "Continuing with random weights" in text
    difference = float(re.search(r"largest difference between our logits and torchvision's: (\S+)", text)[1])
    assert difference < 1e-5
    images = [out for cell in executed.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) >= 9


def _figure_cells(executed, call: str) -> list:
    """The code cells that call ``call``, each with its image outputs."""
    return [cell for cell in executed.cells if cell.cell_type == "code" and call in cell.source]


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.notebook
def test_architecture_pictures_where_the_text_introduces_them(executed):
    headings = [i for i, cell in enumerate(executed.cells) if cell.cell_type == "markdown" and cell.source.startswith("#")]

    def section(index: int) -> str:
        return executed.cells[max(h for h in headings if h <= index)].source.splitlines()[0]

    index = {id(cell): i for i, cell in enumerate(executed.cells)}
    blocks = _figure_cells(executed, "draw_block(")
    layouts = _figure_cells(executed, "draw_stage_layouts(")
    assert [section(index[id(c)]) for c in blocks] == ["## 2. The residual block", "### The bottleneck block"]
    assert [section(index[id(c)]) for c in layouts] == ["## 4. ResNet18, then ResNet34", "### The bottleneck block"]
    assert all(_images(cell) == 1 for cell in blocks + layouts)


@pytest.mark.notebook
def test_drawn_layouts_are_the_models_layouts(text):
    """The layout lines are read from the lesson's own models and compared with course_lib's and torchvision's."""
    sides = "sides [56, 56, 28, 14, 7]"
    for name, blocks, channels in [("ResNet18", "[2, 2, 2, 2]", "[64, 64, 128, 256, 512]"),
                                   ("ResNet34", "[3, 4, 6, 3]", "[64, 64, 128, 256, 512]"),
                                   ("ResNet50", "[3, 4, 6, 3]", "[64, 256, 512, 1024, 2048]")]:
        line = f"{name}: blocks {blocks}, channels {channels}, strides [4, 1, 2, 2, 2], {sides}"
        assert f"{line}; same as course_lib's and torchvision's: True" in text
        if name != "ResNet50":
            assert f"{line}; same as torchvision's: True" in text
    assert "torchvision's: False" not in text
    assert "basic block on 64 channels: 73,984 parameters; bottleneck block on 256 channels: 70,400 parameters" in text


@pytest.mark.notebook
def test_the_rest_of_the_family(text):
    expected = {
        "resnet101": "bottleneck blocks [3, 4, 23, 3]; stage 2: 3x3 conv on 64 channels in 1 group(s)",
        "resnet152": "bottleneck blocks [3, 8, 36, 3]; stage 2: 3x3 conv on 64 channels in 1 group(s)",
        "resnext50_32x4d": "bottleneck blocks [3, 4, 6, 3]; stage 2: 3x3 conv on 128 channels in 32 group(s)",
        "wide_resnet50_2": "bottleneck blocks [3, 4, 6, 3]; stage 2: 3x3 conv on 128 channels in 1 group(s)",
    }
    for name, facts in expected.items():
        assert re.search(rf"^{name}\s+{re.escape(facts)}, block output 256 channels$", text, flags=re.M), name


@pytest.mark.notebook
def test_the_prose_names_the_family_with_the_printed_numbers(executed):
    prose = "\n".join(cell.source for cell in executed.cells if cell.cell_type == "markdown")
    for fact in ["3, 4, 23, 3", "3, 8, 36, 3", "32 groups", "cardinality", "128 instead of 64", "`wide_resnet50_2`",
                 "`resnext50_32x4d`"]:
        assert fact in prose, fact


@pytest.mark.notebook
def test_long_cells_say_how_long_they_take(executed):
    """The memory measurement is the lesson's one long cell: the text before it gives both running times."""
    cells = executed.cells
    memory = next(i for i, cell in enumerate(cells)
                  if cell.cell_type == "code" and "BATCH = 2 if config.quick_mode()" in cell.source)
    before = cells[memory - 1].source
    assert re.search(r"about \d+ seconds in quick mode and about \d+ seconds with 16 images", before)
    assert "quick mode" in cells[0].source and "minute" in cells[0].source


@pytest.mark.notebook
def test_pretrained_path_with_a_mirror(repo_root, tmp_path):
    """Section 8 alone, with a mirror holding a (random) file under ResNet50_Weights' real file name."""
    mirror, torch_home = tmp_path / "mirror", tmp_path / "torch"
    mirror.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), mirror / "resnet50-11ad3fa6.pth")
    nb = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## 8."))
    end = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Summary"))
    nb.cells = nb.cells[:3] + nb.cells[start:end]  # title, Colab set-up, imports, then section 8
    path = tmp_path / "section8.ipynb"
    nbformat.write(nb, path)
    env = {"COURSE_WEIGHTS_MIRROR": str(mirror), "TORCH_HOME": str(torch_home)}
    out = cell_outputs_text(execute_notebook(path, env=env))
    assert "loaded ResNet50_Weights.IMAGENET1K_V2 into our ResNet50" in out
    assert "unavailable" not in out
    assert "largest difference between our logits and torchvision's: 0.0e+00" in out
    assert (torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").is_file()
