"""`course grade` killed mid-run and run again: it finishes the rest, with the same verdicts.

Uses the red-team assignment (tests/fixtures/redteam) and three of its students, graded by the real
command in a subprocess that is killed (orchestrator, workers and kernels) once the first submission
is stored.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from course_grader.export import grade_table, load_record
from course_grader.sandbox import bwrap_problem
from redteam_class import CELL_TIMEOUT_S, FIXTURES, FULL, NAME, ROOT, hostile_class

pytestmark = pytest.mark.sandbox

#: The verdicts a clean run gives these students (the red-team suite checks them too).
EXPECTED = {
    "solution": ("graded", FULL),
    "deleted_tests": ("tampered", FULL),
    "eq_faking": ("graded", {"q1_tests": 2.0, "q2_tests": 0.0}),
}


def test_killing_the_orchestrator_and_rerunning_finishes_the_rest_identically(tmp_path):
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")
    students = tuple(EXPECTED)
    submitted, course_dir = tmp_path / "submitted", tmp_path / "grading"
    hostile = hostile_class(course_dir)
    for student in students:
        folder = submitted / student / NAME
        folder.mkdir(parents=True)
        nbformat.write(hostile[student], folder / f"{NAME}.ipynb")
    command = [sys.executable, "-m", "course_grader.cli", "grade", str(submitted), "--course-dir", str(course_dir),
               "--solutions", str(FIXTURES), "--workers", "1", "--timeout", str(CELL_TIMEOUT_S), "--no-progress"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    records_dir = course_dir / "records" / NAME
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(records_dir.glob("*.json"))) < 1 and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole run: orchestrator, workers, kernels
    first.wait()
    done_before = {p.stem for p in records_dir.glob("*.json")}
    assert 1 <= len(done_before) < len(students)

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"skipped {len(done_before)} already graded" in second.stdout
    for student, (status, scores) in EXPECTED.items():
        record = load_record(course_dir, NAME, student)
        assert (record.status, record.scores) == (status, scores), f"{student}: {record.message}"
    header, rows = grade_table(course_dir)
    assert sorted(row["student"] for row in rows) == sorted(students)
    assert all(row["status"] for row in rows)
