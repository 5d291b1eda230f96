"""The grader's side of the verdict process: run it, wait for it, read what it wrote.

After a submission's notebook has run (its tests give the student feedback), the points of each
question are decided here, in a process that cannot reach the answer:

* it sees the course through a *verdict view* (`verdict_view`): the reference implementations the
  exercises ask for, in ``course_lib`` and in torchvision, are stubs that raise, torchvision's
  compiled operators are absent, and neither the hidden tests nor the grader's code are there;
* it runs the notebook's code cells except the tests, then calls the student's functions and
  modules on inputs drawn for this grading (`verdict_harness`), and writes the results to a file
  it opened before any student code ran;
* it runs sandboxed like a kernel, forked from a warm factory of its own (torch already imported),
  under the same limits, and is killed at a deadline.

Delegating to a reference has nothing to call, forging a result means computing it, and every
call is a check: the notebook's own tests no longer decide the points alone.

Without bubblewrap (``sandbox="rlimits"`` or ``"off"``) nothing can be hidden from the process: it
imports the view's ``course_lib`` first, but the real one is still on the disk, and torchvision is
whole. The record says so.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .sandboxed.kernel_factory import remove_tree
from .locations import import_paths
from .memory_cgroup import memory_group, remove_stale_groups
from .sandbox import MIB, Limits, Overlay, prepare_scratch, remove_stale_scratch, running_as_root, sandbox_uid, \
    sandboxed_command, scratch_prefix
from .submission import cell_kind, grade_id
from .sandboxed.verdict_harness import CALL_SECONDS, CELL_SECONDS, OP_SCHEMAS, QUESTIONS, STEPS
from .verdicts import Call, ModuleCall, by_question, payload
from .verdict_view import MESSAGE, VerdictView, build_view

VERDICT_MODULE = "course_grader.sandboxed.verdict_harness"
JOB_FILE, RESULTS_FILE = "verdict-job.json", "verdict-results.jsonl"
#: The longest the results file may be (bytes read): the grader's calls give a few hundred KiB.
MAX_RESULTS_BYTES = 64 * 1024 * 1024
#: Seconds left to the whole process after its cells and calls had their time (start-up, writing).
SLACK_SECONDS = 60


@dataclass
class VerdictRun:
    """What the verdict process reported.

    ``outputs``: per question ``{"device": ..., "results": [...]}`` for `verdicts.judge` (a question
    is missing when the process gave none); ``problems``: per question, why it has no results
    (a time limit, the process ended, the results were written twice); ``cell_errors``: (cell,
    error) for the cells that raised; ``note``: a line about the process as a whole, or None.
    """

    outputs: dict[str, dict] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    cell_errors: list[tuple[str, str]] = field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0


#: What an error says when an answer called something the verdict view hides: a course reference
#: (`verdict_view.MESSAGE`) or one of torchvision's compiled operators.
HIDDEN_MARKERS = (MESSAGE.split("}", 1)[1], "Couldn't load custom C++ ops", "Could not run 'torchvision::")


def used_a_hidden_reference(problem: str | None) -> bool:
    """Whether a verdict's problem comes from calling a reference the verdict process hides."""
    return bool(problem) and any(marker in problem for marker in HIDDEN_MARKERS)


def job_steps(nb: nbformat.NotebookNode, questions: list[str]) -> list[dict]:
    """What the verdict process does, in the notebook's order: every code cell but the tests, and each
    question's calls where its test cell stands (those with no test cell come last)."""
    steps, placed = [], set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell_kind(cell) == "tests":
            if grade_id(cell) in questions and grade_id(cell) not in placed:
                steps.append({"question": grade_id(cell)})
                placed.add(grade_id(cell))
        elif cell.source.strip():
            steps.append({"cell": grade_id(cell) or f"cell {index + 1}", "source": cell.source})
    return steps + [{"question": q} for q in questions if q not in placed]


