"""Submissions that attack the grader through files rather than code.

Links, folders, pipes and devices where a notebook should be; notebooks too large to read; code
nested too deeply for the audit; kernels that leave folders the clean-up cannot remove, flood
their output or run out of file descriptors; honest notebooks with a pasted copy of a graded cell.
Each is refused, cut or repaired with a one-line reason for the grade record. Most checks call
the helpers directly; one `grade_folder` run grades the few that need a kernel.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from course_grader import audit as audit_module
from course_grader import orchestrator, preprocessors, submission
from course_grader.audit import REPORTED, audit_cells
from course_grader.autograde import GradingOptions
from course_grader.coursedir import Assignment
from course_grader.environment import isolated_environment
from course_grader.sandboxed.kernel_factory import remove_entries, remove_tree, sweep
from course_grader.preprocessors import (MAX_NOTEBOOK_OUTPUT_BYTES, OutputBudget,
                                              describe_open_files_limit, limit_note)
from course_grader.record import GradeRecord, Status
from course_grader.submission import (MAX_CELL_SOURCE_CHARS, MAX_CELLS, MAX_JSON_DEPTH, MAX_NOTEBOOK_BYTES,
                                           UnreadableSubmission, grade_id, read_regular_file, read_submission,
                                           restore_cells)

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "redteam" / "redteam.ipynb"
NAME = "redteam"
FULL = {"q1_tests": 2.0, "q2_tests": 1.0}
NESTED_FOLDERS = 1500
#: The uid that removes folders in the read-only case (root ignores file modes).
NOBODY = 65534


def _solution() -> nbformat.NotebookNode:
    return nbformat.read(FIXTURE, as_version=4)


def _index(nb, gid: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if grade_id(c) == gid)


def _release() -> nbformat.NotebookNode:
    """The fixture as students receive it: the answers' solutions and the hidden tests taken out."""
    nb = _solution()
    for cell in nb.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0].rstrip() + "\n"
        if "### BEGIN SOLUTION" in cell.source:
            head = cell.source.split("### BEGIN SOLUTION")[0]
            cell.source = head + "# YOUR CODE HERE\n    raise NotImplementedError()\n"
    return nb


# ------------------------------------------------------------------ 1. not a regular file
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()
    return path


@pytest.mark.parametrize("make, what", [
    (lambda p: p.symlink_to(FIXTURE) or p, "a symbolic link"),
    (lambda p: p.mkdir() or p, "a folder"),
    (_fifo, "a named pipe (FIFO)"),
    (_socket, "a socket"),
])
def test_what_is_not_a_regular_file_is_refused_unread_and_without_blocking(tmp_path, make, what):
    path = make(tmp_path / "redteam.ipynb")
    outcome: list = []

    def read():  # a FIFO opened for reading the usual way would block here until someone writes
        try:
            outcome.append(submission.read_submission_file(path))
        except UnreadableSubmission as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the submission blocked"
    assert isinstance(outcome[0], UnreadableSubmission)
    assert str(outcome[0]) == f"the submission is {what}, not a notebook file"


def test_a_device_is_refused_and_a_missing_file_is_missing(tmp_path):
    with pytest.raises(UnreadableSubmission, match="the submission is a device, not a notebook file"):
        read_regular_file("/dev/zero", MAX_NOTEBOOK_BYTES)  # would read without end
    with pytest.raises(FileNotFoundError):
        submission.read_submission_file(tmp_path / "absent.ipynb")
    with pytest.raises(UnreadableSubmission, match="a symbolic link"):  # dangling: still a link, not "missing"
        (tmp_path / "dangling.ipynb").symlink_to(tmp_path / "nowhere")
        submission.read_submission_file(tmp_path / "dangling.ipynb")


def test_an_oversized_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "big.ipynb"
    with open(path, "wb") as handle:  # sparse: its size, not its bytes
        handle.truncate(MAX_NOTEBOOK_BYTES + 1)
    with pytest.raises(UnreadableSubmission, match=r"is 16,777,217 bytes, over the limit of 16 MiB"):
        submission.read_submission_file(path)
    small = tmp_path / "small.ipynb"
    small.write_bytes(FIXTURE.read_bytes())
    assert submission.read_submission_file(small) == FIXTURE.read_bytes()


