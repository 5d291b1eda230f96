"""nbgrader preprocessors that make autograding say what happened instead of scoring 0 silently.

- `GuardedExecute` runs the notebook like nbgrader's `Execute`, with a generous time limit for the
  read-only set-up cells (``import torch`` under load takes a while) and a separate one for every
  other cell; when the kernel dies it marks the cell that was running and every later cell as
  failed (nbgrader would otherwise drop the whole submission, or count unrun tests as passed).
- It starts the kernel in the sandbox (`kernel_manager.SandboxedKernelManager`), keeps at most
  ``max_output_kb`` of output per cell and `MAX_NOTEBOOK_OUTPUT_BYTES` in all (a 300 MB print, or
  250 cells of output, must not fill the grader's memory), but always an excerpt of what decides a
  verdict (an error, stderr, a cell's value). When the kernel died by hitting a limit it says which;
  a cell that ran out of file descriptors, or whose output was still arriving at its time limit,
  gets a `RESOURCE_LIMIT_ERROR` saying so (not a timeout: the kernel had finished that cell).
- `DropWarningStreams` removes warning lines from stderr: nbgrader scores a test cell 0 when it
  printed anything on stderr, and torch prints warnings there for correct code.
"""
from __future__ import annotations

import asyncio
import re
import resource
from time import monotonic

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from .kernel_manager import SandboxedKernelManager
from .sandbox import describe_exit, was_killed_by_a_limit
from .submission import cell_kind

#: Error names the executed notebook carries for cells that did not finish.
TIMEOUT_ERROR = "CellTimeoutError"  # nbgrader's own name for a cell that ran past its limit
KERNEL_DIED_ERROR = "DeadKernelError"
KILLED_ERROR = "KernelKilledByLimit"  # the kernel died from a resource limit (memory, CPU time, file size)
NOT_RUN_ERROR = "CellNotRun"
#: How a timed-out cell's error says the kernel ignored the interrupt and was stopped.
STOPPED_AT_TIME_LIMIT = "it ignored the interrupt, so the kernel was stopped"
#: Error name of the grader's note on a cell that hit a limit other than time (output, open files);
#: its value is the one-line reason for the grade record.
RESOURCE_LIMIT_ERROR = "ResourceLimit"

MIB = 1024 * 1024
#: Output kept for a whole notebook; each cell keeps at most ``max_output_kb`` of its own.
MAX_NOTEBOOK_OUTPUT_BYTES = 8 * MIB
#: What is kept of an output that decides a verdict (an error, stderr, a cell's value) past the limits.
VERDICT_EXCERPT_CHARS = 2048
#: Lines of an error's traceback kept past the limits (its end: where it was raised).
VERDICT_EXCERPT_LINES = 20
#: Output messages the limits apply to.
LIMITED_OUTPUTS = ("stream", "display_data", "execute_result", "update_display_data", "error")
#: How an error (a cell's, or a dying kernel's own output) says that the kernel ran out of file
#: descriptors (errno 24, EMFILE: ``OSError: [Errno 24] Too many open files``).
TOO_MANY_FILES = "Too many open files"


def describe_open_files_limit(limit: int | None) -> str:
    """``too many open files (limit 1024)``; ``limit`` None: this process's own (a kernel without sandbox)."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return f"too many open files (limit {limit})"


def limit_note(output) -> str | None:
    """The grade record's reason when ``output`` is the grader's `RESOURCE_LIMIT_ERROR` note, else None."""
    if output.get("output_type") == "error" and output.get("ename") == RESOURCE_LIMIT_ERROR:
        return str(output.get("evalue", ""))
    return None


def output_size(content: dict) -> int:
    """Characters of an output message's content (text, data, error), counted without copying it."""
    size = 0
    for key in ("text", "evalue"):
        if isinstance(content.get(key), str):
            size += len(content[key])
    data = content.get("data")
    if isinstance(data, dict):
        size += sum(len(v) if isinstance(v, str) else len(str(v)) for v in data.values())
    traceback = content.get("traceback")
    if isinstance(traceback, list):
        size += sum(len(line) for line in traceback if isinstance(line, str))
    return size


