"""`course release`: student notebooks in exercises/ generated from the sources in solutions/.

nbgrader's generate_assignment removes the solutions and the hidden tests and locks the read-only
cells; this module then normalises what is volatile or personal (outputs, execution counts,
notebook metadata, missing cell ids) and stamps the Colab badge and set-up cell, so the same source
always gives byte-identical output and `course release --check` can tell when exercises/ drifted.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat

from . import colab
from .coursedir import Assignment, generate_assignment, write_course_config

#: Cell metadata a released notebook keeps (nbgrader's, and Jupyter's lock flags).
KEPT_CELL_METADATA = ("nbgrader", "tags", "deletable", "editable")
DEFAULT_KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
EXERCISES_DIR = "exercises"


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """The exact text `nbformat.write` puts in a file (what gets committed)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def normalise(nb: nbformat.NotebookNode, kernelspec: dict | None = None) -> nbformat.NotebookNode:
    """Clear outputs and execution counts, keep minimal metadata, give every cell a stable id."""
    nb.metadata = nbformat.NotebookNode(
        kernelspec=nbformat.NotebookNode(kernelspec or DEFAULT_KERNELSPEC),
        language_info=nbformat.NotebookNode(name="python"),
    )
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        cell.metadata = nbformat.NotebookNode({k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if "attachments" in cell and not cell.attachments:
            del cell["attachments"]
        if not cell.get("id") or cell.id in seen:
            cell.id = f"cell-{index}"
        seen.add(cell.id)
    return nb


def released_notebook(assignment: Assignment, course_dir: Path | None = None) -> str:
    """The student notebook for ``assignment``, as text.

    Runs nbgrader generate_assignment in ``course_dir`` (registering the assignment in its gradebook
    and leaving source/ and release/ copies there) or, without one, in a temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="course-release-") as scratch:
        root = Path(course_dir) if course_dir is not None else Path(scratch)
        release_path = generate_assignment(root, assignment)
        nb = nbformat.read(release_path, as_version=4)
        source = nbformat.read(assignment.source_path, as_version=4)
        source_ids = {cell.get("id") for cell in source.cells}
        normalise(nb, dict(source.metadata.get("kernelspec", {})) or None)
        colab.stamp(nb, f"{EXERCISES_DIR}/{assignment.notebook_file}")
        for index, cell in enumerate(nb.cells):
            if cell.get("id") not in source_ids:  # a cell the stamp inserted: give it a stable id
                cell.id = f"cell-{index}"
        text = notebook_text(nb)
        if course_dir is not None:
            release_path.write_text(text, encoding="utf-8")
        return text


def release(assignments: list[Assignment], exercises_dir: Path, check: bool = False,
            course_dir: Path | None = None, timeout: int = 300) -> list[Path]:
    """Write (or, with ``check``, compare) ``exercises_dir/<name>.ipynb``; returns the drifted paths.

    With ``course_dir`` the instructor's nbgrader course is prepared too (source/, release/,
    gradebook.db, nbgrader_config.py).
    """
    drifted = []
    if course_dir is not None:
        write_course_config(course_dir, timeout)
    for assignment in assignments:
        text = released_notebook(assignment, course_dir)
        target = Path(exercises_dir) / assignment.notebook_file
        current = target.read_bytes() if target.exists() else None
        if current != text.encode("utf-8"):
            drifted.append(target)
            if not check:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(text.encode("utf-8"))
    return drifted
