"""Friendly self-check helpers for the exercises' visible tests.

A failed check raises `CheckFailed` (an AssertionError, so nbgrader counts it as a failed test)
whose one-line message names the question, what was expected, what came back and a hint:

    Q2 residual block: output shape (1, 128, 28, 28) expected, got (1, 128, 56, 56).
    Hint: the first convolution of a downsampling block uses stride 2.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

# Bound when this module is imported (in a notebook's set-up cell, before any answer runs): an answer
# that later replaces torch.allclose or Tensor methods does not change what these checks compute.
_allclose = torch.allclose
_isinstance = isinstance
_type = type
#: Plain values `check_equal` compares; anything else (a subclass, an object with its own __eq__) fails.
_PLAIN_TYPES = (int, float, bool, str, bytes, type(None))
_PLAIN_CONTAINERS = (tuple, list)
#: Exact tensor types accepted where a tensor is expected (subclasses can override every operation).
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)

__all__ = [
    "CheckFailed",
    "check",
    "check_shape",
    "check_close",
    "check_equal",
    "check_type",
    "check_same_parameters",
    "copy_weights",
    "passed",
]


class CheckFailed(AssertionError):
    """A visible test found a wrong answer; the message says what was expected."""


def _fail(question: str, message: str, hint: str | None) -> None:
    text = f"{question}: {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise CheckFailed(text)


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
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
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
