"""The pieces of a sound grader, one at a time (fast: no notebook is graded here).

- the sandbox command: namespaces, what is visible, limits, the uid a root grader drops to;
- a student kernel really started in the sandbox: its uid, its view of the disk, no network;
- the static audit of answers (patched test machinery, delegation to the reference);
- self-checks that an equality-faking object cannot pass;
- cells whose nbgrader metadata was stripped, matched back by content.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib import checks
from course_grader.audit import audit_cells, graded_cell_of
from course_grader.record import Status
from course_grader.sandbox import (SANDBOX_UID_BASE, Limits, SandboxUnavailable, bwrap_problem, check_sandbox,
                                   describe_exit, sandboxed_command)
from course_grader.submission import grade_id, match_stripped_cells, restore_cells
from sandbox_kernels import run_in_kernel

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "redteam" / "redteam.ipynb"
KERNEL_CMD = ["python", "-m", "ipykernel_launcher", "-f", "kernel.json"]


def _fixture():
    return nbformat.read(FIXTURE, as_version=4)


def _cell(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


# --- the sandbox command -------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["memory_mb", "cpu_seconds", "max_processes", "max_file_mb", "max_open_files"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_limits_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


def test_limits_become_prlimit_arguments():
    args = Limits(memory_mb=1024, cpu_seconds=60, max_processes=32, max_file_mb=8, max_open_files=64).prlimit_args()
    assert f"--data={1024 ** 3}:{1024 ** 3}" in args
    assert "--cpu=60:65" in args and "--nproc=32" in args and f"--fsize={8 * 1024 ** 2}" in args
    assert "--nofile=64" in args and "--core=0" in args


def test_unknown_sandbox_modes_are_refused_and_off_says_so():
    with pytest.raises(ValueError, match="sandbox must be one of"):
        check_sandbox("maybe")
    assert "without a sandbox" in check_sandbox("off")


def test_required_sandbox_refuses_in_one_line_when_bubblewrap_cannot_run(monkeypatch):
    import course_grader.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "the sandbox needs bwrap (apt-get install bubblewrap)")
    with pytest.raises(SandboxUnavailable) as error:
        check_sandbox("required")
    assert "\n" not in str(error.value) and "--sandbox=rlimits" in str(error.value)
    assert "resource limits only" in check_sandbox("rlimits")


def test_the_sandbox_shows_course_lib_and_of_the_grader_only_what_runs_inside(tmp_path):
    command = sandboxed_command(KERNEL_CMD, tmp_path, "required", Limits())
    assert command[0].endswith("prlimit") and "--unshare-net" in command or "--unshare-all" in command
    assert "--die-with-parent" in command and "--new-session" in command and "--clearenv" in command
    binds = [command[i + 2] for i, arg in enumerate(command) if arg in ("--bind", "--ro-bind", "--ro-bind-try")]
    writable = [command[i + 2] for i, arg in enumerate(command) if arg == "--bind"]
    assert writable == [str(tmp_path)]
    inside_course = [Path(b) for b in binds if Path(b).is_relative_to(ROOT)]
    assert ROOT / "course_lib" in inside_course
    grader = ROOT / "course_grader"
    allowed = {ROOT / "course_lib", ROOT / ".venv", grader / "__init__.py", grader / "sandboxed"}
    assert ROOT not in inside_course and set(inside_course) <= allowed, inside_course
    # wherever the grader is installed, an empty read-only folder stands in its place first
    tmpfs = command.index(str(grader)) if str(grader) in command else -1
    assert command[tmpfs - 1] == "--tmpfs" and command[tmpfs - 3:tmpfs - 1] == ["--perms", "0555"]
    assert tmpfs < command.index(str(grader / "sandboxed"))
    assert command[-len(KERNEL_CMD):] == KERNEL_CMD
    if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: the kernel runs as a uid of its own
        setpriv = command.index(next(a for a in command if a.endswith("setpriv")))
        assert int(command[setpriv + 2]) >= SANDBOX_UID_BASE and "--no-new-privs" in command[setpriv:]


def test_the_kernel_environment_is_cleared_except_course_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("COURSE_QUICK", "1")
    command = sandboxed_command(KERNEL_CMD, tmp_path, "required", Limits())
    env = {command[i + 1]: command[i + 2] for i, arg in enumerate(command) if arg == "--setenv"}
    assert "SECRET_TOKEN" not in env and env["COURSE_QUICK"] == "1"
    assert env["HOME"].startswith(str(tmp_path))


def test_exit_codes_are_named():
    assert "CPU time" in describe_exit(128 + 24)
    assert "code 3" in describe_exit(3)
    assert describe_exit(None) == ""


def test_a_sandboxed_kernel_sees_only_its_scratch_folder_and_no_network():
    problem = bwrap_problem()
    if problem:
        pytest.fail(f"the grader's sandbox cannot run here: {problem}")
    probe = f"""