def _cut(text, limit: int = VERDICT_EXCERPT_CHARS) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else f"{text[:limit]}\n[... {len(text) - limit} characters cut]"


def verdict_excerpt(msg: dict, kept_outputs: list) -> dict | None:
    """A short copy of an output message that decides a test cell's verdict for nbgrader (an error,
    the first stderr output, the cell's value); None for one that does not (it may be dropped)."""
    kind, content = msg["msg_type"], dict(msg.get("content", {}))
    if kind not in ("error", "execute_result") and not (kind == "stream" and content.get("name") == "stderr"):
        return None
    if any(o.get("output_type") == kind and o.get("name") == content.get("name") for o in kept_outputs):
        return None  # one of its kind is enough for the verdict
    if kind == "error":
        content["evalue"] = _cut(content.get("evalue", ""))
        content["traceback"] = [_cut(line) for line in (content.get("traceback") or [])[-VERDICT_EXCERPT_LINES:]]
    elif kind == "stream":
        content["text"] = _cut(content.get("text", ""))
    else:
        content["data"] = {"text/plain": _cut((content.get("data") or {}).get("text/plain", ""))}
    return {**msg, "content": content}

#: A warning as Python prints it ("file.py:12: UserWarning: text"), or as torch's C++ code does ("[W ...] text").
_WARNING_LINE = re.compile(r"^(?:.*:\d+: [A-Za-z_][\w.]*Warning: |\[W[^\]]*\] |[A-Za-z_][\w.]*Warning: )")


def strip_warning_lines(text: str) -> str:
    """``text`` without warning lines and the indented source line Python prints under each."""
    kept, in_warning = [], False
    for line in text.splitlines(keepends=True):
        if _WARNING_LINE.match(line):
            in_warning = True
            continue
        if in_warning and line[:1] in (" ", "\t"):
            continue
        in_warning = False
        kept.append(line)
    return "".join(kept)


