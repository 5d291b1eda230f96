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
import os
import stat
from dataclasses import dataclass, field

import nbformat

#: nbgrader metadata a student must not change: what the cell is and what it is worth.
PROTECTED_FLAGS = ("grade", "solution", "locked", "points")
MISSING_ANSWER_SOURCE = "# This answer cell was missing from the submission; it was put back empty for grading."

MIB = 1024 * 1024
#: Limits of a notebook the grader reads at all: the course's own notebooks, run with their
#: outputs, are a few hundred KiB with a few dozen cells of a few KiB each. Beyond these, reading
#: alone (parsing, the audit, nbgrader) costs minutes and gigabytes.
MAX_NOTEBOOK_BYTES = 16 * MIB
MAX_CELLS = 1000
MAX_CELL_SOURCE_CHARS = 256 * 1024
#: Nesting of the notebook's JSON (a notebook is about 6 levels deep; parsers recurse per level).
MAX_JSON_DEPTH = 64
#: What a submitted path may be instead of a notebook file, by `stat` file type, in words.
NOT_A_FILE = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableSubmission(ValueError):
    """The submitted file is not a notebook nbgrader could grade; the message says why."""


def describe_file_type(mode: int) -> str | None:
    """``"a symbolic link"``, ``"a folder"``...: what a path of this `stat` mode is, None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in NOT_A_FILE if test(mode)), "not a regular file")


def read_regular_file(path, limit: int, what: str = "the submission") -> bytes:
    """The bytes of the regular file ``path``, never following a link nor opening anything else.

    Raises `UnreadableSubmission` naming what ``path`` is instead (``what`` is how to call it) or
    that it is over ``limit`` bytes (read no further than that), and FileNotFoundError when nothing
    is there.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise  # the caller's "missing"
    except OSError as error:
        raise UnreadableSubmission(f"{what} could not be read ({error.strerror})") from None
    kind = describe_file_type(info.st_mode)
    if kind is None:
        try:  # O_NOFOLLOW and a second look at what was opened: nothing swapped in meanwhile is read
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise UnreadableSubmission(f"{what} could not be opened ({error.strerror})") from None
        with open(descriptor, "rb") as handle:
            info = os.fstat(descriptor)
            kind = describe_file_type(info.st_mode)
            if kind is None:
                if info.st_size > limit:
                    raise UnreadableSubmission(f"{what} is {info.st_size:,} bytes, over the limit of {_size(limit)}")
                data = handle.read(limit + 1)
                if len(data) > limit:
                    raise UnreadableSubmission(f"{what} is over the limit of {_size(limit)}")
                return data
    raise UnreadableSubmission(f"{what} is {kind}, not a notebook file")


def read_submission_file(path) -> bytes:
    """A submitted notebook's bytes (`read_regular_file` with the notebook size limit)."""
    return read_regular_file(path, MAX_NOTEBOOK_BYTES)


def _size(size: int) -> str:
    """A limit in words: ``16 MiB``, ``256 KiB``, ``200 bytes``."""
    for unit, name in ((MIB, "MiB"), (1024, "KiB")):
        if size >= unit:
            return f"{size / unit:g} {name}"
    return f"{size} bytes"


