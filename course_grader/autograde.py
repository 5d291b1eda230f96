"""Grading one submission: ``(assignment source, one submitted notebook) -> GradeRecord``.

`grade_submission` is a pure step: it takes bytes and returns a record, works in its own temporary
nbgrader course folder and never touches the instructor's gradebook, so any number of them can run
side by side (a process pool now, a cluster later) while one orchestrator stores the results.

Inside, nbgrader does the work (generate_assignment to know the cells, autograde to run them), with
three additions: the submission is checked and repaired first (`submission.restore_cells`), the
executor has per-kind time limits and survives a dead kernel (`preprocessors.GuardedExecute`), and
warnings on stderr cost nothing (`preprocessors.DropWarningStreams`).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from .coursedir import Assignment, CourseFolder, NbgraderError, db_url, generate_assignment, run_converter
from .preprocessors import (KERNEL_DIED_ERROR, KILLED_ERROR, NOT_RUN_ERROR, RESOURCE_LIMIT_ERROR,
                            STOPPED_AT_TIME_LIMIT, TIMEOUT_ERROR, CellTimeouts)
from .options import DEFAULT_CELL_TIMEOUT_S, DEFAULT_SETUP_TIMEOUT_S, GradingOptions  # noqa: F401 (the API)
from .record import GradeRecord, Status, sha256
from .sandbox import SandboxUnavailable, check_sandbox
from .audit import audit_cells
from .verdict_process import prestart_verdict_factory, run_verdict_process, used_a_hidden_reference
from .probes import calls_for
from .verdicts import judge, new_seed
from .submission import (UnreadableSubmission, cell_kind, grade_id, match_stripped_cells, questions,
                         read_submission, restore_cells)
from .warm import prestart_kernel_factory

#: Student id used inside the temporary course folder (the real id only goes into the record).
SCRATCH_STUDENT = "student"
#: Lines of nbgrader's log kept in a record.
LOG_TAIL_LINES = 200


def grade_submission(
    assignment: str,
    source_notebook: bytes,
    submitted_notebook: bytes,
    *,
    student: str,
    timestamp: str | None = None,
    options: GradingOptions = GradingOptions(),
) -> GradeRecord:
    """Autograde one submitted notebook of ``assignment`` (whose nbgrader source is ``source_notebook``).

    Never raises for a bad submission: the record's status and message say what went wrong.
    """
    started = time.monotonic()
    source = nbformat.reads(source_notebook.decode("utf-8"), as_version=4)
    max_scores = questions(source)
    record = GradeRecord(
        student=student,
        assignment=assignment,
        notebook=assignment,
        status=Status.GRADED,
        scores={gid: 0.0 for gid in max_scores},
        max_scores=max_scores,
        submission_sha256=sha256(submitted_notebook),
        source_sha256=sha256(source_notebook),
        timestamp=timestamp,
    )
    try:
        notes = _grade(record, source, source_notebook, submitted_notebook, options)
    finally:
        record.duration_s = time.monotonic() - started
    record.status = Status.most_serious([status for status, _ in notes])
    record.message = "; ".join(note for _, note in notes)
    return record


def _grade(record: GradeRecord, source, source_notebook: bytes, submitted_notebook: bytes,
           options: GradingOptions) -> list[tuple[str, str]]:
    """Fill ``record``'s scores, graded notebook and log; returns ``(status, note)`` for each problem."""
    try:
        submitted = read_submission(submitted_notebook)
    except UnreadableSubmission as error:
        return [(Status.FAILED, str(error))]
    try:
        check_sandbox(options.sandbox)
    except SandboxUnavailable as error:
        return [(Status.ERROR, str(error))]
    if options.warm_kernels:
        prestart_kernel_factory(options.sandbox, options.limits)  # its imports overlap with nbgrader's set-up
    try:
        template = _assignment_template(record.assignment, source_notebook)
    except NbgraderError as error:
        return [(Status.ERROR, f"nbgrader could not read the assignment source: {error}")]

    assignment = record.assignment
    with tempfile.TemporaryDirectory(prefix="course-grade-") as scratch:
        root = Path(scratch)
        shutil.copytree(template, root, dirs_exist_ok=True)
        release = nbformat.read(CourseFolder(root).release(assignment), as_version=4)
        notes = []
        matched = match_stripped_cells(submitted, release, source)
        if matched:
            notes.append((Status.METADATA_MISSING, f"the grading metadata of {matched} cells was missing: "
                                                   "they were matched by content and graded"))
        repair = restore_cells(submitted, release, source)
        notes += [(Status.TAMPERED, problem) for problem in repair.problems]
        notes += [(Status.GRADED, note) for note in repair.notes]  # pasted copies of graded cells: no cost
        audit = audit_cells(submitted, source)
        calls = calls_for(assignment, options.probe_seed or new_seed())
        if options.warm_kernels:  # the verdict process's factory imports while the notebook runs
            prestart_verdict_factory(source, options.sandbox, options.limits)

        submitted_path = CourseFolder(root).submitted(SCRATCH_STUDENT, assignment)
        submitted_path.parent.mkdir(parents=True)
        nbformat.write(submitted, submitted_path)
        try:
            log = _autograde(root, assignment, options)
        except NbgraderError as error:
            record.log = "\n".join(error.log[-LOG_TAIL_LINES:])
            return [*notes, (Status.FAILED, f"nbgrader could not grade the notebook: {error}")]

        graded_path = CourseFolder(root).autograded(SCRATCH_STUDENT, assignment)
        graded = nbformat.read(graded_path, as_version=4)
        record.graded_notebook = nbformat.writes(graded)
        record.log = "\n".join(log[-LOG_TAIL_LINES:])
        record.scores, manual = _scores_from_gradebook(root, assignment, record.max_scores)

    # The points: only answers that passed in the notebook are worth checking where no reference exists.
    passed = [call for call in calls if record.scores.get(call.question, 0.0) > 0]
    if passed:
        notes += _verdict_notes(record, submitted, source, passed, options)
    # The audit decides only what the verdict process cannot: what a question's prose rules out.
    zeroed = set(audit.zeroed_questions)
    if options.sandbox != "required" and audit.reported_questions:  # nothing could be hidden from the verdict
        zeroed |= audit.reported_questions
        notes.append((Status.DELEGATED, f"{', '.join(sorted(audit.reported_questions))} reached a reference the "
                                        "grader could not hide without bubblewrap: scores 0"))
    for gid in record.scores:
        if gid in zeroed:
            record.scores[gid] = 0.0
    notes += [(Status.TAMPERED if f.patches else Status.DELEGATED, f.message) for f in audit.findings]

    notes += _execution_problems(nbformat.reads(record.graded_notebook, as_version=4), options)
    if manual:
        notes.append((Status.GRADED, f"needs manual grading: {', '.join(manual)}"))
    return notes


