"""Friendly self-checks for the exercises' visible tests.

A failed check raises `CheckFailed` (an AssertionError, so nbgrader counts it as a failed test)
whose message names the question, what was expected, what came back, and a hint:

    Q2 residual block: output shape (1, 128, 28, 28) expected, got (1, 128, 56, 56)
    Hint: a downsampling block uses stride 2 in conv1 and in the shortcut's 1x1 conv

A test cell runs its checks inside ``with checks.question(Q2, hint=...):``. An exception raised by
the student's code there (a shape mismatch in their forward, an unanswered stub) becomes a
`CheckFailed` that says what was raised, where, and gives the question's hint.

In Jupyter and Colab a failed check shows only its message and hint, not a traceback: importing
this module registers a display for `CheckFailed` with IPython. The cell still fails (an ``error``
output, which nbgrader grades as failed). Outside IPython, or with COURSE_CHECKS_TRACEBACK=full,
exceptions show their usual traceback.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence

import torch

# Bound when this module is imported (in a notebook's set-up cell, before any answer runs): an answer
# that later replaces torch.allclose, builtins or Tensor methods does not change what these checks compute.
_allclose = torch.allclose
_isinstance = isinstance
_issubclass = issubclass
_type = type
_str = str
_getattr = getattr
_len = len
#: Plain values `check_equal` compares; anything else (a subclass, an object with its own __eq__) fails.
_PLAIN_TYPES = (int, float, bool, str, bytes, type(None))
_PLAIN_CONTAINERS = (tuple, list)
#: Exact tensor types accepted where a tensor is expected (subclasses can override every operation).
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)

#: What an unanswered question's stub raises: nbgrader's ``raise NotImplementedError()``.
NOT_ANSWERED_HINT = ("write your code where it says YOUR CODE HERE, delete the `raise NotImplementedError()` "
                     "line, run that cell, then this one again")
#: Longest part of a student's exception message quoted in a failure (its first line only).
MAX_QUOTED_CHARS = 200
#: Set to "full" (COURSE_CHECKS_TRACEBACK=full) to keep IPython's usual tracebacks for failed checks.
TRACEBACK_ENV = "COURSE_CHECKS_TRACEBACK"

__all__ = [
    "CheckFailed",
    "NotAnswered",
    "question",
    "check",
    "check_shape",
    "check_close",
    "check_equal",
    "check_type",
    "check_same_parameters",
    "copy_weights",
    "passed",
    "short_tracebacks",
]


#: Names listed in a one-line message about missing or unexpected parameters (the rest as "...").
MAX_NAMES_SHOWN = 4


def _names(names) -> str:
    return ", ".join(names[:MAX_NAMES_SHOWN]) + (" ..." if _len(names) > MAX_NAMES_SHOWN else "")


class CheckFailed(AssertionError):
    """A visible test found a wrong answer; the message says what was expected (and a hint)."""

    #: Marks the classes whose IPython display this module registered (survives a module reload).
    _course_check_failure = True

    def __init__(self, text: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{text}\nHint: {hint}" if hint else text)


class NotAnswered(CheckFailed, NotImplementedError):
    """The question's answer still raises its stub's NotImplementedError."""


def _fail(question: str, message: str, hint: str | None) -> None:
    raise CheckFailed(f"{question}: {message}", hint)


# ----------------------------------------------------------------------------- the student's errors
def _library_roots() -> tuple[str, ...]:
    """Folders whose code is not the student's: the Python installation, its packages, course_lib."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.abspath(__file__))}
    paths.update(value for value in sysconfig.get_paths().values() if value)
    for module in (torch, os):
        paths.add(os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))))
    roots = {os.path.join(os.path.realpath(p), "") for p in paths}
    return tuple(sorted(root for root in roots if os.path.dirname(root.rstrip(os.sep))))  # never "/" itself


_LIBRARY_ROOTS = _library_roots()
_LIBRARY_FILES: dict[str, bool] = {}


def _is_library(filename: str) -> bool:
    """True for the code of Python, installed packages and course_lib; False for notebook cells."""
    known = _LIBRARY_FILES.get(filename)
    if known is None:
        if filename.startswith("<"):  # "<frozen ...>" is Python's; "<string>", "<ipython-input-...>" are cells
            known = filename.startswith("<frozen")
        else:
            known = os.path.realpath(filename).startswith(_LIBRARY_ROOTS)
        _LIBRARY_FILES[filename] = known
    return known


def _frames(tb) -> list[tuple[str, str, int]]:
    """(filename, function's qualified name, line) of each traceback entry, outermost first."""
    entries = []
    while tb is not None:
        code = tb.tb_frame.f_code
        entries.append((code.co_filename, _getattr(code, "co_qualname", code.co_name), tb.tb_lineno))
        tb = tb.tb_next
    return entries


def _first_line(error: BaseException) -> str:
    try:
        text = _str(error)
    except Exception:  # an exception whose __str__ fails still gets reported, without its text
        return ""
    lines = text.strip().splitlines() if _type(text) is _str else []
    line = lines[0].strip() if lines else ""
    return line if _len(line) <= MAX_QUOTED_CHARS else line[: MAX_QUOTED_CHARS - 3] + "..."