import json, os, socket
report = {{"uid": os.getuid(), "ppid": os.getppid(), "course": sorted(os.listdir({str(ROOT)!r})),
          "grader": sorted(os.listdir({str(ROOT / "course_grader")!r})),
          "grader_writable": os.access({str(ROOT / "course_grader")!r}, os.W_OK),
          "cwd_writable": os.access(os.getcwd(), os.W_OK), "usr_writable": os.access("/usr", os.W_OK),
          "commands": [open(f"/proc/{{p}}/cmdline", "rb").read().decode(errors="replace")
                       for p in os.listdir("/proc") if p.isdigit()]}}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    report["network"] = True
except OSError:
    report["network"] = False
print("REPORT", json.dumps(report))
"""
    printed, _ = run_in_kernel(probe, now=True)
    report = json.loads(printed.split("REPORT", 1)[1])
    assert set(report["course"]) <= {"course_lib", "course_grader", ".venv"}, report["course"]
    assert report["grader"] == ["__init__.py", "sandboxed"] and not report["grader_writable"]
    assert report["network"] is False
    assert report["cwd_writable"] and not report["usr_writable"]
    # Its own pid namespace: a sandbox init, the kernel, perhaps its factory; never the grader.
    # (Pid numbers say nothing: threads of a forked kernel use up pids in the namespace too.)
    assert len(report["commands"]) <= 4, report["commands"]
    assert not any("pytest" in command for command in report["commands"]), "the kernel sees the grader"
    if os.geteuid() == 0:
        assert report["uid"] >= SANDBOX_UID_BASE


# --- the audit of answers ------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [
    ("torch.allclose = lambda *a, **k: True", "torch.allclose"),
    ("import torch as t\nt.allclose = lambda *a, **k: True", "t.allclose"),
    ("checks.check_close = print", "checks.check_close"),
    ("setattr(checks, 'check_equal', print)", "setattr on checks"),
    ("get_ipython().showtraceback = print", "get_ipython"),
    ("import sys\nsys.excepthook = print", "sys.excepthook"),
    ("torch.Tensor.__eq__ = lambda a, b: True", "torch.Tensor.__eq__"),
    ("import builtins\nbuiltins.isinstance = lambda a, b: True", "builtins"),
])
def test_patching_the_test_machinery_is_named_and_reported_without_zeroing(code, expected):
    nb = _fixture()
    _cell(nb, "q1_answer").source += "\n" + code
    audit = audit_cells(nb)
    assert audit.zeroed_questions == set()
    assert all(f.patches for f in audit.findings)
    assert any(expected in f.message for f in audit.findings), [f.message for f in audit.findings]


@pytest.mark.parametrize("code, expected", [
    ("from course_lib.models import conv_params", "course_lib.models"),
    ("import course_lib.models as m", "course_lib.models"),
    ("from torchvision.ops import box_area", "torchvision.ops"),
    ("import torchvision\ny = torchvision.ops.box_area", "torchvision.ops.box_area"),
])
def test_delegating_to_the_reference_reports_that_question_only(code, expected):
    nb = _fixture()
    _cell(nb, "q2_answer").source += "\n" + code
    audit = audit_cells(nb)
    assert audit.zeroed_questions == set()
    assert audit.reported_questions == {"q2_tests"}
    assert expected in audit.findings[0].message


def test_ordinary_answers_and_the_course_notebooks_raise_no_finding():
    nb = _fixture()
    _cell(nb, "q1_answer").source += "\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
                                     "        setattr(self, 'conv', torch.nn.Conv2d(1, 1, 1))\n        self.x = 1\n" \
                                     "torch.backends.cudnn.benchmark = False\n"
    assert audit_cells(nb).findings == []
    for path in [*sorted((ROOT / "solutions").glob("*.ipynb")), *sorted((ROOT / "exercises").glob("*.ipynb"))]:
        assert audit_cells(nbformat.read(path, as_version=4)).findings == [], path.name


def test_answer_ids_map_to_their_tests():
    assert graded_cell_of("q3_answer") == "q3_tests" and graded_cell_of("setup") is None and graded_cell_of(None) is None


# --- self-checks ---------------------------------------------------------------------------------

class _EqualsEverything:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


class _FakeInt(int):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = int.__hash__


@pytest.mark.parametrize("got, expected", [
    (_EqualsEverything(), 5), (_FakeInt(0), 5), ((1, _EqualsEverything()), (1, 2)),
    ({"a": _EqualsEverything()}, {"a": 1}), ([1, 2], (1, 2)),
])
def test_objects_that_fake_equality_fail_check_equal(got, expected):
    with pytest.raises(checks.CheckFailed):
        checks.check_equal("Q", got, expected)


def test_plain_values_still_pass_check_equal():
    checks.check_equal("Q", 5, 5)
    checks.check_equal("Q", True, 1)
    checks.check_equal("Q", {"stem": (64, 56, 56)}, {"stem": (64, 56, 56)})


def test_check_close_ignores_a_patched_allclose_and_tensor_subclasses(monkeypatch):
    monkeypatch.setattr(torch, "allclose", lambda *args, **kwargs: True)
    with pytest.raises(checks.CheckFailed, match="differ"):
        checks.check_close("Q", torch.zeros(3), torch.ones(3))

    class Sneaky(torch.Tensor):
        pass

    with pytest.raises(checks.CheckFailed, match="plain torch.Tensor"):
        checks.check_close("Q", torch.ones(3).as_subclass(Sneaky), torch.ones(3))


# --- stripped metadata ---------------------------------------------------------------------------

def _release():
    """The fixture as students receive it: hidden tests and solutions removed (enough for matching)."""
    release = copy.deepcopy(_fixture())
    for cell in release.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0].rstrip()
        if "### BEGIN SOLUTION" in cell.source:
            head = cell.source.split("### BEGIN SOLUTION")[0]
            cell.source = head + "# YOUR CODE HERE\n    raise NotImplementedError()"
    return release


def test_stripped_cells_are_matched_back_by_content():
    release = _release()
    submitted = copy.deepcopy(release)
    _cell(submitted, "q1_answer").source = _cell(_fixture(), "q1_answer").source
    for cell in submitted.cells:
        cell.metadata.pop("nbgrader", None)
    assert match_stripped_cells(submitted, release, _fixture()) == len(release.cells)
    assert [grade_id(c) for c in submitted.cells] == [grade_id(c) for c in release.cells]
    assert "(boxes[:, 2]" in _cell(submitted, "q1_answer").source
    assert restore_cells(submitted, release, _fixture()).problems == []


def test_an_answer_that_cannot_be_placed_is_left_for_restore_cells_to_report():
    release = _release()
    submitted = copy.deepcopy(release)
    for cell in submitted.cells:
        cell.metadata.pop("nbgrader", None)
    q1 = next(i for i, c in enumerate(submitted.cells) if c.source.startswith("def box_area"))
    submitted.cells.insert(q1, nbformat.v4.new_code_cell("x = 1"))  # two candidates, neither starts like the stub
    submitted.cells[q1 + 1].source = "y = 2"
    match_stripped_cells(submitted, release)
    problems = restore_cells(submitted, release, _fixture()).problems
    assert any("q1_answer was deleted" in p for p in problems)


def test_new_statuses_have_a_severity():
    for status in (Status.KILLED, Status.METADATA_MISSING, Status.DELEGATED):
        assert status in Status.SEVERITY
    assert Status.most_serious([Status.METADATA_MISSING, Status.KILLED]) == Status.KILLED


# --- the grader's own checks ---------------------------------------------------------------------

def _probe_output(calls, namespace: dict) -> dict:
    """What the verdict process would report for ``namespace``'s answers (computed here, in-process)."""
    from course_grader.verdicts import results_in_process

    return results_in_process(calls, dict(namespace))


