"""course_lib's small helpers: device, seeding, parameter counts, self-checks, Colab cells."""
from __future__ import annotations

import random

import nbformat
import pytest
import torch
from IPython.core.inputtransformer2 import TransformerManager
from torch import nn

import course_lib
from course_grader import colab
from course_lib import checks, config


def test_get_device_defaults_and_override(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    device = course_lib.get_device()
    if expected:
        assert device.type == expected
    assert course_lib.get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert course_lib.get_device() == torch.device("cpu")


def test_seed_everything_makes_python_and_torch_repeatable():
    course_lib.seed_everything(7)
    a = (random.random(), torch.rand(3))
    gen = course_lib.seed_everything(7)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert torch.equal(torch.rand(2, generator=gen), torch.rand(2, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(TypeError, match="seed must be an int"):
        course_lib.seed_everything(1.5)


def test_count_params_counts_shared_parameters_once_and_trainable_only():
    linear = nn.Linear(3, 4)  # 12 + 4
    model = nn.Sequential(linear, linear, nn.Linear(4, 2))
    assert course_lib.count_params(model) == 16 + 10
    model[2].weight.requires_grad_(False)
    assert course_lib.count_params(model, trainable_only=True) == 16 + 2
    with pytest.raises(TypeError, match="torch.nn.Module"):
        course_lib.count_params(torch.zeros(3))


def test_checks_give_one_line_verdicts_with_hints(capsys):
    with pytest.raises(AssertionError) as err:
        checks.check_shape("Q2 residual block", torch.zeros(1, 128, 56, 56), (1, 128, 28, 28), hint="use stride 2")
    assert str(err.value) == (
        "Q2 residual block: output shape (1, 128, 28, 28) expected, got (1, 128, 56, 56)\nHint: use stride 2"
    )
    with pytest.raises(checks.CheckFailed, match=r"Q1: values differ .*largest difference 0.5"):
        checks.check_close("Q1", torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]))
    with pytest.raises(checks.CheckFailed, match="should be a Tensor, got list"):
        checks.check_close("Q1", [1.0], torch.tensor([1.0]))
    with pytest.raises(checks.CheckFailed, match="1180160 expected, got 1179648"):
        checks.check_equal("Q3", 1179648, 1180160)
    with pytest.raises(checks.CheckFailed, match="a float"):
        checks.check_equal("Q3", 3.0, 3)
    checks.check_close("Q1", torch.tensor([1.0, 2.0 + 1e-7]), [1.0, 2.0])
    checks.passed("Q1")
    assert "Q1: all visible checks passed" in capsys.readouterr().out


def test_colab_setup_cell_is_valid_ipython_and_uses_the_configured_repository():
    source = colab.setup_cell_source()
    python = TransformerManager().transform_cell(source)
    compile(python, "<setup>", "exec")
    assert config.repository_url() in source
    for package in config.COLAB_EXTRA_PACKAGES:
        assert package in source


def test_stamping_inserts_then_keeps_badge_and_setup_cell():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Lesson"), nbformat.v4.new_code_cell("x = 1")])
    assert colab.stamp(nb, "solutions/01_x.ipynb")
    assert config.colab_url("exercises/01_x.ipynb") in nb.cells[0].source  # students open the released copy
    assert nb.cells[1].source == colab.setup_cell_source()
    assert nb.cells[2].source == "x = 1"
    assert not colab.stamp(nb, "solutions/01_x.ipynb")
    with pytest.raises(ValueError, match="markdown title"):
        colab.stamp(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), "notebooks/x.ipynb")


def test_quick_and_offline_modes_follow_the_environment(monkeypatch):
    monkeypatch.setenv(config.QUICK_ENV, "0")
    assert not config.quick_mode()
    monkeypatch.setenv(config.QUICK_ENV, "1")
    assert config.quick_mode()
    monkeypatch.setenv(config.OFFLINE_ENV, "yes")
    assert config.offline()