def _student_error(name: str, hint: str | None, error: BaseException, tb) -> CheckFailed:
    """The `CheckFailed` (or `NotAnswered`) that reports ``error``, raised while checking question ``name``.

    The first traceback entry is the test cell itself (where the ``with`` block is); the deepest of
    the later entries that is not library code is where the student's code failed.
    """
    entries = _frames(tb)
    theirs = [entry for entry in entries[1:] if not _is_library(entry[0])]
    ename = _type(error).__name__
    raised_by_stub = bool(entries) and _len(entries) > 1 and not _is_library(entries[-1][0])
    if _isinstance(error, NotImplementedError) and not error.args and raised_by_stub:
        return NotAnswered(f"{name}: not answered yet ({entries[-1][1]} still raises NotImplementedError)",
                           NOT_ANSWERED_HINT)
    text = _first_line(error)
    raised = f"{ename}: {text}" if text else ename
    if not theirs:  # the test cell's own code failed on what the answer returned
        return CheckFailed(f"{name}: the checks could not use your answer, they raised {raised}", hint)
    _, function, line = theirs[-1]
    where = f"line {line} of a cell" if function == "<module>" else f"in {function}, line {line}"
    return CheckFailed(f"{name}: your code raised {raised} ({where})", hint)


class question:
    """Context manager around one question's checks: errors of the student's code become `CheckFailed`.

        with checks.question(Q2, hint="the shortcut needs the stride of conv1"):
            checks.check_shape(Q2, ResidualBlock(64, 128, downsample=True)(x), (1, 128, 28, 28), hint=...)

    Inside the block, an Exception from the student's code becomes "Q2 ...: your code raised
    RuntimeError: ... (in ResidualBlock.forward, line 12)" with ``hint``; the unanswered stub's
    NotImplementedError becomes `NotAnswered` ("not answered yet"); a `CheckFailed` without a hint of
    its own gets ``hint``. KeyboardInterrupt and SystemExit pass unchanged. The block never swallows
    an exception: every failure inside it leaves it as an exception.
    """

    def __init__(self, name: str, hint: str | None = None) -> None:
        self.name, self.hint = name, hint

    def __enter__(self) -> question:
        return self

    def __exit__(self, etype, error, tb) -> bool:
        if etype is None or not _issubclass(etype, Exception):
            return False  # success, or KeyboardInterrupt / SystemExit: nothing to translate
        cause = error
        try:
            if _isinstance(error, CheckFailed):
                if error.hint or not self.hint:
                    return False
                replacement, cause = CheckFailed(_str(error), self.hint), None  # the same failure, with a hint
            else:
                replacement = _student_error(self.name, self.hint, error, tb)
        except Exception:  # reporting must not hide the failure: fall back to a plain message
            replacement = CheckFailed(f"{self.name}: your code raised an exception", self.hint)
        raise replacement from cause


def check(condition: bool, question: str, message: str, hint: str | None = None) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    if not condition:
        _fail(question, message, hint)


def check_type(question: str, value, expected_type: type | tuple[type, ...], what: str = "the answer",
               hint: str | None = None) -> None:
    if not isinstance(value, expected_type):
        names = (expected_type,) if isinstance(expected_type, type) else expected_type
        wanted = " or ".join(t.__name__ for t in names)
        _fail(question, f"{what} should be a {wanted}, got {type(value).__name__}", hint)


def check_shape(question: str, tensor, expected: Sequence[int], what: str = "output shape",
                hint: str | None = None) -> None:
    """Fail unless ``tensor`` is a tensor of shape ``expected``."""
    check_type(question, tensor, torch.Tensor, what="the output", hint=hint)
    got, want = tuple(tensor.shape), tuple(int(d) for d in expected)
    if got != want:
        _fail(question, f"{what} {want} expected, got {got}", hint)


def _is_plain(value) -> bool:
    """True for exact built-in values (and tuples/lists of them), whose == cannot be faked."""
    if _type(value) in _PLAIN_CONTAINERS:
        return all(_is_plain(item) for item in value)
    if _type(value) is dict:
        return all(_is_plain(key) and _is_plain(item) for key, item in value.items())
    return _type(value) in _PLAIN_TYPES


def _describe(value) -> str:
    try:
        return repr(value) if _is_plain(value) else f"an object of type {_type(value).__name__}"
    except RecursionError:
        return "a nested object"


def check_equal(question: str, got, expected, what: str = "value", hint: str | None = None) -> None:
    """Fail unless ``got == expected`` (plain Python values: ints, strings, tuples, dicts of them).

    ``got`` must be a plain built-in value of the same type as ``expected`` (an ``int`` for an
    ``int``): an object that claims to equal everything does not pass.
    """
    integers = (int, bool)
    same_type = _type(got) is _type(expected) or (_type(got) in integers and _type(expected) in integers)
    if not same_type or not _is_plain(got):
        _fail(question, f"{what} {expected!r} expected, got {_describe(got)} (a {_type(got).__name__})", hint)
    if got != expected:  # both are plain built-in values now: this is the built-in comparison
        _fail(question, f"{what} {expected!r} expected, got {got!r}", hint)


