"""`course feedback`: one HTML page per student and assignment, with no hidden test in it.

nbgrader's feedback shows the graded notebook as it ran, hidden tests included, and the traceback
of a failed hidden test quotes its code. Before nbgrader renders the page, each test cell's hidden
block is replaced by a one-line comment, the traceback of a failure inside it by a neutral line,
and any other traceback loses the lines that quote hidden code. A final check refuses to write a
page that still contains hidden code.
"""
from __future__ import annotations

import html
import re
import shutil
import tempfile
from pathlib import Path

import nbformat

from .coursedir import CourseFolder, run_converter
from .export import load_record
from .record import Status

HIDDEN_BEGIN = "BEGIN HIDDEN TESTS"
HIDDEN_END = "END HIDDEN TESTS"
HIDDEN_PLACEHOLDER = "# Hidden tests ran here: they try your code on new inputs and edge cases (their code is not shown)."
HIDDEN_FAILURE = ("A hidden test failed ({ename}). Hidden tests run your code on new inputs and edge cases: "
                  "check your answer against everything the question asks.")
#: Hidden lines shorter than this are too generic ("else:", ")") to count as leaking on their own.
MIN_LEAK_LENGTH = 16
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TAG = re.compile(r"<[^>]+>")
_CELL_FRAME = re.compile(r"Cell In\[(\d+)\], line (\d+)")
_CONTEXT_LINE = re.compile(r"^(?:-*>)?\s*(\d+)\s")  # "      3 source" or "----> 4 source" in a frame


class HiddenTestLeak(RuntimeError):
    """Feedback would have shown hidden test code; nothing was written."""


def hidden_ranges(source: str) -> list[tuple[int, int]]:
    """1-based inclusive line ranges of the hidden blocks (markers included) of a cell's source."""
    ranges, start = [], None
    for number, line in enumerate(source.splitlines(), 1):
        if HIDDEN_BEGIN in line and start is None:
            start = number
        elif HIDDEN_END in line and start is not None:
            ranges.append((start, number))
            start = None
    if start is not None:  # no end marker: hidden to the end of the cell
        ranges.append((start, len(source.splitlines())))
    return ranges


def _without_ranges(source: str, ranges: list[tuple[int, int]]) -> str:
    lines = source.splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        block = next((r for r in ranges if r[0] <= number <= r[1]), None)
        if block is None:
            kept.append(line)
        elif number == block[0]:
            indent = line[: len(line) - len(line.lstrip())]
            kept.append(indent + HIDDEN_PLACEHOLDER)
    return "\n".join(kept)


def _failing_line(traceback: list[str], execution_count) -> int | None:
    """The line of the test cell that raised, from IPython's ``Cell In[N], line L`` frame."""
    for frame in traceback:
        match = _CELL_FRAME.search(_ANSI.sub("", frame))
        if match and (execution_count is None or int(match.group(1)) == execution_count):
            return int(match.group(2))
    return None


def _significant(lines: list[str], visible_text: str) -> list[str]:
    return [s for s in (line.strip() for line in lines) if len(s) >= MIN_LEAK_LENGTH and s not in visible_text]


def redact_hidden_tests(nb: nbformat.NotebookNode) -> list[str]:
    """Remove hidden tests from ``nb`` in place; returns the hidden lines that must not appear anywhere."""
    cells = [c for c in nb.cells if c.cell_type == "code" and HIDDEN_BEGIN in c.source]
    hidden_by_cell, redacted = [], {}
    for cell in cells:
        ranges = hidden_ranges(cell.source)
        lines = cell.source.splitlines()
        inner = [lines[n - 1] for start, end in ranges for n in range(start, end + 1)]
        hidden_by_cell.append((ranges, [line for line in inner if HIDDEN_BEGIN not in line and HIDDEN_END not in line]))
        redacted[id(cell)] = _without_ranges(cell.source, ranges)
    # A hidden line that also appears in plain sight (another cell, the prose) is no secret.
    visible_text = "\n".join(redacted.get(id(c), c.source) for c in nb.cells)
    leaks_all: list[str] = []
    for cell, (ranges, hidden_lines) in zip(cells, hidden_by_cell):
        leaks = _significant(hidden_lines, visible_text)
        for output in cell.get("outputs", []):
            if output.output_type != "error":
                continue
            line = _failing_line(output.traceback, cell.get("execution_count"))
            if line is None or any(start <= line <= end for start, end in ranges):
                output.evalue = "a hidden test failed"
                output.traceback = [HIDDEN_FAILURE.format(ename=output.ename)]
            else:  # failed in the visible part: keep the traceback, minus any quoted hidden line
                output.traceback = [_scrub(frame, leaks, ranges, cell.get("execution_count"))
                                    for frame in output.traceback]
        cell.source = redacted[id(cell)]
        leaks_all.extend(leaks)
    return leaks_all