def write_job(path: Path, nb: nbformat.NotebookNode, calls: list[Call | ModuleCall], view: VerdictView,
              cell_seconds: float, call_seconds: float, hidden: bool = True) -> None:
    """The job file; ``hidden``: torchvision's compiled operators are masked in the process's sandbox,
    so the harness declares their schemas itself (where they are not, torchvision registers them)."""
    grouped = by_question(calls)
    job = {STEPS: job_steps(nb, list(grouped)), QUESTIONS: {q: [payload(c) for c in group]
                                                            for q, group in grouped.items()},
           CELL_SECONDS: cell_seconds, CALL_SECONDS: call_seconds,
           OP_SCHEMAS: list(view.op_schemas) if hidden else []}
    path.write_text(json.dumps(job, separators=(",", ":")), encoding="utf-8")


def read_results(path: Path, questions: list[str]) -> VerdictRun:
    """Parse the results file; a question reported twice (the answer wrote to the file) gets no results."""
    run = VerdictRun()
    data = _read_regular_file(path, MAX_RESULTS_BYTES + 1)
    seen: dict[str, int] = {}
    finished = False
    for line in data[:MAX_RESULTS_BYTES].decode("utf-8", "replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if message.get("done") is True:
            finished = True
        elif isinstance(message.get("cell"), str) and isinstance(message.get("error"), str):
            run.cell_errors.append((message["cell"], message["error"][:300]))
        elif message.get("question") in questions:
            question = message["question"]
            seen[question] = seen.get(question, 0) + 1
            if "timeout" in message:
                run.problems[question] = "the grader's calls of this answer ran past their time limit"
            elif isinstance(message.get("results"), list):
                run.outputs[question] = {"device": str(message.get("device", "cpu")), "results": message["results"]}
    for question, count in seen.items():
        if count > 1:
            run.outputs.pop(question, None)
            run.problems[question] = "the grader's results file was written to by the notebook's code"
    if not finished:
        for question in questions:
            if question not in run.outputs:
                run.problems.setdefault(question, "the verdict process ended before it checked this answer")
    return run


def _read_regular_file(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` if it is a regular file; b"" otherwise. The student's code
    could have replaced it by a link (to anything the grader may read) or a FIFO (that never ends)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return b""
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(handle, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def run_verdict_process(nb: nbformat.NotebookNode, source: nbformat.NotebookNode, calls: list[Call | ModuleCall],
                        *, mode: str, limits: Limits, warm: bool, cell_seconds: float,
                        call_seconds: float) -> VerdictRun:
    """Run the verdict process for one submission (``nb``: its cells as graded, tests restored)."""
    started = time.monotonic()
    questions = list(by_question(calls))
    view = build_view(source, _views_folder())
    overlay = Overlay(view.binds, view.masks) if mode == "required" else None
    deadline = cell_seconds * len(job_steps(nb, [])) + call_seconds * len(questions) + SLACK_SECONDS
    if warm and mode == "required":
        run, code, timed_out = _run_warm(nb, calls, view, overlay, mode, limits, cell_seconds, call_seconds, deadline,
                                         questions)
    else:
        run, code, timed_out = _run_cold(nb, calls, view, overlay, mode, limits, cell_seconds, call_seconds, deadline,
                                         questions)
    if timed_out:
        run.note = f"the verdict process ran past {deadline:.0f} s and was stopped"
    elif code not in (0, None) and run.problems:
        from .sandbox import describe_exit

        run.note = f"the verdict process ended early: {describe_exit(code)}"
    if mode != "required":
        hidden = "nothing could be hidden from it (no bubblewrap): the references stayed on the disk"
        run.note = f"{run.note}; {hidden}" if run.note else hidden
    run.seconds = time.monotonic() - started
    return run


def prestart_verdict_factory(source: nbformat.NotebookNode, mode: str, limits: Limits) -> None:
    """Build the view and start the verdict factory now, so that both are ready when the notebook has run."""
    if mode == "required":
        from .warm import prestart_kernel_factory

        view = build_view(source, _views_folder())
        prestart_kernel_factory(mode, limits, Overlay(view.binds, view.masks), tuple(view.op_schemas))


_VIEWS: tempfile.TemporaryDirectory | None = None


def _views_folder() -> Path:
    """Where this process keeps its verdict views (one folder, removed when the process ends)."""
    global _VIEWS
    if _VIEWS is None:
        _VIEWS = tempfile.TemporaryDirectory(prefix="course-verdict-views-")
        os.chmod(_VIEWS.name, 0o755)
    return Path(_VIEWS.name)


def _prepare(scratch: Path, nb, calls, view: VerdictView, uid: int | None, cell_seconds: float,
             call_seconds: float, hidden: bool) -> tuple[Path, Path]:
    prepare_scratch(scratch, uid)
    # the runtime folder is shared with the grader (in the sandbox, work is a tmpfs of its own)
    job, results = scratch / "runtime" / JOB_FILE, scratch / "runtime" / RESULTS_FILE
    write_job(job, nb, calls, view, cell_seconds, call_seconds, hidden)
    if uid is not None:
        os.chown(job, uid, uid)
    return job, results


def _run_warm(nb, calls, view, overlay, mode, limits, cell_seconds, call_seconds, deadline, questions):
    from .warm import FactoryUnavailable, kernel_factory

    factory = kernel_factory(mode, limits, overlay, tuple(view.op_schemas))
    scratch = factory.new_kernel_dir()
    try:
        job, results = _prepare(scratch, nb, calls, view, factory.kernel_uid, cell_seconds, call_seconds, True)
        try:
            process = factory.start_kernel([str(job), str(results)], scratch, module=VERDICT_MODULE)
        except FactoryUnavailable as error:
            run = VerdictRun(problems={q: f"the verdict process could not start: {error}" for q in questions})
            return run, None, False
        try:
            code, timed_out = process.wait(deadline), False
        except subprocess.TimeoutExpired:
            factory.destroy()  # the only way to stop a forked process for sure: its whole sandbox
            code, timed_out = None, True
        return read_results(results, questions), code, timed_out
    finally:
        if factory.alive:
            factory.clear_kernel_dir()


def _run_cold(nb, calls, view, overlay, mode, limits, cell_seconds, call_seconds, deadline, questions):
    remove_stale_scratch()
    remove_stale_groups()
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix()))
    memory = memory_group(limits.memory_mb * MIB) if mode != "off" else None
    try:
        uid = sandbox_uid() if running_as_root() and mode == "required" else None
        job, results = _prepare(scratch, nb, calls, view, uid, cell_seconds, call_seconds, overlay is not None)
        command = [sys.executable, "-m", VERDICT_MODULE, str(job), str(results)]
        if mode == "off":
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _view_first(view),
                   "HOME": str(scratch / "home"), "MPLBACKEND": "Agg", "TMPDIR": str(scratch / "tmp")}
            env.update({k: v for k, v in os.environ.items() if k.startswith("COURSE_")})
        else:
            command = sandboxed_command(command, scratch, mode, limits, overlay, memory)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            if mode != "required":  # limits only: the view's course_lib comes first on the path
                command = [f"PYTHONPATH={_view_first(view)}" if part.startswith("PYTHONPATH=") else part
                           for part in command]
        process = subprocess.Popen(command, cwd=scratch / "work", env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            code, timed_out = process.wait(deadline), False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code, timed_out = None, True
        return read_results(results, questions), code, timed_out
    finally:
        remove_tree(scratch)  # the student's code wrote there: no recursion, no link followed
        if memory is not None:
            memory.remove()


def _view_first(view: VerdictView) -> str:
    """``PYTHONPATH`` of a verdict process without bubblewrap: the view's ``course_lib`` before the real one
    (whose folder may also hold the harness's package)."""
    return os.pathsep.join([str(view.root), *import_paths()])