def _box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _conv_params(kernel_size, in_channels, out_channels, bias=True):
    return (kernel_size * kernel_size * in_channels + int(bias)) * out_channels


def test_right_answers_pass_the_graders_own_check_for_any_seed():
    from course_grader.probes import calls_for
    from course_grader.verdicts import judge

    for seed in (1, 2, 3):
        calls = calls_for("redteam", seed)
        output = _probe_output(calls, {"box_area": _box_area, "conv_params": _conv_params})
        assert judge(calls, output) == {"q1_tests": None, "q2_tests": None}


@pytest.mark.parametrize("namespace, question, problem", [
    ({"box_area": lambda b: _box_area(b).double()}, "q1_tests", "dtype float64 expected float32"),
    ({"box_area": lambda b: _box_area(b)[:-1]}, "q1_tests", "shape"),
    ({"box_area": lambda b: _box_area(b) + 1e-2}, "q1_tests", "values differ"),
    ({"conv_params": lambda *a: float(_conv_params(*a))}, "q2_tests", "got a float"),
    ({"conv_params": lambda *a: _EqualsEverything()}, "q2_tests", "got a other"),
    ({"conv_params": lambda *a: 1 / 0}, "q2_tests", "raised ZeroDivisionError"),
    ({"conv_params": None}, "q2_tests", "conv_params is not defined"),
])
def test_wrong_types_shapes_dtypes_and_values_are_caught_from_the_data(namespace, question, problem):
    from course_grader.probes import calls_for
    from course_grader.verdicts import judge

    calls = calls_for("redteam", 7)
    full = {name: f for name, f in {"box_area": _box_area, "conv_params": _conv_params, **namespace}.items() if f}
    verdicts = judge(calls, _probe_output(calls, full))
    assert verdicts[question] is not None and problem in verdicts[question], verdicts