def _assignment_folder(submitted: Path, student: str) -> Path:
    folder = submitted / student / NAME
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory):
    """One `grade_folder` run over submissions that no kernel should ever see (nor the course folder)."""
    base = tmp_path_factory.mktemp("refused")
    secret = base / "instructor"
    secret.mkdir()
    solution = secret / f"{NAME}.ipynb"
    solution.write_bytes(FIXTURE.read_bytes())
    (secret / "secret.txt").write_text("the answers")
    submitted = base / "submitted"
    _assignment_folder(submitted, "symlink").joinpath(f"{NAME}.ipynb").symlink_to(solution)
    _assignment_folder(submitted, "folder").joinpath(f"{NAME}.ipynb").mkdir()
    _fifo(_assignment_folder(submitted, "fifo") / f"{NAME}.ipynb")
    _assignment_folder(submitted, "device").joinpath(f"{NAME}.ipynb").symlink_to("/dev/zero")
    with open(_assignment_folder(submitted, "oversized") / f"{NAME}.ipynb", "wb") as handle:
        handle.truncate(MAX_NOTEBOOK_BYTES + 1)
    (submitted / "linked_student").symlink_to(secret.parent / "someone")
    (secret.parent / "someone" / NAME).mkdir(parents=True)
    (secret.parent / "someone" / NAME / f"{NAME}.ipynb").write_bytes(FIXTURE.read_bytes())
    (submitted / "linked_folder").mkdir()
    (submitted / "linked_folder" / NAME).symlink_to(secret)
    extras = _assignment_folder(submitted, "extras")  # a missing notebook; a link and a pipe beside it
    (extras / "timestamp.txt").symlink_to(secret / "secret.txt")
    (extras / "answers.txt").symlink_to(secret / "secret.txt")
    _fifo(extras / "pipe")
    (extras / "notes.md").write_text("my notes")
    course_dir = base / "course"
    with isolated_environment(base / "home", ROOT):
        run = orchestrator.grade_folder(submitted, {NAME: Assignment(NAME, FIXTURE)}, course_dir, progress=False)
    return {"records": {r.student: r for r in run.graded}, "course": course_dir, "run": run}


@pytest.mark.parametrize("student, reason", [
    ("symlink", "the submission is a symbolic link, not a notebook file"),
    ("folder", "the submission is a folder, not a notebook file"),
    ("fifo", "the submission is a named pipe (FIFO), not a notebook file"),
    ("device", "the submission is a symbolic link, not a notebook file"),
    ("oversized", "the submission is 16,777,217 bytes, over the limit of 16 MiB"),
    ("linked_student", "the student folder linked_student is a symbolic link, not a folder (not followed)"),
    ("linked_folder", "the submission folder is a symbolic link, not a folder (not followed)"),
])
def test_submissions_that_are_not_notebook_files_fail_with_a_reason(refused_run, student, reason):
    record = refused_run["records"][student]
    assert (record.status, record.message) == (Status.FAILED, reason)
    assert record.scores == {"q1_tests": 0.0, "q2_tests": 0.0} and record.graded_notebook is None
    stored = json.loads((refused_run["course"] / "records" / NAME / f"{student}.json").read_text())
    assert stored["message"] == reason


def test_nothing_behind_a_link_reaches_the_course_folder(refused_run):
    copies = refused_run["course"] / "submitted"
    copied = sorted(str(p.relative_to(copies)) for p in copies.rglob("*"))
    assert not any("secret" in p or p.endswith(f"{NAME}.ipynb") for p in copied), copied
    assert (copies / "extras" / NAME / "notes.md").read_text() == "my notes"  # plain files still are copied
    assert not (copies / "extras" / NAME / "pipe").exists()
    record = refused_run["records"]["extras"]
    assert record.status == Status.MISSING and record.timestamp is None  # the linked timestamp is not read