def _scrub(frame: str, leaks: list[str], ranges: list[tuple[int, int]], execution_count) -> str:
    """A traceback frame without the lines that quote hidden code (IPython shows lines around the failure)."""
    unwanted = [*leaks, HIDDEN_BEGIN, HIDDEN_END]
    in_test_cell = _failing_line([frame], execution_count) is not None
    kept = []
    for line in frame.split("\n"):
        plain = _ANSI.sub("", line)
        if any(u in plain for u in unwanted):
            continue
        numbered = _CONTEXT_LINE.match(plain)
        if in_test_cell and numbered and any(start <= int(numbered.group(1)) <= end for start, end in ranges):
            continue
        kept.append(line)
    return "\n".join(kept)


def check_no_hidden_tests(text: str, hidden_lines: list[str], where: str) -> None:
    """Raise `HiddenTestLeak` if ``text`` shows a hidden marker or a hidden line."""
    plain = html.unescape(_TAG.sub("", _ANSI.sub("", text)))
    leaked = [line for line in hidden_lines if line in plain]
    if HIDDEN_BEGIN in plain or HIDDEN_END in plain or leaked:
        raise HiddenTestLeak(f"{where}: feedback would show hidden tests ({(leaked or [HIDDEN_BEGIN])[0]!r}); not written")


def _status_note(status: str, message: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(f"**Grading note** (status: {status}): {message}")


def _unreadable_page(student: str, assignment: str, status: str, message: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(assignment)}: feedback</title></head><body>\n"
        f"<h1>{html.escape(assignment)}</h1>\n<p>Feedback for {html.escape(student)}.</p>\n"
        f"<p><strong>Your submission could not be graded</strong> (status: {html.escape(status)}): "
        f"{html.escape(message)}</p>\n<p>Score: 0. Please contact your instructor.</p>\n</body></html>\n"
    )


def _feedback_path(course_dir: Path, student: str, assignment: str) -> Path:
    return CourseFolder(course_dir).feedback(student, assignment)


def _records(course_dir: Path, assignments: list[str] | None, students: list[str] | None) -> dict[str, list[str]]:
    """Students with a grade record, by assignment (optionally only some of each)."""
    records_root = CourseFolder(course_dir).records_dir
    chosen: dict[str, list[str]] = {}
    for folder in sorted(p for p in records_root.glob("*") if p.is_dir()):
        if not assignments or folder.name in assignments:
            chosen[folder.name] = [p.stem for p in sorted(folder.glob("*.json")) if not students or p.stem in students]
    return chosen


def _stage_redacted(course_dir: Path, scratch_root: Path, assignment: str, student: str, record) -> list[str]:
    """Copy the graded notebook, hidden tests removed, where nbgrader will render it; returns the hidden lines."""
    graded = CourseFolder(course_dir).autograded(student, assignment)
    nb = nbformat.read(graded, as_version=4)
    hidden = redact_hidden_tests(nb)
    if record.status != Status.GRADED and record.message:
        nb.cells.insert(1 if nb.cells else 0, _status_note(record.status, record.message))
    check_no_hidden_tests(nbformat.writes(nb), hidden, f"{student}/{assignment}")
    staged = CourseFolder(scratch_root).autograded(student, assignment)
    staged.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, staged)
    return hidden


def generate_feedback(course_dir: Path, assignments: list[str] | None = None,
                      students: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Write ``course_dir/feedback/<student>/<assignment>/<assignment>.html`` for graded submissions.

    Returns the pages written and the reasons for pages refused (they would have shown hidden tests).
    """
    from nbgrader.converters import GenerateFeedback

    from .coursedir import db_url

    course_dir = Path(course_dir)
    written: list[Path] = []
    refused: list[str] = []
    for assignment, chosen in _records(course_dir, assignments, students).items():
        with tempfile.TemporaryDirectory(prefix="course-feedback-") as scratch:
            staged: dict[str, list[str]] = {}
            for student in chosen:
                record = load_record(course_dir, assignment, student)
                target = _feedback_path(course_dir, student, assignment)
                target.unlink(missing_ok=True)  # no stale page survives a refusal
                if not CourseFolder(course_dir).autograded(student, assignment).exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(_unreadable_page(student, assignment, record.status, record.message), encoding="utf-8")
                    written.append(target)
                    continue
                try:
                    staged[student] = _stage_redacted(course_dir, Path(scratch), assignment, student, record)
                except HiddenTestLeak as leak:
                    refused.append(str(leak))
            if not staged:
                continue
            # nbgrader renders the pages (its feedback template, scores from the gradebook).
            run_converter(GenerateFeedback, Path(scratch), assignment, name="feedback",
                          **{"CourseDirectory.db_url": db_url(course_dir)})
            for student, hidden in staged.items():
                page = _feedback_path(Path(scratch), student, assignment)
                try:
                    check_no_hidden_tests(page.read_text(encoding="utf-8"), hidden, f"{student}/{assignment}")
                except HiddenTestLeak as leak:
                    refused.append(str(leak))
                    continue
                target = _feedback_path(course_dir, student, assignment)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(page, target)
                written.append(target)
    return written, refused
