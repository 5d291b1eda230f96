"""Hostile submissions, each with the verdict a sound grader must give.

One small assignment (tests/fixtures/redteam/redteam.ipynb: box areas, 2 points; convolution
parameters, 1 point) and a class of students who try to cheat, break or escape the grader. One
`grade_folder` run grades them all in the sandbox (bubblewrap + resource limits, two workers);
each test then checks one student's verdict, and that nobody else's changed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest

from course_grader.coursedir import Assignment
from course_grader.environment import isolated_environment
from course_grader.export import grade_table, write_grades_csv
from course_grader.gradebook import gradebook_rows
from course_grader.orchestrator import grade_folder
from course_grader.sandbox import SANDBOX_UID_BASE, bwrap_problem
from redteam_class import CELL_TIMEOUT_S, FULL, NAME, OPTIONS, ROOT, SOURCE, hostile_class

pytestmark = pytest.mark.sandbox

def _put(submitted: Path, student: str, notebook) -> None:
    folder = submitted / student / NAME
    folder.mkdir(parents=True)
    path = folder / f"{NAME}.ipynb"
    if isinstance(notebook, bytes):
        path.write_bytes(notebook)
    else:
        nbformat.write(notebook, path)


def _sandbox_processes() -> list[str]:
    """Processes still running under a sandbox uid (there must be none once grading is over)."""
    left = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) >= SANDBOX_UID_BASE:
            left.append(f"{status.parent.name} {fields.get('Name', '').strip()}")
    return left


def _wait_for_no_sandbox_processes(seconds: float = 20.0) -> list[str]:
    """Sandboxed processes still alive after ``seconds`` (killed process trees take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while (left := _sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")
    base = tmp_path_factory.mktemp("redteam")
    submitted, course_dir = base / "submitted", base / "grading"
    course_dir.mkdir()
    for student, notebook in hostile_class(course_dir).items():
        _put(submitted, student, notebook)
    started = time.monotonic()
    with isolated_environment(base / "home", ROOT):
        run = grade_folder(submitted, {NAME: Assignment(NAME, SOURCE)}, course_dir, OPTIONS, workers=2,
                           progress=False)
        write_grades_csv(course_dir, course_dir / "grades.csv")
    records = {r.student: r for r in run.graded}
    for record in sorted(records.values(), key=lambda r: -r.duration_s):  # shown with pytest -s
        print(f"{record.student:20s} {record.duration_s:6.1f} s  {record.status:16s} {record.scores} {record.message}")
    return {"records": records, "course_dir": course_dir, "submitted": submitted, "base": base,
            "seconds": time.monotonic() - started}


def _record(graded, student):
    return graded["records"][student]


def _graded_text(graded, student) -> str:
    """Everything the student's cells printed (outputs only, not the code)."""
    nb = nbformat.reads(_record(graded, student).graded_notebook, as_version=4)
    return "\n".join(str(output.get("text", "")) + str(output.get("evalue", ""))
                     for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)


def test_every_hostile_submission_ends_with_a_status_and_a_reason(graded):
    records = graded["records"]
    assert len(records) == len(hostile_class(graded["course_dir"]))
    for student, record in records.items():
        assert record.status, student
        if record.status != "graded":
            assert record.message, f"{student}: {record.status} without a reason"
    header, rows = grade_table(graded["course_dir"])
    assert header[-2:] == ["status", "message"]
    assert {row["student"] for row in rows} == set(records)


def test_the_honest_solution_gets_full_marks(graded):
    record = _record(graded, "solution")
    assert (record.status, record.scores) == ("graded", FULL), record.message


def test_an_object_that_equals_everything_earns_nothing(graded):
    record = _record(graded, "eq_faking")
    assert record.scores == {"q1_tests": 2.0, "q2_tests": 0.0}, record.message


#: Each patch, what the message names, and whether it makes the wrong q1 pass in the notebook: checks keeps
#: its own torch.allclose, and an error is still recorded with the traceback display disabled.
PATCHES = {"patched_allclose": ("torch.allclose", False), "patched_checkers": ("checks.check_close", True),
           "hidden_traceback": ("get_ipython", False)}


@pytest.mark.parametrize("student", PATCHES)
def test_patching_the_test_machinery_is_reported_and_the_wrong_answer_earns_nothing(graded, student):
    """The audit names the patch; whatever it does in the notebook, the wrong q1 scores 0 (the grader's
    own check gives 0 where the patch made it pass) and the correct q2 keeps its point."""
    record = _record(graded, student)
    patched, passes_in_the_notebook = PATCHES[student]
    assert record.status == "tampered"
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 1.0}, record.message
    assert "test machinery" in record.message and patched in record.message
    assert "reported; the points come from the grader's own check" in record.message
    passed_note = "q1_tests passed in the notebook but not the grader's own check"
    assert (passed_note in record.message) == passes_in_the_notebook, record.message


def test_a_patch_the_audit_misses_still_fails_the_graders_own_check(graded):
    record = _record(graded, "patched_unseen")
    assert record.status == "tampered"
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 1.0}
    assert "q1_tests passed in the notebook but not the grader's own check" in record.message
    assert "values differ from the reference" in record.message