class DropWarningStreams(NbGraderPreprocessor):
    """Remove warning lines from stderr outputs; whatever else was printed there stays (and counts)."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            return cell, resources
        outputs = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                text = strip_warning_lines(output.text)
                if not text.strip():
                    continue
                output.text = text
            outputs.append(output)
        cell.outputs = outputs
        return cell, resources


class CellTimeouts:
    """Time limit of a cell, in seconds: ``setup`` for read-only cells, ``answer`` for all others.

    Read-only cells cannot be changed by students (nbgrader restores their source), so their larger
    limit cannot be used to hide a slow answer.
    """

    def __init__(self, answer: int, setup: int) -> None:
        self.answer, self.setup = int(answer), int(setup)

    def __call__(self, cell) -> int:
        return self.setup if cell_kind(cell) == "readonly" else self.answer


class OutputBudget:
    """How much output a notebook keeps: ``cell_limit`` per cell and ``notebook_limit`` in all (bytes).

    Past either, an output message is dropped (and counted), except a short excerpt of what decides
    a test cell's verdict (`verdict_excerpt`).
    """

    def __init__(self, cell_limit: int, notebook_limit: int = MAX_NOTEBOOK_OUTPUT_BYTES) -> None:
        self.cell_limit, self.notebook_limit = cell_limit, notebook_limit
        self.notebook_kept = 0
        self.new_cell()

    def new_cell(self) -> None:
        self.kept = self.dropped = self.printed = 0
        self.notebook_full = False  # whether the notebook's limit, not the cell's, dropped output

    def admit(self, msg: dict, kept_outputs: list) -> dict | None:
        """The message to keep (``msg`` itself or an excerpt of it), or None to drop it."""
        size = output_size(msg.get("content", {}))
        self.printed += size
        if msg["msg_type"] in LIMITED_OUTPUTS:
            cell_full = self.kept + size > self.cell_limit
            notebook_full = self.notebook_kept + size > self.notebook_limit
            if cell_full or notebook_full:
                excerpt = verdict_excerpt(msg, kept_outputs)
                if excerpt is None:
                    self.dropped += size
                    self.notebook_full |= notebook_full and not cell_full
                    return None
                msg, size = excerpt, output_size(excerpt["content"])
        self.kept += size
        self.notebook_kept += size
        return msg

    def note(self) -> str | None:
        """The line a cell gets when some of its output was dropped."""
        if not self.dropped:
            return None
        limit = (f"a notebook keeps at most {self.notebook_limit / MIB:.0f} MiB of output in all"
                 if self.notebook_full else f"each cell keeps at most {self.cell_limit / 1024:.0f} KiB")
        return f"\n[{self.dropped / 1024:.0f} KiB more output were dropped: {limit}]\n"

    def flood_reason(self) -> str:
        """Why a cell whose output was still arriving at its time limit was cut."""
        return f"the cell printed more than {max(self.printed, self.cell_limit) / MIB:.0f} MB of output: cut"


class _KernelStuck(Exception):
    """A cell ran past its time limit and the kernel did not answer the interrupt."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class _OutputFlood(Exception):
    """A cell finished (its reply came) but its output was still arriving at its time limit."""


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    """nbgrader's `Execute` with per-kind time limits and an explicit record of a dead kernel."""

    setup_timeout = Integer(300, help="Time limit (s) of read-only set-up cells.").tag(config=True)
    max_output_kb = Integer(1024, help="Output kept per cell (KiB); the rest is dropped.").tag(config=True)
    max_notebook_output = Integer(MAX_NOTEBOOK_OUTPUT_BYTES,
                                  help="Output kept in all (bytes); the rest is dropped.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs["kernel_manager_class"] = SandboxedKernelManager  # nbgrader's Execute would pick its own
        super().__init__(*args, **kwargs)
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
        # nbclient waits `iopub_timeout` for a cell's output after its reply, then takes the kernel for
        # stuck. That short wait stays for a kernel interrupted at its time limit; a cell that finished
        # may take the rest of its time limit to deliver its output (`_rest_of_output`).
        self.interrupt_grace = self.iopub_timeout
        self._running_index: int | None = None
        self._budget = OutputBudget(self.max_output_kb * 1024, self.max_notebook_output)
        self._interrupted = False
        self._kernel_manager = None

    def preprocess_cell(self, cell, resources, index):
        self._running_index = index
        self._budget.new_cell()
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except CellTimeoutError as error:
            # The interrupt at the time limit was caught or ignored (the kernel is still busy):
            # waiting on would cost every later cell its full time limit. Stop the kernel.
            self.shutdown_kernel = "immediate"
            raise _KernelStuck(index) from error
        except _OutputFlood:  # the kernel is done with the cell: the next cells run as usual
            cell.outputs.append(error_output(RESOURCE_LIMIT_ERROR, self._budget.flood_reason()))
        if self._budget.note():
            cell.outputs.append(NotebookNode(output_type="stream", name="stdout", text=self._budget.note()))
        if cell.cell_type == "code" and any(o.get("output_type") == "error" and o.get("ename") != RESOURCE_LIMIT_ERROR
                                            and TOO_MANY_FILES in str(o.get("evalue", "")) for o in cell.outputs):
            cell.outputs.append(error_output(RESOURCE_LIMIT_ERROR, self._open_files_reason()))
        return cell, resources

    def _open_files_reason(self) -> str:
        manager = self._kernel_manager
        sandboxed = manager is not None and getattr(manager, "sandbox", "off") != "off"
        return describe_open_files_limit(manager.max_open_files if sandboxed else None)

    async def _async_handle_timeout(self, timeout, cell=None):
        self._interrupted = True  # the time limit was reached: nbclient interrupts the kernel
        return await super()._async_handle_timeout(timeout, cell)

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        self._interrupted = False
        deadline = monotonic() + timeout if timeout else None
        rest = self._rest_of_output(task_poll_output_msg, deadline)
        try:
            return await super()._async_poll_for_reply(msg_id, cell, timeout, rest, task_poll_kernel_alive)
        except _OutputFlood:
            task_poll_kernel_alive.cancel()
            raise
        finally:
            rest.close()  # never awaited when the kernel died first

    async def _rest_of_output(self, task, deadline: float | None):
        """Wait for the end of a cell's output once its reply came.

        After an interrupt at the time limit: nbclient's short wait (no end means a stuck kernel).
        Otherwise the cell finished: its output may take until the cell's time limit to arrive (a
        300 MB print takes seconds to send and read); output still arriving then is a flood.
        """
        if self._interrupted:
            return await asyncio.wait_for(task, self.interrupt_grace)
        wait = self.interrupt_grace if deadline is None else max(deadline - monotonic(), self.interrupt_grace)
        try:
            return await asyncio.wait_for(task, wait)
        except asyncio.TimeoutError:
            raise _OutputFlood() from None

    def create_kernel_manager(self):
        # nbclient forgets its manager when the kernel is cleaned up; its exit code is needed after that.
        self._kernel_manager = super().create_kernel_manager()
        return self._kernel_manager

    def output(self, outs, msg, display_id, cell_index):
        """Keep outputs until the cell reaches ``max_output_kb`` or the notebook `max_notebook_output`;
        after that keep only short excerpts of what decides a verdict, and count what is dropped."""
        msg = self._budget.admit(msg, outs)
        return None if msg is None else super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id, msg):
        """An update replaces a shown output in place: one over the cell's limit is dropped."""
        if output_size(msg.get("content", {})) > self.max_output_kb * 1024:
            return None
        return super()._update_display_id(display_id, msg)

    def preprocess(self, nb, resources=None, km=None):
        self._running_index = None
        self._budget = OutputBudget(self.max_output_kb * 1024, self.max_notebook_output)
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
        # nbclient's own wait for output must outlast `_rest_of_output`'s, which ends at a cell's time limit.
        limits = [t for t in (self.timeout, self.setup_timeout) if t and t > 0]
        self.iopub_timeout = (max(limits) if limits else 0) + self.interrupt_grace + 1
        try:
            return super().preprocess(nb, resources, km)
        except _KernelStuck as stuck:
            limit = self.timeout_func(nb.cells[stuck.index])
            nb.cells[stuck.index].outputs.append(error_output(
                TIMEOUT_ERROR, f"the cell ran past its {limit} s time limit and {STOPPED_AT_TIME_LIMIT}"))
            for cell in nb.cells[stuck.index + 1:]:
                if cell.cell_type == "code":
                    cell.outputs = [error_output(NOT_RUN_ERROR, "not run: the kernel was stopped at an earlier "
                                                                "cell's time limit")]
            return nb, resources
        except DeadKernelError:
            died_at = self._running_index
            exit_code = getattr(self._kernel_manager, "exit_code", None)
            self.log.error("The kernel died while running cell %s (exit code %s)", died_at, exit_code)
            start = 0 if died_at is None else died_at
            ename = KILLED_ERROR if was_killed_by_a_limit(exit_code) else KERNEL_DIED_ERROR
            why = describe_exit(exit_code)
            if getattr(self._kernel_manager, "out_of_memory", False):  # its memory group says so
                ename = KILLED_ERROR
                why = (f"it ran out of memory (limit {self._kernel_manager.memory_mb} MiB, shared memory and "
                       "child processes included)")
            for index, cell in enumerate(nb.cells[start:], start):
                if cell.cell_type != "code":
                    continue
                if index == died_at:
                    cell.outputs.append(error_output(
                        ename, "the kernel died while running this cell" + (f": {why}" if why else "")))
                else:
                    cell.outputs = [error_output(NOT_RUN_ERROR, "not run: the kernel died in an earlier cell")]
            return nb, resources
