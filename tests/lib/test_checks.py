"""The self-checks' messages: short in a notebook, the student's errors reported with the question's hint.

Unit tests run in this process (fake IPython shells stand in for the ones whose API may differ); the
`notebook` tests run one real kernel through nbclient and read the cells' outputs as nbgrader does.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib import checks

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = "### BEGIN HIDDEN TESTS"


def student_forward(x):
    return x @ torch.ones(3, 3)  # the student's shape mistake


def student_stub(x):
    # YOUR CODE HERE
    raise NotImplementedError()


def failure(block) -> checks.CheckFailed:
    with pytest.raises(checks.CheckFailed) as caught:
        block()
    return caught.value


def run_in_question(call, name="Q2 demo", hint="look at the shapes"):
    def block():
        with checks.question(name, hint=hint):
            call()
    return block


# ----------------------------------------------------------------------------- question()
def test_an_error_in_the_students_code_names_the_error_the_function_the_line_and_the_hint():
    error = failure(run_in_question(lambda: student_forward(torch.zeros(2, 2))))
    line = student_forward.__code__.co_firstlineno + 1
    assert str(error) == ("Q2 demo: your code raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                          f"(2x2 and 3x3) (in student_forward, line {line})\nHint: look at the shapes")
    assert type(error) is checks.CheckFailed and error.hint == "look at the shapes"
    assert isinstance(error.__cause__, RuntimeError)  # the full traceback stays reachable (%tb, plain Python)


def test_a_method_is_named_with_its_class_and_a_library_frame_is_skipped():
    class Block(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.linear(x, torch.ones(3, 3))

    error = failure(run_in_question(lambda: Block()(torch.zeros(2, 2))))
    assert "your code raised RuntimeError" in str(error)
    assert "(in test_a_method_is_named_with_its_class_and_a_library_frame_is_skipped.<locals>.Block.forward, line" \
        in str(error)


def test_the_unanswered_stub_says_not_answered_yet_and_is_still_a_not_implemented_error():
    error = failure(run_in_question(lambda: student_stub(1)))
    assert type(error) is checks.NotAnswered
    assert isinstance(error, NotImplementedError) and isinstance(error, AssertionError)
    assert str(error) == ("Q2 demo: not answered yet (student_stub still raises NotImplementedError)\n"
                          f"Hint: {checks.NOT_ANSWERED_HINT}")


def test_a_not_implemented_error_with_a_message_from_a_library_is_an_ordinary_error():
    class NoForward(torch.nn.Module):
        pass

    error = failure(run_in_question(lambda: NoForward()(torch.zeros(1))))
    assert type(error) is checks.CheckFailed
    assert str(error).startswith('Q2 demo: your code raised NotImplementedError: Module [NoForward] is missing the '
                                 'required "forward" function (in ')


def test_an_error_of_the_checks_own_code_on_a_wrong_answer_says_so():
    def block():
        with checks.question("Q5 demo", hint="(B, H * W * A, 4)"):
            boxes = torch.zeros(1, 4)  # what a wrong answer returned
            boxes[1, 11]
    error = failure(block)
    assert str(error) == ("Q5 demo: the checks could not use your answer, they raised IndexError: index 1 is out of "
                          "bounds for dimension 0 with size 1\nHint: (B, H * W * A, 4)")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_keyboard_interrupt_and_system_exit_pass_unchanged(interrupt):
    def block():
        with checks.question("Q1 demo", hint="h"):
            raise interrupt()
    with pytest.raises(interrupt):
        block()


def test_a_failed_check_keeps_its_own_hint_and_gets_the_questions_when_it_has_none():
    def with_hint():
        with checks.question("Q1 demo", hint="question hint"):
            checks.check(False, "Q1 demo", "bad", hint="own hint")
    assert str(failure(with_hint)) == "Q1 demo: bad\nHint: own hint"

    def without_hint():
        with checks.question("Q1 demo", hint="question hint"):
            checks.check(False, "Q1 demo", "bad")
    error = failure(without_hint)
    assert str(error) == "Q1 demo: bad\nHint: question hint" and error.__cause__ is None


def test_a_passing_block_returns_normally_and_exit_never_swallows_an_exception(capsys):
    with checks.question("Q1 demo", hint="h"):
        checks.check(True, "Q1 demo", "fine")
        checks.passed("Q1 demo")
    assert capsys.readouterr().out == "\u2714 Q1 demo: all visible checks passed.\n"
    manager = checks.question("Q1 demo", hint="h")
    assert manager.__exit__(None, None, None) is False
    for error in (KeyboardInterrupt(), checks.CheckFailed("Q1 demo: bad", "own")):
        assert manager.__exit__(type(error), error, None) is False  # re-raised by the with statement
    with pytest.raises(checks.CheckFailed):
        manager.__exit__(ValueError, ValueError("x"), None)


class _HostileMessage(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


class _NotAString(Exception):
    def __str__(self):
        return 42


def test_hostile_or_huge_exception_messages_still_fail_with_a_short_message():
    def raise_(error):
        def call():
            raise error
        return call
    assert str(failure(run_in_question(raise_(_HostileMessage())))).startswith("Q2 demo: your code raised _HostileMessage (")
    assert str(failure(run_in_question(raise_(_NotAString())))).startswith("Q2 demo: your code raised _NotAString (")
    long = str(failure(run_in_question(raise_(ValueError("x" * 5000 + "\nsecond line")))))
    assert "second line" not in long
    assert "x" * (checks.MAX_QUOTED_CHARS - 3) + "... (in" in long and "x" * checks.MAX_QUOTED_CHARS not in long


def test_a_student_who_patches_builtins_after_import_changes_nothing():
    saved = builtins.isinstance, builtins.issubclass, builtins.str
    builtins.isinstance = builtins.issubclass = lambda *args: False
    builtins.str = lambda *args: ""
    try:
        with checks.question("Q2 demo", hint="look at the shapes"):
            student_forward(torch.zeros(2, 2))
    except checks.CheckFailed as caught:  # the interpreter matches exceptions without builtins.isinstance
        error = caught
    finally:
        builtins.isinstance, builtins.issubclass, builtins.str = saved
    assert type(error) is checks.CheckFailed and "your code raised RuntimeError: mat1 and mat2" in str(error)


def test_plain_python_raises_check_failed_with_its_usual_traceback():
    code = "from course_lib import checks\nchecks.check(False, 'Q1 demo', 'bad', hint='h')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("course_lib.checks.CheckFailed: Q1 demo: bad\nHint: h")


# ----------------------------------------------------------------------------- the IPython display, fake shells
class FakeShell:
    """The parts of IPython's InteractiveShell (and ipykernel's / Colab's) that checks uses."""

    def __init__(self, custom_exceptions=(), showtraceback=True):
        self.custom_exceptions, self.handler, self.shown = custom_exceptions, None, []
        if showtraceback:
            self._showtraceback = lambda etype, value, stb: self.shown.append(("short", etype, stb))

    def set_custom_exc(self, exc_tuple, handler):
        self.custom_exceptions, self.handler = exc_tuple, handler

    def showtraceback(self, exc_tuple=None, tb_offset=None):
        self.shown.append(("full", exc_tuple[0], None))


