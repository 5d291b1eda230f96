"""Reading a submitted notebook without trusting it, and noticing what a student changed.

nbgrader quietly repairs some changes (it restores the source of edited read-only cells) and
silently scores others (a deleted test cell is worth 0 unless `add_missing_cells` is on, and even
then it can fail when the cell before it was deleted too). Here every such change is detected,
repaired and named, so that the grade record can say what happened:

    test cell q2_tests was deleted (restored for grading)
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import nbformat

#: nbgrader metadata a student must not change: what the cell is and what it is worth.
PROTECTED_FLAGS = ("grade", "solution", "locked", "points")
MISSING_ANSWER_SOURCE = "# This answer cell was missing from the submission; it was put back empty for grading."


class UnreadableSubmission(ValueError):
    """The submitted file is not a notebook nbgrader could grade; the message says why."""


def read_submission(data: bytes) -> nbformat.NotebookNode:
    """Parse and validate a submitted notebook, or raise `UnreadableSubmission` with a one-line reason."""
    if not data.strip():
        raise UnreadableSubmission("the notebook file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableSubmission(f"the notebook is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableSubmission(f"the notebook is not valid JSON (truncated or corrupt?): {error}") from None
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        raise UnreadableSubmission("the file is JSON but not a Jupyter notebook (no cells)")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # nbformat raises several types (ValidationError, NBFormatError, KeyError)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableSubmission(f"the notebook does not follow the notebook format: {first_line}") from None
    return nb


def nbgrader_metadata(cell) -> dict:
    return dict(cell.get("metadata", {}).get("nbgrader", {}) or {})


def grade_id(cell) -> str | None:
    return nbgrader_metadata(cell).get("grade_id")


def cell_kind(cell) -> str:
    """``"tests"``, ``"answer"``, ``"readonly"`` or ``"free"`` (no nbgrader role)."""
    meta = nbgrader_metadata(cell)
    if meta.get("grade") and not meta.get("solution"):
        return "tests"
    if meta.get("solution"):
        return "answer"
    if meta.get("locked"):
        return "readonly"
    return "free"


@dataclass
class Repair:
    """What `restore_cells` changed; ``problems`` are one-line descriptions for the grade record."""

    problems: list[str]

    @property
    def tampered(self) -> bool:
        return bool(self.problems)


def restore_cells(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode,
                  source: nbformat.NotebookNode) -> Repair:
    """Compare ``submitted`` with the released notebook; put deleted cells back (in place).

    Deleted test and read-only cells come back from the release (nbgrader then restores the hidden
    tests); a deleted answer cell comes back as an empty placeholder so that the student's code,
    wherever it is, is not overwritten by the release's stub. Edited read-only code cells and
    changed grading metadata are reported (nbgrader restores those itself).
    """
    problems: list[str] = []
    source_by_id = {grade_id(c): c for c in source.cells if grade_id(c)}
    positions: dict[str, list[int]] = {}
    for index, cell in enumerate(submitted.cells):
        if grade_id(cell):
            positions.setdefault(grade_id(cell), []).append(index)

    for gid, indices in positions.items():
        if len(indices) > 1:
            problems.append(f"cell {gid} appears {len(indices)} times (the last one is graded)")

    if not positions:  # nothing of the assignment in it: one note says more than a list of every cell
        problems.append("the notebook holds none of the assignment's cells (a different notebook?); "
                        "its cells were put back for grading, with empty answers")
    insert_after = _index_after_preamble(submitted, release)
    for released in release.cells:
        gid = grade_id(released)
        if not gid:
            continue
        kind = cell_kind(released)
        found = _find(submitted, gid)
        if found is None:
            restored = copy.deepcopy(released)
            if "id" in restored:  # a fresh id: the released one may already be taken in the submission
                restored.id = f"restored-{gid}"[:64]
            if kind == "answer":
                restored.source = MISSING_ANSWER_SOURCE
            submitted.cells.insert(insert_after + 1, restored)
            found = insert_after + 1
            if released.cell_type == "code" and positions:
                what = {"tests": "test cell", "answer": "answer cell", "readonly": "read-only cell"}.get(kind, "cell")
                problems.append(f"{what} {gid} was deleted (restored for grading)")
        else:
            problems.extend(_changes(submitted.cells[found], released, source_by_id.get(gid), gid, kind))
        insert_after = found
    return Repair(problems)


def _find(nb, gid: str) -> int | None:
    """Index of the last cell with ``gid`` (nbgrader grades the last of duplicated cells)."""
    return next((i for i in reversed(range(len(nb.cells))) if grade_id(nb.cells[i]) == gid), None)


def _index_after_preamble(submitted, release) -> int:
    """Where a cell missing from the very start goes: after the cells before the first graded one."""
    first = next((i for i, c in enumerate(release.cells) if grade_id(c)), len(release.cells))
    return min(first, len(submitted.cells)) - 1


def _changes(cell, released, source_cell, gid: str, kind: str) -> list[str]:
    problems = []
    if cell.cell_type != released.cell_type:
        problems.append(f"cell {gid} was changed from {released.cell_type} to {cell.cell_type}")
    got, want = nbgrader_metadata(cell), nbgrader_metadata(released)
    changed = [flag for flag in PROTECTED_FLAGS if flag in want and got.get(flag) != want.get(flag)]
    if changed:
        problems.append(f"the grading metadata of cell {gid} was changed ({', '.join(changed)})")
    if kind in ("tests", "readonly") and released.cell_type == "code":
        known = {released.source.strip(), source_cell.source.strip() if source_cell is not None else None}
        if cell.source.strip() not in known:
            what = "test cell" if kind == "tests" else "read-only cell"
            problems.append(f"{what} {gid} was edited (the original was restored for grading)")
    return problems


def _first_code_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")), "")


def match_stripped_cells(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode,
                         source: nbformat.NotebookNode | None = None) -> int:
    """Give back nbgrader metadata the submission lost (an editor that strips it); returns how many cells.

    Read-only, test and prose cells are matched by their exact source; an answer cell by its first
    line (``def conv_params(...``) or, failing that, as the only unmatched code cell where it belongs.
    Cells that match nothing stay as they are (`restore_cells` then reports them deleted).
    """
    present = {grade_id(c) for c in submitted.cells if grade_id(c)}
    wanted = [c for c in release.cells if grade_id(c) and grade_id(c) not in present]
    if not wanted:
        return 0
    bare = [i for i, c in enumerate(submitted.cells) if not nbgrader_metadata(c)]
    position: dict[str, int] = {grade_id(c): i for i, c in enumerate(submitted.cells) if grade_id(c)}
    matched = 0

    def adopt(index: int, released) -> None:
        nonlocal matched
        submitted.cells[index].metadata["nbgrader"] = copy.deepcopy(released.metadata["nbgrader"])
        position[grade_id(released)] = index
        bare.remove(index)
        matched += 1

    for released in wanted:  # fixed content first: it anchors where the answers are
        if cell_kind(released) == "answer":
            continue
        texts = {released.source.strip()}
        if source is not None:  # the instructor's version (hidden tests included) may be what was submitted
            texts |= {c.source.strip() for c in source.cells if grade_id(c) == grade_id(released)}
        index = next((i for i in bare if submitted.cells[i].cell_type == released.cell_type
                      and submitted.cells[i].source.strip() in texts), None)
        if index is not None:
            adopt(index, released)
    order = [grade_id(c) for c in release.cells if grade_id(c)]
    for released in wanted:
        if cell_kind(released) != "answer":
            continue
        at = order.index(grade_id(released))
        before = max((position[g] for g in order[:at] if g in position), default=-1)
        after = min((position[g] for g in order[at + 1:] if g in position), default=len(submitted.cells))
        candidates = [i for i in bare if before < i < after and submitted.cells[i].cell_type == released.cell_type]
        stub_line = _first_code_line(released.source)
        same_start = [i for i in candidates if stub_line and _first_code_line(submitted.cells[i].source) == stub_line]
        if len(same_start) == 1:
            adopt(same_start[0], released)
        elif len(candidates) == 1:
            adopt(candidates[0], released)
    return matched
