"""Exercise 1's tests, run in this process: the solution passes, typical mistakes fail with a useful message.

Each question's cells (set-up, answer, tests with hidden tests) run with `exec`, so a dozen
variants cost no kernel start. The mistakes include the seeds' own (a bias counted for bias-free
convolutions, a block that prints in forward).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_lib.checks import CheckFailed
from course_grader.submission import grade_id


SOURCE = Path(__file__).resolve().parents[2] / "solutions" / "01_blocks_and_resnets.ipynb"


@pytest.fixture(scope="module")
def cells() -> dict[str, str]:
    nb = nbformat.read(SOURCE, as_version=4)
    return {grade_id(c): c.source for c in nb.cells if grade_id(c) and c.cell_type == "code"}


def run_question(cells: dict[str, str], question: int, answer: str | None = None) -> None:
    """Run set-up, the question's answer (or ``answer``) and its test cell, hidden tests included."""
    namespace: dict = {}
    exec(cells["setup"], namespace)
    exec(answer if answer is not None else cells[f"q{question}_answer"], namespace)
    exec(cells[f"q{question}_tests"], namespace)


@pytest.mark.parametrize("question", [1, 2, 3, 4])
def test_the_solution_passes_visible_and_hidden_tests(cells, question):
    run_question(cells, question)


def _mistake(cells, question: int, old: str, new: str) -> str:
    source = cells[f"q{question}_answer"]
    assert old in source, old
    return source.replace(old, new)


MISTAKES = {
    # question, what is replaced, by what, the message the student gets
    "bias counted even without bias (seed error)": (
        1, "return (weights_per_filter + int(bias)) * out_channels", "return (weights_per_filter + 1) * out_channels",
        "without bias: 1179648 expected, got 1180160"),
    "float instead of int": (
        1, "return (weights_per_filter + int(bias)) * out_channels",
        "return float((weights_per_filter + int(bias)) * out_channels)", "(a float)"),
    "a block that prints in forward (seed error)": (
        2, "out = torch.relu(self.bn1(self.conv1(x)))", "print(x.shape); out = torch.relu(self.bn1(self.conv1(x)))",
        "printed something in forward"),
    "convolutions with bias": (
        2, "kernel_size=3, stride=stride, padding=1, bias=False", "kernel_size=3, stride=stride, padding=1",
        "these convolutions have a bias: ['conv1']"),
    "projection only when downsampling (hidden tests only)": (
        2, "if downsample or in_channels != out_channels:", "if downsample:", "other layer names than expected"),
    "no final ReLU": (
        2, "return torch.relu(out + self.shortcut(x))", "return out + self.shortcut(x)",
        "outputs with the residual branch switched off differ"),
    "bottleneck stride on the first 1x1 conv": (
        3, "self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)",
        "self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, stride=stride, bias=False)",
        "strides of conv1 and conv2 in a downsampling block: ((1, 1), (2, 2)) expected, got ((2, 2), (2, 2))"),
    "bottleneck without ReLU after the 3x3 conv (hidden tests only)": (
        3, "out = torch.relu(self.bn2(self.conv2(out)))", "out = self.bn2(self.conv2(out))", "outputs (8, 16"),
    "true division in the size formula": (
        4, "return (size + 2 * padding - kernel_size) // stride + 1", "return (size + 2 * padding - kernel_size) / stride + 1",
        "(a float)"),
    "halving with floor, wrong for odd sizes (hidden tests only)": (
        4, "h = conv_output_size(h, 3, stride=2, padding=1)", "h = h // 2", "stage_output_shapes(1, 1, (64, 128, 256, 512))"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_typical_mistakes_fail_with_a_useful_message(cells, name):
    question, old, new, message = MISTAKES[name]
    with pytest.raises(CheckFailed) as caught:
        run_question(cells, question, _mistake(cells, question, old, new))
    assert str(caught.value).startswith(f"Q{question} ")
    assert message in str(caught.value)


def test_untouched_answers_raise_not_implemented(cells):
    exercise = nbformat.read(SOURCE.parents[1] / "exercises" / SOURCE.name, as_version=4)
    stubs = {grade_id(c): c.source for c in exercise.cells if grade_id(c)}
    for question in (1, 2, 3, 4):
        with pytest.raises(NotImplementedError):
            run_question(cells, question, stubs[f"q{question}_answer"])
