"""Verdicts the student's kernel cannot fake: the grader compares outputs with the reference itself.

A student can change anything inside their own kernel (``torch.allclose``, the course's checkers,
the traceback display), so a test that passes there proves little. For the questions listed in
`PROBES`, the grader also:

1. draws fresh inputs from a seed chosen for this grading (not written anywhere a student sees);
2. puts a cell right after each such question's test cell that calls the student's functions on
   them and prints the results as plain tagged JSON (ints, floats, strings, tuples, dicts, tensors with their dtype,
   shape, device and values; never pickle);
3. after the run, reads that output and compares it in its own process with the reference it
   computed: types, shapes, dtypes, devices and values are checked from the data.

A question keeps its points only if the notebook's tests passed *and* the grader's own comparison
agrees. Faking the printed data means computing the right answers, which is the exercise.
"""
from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import nbformat

#: Marks the grader's line in the probe cell's output; the cell's id marks the cell itself.
RESULT_MARKER = "COURSE-GRADER-RESULTS:"
PROBE_CELL_ID = "course-grader-probe"
ATOL, RTOL = 1e-5, 1e-4
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class Call:
    """One call of a student's function: ``name(*args)`` should give ``expected``."""

    question: str
    name: str
    args: tuple
    expected: object


def new_seed() -> int:
    return secrets.randbits(31)


# --- plain tagged data, the only thing that crosses from the kernel to the grader ------------------

def encode(value) -> dict:
    """A value as tagged JSON-able data (the kernel runs the same code, see `_KERNEL_CODE`)."""
    import torch

    kind = type(value)
    if kind is bool:
        return {"bool": value}
    if kind is int:
        return {"int": value}
    if kind is float:
        return {"float": repr(value)}
    if kind is str:
        return {"str": value}
    if kind in (tuple, list):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is torch.Tensor:
        return {"tensor": {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                           "device": value.device.type,
                           "values": value.detach().cpu().double().flatten().tolist()}}
    return {"other": kind.__name__}


_KERNEL_CODE = '''
def _course_grader_probe(calls_json):
    import json, torch
    calls = json.loads(calls_json)
    from course_lib import get_device
    device = get_device()
    def encode(value):
        kind = type(value)
        if kind is bool: return {"bool": value}
        if kind is int: return {"int": value}
        if kind is float: return {"float": repr(value)}
        if kind is str: return {"str": value}
        if kind in (tuple, list): return {kind.__name__: [encode(v) for v in value]}
        if kind is dict: return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
        if kind is torch.Tensor:
            return {"tensor": {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                               "device": value.device.type,
                               "values": value.detach().cpu().double().flatten().tolist()}}
        return {"other": kind.__name__}
    def decode(data):
        (kind, value), = data.items()
        if kind in ("bool", "int", "str"): return value
        if kind == "float": return float(value)
        if kind in ("tuple", "list"): return (tuple if kind == "tuple" else list)(decode(v) for v in value)
        if kind == "dict": return {decode(k): decode(v) for k, v in value}
        if kind == "tensor":
            dtype = getattr(torch, value["dtype"])
            return torch.tensor(value["values"], dtype=torch.float64).to(dtype).reshape(value["shape"]).to(device)
        raise ValueError(kind)
    results = []
    for name, args in calls:
        function = globals().get(name)
        if function is None:
            results.append({"error": "NameError: " + name + " is not defined"})
            continue
        try:
            results.append({"ok": encode(function(*[decode(a) for a in args]))})
        except Exception as error:  # an interrupt (time limit) must stop the cell, not be recorded
            results.append({"error": (type(error).__name__ + ": " + str(error))[:%d]})
    print("%s" + json.dumps({"device": device.type, "results": results}))
_course_grader_probe(%s)
del _course_grader_probe
''' % (MAX_ERROR_CHARS, RESULT_MARKER, "{calls}")


def probe_cell(calls: list[Call]) -> nbformat.NotebookNode:
    """A cell that runs ``calls`` (all of one question) in the kernel and prints their results."""
    payload = json.dumps([[call.name, [encode(a) for a in call.args]] for call in calls])
    source = ("# The grader's own check: your functions on new inputs (compared with the reference outside).\n"
              + _KERNEL_CODE.replace("{calls}", repr(payload)))
    cell = nbformat.v4.new_code_cell(source)
    cell.id = f"{PROBE_CELL_ID}-{calls[0].question}"[:64]
    return cell


def _by_question(calls: list[Call]) -> dict[str, list[Call]]:
    grouped: dict[str, list[Call]] = {}
    for call in calls:
        grouped.setdefault(call.question, []).append(call)
    return grouped


def insert_probe_cells(nb: nbformat.NotebookNode, calls: list[Call]) -> None:
    """Put each question's probe right after its test cell, before any later code of the student runs."""
    from .submission import grade_id

    for question, group in _by_question(calls).items():
        index = next((i for i in reversed(range(len(nb.cells))) if grade_id(nb.cells[i]) == question), None)
        nb.cells.insert(len(nb.cells) if index is None else index + 1, probe_cell(group))


def take_probe_outputs(nb: nbformat.NotebookNode) -> dict[str, dict | None]:
    """Remove the probe cells from the executed notebook; return what each printed, by question.

    A value is ``{"device": "cpu", "results": [...]}`` (the device the inputs were put on, one result
    per call), or None when the cell printed nothing readable (it did not run, or its output was forged).
    """
    outputs: dict[str, dict | None] = {}
    kept = []
    for cell in nb.cells:
        cell_id = str(cell.get("id", ""))
        if not cell_id.startswith(PROBE_CELL_ID + "-"):
            kept.append(cell)
            continue
        outputs[cell_id[len(PROBE_CELL_ID) + 1:]] = _read_results(cell)
    nb.cells = kept
    return outputs