@pytest.fixture
def fake_ipython(monkeypatch):
    def install(shell):
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
        return shell
    return install


def test_outside_ipython_nothing_is_registered(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert checks.short_tracebacks() is False
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert checks.short_tracebacks() is False
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace())  # an IPython without get_ipython
    assert checks.short_tracebacks() is False


def test_the_handler_shows_only_the_message_lines(fake_ipython):
    shell = fake_ipython(FakeShell())
    assert checks.short_tracebacks() is True and shell.custom_exceptions == (checks.CheckFailed,)
    error = checks.CheckFailed("Q1 demo: bad", "h")
    stb = shell.handler(shell, checks.CheckFailed, error, None, tb_offset=None)
    assert stb == ["Q1 demo: bad", "Hint: h"] and shell.shown == [("short", checks.CheckFailed, stb)]
    assert sys.last_value is error  # %tb and %debug find the failure
    assert checks.short_tracebacks(False) is False and shell.custom_exceptions == ()


def test_a_shell_without_showtraceback_gets_the_full_traceback_and_a_broken_message_a_neutral_line(fake_ipython):
    shell = fake_ipython(FakeShell(showtraceback=False))
    checks.short_tracebacks()
    shell.handler(shell, checks.CheckFailed, checks.CheckFailed("Q1 demo: bad"), None)

    class Sneaky(checks.CheckFailed):
        def __str__(self):
            raise RuntimeError("hide me")
    shell2 = fake_ipython(FakeShell())
    checks.short_tracebacks()
    shell2.handler(shell2, Sneaky, Sneaky("Q1 demo: bad"), None)
    assert shell.shown == [("full", checks.CheckFailed, None)]
    assert shell2.shown == [("short", Sneaky, [checks.UNREADABLE_FAILURE])]


