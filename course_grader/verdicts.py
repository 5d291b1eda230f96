"""Verdicts the student's code cannot fake: the grader compares outputs with the reference itself.

A student can change anything inside their own kernel (``torch.allclose``, the course's checkers,
the traceback display) and can call the reference there, so a test that passes in the notebook
proves little. For every graded question (`probes.PROBES`), the grader also:

1. draws fresh inputs from a seed chosen for this grading (not written anywhere a student sees);
2. has the verdict process (`verdict_process`: a sandbox where the references do not exist) call
   the student's functions and modules on them and write the results as plain tagged JSON (ints,
   floats, strings, tuples, dicts, tensors with their dtype, shape, device and values; never pickle);
3. reads them and compares them in its own process with the reference it computed: types, shapes,
   dtypes, devices and values are checked from the data.

Two kinds of question are probed:

* a function (`Call`): ``name(*args)`` gives a value, or raises the error the docstring promises
  (`Raises`), or, when the answer is random, has a property checked in the grader (`Satisfies`);
* an ``nn.Module`` class (`ModuleCall`): the student's class is built with the grader's arguments,
  loads the grader's weights (randomised, BatchNorm statistics included: `random_state`) by the
  docstring's names, and runs on the grader's inputs in eval and/or train mode; `module_call` computes
  the expected outputs with the reference module on the same weights.

A question keeps its points only if the notebook's tests passed *and* the grader's own comparison
agrees. Faking the results means computing the right answers, which is the exercise.
"""
from __future__ import annotations

import json
import math
import secrets

from course_lib.checks import MAX_NAMES_SHOWN

from .probe_types import Call, ModuleCall, Raises, Satisfies, short as _short
from .sandboxed.verdict_harness import MAX_ERROR_CHARS, encode  # the verdict process encodes its results the same way

ATOL, RTOL = 1e-5, 1e-4


def new_seed() -> int:
    return secrets.randbits(31)


# --- plain tagged data, the only thing that crosses from the kernel to the grader ------------------

def decode(data):
    """Tagged data back to a value, in the grader's process (tensors on the CPU); ValueError if unreadable."""
    import torch

    try:
        (kind, value), = data.items()
        if kind in ("bool", "int", "str") and type(value).__name__ == kind:
            return value
        if kind == "float":
            return float(value)
        if kind in ("tuple", "list"):
            return (tuple if kind == "tuple" else list)(decode(v) for v in value)
        if kind == "dict":
            return {decode(k): decode(v) for k, v in value}
        if kind == "tensor":
            values = torch.tensor(value["values"], dtype=torch.float64)
            return values.to(getattr(torch, value["dtype"])).reshape(value["shape"])
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"unreadable {data!r:.60}") from error
    raise ValueError(f"unreadable {data!r:.60}")


def payload(call: Call | ModuleCall) -> dict:
    """One call as the verdict process reads it (`verdict_harness.run_call`)."""
    entry = {"name": call.name, "args": [encode(a) for a in call.args]}
    if isinstance(call, ModuleCall):
        entry.update(state=None if call.state is None else encode(dict(call.state)), read=call.read,
                     inputs=[encode(x) for x in call.inputs], modes=list(call.modes))
    return entry


def by_question(calls: list[Call | ModuleCall]) -> dict[str, list[Call | ModuleCall]]:
    grouped: dict[str, list] = {}
    for call in calls:
        grouped.setdefault(call.question, []).append(call)
    return grouped


def results_in_process(calls: list[Call | ModuleCall], namespace: dict, device: str = "cpu") -> dict[str, dict]:
    """What the verdict process would report for ``namespace``'s answers, computed in this process.

    For writing and testing probes (the grader itself never runs student code in its own process):
    the same `verdict_harness.run_call`, on ``device``, one result per call, by question.
    """
    import contextlib
    import io

    import torch

    from .sandboxed.verdict_harness import run_call, short_error

    outputs = {}
    for question, group in by_question(calls).items():
        results = []
        for call in group:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    results.append(run_call(json.loads(json.dumps(payload(call))), namespace, torch.device(device)))
            except Exception as error:
                results.append({"error": short_error(error)})
        outputs[question] = {"device": torch.device(device).type, "results": results}
    return outputs