def _read_results(cell) -> dict | None:
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith(RESULT_MARKER)), None)
    if line is None:
        return None
    try:
        results = json.loads(line[len(RESULT_MARKER):])
    except json.JSONDecodeError:
        return None
    if not isinstance(results, dict) or not isinstance(results.get("results"), list):
        return None
    return results


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


def difference(got, expected, input_device: str) -> str | None:
    """None when ``got`` (tagged data from the kernel) matches ``expected`` (a value), else why not."""
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
            problem = difference(g, w, input_device)
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
            problem = difference(got_items[tag], item, input_device)
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
        return None if math.isclose(number, float(want_value), rel_tol=RTOL, abs_tol=ATOL) else \
            f"got {number!r}, expected {float(want_value)!r}"
    if kind == "tensor":
        return _tensor_difference(value, want_value, input_device)
    if type(value) is not type(want_value) or value != want_value:
        return f"got {_describe(got)}, expected {_describe(want)}"
    return None


def _tensor_difference(got: dict, want: dict, input_device: str) -> str | None:
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
        values = torch.tensor(got["values"], dtype=torch.float64)
    except (TypeError, ValueError, KeyError):
        return "the tensor's values could not be read"
    expected = torch.tensor(want["values"], dtype=torch.float64)
    if values.shape != expected.shape or not torch.allclose(values, expected, atol=ATOL, rtol=RTOL):
        return "values differ from the reference"
    return None


def judge(calls: list[Call], outputs: dict[str, dict | None]) -> dict[str, str | None]:
    """Per question: None when every call matched the reference, else the first problem (one line)."""
    verdicts: dict[str, str | None] = {}
    for question, group in _by_question(calls).items():
        output = outputs.get(question)
        results = output.get("results") if output else None
        if results is None or len(results) != len(group):
            verdicts[question] = "the grader's check printed no readable results"
            continue
        verdicts[question] = _first_problem(group, results, str(output.get("device", "cpu")))
    return verdicts


def _first_problem(calls: list[Call], results: list, input_device: str) -> str | None:
    for call, result in zip(calls, results):
        shown = ", ".join(_short(a) for a in call.args)
        if not isinstance(result, dict) or not ({"ok", "error"} & set(result)):
            return f"{call.name}({shown}): the result could not be read"
        if "error" in result:
            return f"{call.name}({shown}) raised {str(result['error'])[:MAX_ERROR_CHARS]}"
        problem = difference(result["ok"], call.expected, input_device)
        if problem:
            return f"{call.name}({shown}): {problem}"
    return None


def _short(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>"
    return repr(value)


# --- the questions checked this way, per assignment --------------------------------------------------

def _conv_params_calls(question: str, generator) -> list[Call]:
    import torch

    from ..models import conv_params

    calls = []
    for _ in range(6):
        kernel_size = int(torch.randint(1, 8, (1,), generator=generator))
        in_channels, out_channels = (int(c) for c in torch.randint(1, 2049, (2,), generator=generator))
        bias = bool(torch.randint(0, 2, (1,), generator=generator))
        args = (kernel_size, in_channels, out_channels, bias)
        calls.append(Call(question, "conv_params", args, conv_params(*args)))
    return calls


def _conv_output_size_calls(question: str, generator) -> list[Call]:
    import torch

    calls = []
    while len(calls) < 6:
        size = int(torch.randint(1, 400, (1,), generator=generator))
        kernel_size = int(torch.randint(1, 8, (1,), generator=generator))
        stride = int(torch.randint(1, 4, (1,), generator=generator))
        padding = int(torch.randint(0, kernel_size // 2 + 1, (1,), generator=generator))
        if size + 2 * padding < kernel_size:
            continue
        # torch's own convolution says how long its output is (on the meta device: no computation).
        out = torch.nn.functional.conv1d(torch.empty(1, 1, size, device="meta"),
                                         torch.empty(1, 1, kernel_size, device="meta"), stride=stride, padding=padding)
        calls.append(Call(question, "conv_output_size", (size, kernel_size, stride, padding), int(out.shape[-1])))
    return calls


def _box_area_calls(question: str, generator) -> list[Call]:
    import torch
    from torchvision.ops import box_area

    calls = []
    for count in (1, 5, 9):
        corners = torch.rand(count, 2, 2, generator=generator).sort(dim=1).values * 100
        boxes = corners.transpose(1, 2).reshape(count, 4)[:, [0, 2, 1, 3]].contiguous()
        calls.append(Call(question, "box_area", (boxes,), box_area(boxes)))
    return calls


#: Assignment -> function giving its calls from a torch.Generator.
PROBES: dict[str, Callable] = {
    "01_blocks_and_resnets": lambda g: [*_conv_params_calls("q1_tests", g), *_conv_output_size_calls("q4_tests", g)],
    "redteam": lambda g: [*_box_area_calls("q1_tests", g), *_conv_params_calls("q2_tests", g)],
}


def calls_for(assignment: str, seed: int) -> list[Call]:
    """The grader's calls for ``assignment`` (none for assignments without probes)."""
    import torch

    make = PROBES.get(assignment)
    if make is None:
        return []
    return make(torch.Generator().manual_seed(seed))
