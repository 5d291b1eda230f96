"""`course grade`, `course feedback` and `course export` end to end, on submissions built from solutions/.

One `course grade --workers 2` run grades them all (every kernel start costs seconds); a second run
adds a submission stuck in an infinite loop, graded with a short time limit, and must skip the ones
already graded.
"""
from __future__ import annotations

import copy
import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_grader.coursedir import COURSE_ID, db_url
from course_grader.feedback import HIDDEN_BEGIN, hidden_ranges
from course_grader.submission import grade_id

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EX1 = "01_blocks_and_resnets"
EX1_MAX = 9
LOOP_TIMEOUT_S = 10


def course(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "course_grader.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"course {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _cell(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


def _solution_answer(gid: str) -> str:
    return _cell(nbformat.read(ROOT / "solutions" / f"{EX1}.ipynb", as_version=4), gid).source


def _put(submitted: Path, student: str, assignment: str, nb=None, raw: bytes | None = None,
         name: str | None = None) -> None:
    folder = submitted / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{assignment}.ipynb")
    if raw is not None:
        path.write_bytes(raw)
    else:
        nbformat.write(nb, path)


def build_submissions(submitted: Path) -> None:
    """The class: one student per situation the grader must handle."""
    for source in SOLUTIONS:  # every solution, submitted as it is
        _put(submitted, "solution", source.stem, raw=source.read_bytes())
    exercise = nbformat.read(ROOT / "exercises" / f"{EX1}.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions" / f"{EX1}.ipynb", as_version=4)

    _put(submitted, "untouched", EX1, exercise)

    partial = copy.deepcopy(exercise)  # Q1 right (but warns), Q2 right on visible tests only, Q4 right
    _cell(partial, "q1_answer").source = ("import warnings\n\n" + _solution_answer("q1_answer").replace(
        "    ### BEGIN SOLUTION", "    warnings.warn('a warning on stderr costs nothing', UserWarning)\n    ### BEGIN SOLUTION"))
    _cell(partial, "q2_answer").source = _solution_answer("q2_answer").replace(
        "if downsample or in_channels != out_channels:", "if downsample:")
    _cell(partial, "q4_answer").source = _solution_answer("q4_answer")
    _put(submitted, "partial", EX1, partial)

    _put(submitted, "corrupt", EX1, raw=(ROOT / "solutions" / f"{EX1}.ipynb").read_bytes()[:5000])
    _put(submitted, "wrong_name", EX1, exercise, name="my_notebook.ipynb")

    tampered = copy.deepcopy(solution)
    tampered.cells.remove(_cell(tampered, "q3_tests"))
    _cell(tampered, "q1_tests").source = "pass"
    _put(submitted, "tampered", EX1, tampered)

    crashing = copy.deepcopy(solution)
    _cell(crashing, "q4_answer").source = "import os\n\nos._exit(1)"
    _put(submitted, "crashing", EX1, crashing)


def hidden_lines(source_path: Path) -> list[str]:
    """Lines of the hidden tests that appear nowhere else in the notebook."""
    nb = nbformat.read(source_path, as_version=4)
    visible, hidden = [], []
    for cell in nb.cells:
        lines = cell.source.splitlines()
        ranges = hidden_ranges(cell.source) if cell.cell_type == "code" else []
        for number, line in enumerate(lines, 1):
            (hidden if any(a <= number <= b for a, b in ranges) else visible).append(line)
    visible_text = "\n".join(visible)
    return [s for s in (line.strip() for line in hidden) if len(s) >= 12 and HIDDEN_BEGIN not in s
            and "END HIDDEN TESTS" not in s and s not in visible_text]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("class")
    submitted, course_dir = base / "submitted", base / "grading"
    build_submissions(submitted)
    # Generous limits for the first run: other lessons' solutions train small models, on busy cores.
    first = course("grade", str(submitted), "--course-dir", str(course_dir), "--workers", "2", "--no-progress",
                   "--timeout", "600", "--setup-timeout", "600")

    loop = nbformat.read(ROOT / "exercises" / f"{EX1}.ipynb", as_version=4)
    _cell(loop, "q1_answer").source = _solution_answer("q1_answer").replace(
        "    ### BEGIN SOLUTION", "    while True:\n        pass\n    ### BEGIN SOLUTION")
    _put(submitted, "looping", EX1, loop)
    second = course("grade", str(submitted), "--course-dir", str(course_dir), "--workers", "2", "--no-progress",
                    "--timeout", str(LOOP_TIMEOUT_S))
    with (course_dir / "grades.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"course_dir": course_dir, "first": first.stdout, "second": second.stdout, "rows": rows,
            "by_student": {(r["student"], r["assignment"]): r for r in rows}}


def row(graded, student, assignment=EX1):
    return graded["by_student"][(student, assignment)]


def test_grades_table_has_the_promised_columns(graded):
    header = list(graded["rows"][0])
    assert header[:2] == ["student", "assignment"] and header[-4:] == ["total", "max", "status", "message"]
    assert ["q1_tests", "q2_tests", "q3_tests", "q4_tests"] == [h for h in header if h.startswith("q")][:4]


@pytest.mark.parametrize("source", SOLUTIONS, ids=lambda p: p.stem)
def test_every_solution_scores_full_marks(graded, source):
    r = row(graded, "solution", source.stem)
    assert (r["status"], r["message"]) == ("graded", "")
    assert float(r["total"]) == float(r["max"]) > 0


def test_untouched_exercise_scores_zero_and_counts_as_graded(graded):
    r = row(graded, "untouched")
    assert (r["total"], r["max"], r["status"], r["message"]) == ("0", str(EX1_MAX), "graded", "")


def test_partly_right_answers_get_partial_credit_and_warnings_cost_nothing(graded):
    r = row(graded, "partial")
    assert [r[q] for q in ("q1_tests", "q2_tests", "q3_tests", "q4_tests")] == ["1", "0", "0", "2"]
    assert (r["total"], r["status"]) == ("3", "graded")


def test_corrupt_and_missing_notebooks_are_reported_not_silently_zero(graded):
    corrupt, missing = row(graded, "corrupt"), row(graded, "wrong_name")
    assert corrupt["status"] == "failed" and "not valid JSON (truncated or corrupt?)" in corrupt["message"]
    assert missing["status"] == "missing" and "my_notebook.ipynb" in missing["message"]
    assert corrupt["total"] == missing["total"] == "0"


def test_deleted_and_edited_test_cells_are_restored_and_flagged(graded):
    r = row(graded, "tampered")
    assert r["status"] == "tampered" and r["total"] == str(EX1_MAX)
    assert "test cell q3_tests was deleted (restored for grading)" in r["message"]
    assert "test cell q1_tests was edited" in r["message"]


def test_a_dead_kernel_is_named_and_earlier_questions_keep_their_points(graded):
    r = row(graded, "crashing")
    assert r["status"] == "kernel_died" and "(q4_answer)" in r["message"]
    assert [r[q] for q in ("q1_tests", "q2_tests", "q3_tests", "q4_tests")] == ["1", "3", "3", "0"]


def test_an_infinite_loop_is_cut_off_and_rerunning_skips_what_was_graded(graded):
    r = row(graded, "looping")
    assert r["status"] == "timeout" and r["total"] == "0"
    assert f"(q1_tests) ran past its {LOOP_TIMEOUT_S} s time limit" in r["message"]
    assert "graded 1 submissions (1 timeout)" in graded["second"]
    assert f"skipped {len(SOLUTIONS) + 6} already graded" in graded["second"]


def test_gradebook_holds_the_grades_and_flags_problem_submissions(graded):
    from nbgrader.api import Gradebook

    course_dir = graded["course_dir"]
    with Gradebook(db_url(course_dir), COURSE_ID) as gradebook:
        for student, expected_flag in (("solution", False), ("partial", False), ("tampered", True), ("looping", True)):
            submission = gradebook.find_submission(EX1, student)
            assert submission.score == float(row(graded, student)["total"])
            assert submission.notebooks[0].flagged is expected_flag
    assert (course_dir / "autograded" / "partial" / EX1 / f"{EX1}.ipynb").exists()
    assert (course_dir / "submitted" / "partial" / EX1 / f"{EX1}.ipynb").exists()
    assert (course_dir / "release" / EX1 / f"{EX1}.ipynb").read_bytes() == (ROOT / "exercises" / f"{EX1}.ipynb").read_bytes()
    record = json.loads((course_dir / "records" / EX1 / "crashing.json").read_text())
    assert record["status"] == "kernel_died"


def test_export_rewrites_the_same_table_from_the_gradebook(graded, tmp_path):
    course("export", "--course-dir", str(graded["course_dir"]), "--csv", str(tmp_path / "again.csv"))
    assert (tmp_path / "again.csv").read_text() == (graded["course_dir"] / "grades.csv").read_text()


def page_text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_feedback_shows_scores_but_never_hidden_tests(graded):
    course_dir = graded["course_dir"]
    out = course("feedback", "--course-dir", str(course_dir)).stdout
    pages = sorted((course_dir / "feedback").glob("*/*/*.html"))
    assert len(pages) == len(graded["rows"]), out
    secrets = {source.stem: hidden_lines(source) for source in SOLUTIONS}
    assert any("compare_blocks(" in line for line in secrets[EX1])  # the check below has teeth
    for page in pages:
        text = page_text(page)
        assert "BEGIN HIDDEN TESTS" not in text, page
        assignment = page.parent.name
        leaked = [line for line in secrets[assignment] if line in text]
        assert not leaked, f"{page}: {leaked[:3]}"
    partial = page_text(course_dir / "feedback" / "partial" / EX1 / f"{EX1}.html")
    assert "A hidden test failed" in partial and "Score: 3.0 / 9.0" in partial
    corrupt = page_text(course_dir / "feedback" / "corrupt" / EX1 / f"{EX1}.html")
    assert "could not be graded" in corrupt and "not valid JSON" in corrupt


def test_a_new_gradebook_gets_nbgrader_s_schema_version_without_starting_alembic(tmp_path, monkeypatch):
    """nbgrader runs `alembic heads` (a 2.5 s Python start) for each new gradebook; the grader reads
    the same answer in its own process, once."""
    import sqlite3

    import nbgrader.api as api

    from course_grader.coursedir import Assignment, alembic_head, generate_assignment

    subprocess_way = getattr(api.get_alembic_version, "subprocess_way", api.get_alembic_version)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")  # where nbgrader finds `alembic`
    assert alembic_head() == subprocess_way()  # the same version as nbgrader's own way

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"nbgrader started a process: {args}")

    monkeypatch.setattr(api.sp, "check_output", no_subprocess)
    generate_assignment(tmp_path / "course", Assignment("redteam", ROOT / "tests" / "fixtures" / "redteam" / "redteam.ipynb"))
    with sqlite3.connect(tmp_path / "course" / "gradebook.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(alembic_head(),)]