# --- comparing, in the grader's process --------------------------------------------------------------

def _describe(data) -> str:
    if not isinstance(data, dict) or len(data) != 1:
        return "unreadable data"
    (kind, value), = data.items()
    if kind == "tensor" and isinstance(value, dict):
        return f"a {value.get('dtype')} tensor of shape {tuple(value.get('shape', ()))} on {value.get('device')}"
    if kind in ("int", "bool", "str"):
        return f"{value!r} (a {kind})"
    return f"a {kind}"


def difference(got, expected, input_device: str, atol: float = ATOL, rtol: float = RTOL,
               values: bool = True) -> str | None:
    """None when ``got`` (tagged data from the kernel) matches ``expected`` (a value), else why not.

    With ``values=False`` only the structure is compared: types, lengths, keys, dtypes, shapes, devices.
    """
    want = encode(expected)
    if not isinstance(got, dict) or len(got) != 1:
        return "the result could not be read"
    (kind, value), = got.items()
    (want_kind, want_value), = want.items()
    if kind != want_kind:
        return f"got {_describe(got)}, expected {_describe(want)}"
    if kind in ("tuple", "list"):
        if not isinstance(value, list) or len(value) != len(want_value):
            return f"got a {kind} of {len(value) if isinstance(value, list) else '?'} items, expected {len(want_value)}"
        for index, (g, w) in enumerate(zip(value, expected)):
            problem = difference(g, w, input_device, atol, rtol, values)
            if problem:
                return f"item {index}: {problem}"
        return None
    if kind == "dict":
        if not isinstance(value, list):
            return "the result could not be read"
        try:
            got_items = {json.dumps(k, sort_keys=True): v for k, v in value}
        except (TypeError, ValueError):
            return "the result could not be read"
        for key, item in expected.items():
            tag = json.dumps(encode(key), sort_keys=True)
            if tag not in got_items:
                return f"key {key!r} is missing"
            problem = difference(got_items[tag], item, input_device, atol, rtol, values)
            if problem:
                return f"key {key!r}: {problem}"
        if len(got_items) != len(expected):
            return f"got {len(got_items)} keys, expected {len(expected)}"
        return None
    if kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return "the result could not be read"
        if not values or math.isclose(number, float(want_value), rel_tol=rtol, abs_tol=atol):
            return None
        return f"got {number!r}, expected {float(want_value)!r}"
    if kind == "tensor":
        return _tensor_difference(value, want_value, input_device, atol, rtol, values)
    if type(value) is not type(want_value) or (values and value != want_value):
        return f"got {_describe(got)}, expected {_describe(want)}"
    return None


def _tensor_difference(got: dict, want: dict, input_device: str, atol: float = ATOL, rtol: float = RTOL,
                       values: bool = True) -> str | None:
    import torch

    if not isinstance(got, dict):
        return "the tensor could not be read"
    if got.get("dtype") != want["dtype"]:
        return f"dtype {got.get('dtype')} expected {want['dtype']}"
    if got.get("shape") != want["shape"]:
        return f"shape {tuple(got.get('shape') or ())} expected {tuple(want['shape'])}"
    if got.get("device") != input_device:
        return f"the output is on {got.get('device')}, the input was on {input_device}"
    try:
        numbers = torch.tensor(got["values"], dtype=torch.float64)
    except (TypeError, ValueError, KeyError, RuntimeError):
        return "the tensor's values could not be read"
    expected = torch.tensor(want["values"], dtype=torch.float64)
    if numbers.shape != expected.shape:
        return "the tensor's values could not be read"
    exact = want["dtype"] == "bool" or want["dtype"].startswith(("int", "uint"))  # indices, labels, masks
    if values and exact and not torch.equal(numbers, expected):
        return "values differ from the reference (integers must be equal)"
    if values and not exact and not torch.allclose(numbers, expected, atol=atol, rtol=rtol):
        gap = (numbers - expected).abs()
        largest = "nan" if bool(gap.isnan().any()) else f"{gap.max().item():.3g}"
        return f"values differ from the reference (largest difference {largest})"
    return None


