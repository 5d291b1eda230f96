"""The verdict process's mechanics: the job it gets, the results it writes, warm and cold, time limits."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import pytest

from course_grader.sandbox import Limits, bwrap_problem
from course_grader.submission import cell_kind, grade_id
from course_grader.verdict_process import (RESULTS_FILE, VerdictRun, job_steps, read_results,
                                                run_verdict_process)
from course_grader.probes import calls_for
from course_grader.verdicts import judge

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
EX1 = "01_blocks_and_resnets"


@pytest.fixture(scope="module")
def source() -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / f"{EX1}.ipynb", as_version=4)


def _with_answer(nb: nbformat.NotebookNode, answer_id: str, text: str) -> nbformat.NotebookNode:
    changed = copy.deepcopy(nb)
    cell = next(c for c in changed.cells if grade_id(c) == answer_id)
    cell.source = text
    return changed


def _q1_calls(seed: int = 3):
    return [c for c in calls_for(EX1, seed) if c.question == "q1_tests"]


def _run(nb, source, calls, **options) -> VerdictRun:
    settings = {"mode": "required", "limits": Limits(), "warm": True, "cell_seconds": 60, "call_seconds": 60}
    settings.update(options)
    return run_verdict_process(nb, source, calls, **settings)


# --- the job and the results file, without a process ----------------------------------------------

def test_the_job_runs_every_code_cell_but_the_tests_and_checks_each_question_where_its_tests_stand(source):
    steps = job_steps(source, ["q1_tests", "q2_tests", "q9_tests"])
    names = [step.get("cell") or step["question"] for step in steps]
    assert names.index("setup") < names.index("q1_answer") < names.index("q1_tests") < names.index("q2_answer")
    assert names.index("q2_answer") < names.index("q2_tests") < names.index("q3_answer")
    assert names[-1] == "q9_tests" and "q3_tests" not in names and "q4_tests" not in names
    assert all("source" in step for step in steps if "cell" in step)
    kinds = {grade_id(c): cell_kind(c) for c in source.cells if c.cell_type == "code"}
    assert {kinds.get(step["cell"]) for step in steps if "cell" in step} - {None} <= {"readonly", "answer", "free"}


def test_the_job_holds_inputs_never_the_expected_values(source, tmp_path):
    from course_grader.verdict_process import write_job
    from course_grader.verdict_view import build_view
    from course_grader.verdicts import encode

    calls = calls_for(EX1, 5)
    write_job(tmp_path / "job.json", source, calls, build_view(source, tmp_path / "views"), 10, 10)
    job = (tmp_path / "job.json").read_text()
    expected = [json.dumps(encode(c.expected), separators=(",", ":")) for c in calls if hasattr(c, "expected")]
    assert not any(len(e) > 40 and e in job for e in expected)


def _lines(tmp_path, *messages) -> Path:
    path = tmp_path / RESULTS_FILE
    path.write_text("\n".join(m if isinstance(m, str) else json.dumps(m) for m in messages) + "\n")
    return path


def test_results_are_read_per_question_and_garbage_lines_are_ignored(tmp_path):
    path = _lines(tmp_path, {"cell": "q1_answer", "error": "NameError: x", "seconds": 0.1}, "not json", "[1, 2]",
                  {"question": "q1_tests", "device": "cpu", "results": [{"ok": {"int": 3}}]}, {"done": True})
    run = read_results(path, ["q1_tests"])
    assert run.outputs == {"q1_tests": {"device": "cpu", "results": [{"ok": {"int": 3}}]}}
    assert run.problems == {} and run.cell_errors == [("q1_answer", "NameError: x")]


def test_a_question_reported_twice_has_no_results(tmp_path):
    line = {"question": "q1_tests", "device": "cpu", "results": [{"ok": {"int": 3}}]}
    run = read_results(_lines(tmp_path, line, line, {"done": True}), ["q1_tests"])
    assert run.outputs == {} and "written to by the notebook's code" in run.problems["q1_tests"]


def test_a_process_that_ended_early_or_ran_late_says_so(tmp_path):
    run = read_results(_lines(tmp_path, {"question": "q1_tests", "device": "cpu", "timeout": "TimeLimit: 2 s"}),
                       ["q1_tests", "q2_tests"])
    assert "time limit" in run.problems["q1_tests"] and "ended before" in run.problems["q2_tests"]
    assert read_results(tmp_path / "missing.jsonl", ["q1_tests"]).problems == {
        "q1_tests": "the verdict process ended before it checked this answer"}


# --- the process itself --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")


def test_the_solution_passes_warm_and_cold(source, sandbox):
    calls = _q1_calls()
    for warm in (True, False):
        run = _run(source, source, calls, warm=warm)
        assert judge(calls, run.outputs) == {"q1_tests": None}, (warm, run)
        assert run.note is None and not run.problems


def test_a_wrong_answer_and_a_reference_both_fail(source, sandbox):
    calls = _q1_calls()
    wrong = _with_answer(source, "q1_answer", "def conv_params(kernel_size, in_channels, out_channels, bias=True):\n"
                                              "    return kernel_size * in_channels * out_channels\n")
    verdict = judge(calls, _run(wrong, source, calls).outputs)["q1_tests"]
    assert verdict is not None and "expected" in verdict, verdict
    delegating = _with_answer(source, "q1_answer", "from course_lib.models import conv_params\n")
    verdict = judge(calls, _run(delegating, source, calls).outputs)["q1_tests"]
    assert verdict is not None and "not available while your answer is graded" in verdict


def test_an_answer_that_hangs_meets_its_time_limit(source, sandbox):
    calls = _q1_calls()
    hanging = _with_answer(source, "q1_answer", "def conv_params(*args, **kwargs):\n    while True:\n        pass\n")
    run = _run(hanging, source, calls, call_seconds=2)
    assert "time limit" in run.problems["q1_tests"] and "q1_tests" not in run.outputs


def test_a_process_that_blocks_the_alarm_is_stopped_at_its_deadline(source, sandbox):
    calls = _q1_calls()
    stubborn = _with_answer(source, "q1_answer", "import signal, time\n"
                                                 "def conv_params(*args):\n"
                                                 "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                                 "    time.sleep(3600)\n")
    from course_grader import verdict_process

    slack = verdict_process.SLACK_SECONDS
    verdict_process.SLACK_SECONDS = 1
    try:
        run = _run(stubborn, source, calls, cell_seconds=1, call_seconds=1)
    finally:
        verdict_process.SLACK_SECONDS = slack
    assert run.note and "was stopped" in run.note and "q1_tests" not in run.outputs


def test_without_bubblewrap_the_record_says_nothing_was_hidden(source):
    calls = _q1_calls()
    run = _run(source, source, calls, mode="rlimits", warm=False)
    assert judge(calls, run.outputs) == {"q1_tests": None}
    assert "nothing could be hidden" in run.note


def test_a_later_cell_that_ends_the_process_keeps_the_earlier_results(source, sandbox):
    calls = [c for c in calls_for(EX1, 3) if c.question in ("q1_tests", "q4_tests")]
    crashing = _with_answer(source, "q4_answer", "import os\nos._exit(1)\n")
    run = _run(crashing, source, calls)
    assert judge(calls, run.outputs)["q1_tests"] is None
    assert "ended before" in run.problems["q4_tests"] and "q4_tests" not in run.outputs
    assert run.note and "ended early" in run.note
