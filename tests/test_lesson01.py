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
    assert len(images) >= 5


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