def _verdict_notes(record: GradeRecord, submitted, source, calls, options: GradingOptions) -> list[tuple[str, str]]:
    """Run the verdict process; zero the questions it does not confirm and say why."""
    run = run_verdict_process(submitted, source, calls, mode=options.sandbox, limits=options.limits,
                              warm=options.warm_kernels, cell_seconds=options.timeout, call_seconds=options.timeout)
    verdicts = judge(calls, run.outputs)
    notes = []
    for gid, problem in verdicts.items():
        reason = run.problems.get(gid)
        if not (reason or problem) or record.scores.get(gid, 0.0) <= 0:
            continue
        record.scores[gid] = 0.0
        status = Status.TIMEOUT if reason and "time limit" in reason else \
            Status.KERNEL_DIED if reason and "ended before" in reason else \
            Status.DELEGATED if used_a_hidden_reference(problem) else Status.TAMPERED
        notes.append((status, f"{gid} passed in the notebook but not the grader's own check (scores 0): "
                              f"{reason or problem}"))
    if run.note:
        notes.append((Status.GRADED, run.note))
    return notes


#: Course folders with an assignment generated in them, by source content (one per process).
_TEMPLATES: dict[str, tempfile.TemporaryDirectory] = {}


def _assignment_template(assignment: str, source_notebook: bytes) -> Path:
    """A course folder where nbgrader generated ``assignment``: copied for each submission.

    Generating takes seconds (nbgrader creates a gradebook through a subprocess), so a process
    does it once per assignment source and reuses it.
    """
    key = f"{assignment}:{sha256(source_notebook)}"
    if key not in _TEMPLATES:
        holder = tempfile.TemporaryDirectory(prefix="course-assignment-")
        root = Path(holder.name)
        source_path = root / "assignment-source" / f"{assignment}.ipynb"
        source_path.parent.mkdir(parents=True)
        source_path.write_bytes(source_notebook)
        try:
            generate_assignment(root, Assignment(assignment, source_path))
        except NbgraderError:
            holder.cleanup()
            raise
        _TEMPLATES[key] = holder
    return Path(_TEMPLATES[key].name)


