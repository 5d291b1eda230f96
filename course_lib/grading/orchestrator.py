"""`course grade`: fan submissions out to grading workers, store what comes back.

The orchestrator is the only writer of the instructor's course folder: for each finished
submission it saves the graded notebook (``autograded/``), the grade record (``records/``), the
grader's log (``logs/``) and the scores (``gradebook.db``) before it looks at the next one, so an
interrupted run loses nothing already graded. Workers are processes of a local pool, each running
one kernel at a time; `grade_submission` is all they run, so another executor (a cluster) can
take the pool's place.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from .autograde import GradingOptions, grade_submission, questions, sha256
from .coursedir import LOGS_DIR, Assignment, CourseError, write_course_config
from .export import load_record, record_path
from .gradebook import has_assignment, store_record
from .record import GradeRecord, Status

#: How many times a submission is sent to a fresh pool after its worker process died.
POOL_RETRIES = 1
SKIPPED_FOLDERS = (".ipynb_checkpoints", "__pycache__")
#: Bytes of the grading process's and its kernels' output kept in a record's log (the end of it).
PROCESS_OUTPUT_CHARS = 64 * 1024


@dataclass(frozen=True)
class SubmissionTask:
    """One student's folder for one assignment: ``submitted/<student>/<assignment>/``."""

    student: str
    assignment: str
    folder: Path

    @property
    def notebook_path(self) -> Path:
        return self.folder / f"{self.assignment}.ipynb"

    def timestamp(self) -> str | None:
        path = self.folder / "timestamp.txt"
        if not path.exists():
            return None
        return path.read_text(encoding="utf-8").strip() or None


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


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SKIPPED_FOLDERS)


def discover(submissions_dir: Path, assignments: list[str] | None = None) -> list[SubmissionTask]:
    """Every ``<student>/<assignment>/`` folder under the submissions folder, sorted."""
    root = submitted_root(submissions_dir)
    if not root.is_dir():
        raise CourseError(f"no submissions folder at {root}")
    tasks = []
    for student_dir in _visible_dirs(root):
        for assignment_dir in _visible_dirs(student_dir):
            if assignments is None or assignment_dir.name in assignments:
                tasks.append(SubmissionTask(student_dir.name, assignment_dir.name, assignment_dir))
    return tasks


def ensure_course(course_dir: Path, assignments: list[Assignment], timeout: int) -> None:
    """Make ``course_dir`` an nbgrader course that knows ``assignments`` with their current sources."""
    from .release import released_notebook

    write_course_config(course_dir, timeout)
    for assignment in assignments:
        installed = Path(course_dir) / "source" / assignment.name / assignment.notebook_file
        current = installed.exists() and installed.read_bytes() == assignment.source_bytes()
        if not (current and has_assignment(course_dir, assignment.name)):
            released_notebook(assignment, course_dir)


def _record_without_kernel(task: SubmissionTask, source: Assignment, status: str, message: str) -> GradeRecord:
    import nbformat

    max_scores = questions(nbformat.read(source.source_path, as_version=4))
    return GradeRecord(
        student=task.student, assignment=task.assignment, notebook=task.assignment, status=status,
        message=message, scores={gid: 0.0 for gid in max_scores}, max_scores=max_scores,
        source_sha256=source.source_sha256(), timestamp=task.timestamp(),
    )


def _missing_notebook_record(task: SubmissionTask, source: Assignment) -> GradeRecord:
    found = sorted(p.name for p in task.folder.glob("*.ipynb"))
    others = f" (found: {', '.join(found)})" if found else " (the folder holds no notebook)"
    return _record_without_kernel(task, source, Status.MISSING, f"no {task.notebook_path.name} in the submission{others}")


def _tail(handle, limit: int) -> str:
    """The last ``limit`` bytes of a file (a kernel may write to its stderr without end), as text."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - limit))
    text = handle.read().decode("utf-8", "replace")
    return f"[... {size - limit} bytes cut ...]\n{text}" if size > limit else text


@contextlib.contextmanager
def _captured_process_output() -> Iterator[Callable[[], str]]:
    """Send this process's stdout/stderr (and its kernels', which inherit them) to a temporary file."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: _tail(sink, PROCESS_OUTPUT_CHARS)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def grade_in_worker(assignment: str, source_path: str, notebook_path: str, student: str,
                    timestamp: str | None, options: GradingOptions) -> GradeRecord:
    """What a pool worker runs: read the files and grade them (`grade_bytes_in_worker`)."""
    return grade_bytes_in_worker(assignment, Path(source_path).read_bytes(), Path(notebook_path).read_bytes(),
                                 student, timestamp, options)


def grade_bytes_in_worker(assignment: str, source_notebook: bytes, submitted_notebook: bytes, student: str,
                          timestamp: str | None, options: GradingOptions) -> GradeRecord:
    """Grade one submission; the output of the grading process and its kernels goes into the record's log."""
    with _captured_process_output() as output:
        record = grade_submission(assignment, source_notebook, submitted_notebook, student=student,
                                  timestamp=timestamp, options=options)
        process_output = output()
    if process_output.strip():
        record.log = f"{record.log}\n--- process output ---\n{process_output}".strip()
    return record


