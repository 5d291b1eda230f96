"""`course grade`: fan submissions out to grading workers, store what comes back.

The orchestrator is the only writer of the instructor's course folder: for each finished
submission it saves the graded notebook (``autograded/``), the grade record (``records/``), the
grader's log (``logs/``) and the scores (``gradebook.db``) before it looks at the next one, so an
interrupted run loses nothing already graded. Each submission becomes a `jobs.GradingJob` (its
bytes, read once while planning); a local pool of processes (`jobs.LocalJobs`) or a cluster
(`cluster.DaskGrading.executor`) grades it, one kernel per worker at a time.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from .options import GradingOptions
from .coursedir import Assignment, CourseError, CourseFolder, write_course_config
from .export import load_record, record_path
from .gradebook import has_assignment, store_record
from .jobs import GradingJob, JobExecutor, local_pool
from .record import GradeRecord, Status, sha256
from .submission import (MAX_NOTEBOOK_BYTES, UnreadableSubmission, questions, read_regular_file,
                         read_submission_file)

#: How many times a submission is sent to a fresh pool after its worker process died.
POOL_RETRIES = 1
SKIPPED_FOLDERS = (".ipynb_checkpoints", "__pycache__")
#: A submission's ``timestamp.txt`` is one line: more is not a timestamp.
MAX_TIMESTAMP_BYTES = 256
#: How deep the copy of a submission folder into the course folder goes (the notebook is at the top).
MAX_COPY_DEPTH = 8


@dataclass(frozen=True)
class SubmissionTask:
    """One student's folder for one assignment: ``submitted/<student>/<assignment>/``."""

    student: str
    assignment: str
    folder: Path
    refusal: str = ""  # why the folder itself is not graded (a link): the record says so, nothing is read

    @property
    def notebook_path(self) -> Path:
        return self.folder / f"{self.assignment}.ipynb"

    def timestamp(self) -> str | None:
        """The first line of ``timestamp.txt`` when it is a small regular file (never a link followed)."""
        if self.refusal:
            return None
        try:
            data = read_regular_file(self.folder / "timestamp.txt", MAX_TIMESTAMP_BYTES, "timestamp.txt")
        except (OSError, UnreadableSubmission):
            return None
        text = data.decode("utf-8", "replace").strip()
        return text.splitlines()[0].strip() if text else None


@dataclass
class GradingRun:
    """What one `grade_folder` call did."""

    graded: list[GradeRecord] = field(default_factory=list)
    skipped: list[SubmissionTask] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(record.status for record in self.graded)


def submitted_root(submissions_dir: Path) -> Path:
    """Accept either nbgrader's ``submitted/`` folder itself or a course folder that holds one."""
    submissions_dir = Path(submissions_dir)
    inner = submissions_dir / "submitted"
    return inner if inner.is_dir() else submissions_dir


