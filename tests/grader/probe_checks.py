"""The grader's own checks played in-process on a solution: what the probe tests of every assignment share.

The solution's set-up and answer cells run into one namespace (as a student's kernel would), the
grader's calls for a seed run on it (as the verdict process would), and `verdicts.judge` decides.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import nbformat

from course_grader.probes import calls_for
from course_grader.submission import cell_kind, grade_id
from course_grader.verdicts import by_question, judge, payload, results_in_process

ROOT = Path(__file__).resolve().parents[2]


def solution_source(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)


@functools.lru_cache(maxsize=None)
def solution_answers(assignment: str) -> dict:
    """The solution's set-up and answer cells run into one namespace, as a kernel would (computed once:
    callers copy it before changing it)."""
    namespace: dict = {}
    for cell in solution_source(assignment).cells:
        if cell.cell_type == "code" and (grade_id(cell) == "setup" or cell_kind(cell) == "answer"):
            exec(cell.source, namespace)  # noqa: S102 - the test plays the student's kernel
    return namespace


def printed(calls, namespace: dict) -> tuple[dict, dict[str, int]]:
    """What the verdict process would report (computed here, in-process) and, per question, the bytes
    of data that cross between it and the grader (the calls and their results)."""
    outputs = results_in_process(calls, dict(namespace))
    sizes = {question: len(json.dumps([payload(c) for c in group])) + len(json.dumps(outputs[question]))
             for question, group in by_question(calls).items()}
    return outputs, sizes


@functools.lru_cache(maxsize=None)
def grader_calls(assignment: str, seed: int) -> tuple:
    """The grader's calls (computed once per seed: tests only read them)."""
    return tuple(calls_for(assignment, seed))


def verdicts(assignment: str, namespace: dict, seed: int, question: str | None = None) -> dict[str, str | None]:
    """The grader's verdicts on ``namespace``'s answers (one question's only, if given)."""
    calls = [c for c in grader_calls(assignment, seed) if question in (None, c.question)]
    return judge(calls, printed(calls, namespace)[0])


def with_mistake(solution: dict, code: str) -> dict:
    """The solution's namespace with ``code`` run in it; each answer stays reachable as ``right_<name>``."""
    namespace = dict(solution)
    for name, value in solution.items():
        if callable(value) and not name.startswith("_"):
            namespace[f"right_{name}"] = value
    exec(code, namespace)  # noqa: S102
    return namespace