def test_sys_exit_in_an_answer_only_costs_that_question(graded):
    record = _record(graded, "sys_exit")
    assert record.scores == {"q1_tests": 2.0, "q2_tests": 0.0}, record.message


def test_os_exit_is_a_dead_kernel_named_with_its_cell(graded):
    record = _record(graded, "os_exit")
    assert record.status == "kernel_died"
    assert "q1_answer" in record.message and "code 3" in record.message
    assert record.total == 0.0


def test_killing_the_parent_harms_nobody(graded):
    record = _record(graded, "kill_parent")
    if os.geteuid() == 0:  # the kernel runs as another uid than the factory it was forked from
        assert record.scores == FULL, record.message
        assert "refused" in _graded_text(graded, "kill_parent") or record.status == "graded"
    else:  # one uid for all: it can end its own grading, nothing more
        assert record.status in ("kernel_died", "killed"), record.message
    assert _record(graded, "solution").scores == FULL


def test_the_disk_shows_no_hidden_tests_gradebook_or_other_students(graded):
    text = _graded_text(graded, "search_disk")
    assert "FOUND: []" in text
    assert "COURSE FOLDER VISIBLE: False False" in text
    assert _record(graded, "search_disk").scores == FULL


def test_the_gradebook_and_the_course_cannot_be_written(graded):
    text = _graded_text(graded, "write_gradebook")
    assert "WROTE" not in text
    assert not (ROOT / "pwned.txt").exists()
    rows = {(r.student, r.assignment): r for r in gradebook_rows(graded["course_dir"])}
    for student, record in graded["records"].items():
        assert rows[(student, NAME)].total == record.total, student
    assert _record(graded, "write_gradebook").scores == FULL


def test_delegating_to_the_reference_earns_nothing_for_those_questions(graded):
    record = _record(graded, "delegate_reference")
    assert record.status == "delegated"
    assert record.total == 0.0
    assert "torchvision.ops" in record.message and "course_lib.models" in record.message
    assert "is not available while your answer is graded" in record.message


def test_edited_tests_are_restored_and_flagged(graded):
    record = _record(graded, "edited_tests")
    assert record.status == "tampered"
    assert "q1_tests was edited" in record.message
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 1.0}


def test_deleted_tests_are_restored_and_flagged(graded):
    record = _record(graded, "deleted_tests")
    assert record.status == "tampered"
    assert "q2_tests was deleted" in record.message
    assert record.scores == FULL


def test_stripped_metadata_is_matched_by_content_and_graded(graded):
    record = _record(graded, "stripped_metadata")
    assert record.status == "metadata_missing", record.message
    assert "matched by content" in record.message
    assert record.scores == FULL


def test_an_infinite_loop_times_out_naming_its_cell(graded):
    record = _record(graded, "infinite_loop")
    assert record.status == "timeout"
    assert "q1_answer" in record.message and f"{CELL_TIMEOUT_S} s" in record.message
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 1.0}


def test_an_answer_that_swallows_the_interrupt_is_stopped_and_still_a_timeout(graded):
    record = _record(graded, "ignores_interrupt")
    assert record.status == "timeout", record.message
    assert "q1_answer" in record.message and "kernel was stopped" in record.message
    assert "later cells were not run" in record.message
    assert record.total == 0.0


def test_a_memory_bomb_is_stopped_by_the_memory_limit(graded):
    record = _record(graded, "memory_bomb")
    assert record.status == "killed"
    assert "memory" in record.message
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 1.0}


def test_shared_memory_past_the_limit_is_stopped_and_named(graded):
    from course_grader.memory_cgroup import availability

    parent, why = availability()
    if parent is None:
        pytest.skip(why)
    record = _record(graded, "shared_memory_bomb")
    assert record.status == "killed", record.message
    assert "ran out of memory (limit 1536 MiB, shared memory and child processes included)" in record.message
    assert record.scores["q1_tests"] == 0.0


def test_a_fork_bomb_is_bounded_and_leaves_no_process_behind(graded):
    record = _record(graded, "fork_bomb")
    assert record.status != "graded" or record.scores["q1_tests"] == 0.0
    assert record.scores["q1_tests"] == 0.0
    assert record.message
    assert _wait_for_no_sandbox_processes() == []


def test_a_300_mb_print_is_cut_and_still_graded(graded):
    record = _record(graded, "big_print")
    assert record.scores == FULL, record.message
    assert len(record.graded_notebook) < 2_000_000
    assert "were dropped" in _graded_text(graded, "big_print")


def test_a_corrupt_file_fails_with_a_reason(graded):
    record = _record(graded, "corrupt")
    assert record.status == "failed"
    assert "not valid JSON" in record.message