def test_another_librarys_handler_and_odd_shells_are_left_alone(fake_ipython):
    theirs = FakeShell(custom_exceptions=(ValueError,))
    fake_ipython(theirs)
    assert checks.short_tracebacks() is False and theirs.custom_exceptions == (ValueError,)
    fake_ipython(types.SimpleNamespace())  # no set_custom_exc at all
    assert checks.short_tracebacks() is False

    class Refusing(FakeShell):
        def set_custom_exc(self, exc_tuple, handler):
            raise TypeError("other signature")
    fake_ipython(Refusing())
    assert checks.short_tracebacks() is False


def test_the_environment_variable_keeps_full_tracebacks():
    code = ("import sys, types\ncalls = []\n"
            "shell = types.SimpleNamespace(custom_exceptions=(), set_custom_exc=lambda *a: calls.append(a))\n"
            "sys.modules['IPython'] = types.SimpleNamespace(get_ipython=lambda: shell)\n"
            "from course_lib import checks\nprint(len(calls))\n")
    counts = []
    for value in ("full", ""):
        env = {**os.environ, checks.TRACEBACK_ENV: value}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                                timeout=120)
        counts.append(result.stdout.strip())
    assert counts == ["0", "1"]


# ----------------------------------------------------------------------------- the exercises' test cells
def _visible_test_cells():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell["cell_type"] == "code" and meta.get("grade") and not meta.get("solution"):
                yield f"{path.name[:2]}/{meta['grade_id']}", "".join(cell["source"]).split(HIDDEN)[0]


def test_every_visible_check_has_a_hint_and_runs_inside_its_question():
    cells = list(_visible_test_cells())
    assert len(cells) == 34
    for where, source in cells:
        tree = ast.parse(source)
        blocks = [node for node in tree.body if isinstance(node, ast.With)]
        assert len(blocks) == 1, where
        (item,) = blocks[0].items
        assert ast.unparse(item.context_expr.func) == "checks.question", where
        assert any(k.arg == "hint" and isinstance(k.value, ast.Constant) and k.value.value for k in
                   item.context_expr.keywords), where
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("checks.")]
        inside = {id(node) for node in ast.walk(blocks[0]) if isinstance(node, ast.Call)}
        for call in calls:
            name = ast.unparse(call.func)
            if name in ("checks.question",):
                continue
            assert id(call) in inside, f"{where}: {name} at line {call.lineno} is outside the question block"
            if name != "checks.passed":
                assert any(k.arg == "hint" for k in call.keywords), f"{where}: {name} at line {call.lineno} has no hint"


# ----------------------------------------------------------------------------- a real kernel
KERNEL_CELLS = {
    "setup": "import sys\nimport torch\nfrom course_lib import checks",
    "failed_check": 'checks.check_shape("Q2 demo", torch.zeros(1, 128, 56, 56), (1, 128, 28, 28),\n'
                    '                   hint="a downsampling block uses stride 2")',
    "answer": "def forward(x):\n    return x @ torch.ones(3, 3)\n\ndef conv_params(k):\n    # YOUR CODE HERE\n"
              "    raise NotImplementedError()",
    "student_error": 'with checks.question("Q2 demo", hint="check the shapes"):\n    forward(torch.zeros(2, 2))',
    "not_answered": 'with checks.question("Q1 demo", hint="arithmetic only"):\n    conv_params(3)',
    "passed": 'with checks.question("Q1 demo", hint="h"):\n    checks.check(True, "Q1 demo", "fine")\n'
              '    checks.passed("Q1 demo")',
    "interrupt": 'with checks.question("Q1 demo", hint="h"):\n    raise KeyboardInterrupt',
    "forged": ('class Forged(checks.CheckFailed):\n    def __str__(self):\n        raise RuntimeError("no")\n\n'
               'raise Forged("Q1 demo: all visible checks passed")'),
    "full": 'checks.short_tracebacks(False)\nchecks.check(False, "Q1 demo", "bad", hint="h")',
}