def _json_depth(value, limit: int) -> int:
    """How deep ``value`` nests (lists and dicts), counted without recursion; stops past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_size(raw: dict) -> None:
    """Refuse a notebook of over `MAX_CELLS` cells, or with a cell over `MAX_CELL_SOURCE_CHARS`."""
    cells = raw.get("cells")
    if cells is None:  # nbformat 3: cells live in worksheets
        cells = [c for sheet in raw.get("worksheets") or [] if isinstance(sheet, dict)
                 for c in sheet.get("cells") or [] if isinstance(sheet.get("cells"), list)]
    if not isinstance(cells, list):
        return  # nbformat's validation names that
    if len(cells) > MAX_CELLS:
        raise UnreadableSubmission(f"the notebook has {len(cells):,} cells, over the limit of {MAX_CELLS:,}")
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            continue
        for key in ("source", "input"):  # "input": a code cell of nbformat 3
            text = cell.get(key)
            size = len(text) if isinstance(text, str) else \
                sum(len(line) for line in text if isinstance(line, str)) if isinstance(text, list) else 0
            if size > MAX_CELL_SOURCE_CHARS:
                raise UnreadableSubmission(f"cell {index + 1} holds {size:,} characters of code or text, over the "
                                           f"limit of {MAX_CELL_SOURCE_CHARS:,} per cell")


def read_submission(data: bytes) -> nbformat.NotebookNode:
    """Parse and validate a submitted notebook, or raise `UnreadableSubmission` with a one-line reason.

    Size limits come first (bytes, then cells and each cell's source): a notebook over them is
    refused before anything reads more than needed to count.
    """
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise UnreadableSubmission(f"the notebook file is {len(data):,} bytes, over the limit of "
                                   f"{_size(MAX_NOTEBOOK_BYTES)}")
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
    except RecursionError:
        raise UnreadableSubmission(f"the notebook's JSON is nested too deeply (the limit is {MAX_JSON_DEPTH} "
                                   "levels)") from None
    if _json_depth(raw, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise UnreadableSubmission(f"the notebook's JSON is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        raise UnreadableSubmission("the file is JSON but not a Jupyter notebook (no cells)")
    _check_size(raw)
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


def questions(source: nbformat.NotebookNode) -> dict[str, float]:
    """The graded test cells of a source notebook, ``grade_id -> points``, in notebook order."""
    return {grade_id(cell): float(cell.metadata["nbgrader"].get("points", 0))
            for cell in source.cells if cell_kind(cell) == "tests"}


@dataclass
class Repair:
    """What `restore_cells` changed, in one-line descriptions for the grade record: ``problems``
    (what a student must not do) and ``notes`` (what an honest student does too, costing nothing)."""

    problems: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def tampered(self) -> bool:
        return bool(self.problems)


def resolve_duplicates(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode) -> list[str]:
    """Leave one cell per grade id (in place); returns a note per duplicated id.

    Jupyter keeps a cell's grading metadata when it is copied and pasted, so an honest notebook may
    hold a grade id twice (and nbgrader then fails on the whole notebook). One copy keeps the
    grading role, the others become ordinary cells that still run:

    * an answer: the last copy, as a pasted answer cell is usually the one the student went on editing;
    * tests and read-only cells: the first copy after the answer that comes before them in the
      release (the original, unless the student pasted the answer and its tests together), else the first.
    """
    positions: dict[str, list[int]] = {}
    for index, cell in enumerate(submitted.cells):
        if grade_id(cell):
            positions.setdefault(grade_id(cell), []).append(index)
    released = {grade_id(c): c for c in release.cells if grade_id(c)}
    answer_before: dict[str, str] = {}  # test or read-only id -> the answer id just before it in the release
    last_answer = None
    for cell in release.cells:
        if cell_kind(cell) == "answer":
            last_answer = grade_id(cell)
        elif grade_id(cell) and last_answer:
            answer_before[grade_id(cell)] = last_answer
    kept: dict[str, int] = {}
    notes = []
    for gid in [g for c in release.cells if (g := grade_id(c))] + sorted(set(positions) - set(released)):
        copies = positions.get(gid, [])
        if len(copies) < 2:
            continue
        what = cell_kind(released.get(gid, submitted.cells[copies[-1]]))
        if what == "answer":
            keep = kept[gid] = copies[-1]
            which = (f"the last copy (cell {keep + 1}) is graded as the answer, since a pasted answer cell is "
                     "usually the one edited")
        else:  # answers come before their tests in the release: `kept` already knows which one counts
            answer = answer_before.get(gid)
            after = kept.get(answer, positions.get(answer, [-1])[-1])
            keep = kept[gid] = next((i for i in copies if i > after), copies[0])
            which = f"the copy at cell {keep + 1} is graded"
        for index in copies:
            if index != keep:
                submitted.cells[index].metadata.pop("nbgrader", None)
        name = {"tests": "test cell", "answer": "answer cell", "readonly": "read-only cell"}.get(what, "cell")
        notes.append(f"{name} {gid} appears {len(copies)} times (copied and pasted?): {which}; "
                     "the other copies ran as ordinary cells")
    return notes


def restore_cells(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode,
                  source: nbformat.NotebookNode) -> Repair:
    """Compare ``submitted`` with the released notebook; put deleted cells back (in place).

    Deleted test and read-only cells come back from the release (nbgrader then restores the hidden
    tests); a deleted answer cell comes back as an empty placeholder so that the student's code,
    wherever it is, is not overwritten by the release's stub. Edited read-only code cells and
    changed grading metadata are reported (nbgrader restores those itself).
    """
    problems: list[str] = []
    notes = resolve_duplicates(submitted, release)
    source_by_id = {grade_id(c): c for c in source.cells if grade_id(c)}
    positions = {grade_id(c) for c in submitted.cells if grade_id(c)}

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
    return Repair(problems, notes)


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