def store(course_dir: Path, task: SubmissionTask, record: GradeRecord) -> None:
    """Save everything about one graded submission into the course folder (the only writer)."""
    course_dir = Path(course_dir)
    graded_dir = course_dir / "autograded" / task.student / task.assignment
    graded_path = graded_dir / f"{task.assignment}.ipynb"
    if record.graded_notebook is not None:
        graded_dir.mkdir(parents=True, exist_ok=True)
        graded_path.write_text(record.graded_notebook, encoding="utf-8")
        if (task.folder / "timestamp.txt").exists():
            shutil.copyfile(task.folder / "timestamp.txt", graded_dir / "timestamp.txt")
    elif graded_path.exists():
        graded_path.unlink()  # a stale graded copy of an earlier submission must not survive
    log_path = course_dir / LOGS_DIR / task.assignment / f"{task.student}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(record.log + "\n", encoding="utf-8")
    store_record(course_dir, record)
    path = record_path(course_dir, task.assignment, task.student)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json(), encoding="utf-8")  # last: a record on disk means fully stored


def _already_graded(course_dir: Path, task: SubmissionTask, source: Assignment) -> bool:
    record = load_record(course_dir, task.assignment, task.student)
    if record is None or record.status == Status.ERROR or record.source_sha256 != source.source_sha256():
        return False
    if not task.notebook_path.exists():
        return record.status == Status.MISSING
    return record.submission_sha256 == sha256(task.notebook_path.read_bytes())


def _copy_into_course(course_dir: Path, task: SubmissionTask) -> SubmissionTask:
    """Keep nbgrader's own copy of the submission in ``course_dir/submitted`` (for manual reruns)."""
    target = Path(course_dir) / "submitted" / task.student / task.assignment
    if target.resolve() != task.folder.resolve():
        shutil.copytree(task.folder, target, dirs_exist_ok=True)
    return task


def local_pool(workers: int) -> Executor:
    """Worker processes on this machine; "spawn" gives each a clean interpreter on every platform."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def grade_folder(
    submissions_dir: Path,
    sources: dict[str, Assignment],
    course_dir: Path,
    options: GradingOptions = GradingOptions(),
    workers: int = 1,
    regrade: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
    make_executor: Callable[[int], Executor] = local_pool,
) -> GradingRun:
    """Grade every submission under ``submissions_dir`` whose assignment has a source in ``sources``.

    ``make_executor(workers)`` returns any `concurrent.futures.Executor` that can run
    `grade_in_worker` (a cluster's executor, e.g. Dask's ``client.get_executor()``, where the
    submission and source paths are visible to its workers).
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    course_dir = Path(course_dir)
    run = GradingRun()
    pending = _plan(submissions_dir, sources, course_dir, options, regrade, only, run)
    with tqdm(total=len(pending), desc="grading", unit="notebook", disable=not progress or not pending) as bar:
        for task, record in _fan_out(pending, sources, options, workers, make_executor):
            store(course_dir, task, record)
            run.graded.append(record)
            bar.update(1)
            bar.set_postfix(dict(sorted(run.counts().items())), refresh=True)
    return run


def _plan(submissions_dir: Path, sources: dict[str, Assignment], course_dir: Path, options: GradingOptions,
          regrade: bool, only: list[str] | None, run: GradingRun) -> list[SubmissionTask]:
    """Prepare the course folder; record what needs no kernel (skipped, missing); return the rest."""
    tasks = discover(submissions_dir, only)
    for task in tasks:
        if task.assignment not in sources:
            print(f"course: NOT GRADED {task.folder}: no assignment named {task.assignment!r} "
                  f"(known: {', '.join(sorted(sources)) or 'none'})", file=sys.stderr)
    tasks = [t for t in tasks if t.assignment in sources]
    ensure_course(course_dir, sorted({sources[t.assignment] for t in tasks}, key=lambda a: a.name), options.setup_timeout)
    pending = []
    for task in tasks:
        _copy_into_course(course_dir, task)
        source = sources[task.assignment]
        if not regrade and _already_graded(course_dir, task, source):
            run.skipped.append(task)
        elif not task.notebook_path.exists():
            record = _missing_notebook_record(task, source)
            store(course_dir, task, record)
            run.graded.append(record)
        else:
            pending.append(task)
    return pending


def _fan_out(pending: list[SubmissionTask], sources: dict[str, Assignment], options: GradingOptions, workers: int,
             make_executor: Callable[[int], Executor]) -> Iterator[tuple[SubmissionTask, GradeRecord]]:
    """Grade ``pending`` on the executor, yielding each record as soon as it is ready.

    A worker process that dies takes the pool with it: its submissions go to a fresh pool once
    more, then count as errors. Any other failure of the grader becomes an error record.
    """
    attempts: Counter = Counter()
    while pending:
        retry = []
        with make_executor(min(workers, len(pending))) as pool:
            futures = {
                pool.submit(grade_in_worker, task.assignment, str(sources[task.assignment].source_path),
                            str(task.notebook_path), task.student, task.timestamp(), options): task
                for task in pending
            }
            for future in as_completed(futures):
                task = futures[future]
                try:
                    record = future.result()
                except BrokenProcessPool:
                    attempts[task] += 1
                    if attempts[task] <= POOL_RETRIES:
                        retry.append(task)
                        continue
                    record = _record_without_kernel(task, sources[task.assignment], Status.ERROR,
                                                    "the grading process died (out of memory?); rerun to grade again")
                except Exception as error:  # a bug in the grader: keep going, say so
                    message = f"the grader crashed: {type(error).__name__}: {error}".splitlines()[0]
                    record = _record_without_kernel(task, sources[task.assignment], Status.ERROR, message)
                yield task, record
        pending = retry
