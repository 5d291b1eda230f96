"""`course export`: the grades table (CSV) from the gradebook and the grade records.

Columns: ``student, assignment, <one column per graded test cell>, total, max, status, message``.
Points come from the gradebook (so manual grades and late penalties entered in formgrader count);
status and message come from the grade record that `course grade` kept for each submission.
"""
from __future__ import annotations

import csv
from pathlib import Path

import nbformat

from .coursedir import CourseFolder
from .gradebook import gradebook_rows
from .record import GradeRecord
from .submission import cell_kind, grade_id

FIXED_FIRST = ("student", "assignment")
FIXED_LAST = ("total", "max", "status", "message")
#: Status of a gradebook entry that `course grade` did not produce (e.g. graded with nbgrader directly).
UNKNOWN_STATUS = "graded (by nbgrader)"


def record_path(course_dir: Path, assignment: str, student: str) -> Path:
    return CourseFolder(course_dir).record(student, assignment)


def load_record(course_dir: Path, assignment: str, student: str) -> GradeRecord | None:
    path = record_path(course_dir, assignment, student)
    if not path.exists():
        return None
    return GradeRecord.from_json(path.read_text(encoding="utf-8"))


def question_order(course_dir: Path, assignment: str) -> list[str]:
    """Graded test cells of an assignment in notebook order (from the course folder's source copy)."""
    path = CourseFolder(course_dir).source(assignment)
    if not path.exists():
        return []
    nb = nbformat.read(path, as_version=4)
    return [grade_id(cell) for cell in nb.cells if cell_kind(cell) == "tests"]


def _points(value: float) -> str:
    return f"{value:g}"


def grade_table(course_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV's header and rows (every submission the gradebook knows)."""
    rows, questions = [], []
    for entry in gradebook_rows(course_dir):
        for gid in question_order(course_dir, entry.assignment) or sorted(entry.scores):
            if gid not in questions:
                questions.append(gid)
        record = load_record(course_dir, entry.assignment, entry.student)
        row = {"student": entry.student, "assignment": entry.assignment}
        row.update({gid: _points(points) for gid, points in entry.scores.items()})
        row.update(
            total=_points(entry.total),
            max=_points(entry.max_total),
            status=record.status if record else UNKNOWN_STATUS,
            message=record.message if record else "",
        )
        rows.append(row)
    return [*FIXED_FIRST, *questions, *FIXED_LAST], rows


def write_grades_csv(course_dir: Path, csv_path: Path) -> tuple[Path, int]:
    """Write the grades table; returns its path and number of rows."""
    header, rows = grade_table(course_dir)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, len(rows)
