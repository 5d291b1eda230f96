"""The instructor's gradebook (nbgrader's gradebook.db): written from grade records, read for export.

Only the orchestrator calls `store_record`; the grading steps never open this database. What it
writes is what nbgrader's own autograde would have written (automatic scores, "No response."
comments on untouched answers), so formgrader, manual grading and ``nbgrader export`` keep working;
submissions that did not grade cleanly are flagged for the instructor's attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat

from .coursedir import COURSE_ID, CourseFolder, db_url
from .record import GradeRecord, Status
from .submission import cell_kind, grade_id

NO_RESPONSE = "No response."


def store_record(course_dir: Path, record: GradeRecord) -> None:
    """Save ``record``'s scores into the gradebook of ``course_dir`` (the assignment must be there)."""
    from nbgrader import utils
    from nbgrader.api import Gradebook

    graded = nbformat.reads(record.graded_notebook, as_version=4) if record.graded_notebook else None
    with Gradebook(db_url(course_dir), COURSE_ID) as gradebook:
        gradebook.update_or_create_student(record.student)
        submission = gradebook.update_or_create_submission(record.assignment, record.student)
        if record.timestamp:
            try:
                submission.timestamp = utils.parse_utc(record.timestamp)
            except ValueError:
                pass  # an unreadable timestamp.txt: the submission simply counts as on time
        for gid, points in record.scores.items():
            grade = gradebook.find_grade(gid, record.notebook, record.assignment, record.student)
            grade.auto_score = points
            grade.needs_manual_grade = grade.manual_score is not None
        if graded is not None:
            for cell in graded.cells:
                if cell_kind(cell) == "answer":
                    comment = gradebook.find_comment(grade_id(cell), record.notebook, record.assignment, record.student)
                    untouched = cell.metadata["nbgrader"].get("checksum") == utils.compute_checksum(cell)
                    comment.auto_comment = NO_RESPONSE if untouched else None
        notebook = gradebook.find_submission_notebook(record.notebook, record.assignment, record.student)
        notebook.flagged = record.status != Status.GRADED
        gradebook.db.commit()


def has_assignment(course_dir: Path, assignment: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry

    if not CourseFolder(course_dir).gradebook.exists():
        return False
    with Gradebook(db_url(course_dir), COURSE_ID) as gradebook:
        try:
            gradebook.find_assignment(assignment)
        except MissingEntry:
            return False
    return True


@dataclass
class GradebookRow:
    """One submission as the gradebook sees it (manual grades included, late penalty applied)."""

    student: str
    assignment: str
    scores: dict[str, float]
    total: float
    max_total: float


def gradebook_rows(course_dir: Path) -> list[GradebookRow]:
    """Every submission in the gradebook, by assignment then student."""
    from nbgrader.api import Gradebook

    rows = []
    if not CourseFolder(course_dir).gradebook.exists():
        return rows
    with Gradebook(db_url(course_dir), COURSE_ID) as gradebook:
        for assignment in sorted(gradebook.assignments, key=lambda a: a.name):
            for submission in sorted(assignment.submissions, key=lambda s: s.student.id):
                scores = {}
                for notebook in submission.notebooks:
                    for grade in notebook.grades:
                        scores[grade.name] = float(grade.score or 0.0)
                penalty = float(submission.late_submission_penalty or 0.0)
                rows.append(GradebookRow(
                    student=submission.student.id,
                    assignment=assignment.name,
                    scores=scores,
                    total=float(submission.score) - penalty,
                    max_total=float(assignment.max_score),
                ))
    return rows