def test_a_notebook_swapped_for_a_link_after_planning_changes_nothing(tmp_path, monkeypatch):
    """The bytes read (and checked) while planning are the job's: no worker opens the student's file again."""
    from concurrent.futures import Future

    from course_grader import autograde, jobs

    submitted = tmp_path / "submitted" / "late_swap" / NAME / f"{NAME}.ipynb"
    submitted.parent.mkdir(parents=True)
    student = nbformat.read(FIXTURE, as_version=4)
    student.cells[0].source += "\n# the student's own copy"
    nbformat.write(student, submitted)
    original = submitted.read_bytes()
    graded: list[bytes] = []

    def grade(assignment, source, notebook, *, student, timestamp, options):
        graded.append(notebook)
        return GradeRecord(student, assignment, assignment, Status.GRADED, scores=dict(FULL), max_scores=dict(FULL))

    class SwappingJobs:  # an executor that lets the student swap the file just before the job runs
        def __init__(self, workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def submit(self, job):
            submitted.unlink()
            submitted.symlink_to(FIXTURE)  # the solution, hidden tests and all
            future = Future()
            future.set_result(jobs.grade_job(job))
            return future

    monkeypatch.setattr(autograde, "grade_submission", grade)  # what a worker's grade_job imports
    with isolated_environment(tmp_path / "home", ROOT):
        run = orchestrator.grade_folder(tmp_path / "submitted", {NAME: Assignment(NAME, FIXTURE)}, tmp_path / "course",
                                        progress=False, make_executor=SwappingJobs)
    assert graded == [original] and run.graded[0].status == Status.GRADED


# ---------------------------------------------------------------------------- 2. oversized
def _notebook_bytes(cells: list[str]) -> bytes:
    return json.dumps(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])).encode()


def _nested_json(depth: int) -> bytes:
    nb = json.loads(_notebook_bytes(["1"]))
    nb["metadata"]["deep"] = json.loads("[" * depth + "]" * depth)
    return json.dumps(nb).encode()