@pytest.fixture(scope="module")
def kernel_outputs():
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, id=name.replace("_", "-")) for name, source in KERNEL_CELLS.items()]
    for cell in nb.cells:  # graded like nbgrader's autograde: a test cell worth one point
        cell.metadata["nbgrader"] = {"grade": True, "grade_id": cell.id, "locked": True, "points": 1,
                                     "schema_version": 3, "solution": False, "task": False}
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return {name: cell for name, cell in zip(KERNEL_CELLS, nb.cells)}


def _error(cell):
    errors = [output for output in cell.outputs if output.output_type == "error"]
    assert len(errors) == 1, cell.outputs
    return errors[0]


def _grade(cell):
    from nbgrader.utils import determine_grade

    return determine_grade(cell, None)


@pytest.mark.notebook
def test_kernel_a_failed_check_is_an_error_output_of_only_its_message_and_hint(kernel_outputs):
    cell = kernel_outputs["failed_check"]
    error = _error(cell)
    assert error.ename == "CheckFailed"
    assert error.traceback == ["Q2 demo: output shape (1, 128, 28, 28) expected, got (1, 128, 56, 56)",
                               "Hint: a downsampling block uses stride 2"]
    assert _grade(cell) == (0, 1)  # nbgrader sees the cell fail
    assert _grade(kernel_outputs["setup"]) == (1, 1)


@pytest.mark.notebook
def test_kernel_an_error_in_the_students_code_is_shown_with_the_hint(kernel_outputs):
    error = _error(kernel_outputs["student_error"])
    assert error.ename == "CheckFailed"
    assert error.traceback == ["Q2 demo: your code raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                               "(2x2 and 3x3) (in forward, line 2)", "Hint: check the shapes"]
    assert _grade(kernel_outputs["student_error"]) == (0, 1)


@pytest.mark.notebook
def test_kernel_an_unanswered_question_says_not_answered_yet(kernel_outputs):
    error = _error(kernel_outputs["not_answered"])
    assert error.ename == "NotAnswered"
    assert error.traceback == ["Q1 demo: not answered yet (conv_params still raises NotImplementedError)",
                               f"Hint: {checks.NOT_ANSWERED_HINT}"]


@pytest.mark.notebook
def test_kernel_a_passing_question_prints_its_verdict(kernel_outputs):
    cell = kernel_outputs["passed"]
    assert [o.output_type for o in cell.outputs] == ["stream"]
    assert cell.outputs[0].text == "\u2714 Q1 demo: all visible checks passed.\n"
    assert _grade(cell) == (1, 1)


@pytest.mark.notebook
def test_kernel_keyboard_interrupt_keeps_its_ordinary_traceback(kernel_outputs):
    error = _error(kernel_outputs["interrupt"])
    assert error.ename == "KeyboardInterrupt" and len(error.traceback) > 2


@pytest.mark.notebook
def test_kernel_a_forged_failure_still_fails_the_cell(kernel_outputs):
    # ipykernel itself then fails to read the message for its reply: a second error output, not ours
    error = next(output for output in kernel_outputs["forged"].outputs if output.output_type == "error")
    assert error.ename == "Forged" and error.traceback == [checks.UNREADABLE_FAILURE]
    assert _grade(kernel_outputs["forged"]) == (0, 1)


@pytest.mark.notebook
def test_kernel_full_tracebacks_can_be_turned_back_on(kernel_outputs):
    error = _error(kernel_outputs["full"])
    assert error.ename == "CheckFailed" and len(error.traceback) > 2
    assert any("Cell In[" in re.sub(r"\x1b\[[0-9;]*m", "", frame) for frame in error.traceback)
