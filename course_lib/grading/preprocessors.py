"""nbgrader preprocessors that make autograding say what happened instead of scoring 0 silently.

- `GuardedExecute` runs the notebook like nbgrader's `Execute`, with a generous time limit for the
  read-only set-up cells (``import torch`` under load takes a while) and a separate one for every
  other cell; when the kernel dies it marks the cell that was running and every later cell as
  failed (nbgrader would otherwise drop the whole submission, or count unrun tests as passed).
- It starts the kernel in the sandbox (`sandbox.SandboxedKernelManager`), keeps at most
  ``max_output_kb`` of output per cell (a 300 MB print must not fill the grader's memory), and when
  the kernel died by hitting a limit it says which.
- `DropWarningStreams` removes warning lines from stderr: nbgrader scores a test cell 0 when it
  printed anything on stderr, and torch prints warnings there for correct code.
"""
from __future__ import annotations

import re

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from .sandbox import SandboxedKernelManager, describe_exit, was_killed_by_a_limit
from .submission import cell_kind

#: Error names the executed notebook carries for cells that did not finish.
TIMEOUT_ERROR = "CellTimeoutError"  # nbgrader's own name for a cell that ran past its limit
KERNEL_DIED_ERROR = "DeadKernelError"
KILLED_ERROR = "KernelKilledByLimit"  # the kernel died from a resource limit (memory, CPU time, file size)
NOT_RUN_ERROR = "CellNotRun"
#: How a timed-out cell's error says the kernel ignored the interrupt and was stopped.
STOPPED_AT_TIME_LIMIT = "it ignored the interrupt, so the kernel was stopped"

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


class _KernelStuck(Exception):
    """A cell ran past its time limit and the kernel did not answer the interrupt."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    """nbgrader's `Execute` with per-kind time limits and an explicit record of a dead kernel."""

    setup_timeout = Integer(300, help="Time limit (s) of read-only set-up cells.").tag(config=True)
    max_output_kb = Integer(1024, help="Output kept per cell (KiB); the rest is dropped.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs["kernel_manager_class"] = SandboxedKernelManager  # nbgrader's Execute would pick its own
        super().__init__(*args, **kwargs)
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
        self._running_index: int | None = None
        self._output_bytes = 0
        self._dropped_bytes = 0
        self._kernel_manager = None

    def preprocess_cell(self, cell, resources, index):
        self._running_index = index
        self._output_bytes = self._dropped_bytes = 0
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except CellTimeoutError as error:
            # The interrupt at the time limit was caught or ignored (the kernel is still busy):
            # waiting on would cost every later cell its full time limit. Stop the kernel.
            self.shutdown_kernel = "immediate"
            raise _KernelStuck(index) from error
        if self._dropped_bytes:
            cell.outputs.append(NotebookNode(output_type="stream", name="stdout", text=(
                f"\n[{self._dropped_bytes / 1024:.0f} KiB more output were dropped: "
                f"each cell keeps at most {self.max_output_kb} KiB]\n")))
        return cell, resources

    def create_kernel_manager(self):
        # nbclient forgets its manager when the kernel is cleaned up; its exit code is needed after that.
        self._kernel_manager = super().create_kernel_manager()
        return self._kernel_manager

    def output(self, outs, msg, display_id, cell_index):
        """Keep a cell's outputs until they reach ``max_output_kb``; count what is dropped after that."""
        size = len(str(msg.get("content", {}).get("text", ""))) + len(str(msg.get("content", {}).get("data", "")))
        if self._output_bytes + size > self.max_output_kb * 1024 and msg["msg_type"] in (
                "stream", "display_data", "execute_result", "update_display_data"):
            self._dropped_bytes += size
            return None
        self._output_bytes += size
        return super().output(outs, msg, display_id, cell_index)

    def preprocess(self, nb, resources=None, km=None):
        self._running_index = None
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
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
            for index, cell in enumerate(nb.cells[start:], start):
                if cell.cell_type != "code":
                    continue
                if index == died_at:
                    cell.outputs.append(error_output(
                        ename, "the kernel died while running this cell" + (f": {why}" if why else "")))
                else:
                    cell.outputs = [error_output(NOT_RUN_ERROR, "not run: the kernel died in an earlier cell")]
            return nb, resources