def check_close(question: str, got, expected, what: str = "values", atol: float = 1e-5, rtol: float = 1e-4,
                hint: str | None = None) -> None:
    """Fail unless tensor ``got`` has ``expected``'s shape and values (within tolerances)."""
    expected = torch.as_tensor(expected)
    check_type(question, got, torch.Tensor, what=what, hint=hint)
    if _type(got) not in _TENSOR_TYPES:  # a subclass can override every operation
        _fail(question, f"{what}: a plain torch.Tensor expected, got a {_type(got).__name__}", hint)
    if tuple(got.shape) != tuple(expected.shape):
        _fail(question, f"{what}: shape {tuple(expected.shape)} expected, got {tuple(got.shape)}", hint)
    got_cpu = got.detach().to("cpu", torch.float64)
    exp_cpu = expected.detach().to("cpu", torch.float64)
    if not _allclose(got_cpu, exp_cpu, atol=atol, rtol=rtol, equal_nan=False):
        diff = (got_cpu - exp_cpu).abs()
        worst = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
        _fail(
            question,
            f"{what} differ from the expected ones (largest difference {diff.flatten()[worst].item():.3g} "
            f"at flat index {worst}: expected {exp_cpu.flatten()[worst].item():.6g}, "
            f"got {got_cpu.flatten()[worst].item():.6g})",
            hint,
        )


def check_same_parameters(question: str, module, reference, what: str = "your module",
                          hint: str | None = None) -> None:
    """Fail unless ``module`` has the same state-dict names and shapes as ``reference`` (both nn.Modules)."""
    check_type(question, module, torch.nn.Module, what=what, hint=hint)
    got = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    want = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        _fail(question, f"{what} has other layer names than expected ({'; '.join(parts)})", hint)
    wrong = [name for name in want if got[name] != want[name]]
    if wrong:
        name = wrong[0]
        _fail(question, f"{what}: {name} should have shape {want[name]}, got {got[name]}", hint)


def copy_weights(question: str, module, reference, what: str = "your module", hint: str | None = None) -> None:
    """Load ``module``'s weights and buffers into ``reference`` so both compute the same function."""
    check_same_parameters(question, module, reference, what=what, hint=hint)
    reference.load_state_dict(module.state_dict())


def passed(question: str) -> None:
    """Print the friendly verdict at the end of a visible test cell."""
    print(f"\u2714 {question}: all visible checks passed.")


# ----------------------------------------------------------------------------- IPython display
#: Shown instead when a failure's message cannot be read (an exception class with a broken __str__).
UNREADABLE_FAILURE = "a check failed, but its message cannot be shown"


def _short_traceback(error: BaseException) -> list[str]:
    """What a failed check shows in a notebook: its message and hint lines, nothing else."""
    try:
        text = _str(error)
    except Exception:
        text = None
    if _type(text) is not _str or not text.strip():
        return [UNREADABLE_FAILURE]
    return text.splitlines()


def _show_check_failure(shell, etype, error, tb, tb_offset=None):
    """IPython's custom exception handler for `CheckFailed`: an ``error`` output of the message lines.

    The shell is given the message as a string (ipykernel and Colab would call ``str`` on the
    exception again). A shell without ``_showtraceback`` gets IPython's ordinary traceback instead:
    the cell is reported as failed either way.
    """
    sys.last_type, sys.last_value, sys.last_traceback = etype, error, tb  # %tb and %debug still work
    if hasattr(sys, "last_exc"):
        sys.last_exc = error
    stb = _short_traceback(error)
    try:
        shell._showtraceback(etype, "\n".join(stb), stb)
    except Exception:
        shell.showtraceback((etype, error, tb), tb_offset=tb_offset)
        return None
    return stb


def _shell():
    """The running IPython shell, or None (plain Python, IPython not imported, or no shell running)."""
    ipython = sys.modules.get("IPython")
    get_ipython = _getattr(ipython, "get_ipython", None) if ipython is not None else None
    try:
        return get_ipython() if callable(get_ipython) else None
    except Exception:
        return None


def _ours(exceptions) -> bool:
    return _isinstance(exceptions, tuple) and all(_getattr(e, "_course_check_failure", False) for e in exceptions)


def short_tracebacks(enabled: bool = True) -> bool:
    """Show failed checks as their message and hint only (``enabled``), or with IPython's full traceback.

    Returns whether the short display is now active. Does nothing outside IPython, or where another
    library already handles exceptions with ``set_custom_exc`` (its handler is left in place).
    """
    shell = _shell()
    set_custom_exc = _getattr(shell, "set_custom_exc", None)
    if not callable(set_custom_exc):
        return False
    current = _getattr(shell, "custom_exceptions", ())
    if current and not _ours(current):
        return False
    try:
        if enabled:
            set_custom_exc((CheckFailed,), _show_check_failure)
        else:
            set_custom_exc((), None)
    except Exception:
        return False
    return enabled


if os.environ.get(TRACEBACK_ENV, "").strip().lower() != "full":
    short_tracebacks(True)