def test_a_missing_or_forged_result_line_fails_every_probed_question():
    from course_grader.probes import calls_for
    from course_grader.verdicts import judge

    calls = calls_for("redteam", 7)
    assert set(judge(calls, {}).values()) == {"the verdict process gave no results for this answer"}
    forged = {q: {"device": "cpu", "results": [{"ok": {"int": 0}}] * sum(c.question == q for c in calls)}
              for q in ("q1_tests", "q2_tests")}
    verdicts = judge(calls, forged)
    assert all(verdicts.values()), verdicts


def test_outputs_must_stay_on_the_input_device():
    from course_grader.probes import calls_for
    from course_grader.verdicts import encode, judge

    calls = [c for c in calls_for("redteam", 7) if c.name == "box_area"]
    results = [{"ok": encode(c.expected)} for c in calls]
    assert judge(calls, {"q1_tests": {"device": "cpu", "results": results}}) == {"q1_tests": None}
    assert "the input was on cuda" in judge(calls, {"q1_tests": {"device": "cuda", "results": results}})["q1_tests"]


def test_exercise_1_answers_are_checked_against_torch_and_the_reference():
    from course_grader.probes import calls_for
    from course_grader.verdicts import judge

    def conv_output_size(size, kernel_size, stride=1, padding=0):
        return (size + 2 * padding - kernel_size) // stride + 1

    calls = [c for c in calls_for("01_blocks_and_resnets", 11) if c.name in ("conv_params", "conv_output_size")]
    assert {c.question for c in calls} == {"q1_tests", "q4_tests"}
    output = _probe_output(calls, {"conv_params": _conv_params, "conv_output_size": conv_output_size})
    assert judge(calls, output) == {"q1_tests": None, "q4_tests": None}
    rounding_up = {"conv_params": _conv_params,
                   "conv_output_size": lambda s, k, st=1, p=0: -(-(s + 2 * p - k) // st) + 1}
    assert judge(calls, _probe_output(calls, rounding_up))["q4_tests"] is not None
