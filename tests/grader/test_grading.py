"""The grading pipeline's parts, without kernels: release, submission checks, warnings, hidden-test redaction.

The end-to-end runs (kernels, process pool, gradebook, feedback) are in test_grading_pipeline.py.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_grader.feedback import HIDDEN_BEGIN, HiddenTestLeak, check_no_hidden_tests, hidden_ranges, redact_hidden_tests
from course_grader.gradebook import has_assignment
from course_grader.preprocessors import CellTimeouts, strip_warning_lines
from course_grader.record import GradeRecord, Status
from course_grader.submission import (
    MISSING_ANSWER_SOURCE,
    UnreadableSubmission,
    cell_kind,
    grade_id,
    read_submission,
    restore_cells,
)


ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISE_1 = "01_blocks_and_resnets"


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _ids(nb) -> list[str]:
    return [grade_id(c) for c in nb.cells if grade_id(c)]


# ----------------------------------------------------------------------------------------- release
def test_committed_exercises_are_what_course_release_generates(tmp_path):
    """`course release --check` regenerates every exercise and compares bytes; with --course-dir it
    also leaves a complete nbgrader course folder for the instructor."""
    course_dir = tmp_path / "grading"
    result = subprocess.run([sys.executable, "-m", "course_grader.cli", "release", "--check",
                             "--course-dir", str(course_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb")) == [p.name for p in SOLUTIONS]
    assert (course_dir / "nbgrader_config.py").exists() and (course_dir / "gradebook.db").exists()
    for source in SOLUTIONS:
        name = source.stem
        assert (course_dir / "source" / name / source.name).read_bytes() == source.read_bytes()
        assert (course_dir / "release" / name / source.name).read_bytes() == (ROOT / "exercises" / source.name).read_bytes()
        assert has_assignment(course_dir, name)


@pytest.mark.parametrize("source_path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_is_an_nbgrader_source_with_visible_and_hidden_tests(source_path):
    source = _read(source_path)
    ids = _ids(source)
    assert len(ids) == len(set(ids)), "grade ids must be unique"
    tests = [c for c in source.cells if cell_kind(c) == "tests"]
    answers = [c for c in source.cells if cell_kind(c) == "answer"]
    assert len(tests) >= 1 and len(answers) >= len(tests)
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader")
        if meta:
            assert meta["schema_version"] == 3
    for cell in answers:
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, grade_id(cell)
    for cell in tests:
        assert cell.metadata.nbgrader["points"] > 0
        visible = cell.source.split(HIDDEN_BEGIN)[0]
        assert "checks." in visible, f"{grade_id(cell)}: visible checks should use course_lib.checks"
        assert hidden_ranges(cell.source), f"{grade_id(cell)} has no hidden tests"


def test_exercise_1_has_at_least_four_graded_questions():
    source = _read(ROOT / "solutions" / f"{EXERCISE_1}.ipynb")
    points = {grade_id(c): c.metadata.nbgrader["points"] for c in source.cells if cell_kind(c) == "tests"}
    assert points == {"q1_tests": 1, "q2_tests": 3, "q3_tests": 3, "q4_tests": 2}


@pytest.mark.parametrize("source_path", SOLUTIONS, ids=lambda p: p.stem)
def test_released_exercise_hides_solutions_and_hidden_tests(source_path):
    source, exercise = _read(source_path), _read(ROOT / "exercises" / source_path.name)
    assert _ids(exercise) == _ids(source)
    text = json.dumps(exercise)
    assert "BEGIN SOLUTION" not in text and HIDDEN_BEGIN not in text
    for cell in exercise.cells:
        if cell_kind(cell) == "answer" and cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source
        if cell_kind(cell) in ("tests", "readonly"):
            assert cell.metadata["editable"] is False and cell.metadata["deletable"] is False
    # The signatures and docstrings stay visible to students.
    if source_path.stem == EXERCISE_1:
        answers = {grade_id(c): c.source for c in exercise.cells if cell_kind(c) == "answer"}
        assert "def conv_params(kernel_size: int, in_channels: int, out_channels: int, bias: bool = True)" in answers["q1_answer"]
        assert "class ResidualBlock(nn.Module)" in answers["q2_answer"] and "conv1: 3x3 conv" in answers["q2_answer"]


# ------------------------------------------------------------------------ reading a submission
@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b'{"cells": [', "not valid JSON"),
    (b"[1, 2, 3]", "not a Jupyter notebook"),
    (b'{"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "notebook format"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_unreadable_submissions_get_a_one_line_reason(data, reason):
    with pytest.raises(UnreadableSubmission, match=reason) as caught:
        read_submission(data)
    assert "\n" not in str(caught.value)


def test_a_truncated_solution_is_reported_as_such():
    data = (ROOT / "solutions" / f"{EXERCISE_1}.ipynb").read_bytes()
    with pytest.raises(UnreadableSubmission, match=r"not valid JSON \(truncated or corrupt\?\)"):
        read_submission(data[: len(data) // 2])


# ---------------------------------------------------------------------- tampering and repairs
@pytest.fixture(scope="module")
def exercise_pair():
    return _read(ROOT / "exercises" / f"{EXERCISE_1}.ipynb"), _read(ROOT / "solutions" / f"{EXERCISE_1}.ipynb")


def _index(nb, gid):
    return next(i for i, c in enumerate(nb.cells) if grade_id(c) == gid)


def test_untouched_exercise_and_submitted_solution_need_no_repair(exercise_pair):
    release, source = exercise_pair
    for submitted in (copy.deepcopy(release), copy.deepcopy(source)):
        assert restore_cells(submitted, release, source).problems == []


def test_deleted_test_cell_is_restored_after_its_answer_and_flagged(exercise_pair):
    release, source = exercise_pair
    submitted = copy.deepcopy(release)
    del submitted.cells[_index(submitted, "q2_tests")]
    repair = restore_cells(submitted, release, source)
    assert repair.tampered
    assert repair.problems == ["test cell q2_tests was deleted (restored for grading)"]
    assert _index(submitted, "q2_tests") == _index(submitted, "q2_answer") + 1
    assert _ids(submitted) == _ids(release)


def test_deleting_an_answer_and_its_tests_puts_back_a_placeholder_not_the_stub(exercise_pair):
    release, source = exercise_pair
    submitted = copy.deepcopy(release)
    for gid in ("q3_answer", "q3_tests"):
        del submitted.cells[_index(submitted, gid)]
    repair = restore_cells(submitted, release, source)
    assert "answer cell q3_answer was deleted (restored for grading)" in repair.problems
    assert "test cell q3_tests was deleted (restored for grading)" in repair.problems
    assert submitted.cells[_index(submitted, "q3_answer")].source == MISSING_ANSWER_SOURCE
    assert _ids(submitted) == _ids(release)


def test_a_notebook_without_any_assignment_cell_gets_one_clear_note(exercise_pair):
    release, source = exercise_pair
    submitted = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('my own notebook')")])
    repair = restore_cells(submitted, release, source)
    assert repair.problems == ["the notebook holds none of the assignment's cells (a different notebook?); "
                               "its cells were put back for grading, with empty answers"]
    assert _ids(submitted) == _ids(release)
    assert submitted.cells[_index(submitted, "q1_answer")].source == MISSING_ANSWER_SOURCE


def test_edited_tests_changed_points_and_duplicates_are_reported(exercise_pair):
    release, source = exercise_pair
    submitted = copy.deepcopy(release)
    submitted.cells[_index(submitted, "q1_tests")].source = "pass"
    submitted.cells[_index(submitted, "q2_tests")].metadata.nbgrader["points"] = 100
    submitted.cells.append(copy.deepcopy(submitted.cells[_index(submitted, "q4_answer")]))
    repair = restore_cells(submitted, release, source)
    problems = repair.problems
    assert "test cell q1_tests was edited (the original was restored for grading)" in problems
    assert "the grading metadata of cell q2_tests was changed (points)" in problems
    assert any(n.startswith("answer cell q4_answer appears 2 times (copied and pasted?): the last copy")
               for n in repair.notes)


# -------------------------------------------------------------------------------- execution
def test_warning_lines_are_dropped_and_real_stderr_is_kept():
    text = (
        "/tmp/ipykernel_1/123.py:3: UserWarning: careful\n  warnings.warn('careful')\n"
        "[W 12:00:00.000 NNPACK.cpp:64] Could not initialize NNPACK! Reason: Unsupported hardware.\n"
        "/site-packages/torch/nn/modules/conv.py:456: FutureWarning: something\n"
        "  return F.conv2d(input, weight, bias, self.stride,\n"
    )
    assert strip_warning_lines(text) == ""
    assert strip_warning_lines(text + "my own message\n") == "my own message\n"
    assert strip_warning_lines("loss went up\n  by a lot\n") == "loss went up\n  by a lot\n"


def test_read_only_cells_get_the_set_up_time_limit(exercise_pair):
    release, _ = exercise_pair
    limits = CellTimeouts(answer=10, setup=300)
    assert limits(release.cells[_index(release, "setup")]) == 300
    assert limits(release.cells[_index(release, "q1_answer")]) == 10
    assert limits(release.cells[_index(release, "q1_tests")]) == 10
    assert limits(nbformat.v4.new_code_cell("x = 1")) == 10  # a cell the student added


def test_most_serious_status_wins_and_records_round_trip():
    assert Status.most_serious([]) == Status.GRADED
    assert Status.most_serious([Status.TAMPERED, Status.TIMEOUT]) == Status.TIMEOUT
    assert Status.most_serious([Status.TIMEOUT, Status.KERNEL_DIED, Status.TAMPERED]) == Status.KERNEL_DIED
    record = GradeRecord("ann", "a1", "a1", Status.TIMEOUT, "cell 3 ran too long", {"q1": 1.0, "q2": 0.0},
                         {"q1": 1.0, "q2": 2.0}, graded_notebook="{}")
    back = GradeRecord.from_json(record.to_json())
    assert (back.total, back.max_total, back.status, back.graded_notebook) == (1.0, 3.0, Status.TIMEOUT, None)
    assert GradeRecord.from_json(record.to_json(with_notebook=True)) == record


# ------------------------------------------------------------------------------- feedback
def _graded_test_cell(execution_count: int, failing_line: int) -> nbformat.NotebookNode:
    source = ("checks.check_equal('Q1', f(3), 9)\nchecks.passed('Q1')\n### BEGIN HIDDEN TESTS\n"
              "y = f(-2)\nassert f(-4) == 16, 'negative inputs are squared too'\n### END HIDDEN TESTS")
    cell = nbformat.v4.new_code_cell(source)
    cell.execution_count = execution_count
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "q1_tests", "locked": True, "points": 1,
                                 "schema_version": 3, "solution": False, "task": False}
    lines = source.splitlines()
    context = "\n".join(f"\x1b[32m{'---->' if n == failing_line else '     '} {n}\x1b[39m {line}"
                        for n, line in enumerate(lines, 1))
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="\u2714 Q1: all visible checks passed.\n"),
        nbformat.v4.new_output("error", ename="AssertionError", evalue="negative inputs are squared too", traceback=[
            "\x1b[31m-----\x1b[39m",
            f"\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[{execution_count}]\x1b[39m"
            f"\x1b[32m, line {failing_line}\x1b[39m\n{context}",
            "\x1b[31mAssertionError\x1b[39m: negative inputs are squared too",
        ]),
    ]
    return cell


def test_hidden_failure_becomes_a_neutral_line_and_the_hidden_block_disappears():
    nb = nbformat.v4.new_notebook(cells=[_graded_test_cell(execution_count=5, failing_line=5)])
    hidden = redact_hidden_tests(nb)
    text = nbformat.writes(nb)
    assert hidden == ["assert f(-4) == 16, 'negative inputs are squared too'"]
    assert "f(-4)" not in text and "f(-2)" not in text and "squared too" not in text and HIDDEN_BEGIN not in text
    error = nb.cells[0].outputs[1]
    assert error.ename == "AssertionError" and error.traceback == [
        "A hidden test failed (AssertionError). Hidden tests run your code on new inputs and edge cases: "
        "check your answer against everything the question asks."]
    assert "Hidden tests ran here" in nb.cells[0].source
    check_no_hidden_tests(text, hidden, "here")


def test_visible_failure_keeps_its_traceback_without_quoting_hidden_lines():
    nb = nbformat.v4.new_notebook(cells=[_graded_test_cell(execution_count=7, failing_line=1)])
    hidden = redact_hidden_tests(nb)
    frames = "\n".join(nb.cells[0].outputs[1].traceback)
    assert "check_equal('Q1', f(3), 9)" in frames
    assert "f(-4)" not in frames and "f(-2)" not in frames  # short hidden lines go too
    check_no_hidden_tests(nbformat.writes(nb), hidden, "here")


def test_leak_check_refuses_markers_and_hidden_code():
    with pytest.raises(HiddenTestLeak):
        check_no_hidden_tests("<span>### BEGIN HIDDEN TESTS</span>", [], "x")
    with pytest.raises(HiddenTestLeak):
        check_no_hidden_tests("<span class='k'>assert</span> f(-4) == 16, &#39;neg&#39;", ["assert f(-4) == 16, 'neg'"], "x")


# ------------------------------------------------------------------------------ self-checks
def test_copy_weights_names_missing_layers_and_wrong_shapes():
    import torch
    from torch import nn

    from course_lib import checks

    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    same = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    checks.copy_weights("Q9 demo", same, reference)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(same.eval()(x), reference.eval()(x))
    with pytest.raises(checks.CheckFailed, match=r"^Q9 demo: your module has other layer names than expected "
                                                  r"\(missing 1\.bias, 1\.num_batches_tracked"):
        checks.copy_weights("Q9 demo", nn.Sequential(nn.Conv2d(3, 4, 3)), reference)
    with pytest.raises(checks.CheckFailed, match=r"0\.weight should have shape \(4, 3, 3, 3\), got \(4, 3, 5, 5\)"):
        checks.check_same_parameters("Q9 demo", nn.Sequential(nn.Conv2d(3, 4, 5), nn.BatchNorm2d(4)), reference)