def _visible_dirs(folder: Path) -> list[tuple[Path, bool]]:
    """The visible folders in ``folder``, and whether each is a symbolic link to one (never followed)."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in SKIPPED_FOLDERS:
            continue
        if path.is_symlink():
            if path.is_dir():  # only looks at what it points to (no listing, no reading)
                found.append((path, True))
        elif path.is_dir():
            found.append((path, False))
    return found


def discover(submissions_dir: Path, assignments: list[str] | None = None,
             expected: list[str] | None = None) -> list[SubmissionTask]:
    """Every ``<student>/<assignment>/`` folder under the submissions folder, sorted.

    A folder that is a symbolic link (to the solutions, another student's work...) is never
    followed: it becomes a task with a ``refusal``. For a linked student folder, whose assignments
    are not listed, that is one task per name in ``assignments`` (or else ``expected``).
    """
    root = submitted_root(submissions_dir)
    if not root.is_dir():
        raise CourseError(f"no submissions folder at {root}")
    tasks = []
    for student_dir, linked in _visible_dirs(root):
        if linked:
            names = assignments if assignments is not None else expected or []
            if not names:
                print(f"course: NOT GRADED {student_dir}: a symbolic link, not a folder", file=sys.stderr)
            why = f"the student folder {student_dir.name} is a symbolic link, not a folder (not followed)"
            tasks += [SubmissionTask(student_dir.name, name, student_dir / name, why) for name in names]
            continue
        for assignment_dir, linked in _visible_dirs(student_dir):
            if assignments is None or assignment_dir.name in assignments:
                why = "the submission folder is a symbolic link, not a folder (not followed)" if linked else ""
                tasks.append(SubmissionTask(student_dir.name, assignment_dir.name, assignment_dir, why))
    return tasks


def ensure_course(course_dir: Path, assignments: list[Assignment], timeout: int) -> None:
    """Make ``course_dir`` an nbgrader course that knows ``assignments`` with their current sources."""
    from .releasing import released_notebook

    write_course_config(course_dir, timeout)
    for assignment in assignments:
        installed = CourseFolder(course_dir).source(assignment.name)
        current = installed.exists() and installed.read_bytes() == assignment.source_bytes()
        if not (current and has_assignment(course_dir, assignment.name)):
            released_notebook(assignment, course_dir)


def _record_without_kernel(task: SubmissionTask, source: Assignment, status: str, message: str) -> GradeRecord:
    return record_without_kernel(task.assignment, source.source_bytes(), task.student, task.timestamp(), status,
                                 message)


def record_without_kernel(assignment: str, source_notebook: bytes, student: str, timestamp: str | None, status: str,
                          message: str) -> GradeRecord:
    """A record of a submission nothing ran for: every question 0, ``status`` and ``message`` say why."""
    import nbformat

    max_scores = questions(nbformat.reads(source_notebook.decode("utf-8"), as_version=4))
    return GradeRecord(
        student=student, assignment=assignment, notebook=assignment, status=status,
        message=message, scores={gid: 0.0 for gid in max_scores}, max_scores=max_scores,
        source_sha256=sha256(source_notebook), timestamp=timestamp,
    )


def _missing_notebook_record(task: SubmissionTask, source: Assignment) -> GradeRecord:
    found = sorted(p.name for p in task.folder.glob("*.ipynb"))
    others = f" (found: {', '.join(found)})" if found else " (the folder holds no notebook)"
    return _record_without_kernel(task, source, Status.MISSING, f"no {task.notebook_path.name} in the submission{others}")


def store(course_dir: Path, task: SubmissionTask, record: GradeRecord) -> None:
    """Save everything about one graded submission into the course folder (the only writer)."""
    course_dir = Path(course_dir)
    folder = CourseFolder(course_dir)
    graded_path = folder.autograded(task.student, task.assignment)
    graded_dir = graded_path.parent
    if record.graded_notebook is not None:
        graded_dir.mkdir(parents=True, exist_ok=True)
        graded_path.write_text(record.graded_notebook, encoding="utf-8")
        if record.timestamp:  # what was read safely when planned, not the student's file again
            (graded_dir / "timestamp.txt").write_text(record.timestamp + "\n", encoding="utf-8")
    elif graded_path.exists():
        graded_path.unlink()  # a stale graded copy of an earlier submission must not survive
    log_path = folder.log(task.student, task.assignment)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(record.log + "\n", encoding="utf-8")
    store_record(course_dir, record)
    path = record_path(course_dir, task.assignment, task.student)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json(), encoding="utf-8")  # last: a record on disk means fully stored


def _already_graded(course_dir: Path, task: SubmissionTask, source: Assignment, notebook: bytes | None) -> bool:
    """Whether the stored record is of this very ``notebook`` (None: missing) and this source."""
    record = load_record(course_dir, task.assignment, task.student)
    if record is None or record.status == Status.ERROR or record.source_sha256 != source.source_sha256():
        return False
    if notebook is None:
        return record.status == Status.MISSING
    return record.submission_sha256 == sha256(notebook)


def _copy_into_course(course_dir: Path, task: SubmissionTask) -> SubmissionTask:
    """Keep nbgrader's own copy of the submission in ``course_dir/submitted`` (for manual reruns).

    Only regular files are copied, each read without following links and up to the notebook size
    limit, at most `MAX_COPY_DEPTH` folders deep: links (to the solutions...), pipes and devices
    stay behind.
    """
    target = CourseFolder(course_dir).submitted_dir(task.student, task.assignment)
    if task.refusal or target.resolve() == task.folder.resolve():
        return task
    folders = [(task.folder, target, 0)]
    while folders:
        here, there, depth = folders.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda entry: entry.name)
        except OSError:
            continue
        there.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 < MAX_COPY_DEPTH:
                    folders.append((Path(entry.path), there / entry.name, depth + 1))
                continue
            try:
                data = read_regular_file(entry.path, MAX_NOTEBOOK_BYTES)
                (there / entry.name).write_bytes(data)
            except (OSError, UnreadableSubmission):
                continue  # not a regular file, too large, or gone: not nbgrader's business
    return task


def grade_folder(
    submissions_dir: Path,
    sources: dict[str, Assignment],
    course_dir: Path,
    options: GradingOptions = GradingOptions(),
    workers: int = 1,
    regrade: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
    make_executor: Callable[[int], JobExecutor] = local_pool,
) -> GradingRun:
    """Grade every submission under ``submissions_dir`` whose assignment has a source in ``sources``.

    ``make_executor(workers)`` returns a context manager whose ``submit(job)`` takes a `jobs.GradingJob`
    and returns a `concurrent.futures.Future` of its `GradeRecord`: `jobs.LocalJobs` (the default) or
    a cluster's (`cluster.DaskGrading.executor`). Both get the same job values.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    course_dir = Path(course_dir)
    run = GradingRun()
    pending, without_kernel = _plan(submissions_dir, sources, course_dir, regrade, only, run)
    jobs = [(task, GradingJob(task.assignment, task.student, sources[task.assignment].source_bytes(), notebook,
                              task.timestamp(), options)) for task, notebook in pending]

    def prepare_course() -> None:  # nbgrader's course set-up: seconds, while the workers start
        ensure_course(course_dir, sorted({sources[t.assignment] for t, _ in [*pending, *without_kernel]},
                                         key=lambda a: a.name), options.setup_timeout)
        for task, record in without_kernel:
            store(course_dir, task, record)
            run.graded.append(record)

    with tqdm(total=len(pending), desc="grading", unit="notebook", disable=not progress or not pending) as bar:
        for task, record in _fan_out(jobs, sources, workers, make_executor, meanwhile=prepare_course):
            store(course_dir, task, record)
            run.graded.append(record)
            bar.update(1)
            bar.set_postfix(dict(sorted(run.counts().items())), refresh=True)
    return run


def _plan(submissions_dir: Path, sources: dict[str, Assignment], course_dir: Path, regrade: bool,
          only: list[str] | None, run: GradingRun) -> tuple[list[tuple[SubmissionTask, bytes]],
                                                            list[tuple[SubmissionTask, GradeRecord]]]:
    """What to grade: each submission that needs a kernel, with the notebook's bytes as read now (what is
    graded is what was checked here, whatever happens to the file), and the records of those that need
    none (refused, missing). Already graded ones go to ``run.skipped``. The course folder is set up later."""
    tasks = discover(submissions_dir, only, expected=sorted(sources))
    for task in tasks:
        if task.assignment not in sources:
            print(f"course: NOT GRADED {task.folder}: no assignment named {task.assignment!r} "
                  f"(known: {', '.join(sorted(sources)) or 'none'})", file=sys.stderr)
    pending, without_kernel = [], []
    for task in (t for t in tasks if t.assignment in sources):
        source = sources[task.assignment]
        try:
            notebook = None if task.refusal else read_submission_file(task.notebook_path)
        except FileNotFoundError:
            notebook = None
        except UnreadableSubmission as error:  # a link, a folder, a pipe, a device, too large: refused unread
            task = SubmissionTask(task.student, task.assignment, task.folder, str(error))
        _copy_into_course(course_dir, task)  # nothing of a refused one
        if task.refusal:
            without_kernel.append((task, _record_without_kernel(task, source, Status.FAILED, task.refusal)))
        elif not regrade and _already_graded(course_dir, task, source, notebook):
            run.skipped.append(task)
        elif notebook is None:
            without_kernel.append((task, _missing_notebook_record(task, source)))
        else:
            pending.append((task, notebook))
    return pending, without_kernel


def _fan_out(pending: list[tuple[SubmissionTask, GradingJob]], sources: dict[str, Assignment], workers: int,
             make_executor: Callable[[int], JobExecutor],
             meanwhile: Callable[[], None] = lambda: None) -> Iterator[tuple[SubmissionTask, GradeRecord]]:
    """Grade ``pending`` on the executor, yielding each record as soon as it is ready; ``meanwhile()``
    runs once, after the first jobs are submitted (while the workers start), before any record is read.

    A worker process that dies takes the pool with it: its submissions go to a fresh pool once
    more, then count as errors. Any other failure of the grader becomes an error record.
    """
    attempts: Counter = Counter()
    if not pending:
        meanwhile()
    first_round = True
    while pending:
        retry = []
        with make_executor(min(workers, len(pending))) as pool:
            futures = {pool.submit(job): (task, job) for task, job in pending}
            if first_round:
                meanwhile()
                first_round = False
            for future in as_completed(futures):
                task, job = futures[future]
                try:
                    record = future.result()
                except BrokenProcessPool:
                    attempts[task] += 1
                    if attempts[task] <= POOL_RETRIES:
                        retry.append((task, job))
                        continue
                    record = _record_without_kernel(task, sources[task.assignment], Status.ERROR,
                                                    "the grading process died (out of memory?); rerun to grade again")
                except Exception as error:  # a bug in the grader: keep going, say so
                    message = f"the grader crashed: {type(error).__name__}: {error}".splitlines()[0]
                    record = _record_without_kernel(task, sources[task.assignment], Status.ERROR, message)
                yield task, record
        pending = retry