def _autograde(root: Path, assignment: str, options: GradingOptions) -> list[str]:
    """nbgrader autograde of the scratch student's submission, with the course's executor."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, LimitOutput, SaveAutoGrades

    from .preprocessors import DropWarningStreams, GuardedExecute

    settings = {
        "Autograde.autograde_preprocessors": [
            GuardedExecute,
            DropWarningStreams,  # before SaveAutoGrades reads the outputs
            ClearMetadataPreprocessor,
            LimitOutput,
            SaveAutoGrades,
            AssignLatePenalties,
            CheckCellMetadata,
        ],
        "GuardedExecute.timeout": options.timeout,
        "GuardedExecute.setup_timeout": options.setup_timeout,
        "GuardedExecute.max_output_kb": options.max_output_kb,
        "SandboxedKernelManager.sandbox": options.sandbox,
        "SandboxedKernelManager.warm": options.warm_kernels,
        "SandboxedKernelManager.memory_mb": options.memory_mb,
        "SandboxedKernelManager.cpu_seconds": options.cpu_seconds,
        "SandboxedKernelManager.max_processes": options.max_processes,
        "SandboxedKernelManager.max_file_mb": options.max_file_mb,
        "SandboxedKernelManager.scratch_mb": options.scratch_mb,
        "OverwriteCells.add_missing_cells": True,
    }
    return run_converter(Autograde, root, assignment, SCRATCH_STUDENT, name="autograde", **settings)


def _scores_from_gradebook(root: Path, assignment: str, max_scores: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Points per test cell as nbgrader saved them; also the cells it could not score automatically."""
    from nbgrader.api import Gradebook

    from .coursedir import COURSE_ID

    scores, manual = {}, []
    with Gradebook(db_url(root), COURSE_ID) as gradebook:
        for gid in max_scores:
            grade = gradebook.find_grade(gid, assignment, assignment, SCRATCH_STUDENT)
            if grade.auto_score is None:
                manual.append(gid)
            scores[gid] = float(grade.auto_score or 0.0)
    return scores, manual


def describe_cell(index: int, cell) -> str:
    """``cell 7 (q2_tests)``: 1-based position as a learner counts cells, and the grade id if any."""
    gid = grade_id(cell)
    if gid:
        return f"cell {index + 1} ({gid})"
    first_line = next((line for line in cell.source.splitlines() if line.strip()), "").strip()
    return f"cell {index + 1} ({first_line[:40]!r})"


def _execution_problems(graded: nbformat.NotebookNode, options: GradingOptions) -> list[tuple[str, str]]:
    """Timeouts, a dead kernel and failing set-up cells, found in the executed notebook."""
    limits = CellTimeouts(options.timeout, options.setup_timeout)
    notes: list[tuple[str, str]] = []
    died = not_run = 0
    timed_out_and_stopped = False
    # Read-only cells before the first answer only set up (imports, data): if one of them fails,
    # the grading environment is at fault, not the student.
    first_answer = next((i for i, c in enumerate(graded.cells) if cell_kind(c) == "answer"), len(graded.cells))
    for index, cell in enumerate(graded.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type != "error":
                continue
            where = describe_cell(index, cell)
            if output.ename == TIMEOUT_ERROR:
                stopped = STOPPED_AT_TIME_LIMIT in str(output.evalue)
                timed_out_and_stopped = timed_out_and_stopped or stopped
                notes.append((Status.TIMEOUT, f"{where} ran past its {limits(cell)} s time limit"
                                              + (f"; {STOPPED_AT_TIME_LIMIT}" if stopped else " and was interrupted")))
            elif output.ename == KERNEL_DIED_ERROR:
                died += 1
                notes.append((Status.KERNEL_DIED, f"the kernel died while running {where}"
                              + (f": {output.evalue.split(': ', 1)[1]}" if ": " in output.evalue else "")))
            elif output.ename == KILLED_ERROR:
                died += 1
                notes.append((Status.KILLED, f"the kernel was stopped while running {where}: "
                              f"{output.evalue.split(': ', 1)[-1]}"))
            elif output.ename == RESOURCE_LIMIT_ERROR:  # output cut at the time limit, or out of file descriptors
                notes.append((Status.KILLED, f"{where}: {output.evalue}"))
            elif output.ename == "BlockingIOError" or "Resource temporarily unavailable" in str(output.evalue):
                notes.append((Status.KILLED, f"{where} hit the limit of {options.max_processes} processes "
                                             "(a fork bomb?)"))
            elif output.ename == "MemoryError" or "can't allocate memory" in str(output.evalue):
                notes.append((Status.KILLED, f"{where} ran out of memory (limit {options.memory_mb} MiB)"))
            elif output.ename == NOT_RUN_ERROR:
                not_run += 1
            elif cell_kind(cell) == "readonly" and index < first_answer:
                notes.append((Status.ERROR, f"read-only {where} raised {output.ename}: {output.evalue} "
                                            "(check the grading environment)"))
    if not_run and timed_out_and_stopped:
        notes.append((Status.TIMEOUT, f"{not_run} later cells were not run"))
    elif not_run:
        if not died:
            notes.append((Status.KERNEL_DIED, "the kernel died before running the first cell"))
        notes.append((Status.KERNEL_DIED, f"{not_run} later cells were not run"))
    return notes