@pytest.mark.parametrize("data, reason", [
    (_notebook_bytes(["x = 1"] * (MAX_CELLS + 1)), f"the notebook has {MAX_CELLS + 1:,} cells, over the limit"),
    (_notebook_bytes(["x = 1", "#" * (MAX_CELL_SOURCE_CHARS + 1)]),
     f"cell 2 holds {MAX_CELL_SOURCE_CHARS + 1:,} characters of code or text, over the limit"),
    (b" " * (MAX_NOTEBOOK_BYTES + 1), "the notebook file is 16,777,217 bytes, over the limit of 16 MiB"),
    (_nested_json(MAX_JSON_DEPTH), "nested too deeply"),
    (b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_oversized_notebooks_are_refused_before_nbformat_reads_them(monkeypatch, data, reason):
    def parsed(*args, **kwargs):
        raise AssertionError("nbformat read a notebook that is over the limits")

    monkeypatch.setattr(nbformat, "reads", parsed)
    with pytest.raises(UnreadableSubmission, match=reason) as caught:
        read_submission(data)
    assert "\n" not in str(caught.value)


def test_a_source_given_as_lines_is_counted_whole():
    nb = json.loads(_notebook_bytes(["x = 1"]))
    nb["cells"][0]["source"] = ["#" * 1000 + "\n"] * (MAX_CELL_SOURCE_CHARS // 1000 + 1)
    with pytest.raises(UnreadableSubmission, match="cell 1 holds"):
        read_submission(json.dumps(nb).encode())


@pytest.mark.parametrize("folder", ["exercises", "solutions"])
def test_the_course_notebooks_with_outputs_stay_far_below_the_limits(folder):
    """Each code cell with a 150 KB figure and 20 KB of printed text, more than the exercises show."""
    figure = base64.b64encode(os.urandom(110_000)).decode()
    for path in sorted((ROOT / folder).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 20_000),
                                nbformat.v4.new_output("display_data", data={"image/png": figure})]
        data = nbformat.writes(nb).encode()
        assert len(data) * 4 < MAX_NOTEBOOK_BYTES, path.name
        assert len(nb.cells) * 10 < MAX_CELLS, path.name
        assert max(len(c.source) for c in nb.cells) * 10 < MAX_CELL_SOURCE_CHARS, path.name
        assert read_submission(data).cells  # and it reads


# ------------------------------------------------------------------- 3. nested too deeply
DEEP_SOURCES = {
    "unary minus (MemoryError in the parser)": "x = " + "-" * 100_000 + "1",
    "a sum of 100,000 terms (RecursionError building the tree)": "x = " + "+".join(["a"] * 100_000),
    "a chain of 1,000 calls (parses, too deep for the audit's walks)": "x = f" + "()" * 1000,
    "IPython syntax around it": "%time x = " + "+".join(["a"] * 100_000),
}


@pytest.mark.parametrize("source", DEEP_SOURCES.values(), ids=DEEP_SOURCES.keys())
def test_an_answer_nested_too_deeply_and_an_added_cell_are_reported(source):
    """Nothing in this assignment is ruled out by its prose, so an unreadable cell costs nothing by
    itself: it is reported, and the points come from the grader's own check."""
    nb = _solution()
    nb.cells[_index(nb, "q1_answer")].source += "\n" + source
    nb.cells.insert(_index(nb, "q2_tests") + 1, nbformat.v4.new_code_cell(source))
    audit = audit_cells(nb, _solution())
    assert [(f.cell, f.question, f.message) for f in audit.findings] == [
        ("q1_answer", "q1_tests", f"q1_answer could not be read: nested too deeply: {REPORTED}"),
        (f"cell {len(nb.cells)}", None, f"cell {len(nb.cells)} could not be read: nested too deeply: {REPORTED}")]
    assert audit.zeroed_questions == set() and audit.reported_questions == {"q1_tests"}


def test_parentheses_nested_past_the_parser_limit_are_a_syntax_error_not_a_finding():
    nb = _solution()
    nb.cells[_index(nb, "q1_answer")].source = "x = " + "(" * 5000 + "1" + ")" * 5000
    assert audit_cells(nb, _solution()).findings == []  # the kernel reports its SyntaxError


def test_too_much_deeply_nested_code_is_not_read(monkeypatch):
    # the audit's work grows with the sum of the nodes' depths: limits scaled down, so that this stays fast
    chain = "x = f" + "()" * 50 + "\n"
    cost = audit_module._read_cell(nbformat.v4.new_code_cell(chain))[1]
    monkeypatch.setattr(audit_module, "MAX_SYNTAX_WORK", 10 * cost)
    monkeypatch.setattr(audit_module, "MAX_NOTEBOOK_SYNTAX_WORK", 30 * cost)
    nb = _solution()
    nb.cells[_index(nb, "q1_answer")].source += "\n" + chain * 11
    assert [f.message for f in audit_cells(nb, _solution()).findings] == [
        f"q1_answer could not be read: {audit_module.TOO_COMPLEX}: {REPORTED}"]
    nb = _solution()
    nb.cells += [nbformat.v4.new_code_cell(chain * 9) for _ in range(4)]  # the fourth passes the notebook's limit
    assert [f.message for f in audit_cells(nb, _solution()).findings] == [
        f"cell {len(nb.cells)} could not be read: {audit_module.TOO_MUCH_CODE}: {REPORTED}"]


def test_the_course_solutions_are_far_within_what_the_audit_reads():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        solution = nbformat.read(path, as_version=4)
        costs = [audit_module._read_cell(c)[1] for c in solution.cells if c.cell_type == "code"]
        assert max(costs) * 10 < audit_module.MAX_SYNTAX_WORK, path.name
        assert sum(costs) * 10 < audit_module.MAX_NOTEBOOK_SYNTAX_WORK, path.name
        assert not any("could not be read" in f.message for f in audit_cells(solution, solution).findings)


# ------------------------------------------------------------------ 4. removing what is left
def _nested_folders(top: Path, depth: int) -> None:
    """``depth`` folders one in another under ``top`` (far past PATH_MAX), a file at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("nested-folder-name", dir_fd=fd)
        inner = os.open("nested-folder-name", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)


def _hostile_tree(top: Path, outside: Path) -> None:
    """What a kernel can leave: deep nesting, read-only folders, links out of its folder."""
    top.mkdir()
    _nested_folders(top, NESTED_FOLDERS)
    locked = top / "read-only" / "inner"
    locked.mkdir(parents=True)
    (locked / "answer.txt").write_text("x")
    (top / "link-out").symlink_to(outside)
    (top / "read-only" / "link-out").symlink_to(outside / "keep.txt")
    locked.chmod(0o500)
    (top / "read-only").chmod(0o000)


def _outside(base: Path) -> Path:
    outside = base / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("must survive")
    return outside


def test_remove_tree_removes_deep_read_only_trees_and_never_follows_links():
    """As the kernel's own uid, which builds the tree (root would ignore the read-only modes)."""
    base = Path(tempfile.mkdtemp(prefix="hostile-tree-"))
    try:
        outside = _outside(base)
        top = base / "work"
        script = "\n".join([
            "import os, sys, time", "from pathlib import Path",
            "from course_grader.sandboxed.kernel_factory import remove_tree",
            f"if os.geteuid() == 0:\n    os.setgroups([])\n    os.setresgid({NOBODY}, {NOBODY}, {NOBODY})\n"
            f"    os.setresuid({NOBODY}, {NOBODY}, {NOBODY})",
            f"NESTED_FOLDERS = {NESTED_FOLDERS}", inspect.getsource(_nested_folders), inspect.getsource(_hostile_tree),
            "top, outside = Path(sys.argv[1]), Path(sys.argv[2])",
            "_hostile_tree(top, outside)",
            "started = time.process_time()", "gone = remove_tree(top)",
            "print(gone, round(time.process_time() - started, 3))"])
        if os.geteuid() == 0:  # the script drops to nobody once Python has started
            for path in (base, outside, outside / "keep.txt"):
                os.chown(path, NOBODY, NOBODY)
        os.chmod(base, 0o755)
        result = subprocess.run([sys.executable, "-c", script, str(top), str(outside)], capture_output=True, text=True,
                                timeout=120, cwd=base, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        gone, seconds = result.stdout.split()
        print(f"removed {NESTED_FOLDERS} nested folders and a read-only one in {seconds} s of CPU")
        assert gone == "True" and not top.exists()
        assert (outside / "keep.txt").read_text() == "must survive"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_files_that_vanish_meanwhile_are_no_error(tmp_path, monkeypatch):
    top = tmp_path / "work"
    (top / "a" / "b").mkdir(parents=True)
    for name in ("x", "y"):
        (top / "a" / "b" / name).write_text(name)
    real_unlink = os.unlink

    def someone_else_was_first(path, *, dir_fd=None):
        real_unlink(path, dir_fd=dir_fd)
        real_unlink(path, dir_fd=dir_fd)  # FileNotFoundError: what the clean-up meets in a race

    monkeypatch.setattr(os, "unlink", someone_else_was_first)
    assert remove_tree(top) and not top.exists()
    assert remove_tree(top)  # already gone: nothing to do


def test_every_clean_up_survives_what_a_kernel_leaves(tmp_path, monkeypatch):
    outside = _outside(tmp_path)
    from course_grader import kernel_manager, sandbox, warm

    # the factory emptying its home (and /tmp: the same function) between two kernels
    home = tmp_path / "home"
    home.mkdir()
    _hostile_tree(home / "left", outside)
    sweep(False, {}, str(home))
    assert home.is_dir() and os.listdir(home) == []
    # a slot emptied for the next kernel, except what is kept
    slot = tmp_path / "slot"
    slot.mkdir()
    _hostile_tree(slot / "work", outside)
    (slot / "kept").write_text("kept")
    remove_entries(slot, {"kept"})
    assert os.listdir(slot) == ["kept"]
    # a killed grading process's scratch folder, removed by the next run
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{sandbox.SCRATCH_PREFIX}{dead.pid}-abc"
    _hostile_tree(stale, outside)
    sandbox.remove_stale_scratch()
    assert not stale.exists()
    # a factory destroyed with its whole scratch folder
    root = tmp_path / "factory"
    _hostile_tree(root, outside)
    factory = SimpleNamespace(alive=False, root=root, process=SimpleNamespace(wait=lambda timeout: 0), memory=None)
    warm.KernelFactory.destroy(factory)
    assert not root.exists()
    # a cold kernel's scratch folder, when its manager cleans up
    manager = kernel_manager.SandboxedKernelManager(sandbox="rlimits", warm=False)
    manager._scratch = tmp_path / "cold"
    _hostile_tree(manager._scratch, outside)
    cold = manager._scratch
    asyncio.run(manager._async_cleanup_resources())
    assert not cold.exists()
    assert (outside / "keep.txt").read_text() == "must survive"


# ------------------------------------------------------------------------ 5. output floods
def _stream(text: str, name: str = "stdout") -> dict:
    return {"msg_type": "stream", "content": {"name": name, "text": text}}


def test_a_notebook_keeps_at_most_its_output_budget_in_all():
    budget = OutputBudget(cell_limit=1024 * 1024)
    kept = 0
    for _ in range(250):  # 250 cells at the per-cell limit: a gigabyte in the worker before
        budget.new_cell()
        kept += sum(len(m["content"]["text"]) for m in (budget.admit(_stream("x" * 1000 * 1024), []),) if m)
    assert kept <= MAX_NOTEBOOK_OUTPUT_BYTES
    assert budget.notebook_kept <= MAX_NOTEBOOK_OUTPUT_BYTES
    assert "a notebook keeps at most 8 MiB of output in all" in budget.note()
    budget = OutputBudget(cell_limit=1024)
    assert budget.admit(_stream("x" * 600), []) and budget.admit(_stream("x" * 600), []) is None
    assert "each cell keeps at most 1 KiB" in budget.note()


def test_what_decides_a_verdict_survives_the_budget_shortened():
    budget = OutputBudget(cell_limit=1024, notebook_limit=1024)
    assert budget.admit(_stream("x" * 2048), []) is None
    kept: list = []
    error = {"msg_type": "error", "content": {"ename": "AssertionError", "evalue": "e" * 10**6,
                                              "traceback": ["line"] * 10**4}}
    for msg in (error, _stream("s" * 10**6, "stderr"), {"msg_type": "execute_result", "content": {
            "data": {"text/plain": "0.5", "image/png": "p" * 10**6}, "execution_count": 1, "metadata": {}}}):
        excerpt = budget.admit(msg, kept)
        assert excerpt is not None, msg["msg_type"]
        kept.append(nbformat.v4.output_from_msg({**excerpt, "header": {"msg_type": excerpt["msg_type"]}}))
    assert len(kept[0].evalue) < 3000 and len(kept[0].traceback) == preprocessors.VERDICT_EXCERPT_LINES
    assert kept[1].name == "stderr" and len(kept[1].text) < 3000
    assert kept[2].data == {"text/plain": "0.5"}  # nbgrader's partial credit reads it
    assert budget.admit(error, kept) is None and budget.admit(_stream("again", "stderr"), kept) is None


def test_output_still_arriving_at_the_time_limit_is_a_flood_and_a_silent_interrupted_kernel_is_stuck():
    execute = preprocessors.GuardedExecute(timeout=1, setup_timeout=1)
    execute.interrupt_grace = 0.05

    async def wait_for_output(interrupted: bool):
        execute._interrupted = interrupted
        never_ends = asyncio.get_running_loop().create_future()
        await execute._rest_of_output(never_ends, time.monotonic() + 0.2)

    with pytest.raises(preprocessors._OutputFlood):
        asyncio.run(wait_for_output(False))
    with pytest.raises(asyncio.TimeoutError):  # nbclient turns it into CellTimeoutError: a stuck kernel
        asyncio.run(wait_for_output(True))


def test_a_flood_cut_at_the_time_limit_gives_its_cell_a_reason_and_the_next_cells_run(monkeypatch):
    from nbconvert.preprocessors import ExecutePreprocessor

    def flooded(self, cell, resources, index):
        self._budget.admit(_stream("x" * 3 * 1024 * 1024), cell.outputs)
        raise preprocessors._OutputFlood()

    monkeypatch.setattr(ExecutePreprocessor, "preprocess_cell", flooded)
    execute = preprocessors.GuardedExecute(timeout=5, setup_timeout=5)
    cell = nbformat.v4.new_code_cell("print('x' * 300_000_000)")
    cell, _ = execute.preprocess_cell(cell, {}, 0)
    reasons = [limit_note(o) for o in cell.outputs if limit_note(o)]
    assert reasons == ["the cell printed more than 3 MB of output: cut"]
    assert execute.shutdown_kernel != "immediate"  # the kernel is not stopped: it finished the cell


# ----------------------------------------------------------------------- 6. pasted cells
def test_a_pasted_test_cell_keeps_the_first_copy_graded_and_costs_nothing():
    release, source = _release(), _solution()
    submitted = _solution()
    tests = _index(submitted, "q1_tests")
    copy_of_tests = copy.deepcopy(submitted.cells[tests])
    copy_of_tests.source = "print('my own check')"
    submitted.cells.append(copy_of_tests)
    repair = restore_cells(submitted, release, source)
    assert repair.problems == []
    assert repair.notes == [f"test cell q1_tests appears 2 times (copied and pasted?): the copy at cell {tests + 1} is "
                            "graded; the other copies ran as ordinary cells"]
    assert [i for i, c in enumerate(submitted.cells) if grade_id(c) == "q1_tests"] == [tests]
    assert "nbgrader" not in submitted.cells[-1].metadata and submitted.cells[-1].source == "print('my own check')"


def test_a_pasted_answer_cell_grades_the_last_copy_and_its_tests_follow_it():
    release, source = _release(), _solution()
    submitted = _solution()
    answer, tests = _index(submitted, "q1_answer"), _index(submitted, "q1_tests")
    pasted = [copy.deepcopy(submitted.cells[answer]), copy.deepcopy(submitted.cells[tests])]
    submitted.cells[answer].source = "def box_area(boxes):\n    return 0  # my first try\n"
    submitted.cells[tests + 1:tests + 1] = pasted  # the pair pasted after the first tests, the copy edited
    repair = restore_cells(submitted, release, source)
    assert repair.problems == []
    assert repair.notes == [
        f"answer cell q1_answer appears 2 times (copied and pasted?): the last copy (cell {tests + 2}) is graded as "
        "the answer, since a pasted answer cell is usually the one edited; the other copies ran as ordinary cells",
        f"test cell q1_tests appears 2 times (copied and pasted?): the copy at cell {tests + 3} is graded; "
        "the other copies ran as ordinary cells"]
    assert _index(submitted, "q1_answer") == tests + 1 and _index(submitted, "q1_tests") == tests + 2
    assert [grade_id(c) for c in submitted.cells].count("q1_answer") == 1


# --------------------------------------------------------------------- 7. open files
def test_a_kernel_that_died_out_of_file_descriptors_says_so(monkeypatch):
    def dies(assignment, source, notebook, *, student, timestamp, options):
        os.write(2, b"Too many open files (src/epoll.cpp:100)\n")  # what libzmq prints before it aborts
        return GradeRecord(student, assignment, assignment, Status.KILLED,
                           message="the kernel was stopped while running cell 3 (q1_answer): it aborted")

    from course_grader import autograde, jobs

    monkeypatch.setattr(autograde, "grade_submission", dies)  # what a worker's grade_job imports
    options = GradingOptions()
    record = jobs.grade_job(jobs.GradingJob(NAME, "emfile", b"", b"", None, options))
    assert record.message.endswith(f"; the kernel's own output says: too many open files "
                                   f"(limit {options.limits.max_open_files})")
    assert describe_open_files_limit(64) == "too many open files (limit 64)"


# ------------------------------------------------------- the kernel: floods and descriptors
KERNEL_OPEN_FILES = 128


def test_a_kernel_out_of_file_descriptors_and_a_300_mb_print_read_as_such():
    """A cold kernel with limits only (no sandbox needed): the cells say what stopped them."""
    from traitlets.config import Config

    cells = ["files = []\nwhile True:\n    files.append(open('/dev/null'))",
             "for handle in files:\n    handle.close()\ndel files",
             "print('x' * 300_000_000)",
             "print('after')",
             # what reaches descriptor 2 directly (C code, early logging handlers) is the kernel's log, not
             # output: out of descriptors, ipykernel logs each failed send there, and forwarding that
             # log as output made a loop that flooded the first cell until its time limit
             "import os\nos.write(2, b'E' * 200_000)\nprint('written')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])
    config = Config({"SandboxedKernelManager": {"sandbox": "rlimits", "warm": False,
                                                "max_open_files": KERNEL_OPEN_FILES}})
    # iopub_timeout: nbclient's wait for a finished cell's output, which the 300 MB take longer than
    execute = preprocessors.GuardedExecute(config=config, timeout=60, setup_timeout=60, iopub_timeout=1)
    nb, _ = execute.preprocess(nb, {"metadata": {"path": tempfile.gettempdir()}})
    out_of_files, _, flood, after, descriptor_two = (c.outputs for c in nb.cells)
    reasons = [limit_note(o) for o in out_of_files if limit_note(o)]
    assert reasons == [f"too many open files (limit {KERNEL_OPEN_FILES})"]
    assert not any(o.output_type == "error" for o in flood), flood  # no timeout: the kernel had finished
    assert "were dropped" in flood[-1].text
    assert after[0].text == "after\n"
    assert [(o.output_type, o.get("text")) for o in descriptor_two] == [("stream", "written\n")]


# --------------------------------------------------------- end to end: a pasted, a deep answer
@pytest.mark.grading
def test_pasted_cells_and_deep_answers_are_graded_not_failed(tmp_path):
    from course_grader.sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")
    pasted = _solution()
    tests = _index(pasted, "q2_tests")
    pasted.cells.insert(tests + 1, copy.deepcopy(_release().cells[tests]))  # Jupyter keeps the metadata on paste
    answer = _index(pasted, "q1_answer")
    pasted.cells.insert(answer + 1, copy.deepcopy(pasted.cells[answer]))
    pasted.cells[answer].source = "def box_area(boxes):\n    return boxes[:, 0] * 0  # first try\n"
    deep = _solution()
    deep.cells[_index(deep, "q1_answer")].source += "\nx = " + "-" * 100_000 + "1\n"
    submitted = tmp_path / "submitted"
    for student, notebook in {"pasted": pasted, "deep": deep}.items():
        nbformat.write(notebook, _assignment_folder(submitted, student) / f"{NAME}.ipynb")
    options = GradingOptions(timeout=60, setup_timeout=180, memory_mb=1536, max_processes=64)
    with isolated_environment(tmp_path / "home", ROOT):
        run = orchestrator.grade_folder(submitted, {NAME: Assignment(NAME, FIXTURE)}, tmp_path / "course", options,
                                        progress=False)
    records = {r.student: r for r in run.graded}
    assert (records["pasted"].status, records["pasted"].scores) == (Status.GRADED, FULL), records["pasted"].message
    assert records["deep"].scores == {"q1_tests": 0.0, "q2_tests": 1.0}, records["deep"].message
    # the kernel cannot run that cell either: q1 fails in the notebook; the audit only reports the cell
    assert f"q1_answer could not be read: nested too deeply: {REPORTED}" in records["deep"].message


def test_grading_kernels_keep_descriptor_output_out_of_their_cells():
    from course_grader.kernel_manager import NO_FD_CAPTURE, without_fd_capture

    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "kernel.json"]
    assert without_fd_capture(ipykernel) == [*ipykernel, NO_FD_CAPTURE]
    assert without_fd_capture(without_fd_capture(ipykernel)) == [*ipykernel, NO_FD_CAPTURE]
    other_kernel = ["/usr/bin/R", "--slave", "-f", "kernel.json"]
    assert without_fd_capture(other_kernel) == other_kernel
