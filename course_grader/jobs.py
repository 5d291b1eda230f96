"""One submission to grade, as every executor receives it, and the local executor.

`grade_folder` turns each submission into a `GradingJob` (the two notebooks' bytes, who and what
they are, the options) and hands it to an executor's ``submit(job)``, which returns a
`concurrent.futures.Future` of the `GradeRecord`. `LocalJobs` runs `grade_job` in a pool of
processes on this machine; `cluster.DaskJobs` ships the same value to a Dask cluster. Neither
reads files: what was checked when the run was planned is exactly what is graded.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from .options import GradingOptions
from .record import GradeRecord, Status

#: Bytes of the grading process's and its kernels' output kept in a record's log (the end of it).
PROCESS_OUTPUT_CHARS = 64 * 1024


@dataclass(frozen=True)
class GradingJob:
    """Everything needed to grade one submission, in one picklable value."""

    assignment: str
    student: str
    source_notebook: bytes
    submitted_notebook: bytes
    timestamp: str | None
    options: GradingOptions


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


def grade_job(job: GradingJob) -> GradeRecord:
    """Grade one submission; the output of the grading process and its kernels goes into the record's log."""
    from .autograde import grade_submission  # a worker's import: the planning process never needs it
    from .preprocessors import TOO_MANY_FILES

    with _captured_process_output() as output:
        record = grade_submission(job.assignment, job.source_notebook, job.submitted_notebook, student=job.student,
                                  timestamp=job.timestamp, options=job.options)
        process_output = output()
    if process_output.strip():
        record.log = f"{record.log}\n--- process output ---\n{process_output}".strip()
    if record.status in (Status.KERNEL_DIED, Status.KILLED) and TOO_MANY_FILES in process_output:
        record.message += f"; the kernel's own output says: {open_files_reason(job.options)}"
    return record


def open_files_reason(options: GradingOptions) -> str:
    """``too many open files (limit 1024)``: why a kernel that ran out of file descriptors failed."""
    from .preprocessors import describe_open_files_limit

    return describe_open_files_limit(None if options.sandbox == "off" else options.limits.max_open_files)


class JobExecutor(Protocol):
    """What `grade_folder` submits to: a context manager whose ``submit`` grades one job somewhere."""

    def submit(self, job: GradingJob) -> Future: ...

    def __enter__(self) -> JobExecutor: ...

    def __exit__(self, *exc) -> None: ...


#: Libraries' thread counts. Each grading worker (and so each of its kernels) gets its share of the
#: cores: left at one thread per core, two kernels on two cores run four threads that spin while
#: waiting for each other, and grading takes half as long again.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_share(workers: int) -> dict[str, str]:
    """The thread-count variables for one of ``workers`` processes sharing this machine's cores."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {name: threads for name in THREAD_COUNT_VARIABLES}


def _take_cpu_share(share: dict[str, str]) -> None:
    """A local worker's start: its share of the cores, unless the instructor set a count explicitly."""
    for name, value in share.items():
        os.environ.setdefault(name, value)


class LocalJobs:
    """Worker processes on this machine ("spawn": a clean interpreter on every platform), one job each at a time.

    Each worker's kernels use its share of the cores (`cpu_share`).
    """

    def __init__(self, workers: int) -> None:
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_take_cpu_share, initargs=(cpu_share(workers),))

    def submit(self, job: GradingJob) -> Future:
        return self._pool.submit(grade_job, job)

    def __enter__(self) -> LocalJobs:
        return self

    def __exit__(self, *exc) -> None:
        # leaving on an error (a course that cannot be set up, Ctrl-C): what has not started never will
        self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)


def local_pool(workers: int) -> LocalJobs:
    """`grade_folder`'s default executor: `LocalJobs` with ``workers`` processes."""
    return LocalJobs(workers)


__all__ = ["THREAD_COUNT_VARIABLES", "GradingJob", "JobExecutor", "LocalJobs", "cpu_share", "grade_job", "local_pool",
           "open_files_reason"]