def judge(calls: list[Call | ModuleCall], outputs: dict[str, dict | None]) -> dict[str, str | None]:
    """Per question: None when every call matched the reference, else the first problem (one line)."""
    verdicts: dict[str, str | None] = {}
    for question, group in by_question(calls).items():
        output = outputs.get(question)
        results = output.get("results") if output else None
        if results is None or len(results) != len(group):
            verdicts[question] = "the verdict process gave no results for this answer"
            continue
        verdicts[question] = _first_problem(group, results, str(output.get("device", "cpu")))
    return verdicts


def _first_problem(calls: list[Call | ModuleCall], results: list, input_device: str) -> str | None:
    earlier: list = []  # decoded results, for `Satisfies` checks that compare calls
    for call, result in zip(calls, results):
        where = call.describe() if isinstance(call, ModuleCall) else \
            f"{call.name}({', '.join(_short(a) for a in call.args)})"
        if not isinstance(result, dict) or not ({"ok", "error", "layout"} & set(result)):
            return f"{where}: the result could not be read"
        if "layout" in result:  # the module did not accept the docstring's weights
            if not isinstance(call, ModuleCall):
                return f"{where}: the result could not be read"
            return f"{call.built()}: {_layout_problem(result['layout'], call.state or {})}"
        if "error" in result:
            error = str(result["error"])
            if isinstance(call.expected, Raises) and error.startswith(call.expected.error + ":"):
                earlier.append(None)
                continue
            return f"{where} raised {error[:MAX_ERROR_CHARS]}"
        if isinstance(call.expected, Raises):
            return f"{where} returned {_describe(result['ok'])}, expected a {call.expected.error}"
        problem = _result_problem(call, result["ok"], input_device, earlier)
        if problem:
            return f"{where}: {problem}"
    return None


def _result_problem(call: Call | ModuleCall, got, input_device: str, earlier: list) -> str | None:
    """Why one returned value is wrong (None if it is right); appends its decoded value to ``earlier``."""
    if isinstance(call, ModuleCall) and call.read is None:
        outputs = got.get("list") if isinstance(got, dict) else None
        if not isinstance(outputs, list) or len(outputs) != len(call.modes):
            return "the result could not be read"
        for mode, output, expected in zip(call.modes, outputs, call.expected):
            problem = difference(output, expected, input_device, call.atol, call.rtol)
            if problem:
                return f"in {mode} mode, {problem}"
        earlier.append(None)
        return None
    if isinstance(call.expected, Satisfies):
        problem = difference(got, call.expected.like, input_device, values=False)
        if problem:
            return problem
        try:
            value = decode(got)
        except ValueError:
            return "the result could not be read"
        problem = call.expected.check(value, list(earlier))
        earlier.append(value)
        return problem
    tolerances = (call.atol, call.rtol) if isinstance(call, ModuleCall) else (ATOL, RTOL)
    earlier.append(None)
    return difference(got, call.expected, input_device, *tolerances)


def _layout_problem(layout, state: dict) -> str:
    """One line on why the docstring's weights (``state``) did not load into the student's module."""
    try:
        got = {str(name): tuple(int(d) for d in shape) for name, shape in layout}
    except (TypeError, ValueError):
        return "its weights could not be loaded"
    want = {name: tuple(value.shape) for name, value in state.items()}

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:MAX_NAMES_SHOWN]) + (" ..." if len(keys) > MAX_NAMES_SHOWN else "")

    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        parts = ([f"missing {names(missing)}"] if missing else []) + \
                ([f"unexpected {names(unexpected)}"] if unexpected else [])
        return f"the parameter names differ from the docstring's: {'; '.join(parts)}"
    wrong = [name for name in want if got[name] != want[name]]
    if wrong:
        return f"{wrong[0]} has shape {got[wrong[0]]}, the docstring's is {want[wrong[0]]}"
    return "load_state_dict refused the docstring's weights"
