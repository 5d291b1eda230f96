"""nbgrader preprocessors that make autograding say what happened instead of scoring 0 silently.

- `GuardedExecute` runs the notebook like nbgrader's `Execute`, with a generous time limit for the
  read-only set-up cells (``import torch`` under load takes a while) and a separate one for every
  other cell; when the kernel dies it marks the cell that was running and every later cell as
  failed (nbgrader would otherwise drop the whole submission, or count unrun tests as passed).
- `DropWarningStreams` removes warning lines from stderr: nbgrader scores a test cell 0 when it
  printed anything on stderr, and torch prints warnings there for correct code.
"""
from __future__ import annotations

import re

from nbclient.exceptions import DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

from .submission import cell_kind

#: Error names the executed notebook carries for cells that did not finish.
TIMEOUT_ERROR = "CellTimeoutError"  # nbgrader's own name for a cell that ran past its limit
KERNEL_DIED_ERROR = "DeadKernelError"
NOT_RUN_ERROR = "CellNotRun"

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


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    """nbgrader's `Execute` with per-kind time limits and an explicit record of a dead kernel."""

    setup_timeout = Integer(300, help="Time limit (s) of read-only set-up cells.").tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
        self._running_index: int | None = None

    def preprocess_cell(self, cell, resources, index):
        self._running_index = index
        return super().preprocess_cell(cell, resources, index)

    def preprocess(self, nb, resources=None, km=None):
        self._running_index = None
        self.timeout_func = CellTimeouts(answer=self.timeout, setup=self.setup_timeout)
        try:
            return super().preprocess(nb, resources, km)
        except DeadKernelError:
            died_at = self._running_index
            self.log.error("The kernel died while running cell %s", died_at)
            start = 0 if died_at is None else died_at
            for index, cell in enumerate(nb.cells[start:], start):
                if cell.cell_type != "code":
                    continue
                if index == died_at:
                    cell.outputs.append(error_output(KERNEL_DIED_ERROR, "the kernel died while running this cell"))
                else:
                    cell.outputs = [error_output(NOT_RUN_ERROR, "not run: the kernel died in an earlier cell")]
            return nb, resources
