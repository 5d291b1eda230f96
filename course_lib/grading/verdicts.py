"""Verdicts the student's code cannot fake: the grader compares outputs with the reference itself.

A student can change anything inside their own kernel (``torch.allclose``, the course's checkers,
the traceback display) and can call the reference there, so a test that passes in the notebook
proves little. For every graded question (`PROBES`), the grader also:

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

import copy
import json
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .verdict_harness import MAX_ERROR_CHARS, encode  # the verdict process encodes its results the same way

ATOL, RTOL = 1e-5, 1e-4
#: A module's float32 forward against the reference's float64 one (the hidden tests' tolerances).
MODULE_ATOL, MODULE_RTOL = 1e-4, 1e-4
#: Random weights and inputs are multiples of these steps: exact in float32, and short in JSON.
WEIGHT_STEP, INPUT_STEP = 1 / 256, 1 / 64
#: Names listed in a one-line message about missing or unexpected parameters.
MAX_NAMES_SHOWN = 4
MODES = ("eval", "train")


@dataclass(frozen=True)
class Raises:
    """The expected outcome of a call that must fail: it raises ``error`` (a class name, e.g. ``"ValueError"``)."""

    error: str


@dataclass(frozen=True)
class Satisfies:
    """The expected outcome of a random answer: the structure of ``like``, and a property.

    The result must have ``like``'s type, dtype, shape (and the input's device); then
    ``check(result, earlier)`` gives None or a one-line problem. ``result`` is the decoded value
    (tensors on the CPU), ``earlier`` the decoded results of the same question's earlier calls (None
    where a call raised), e.g. to ask that the same seed gives the same draw.
    """

    like: object
    check: Callable


@dataclass(frozen=True)
class Call:
    """One call of a student's function: ``name(*args)`` should give ``expected``.

    ``expected`` is a value, `Raises` or `Satisfies`. An argument that is a ``torch.Generator``
    reaches the kernel as a new generator on the grading device, seeded with its ``initial_seed()``.
    """

    question: str
    name: str
    args: tuple
    expected: object


@dataclass(frozen=True)
class ModuleCall:
    """One use of a student's ``nn.Module`` class with the grader's weights.

    In the kernel: ``module = name(*args)``; ``module.load_state_dict(state)`` (strict: exactly the
    docstring's names and shapes; if it fails the grader names the difference); the module moves
    to the grading device; then for each of ``modes`` in order (``"eval"``, ``"train"``):
    ``module.train(mode == "train")`` and ``module(*inputs)`` under ``torch.no_grad()``. ``expected``
    is the list of outputs, one per mode (see `module_call`).

    With ``read`` set, the kernel returns ``module.state_dict()[read]`` instead of running the
    module (what the constructor built, e.g. an initial value); ``state`` may then be None.
    """

    question: str
    name: str
    args: tuple
    state: dict | None
    expected: object
    inputs: tuple = ()
    modes: tuple[str, ...] = ("eval",)
    read: str | None = None
    atol: float = MODULE_ATOL
    rtol: float = MODULE_RTOL

    def built(self) -> str:
        """How the module was built, e.g. ``ResidualBlock(4, 8, True)``."""
        return f"{self.name}({', '.join(_short(a) for a in self.args)})"

    def describe(self) -> str:
        if self.read is not None:
            return f"{self.built()}.{self.read}"
        return f"{self.built()} on {', '.join(_short(x) for x in self.inputs)}"


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

    from .verdict_harness import run_call, short_error

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


def _short(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>" if value.dtype == torch.float32 else \
            f"<{str(value.dtype).replace('torch.', '')} tensor {tuple(value.shape)}>"
    if isinstance(value, torch.Generator):
        return "<generator>"
    return repr(value)


# --- building module calls: random weights, and the reference's outputs on them ----------------------

def on_grid(values, step: float):
    """``values`` rounded to multiples of ``step`` (a power of two: exact in float32, short in JSON)."""
    import torch

    return torch.round(values / step) * step


def random_int(low: int, high: int, generator) -> int:
    """A random int in [low, high], both included."""
    import torch

    return int(torch.randint(low, high + 1, (1,), generator=generator))


def random_input(shape: Sequence[int], generator, scale: float = 1.0):
    """A float32 input of ``shape``: standard normal times ``scale``, on the `INPUT_STEP` grid."""
    import torch

    return on_grid(torch.randn(tuple(shape), generator=generator), INPUT_STEP) * scale


def random_state(module, generator) -> dict:
    """``module``'s state dict with every entry redrawn from ``generator``, far from any initialisation.

    Weights of convolutions and Linear layers: uniform with unit output variance (bound
    sqrt(3 / fan_in)); 1-d scales (norm weights, layer scales): uniform in [0.5, 1.5]; biases and
    BatchNorm means: [-0.5, 0.5]; BatchNorm variances: [0.5, 2]; batch counters: 1..1000. A missing
    BatchNorm, a swapped layer or a forgotten scale changes the outputs by far more than a tolerance.
    """
    import torch

    state = {}
    for name, tensor in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.randint(1, 1001, tensor.shape, generator=generator, dtype=tensor.dtype)
            continue
        if name.endswith("running_var"):
            low, high = 0.5, 2.0
        elif name.endswith(("running_mean", "bias")):
            low, high = -0.5, 0.5
        elif tensor.dim() >= 2:
            bound = math.sqrt(3 / max(tensor[0].numel(), 1))  # fan_in: the weights of one output
            low, high = -bound, bound
        else:
            low, high = 0.5, 1.5
        values = low + (high - low) * torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
        state[name] = on_grid(values, WEIGHT_STEP).to(tensor.dtype)
    return state


def module_call(question: str, name: str, args: tuple, reference, inputs: Sequence, generator=None,
                modes: Sequence[str] = ("eval",), state: dict | None = None) -> ModuleCall:
    """A `ModuleCall` of the student's class ``name(*args)``, expecting what ``reference`` computes.

    ``reference``: the course's module built with the same arguments, whose state-dict names are the
    question's docstring's (the probes' tests check this; a reference named otherwise would need its
    keys mapped here, in the grader, never in the kernel). ``state``: the weights to send (default:
    `random_state(reference, generator)`). The reference loads them and runs in float64 on the CPU;
    its outputs are cast to the inputs' dtype. The global random state is left untouched (a module
    that draws random numbers in train mode can only be probed where its output is deterministic).
    """
    import torch

    if not set(modes) <= set(MODES):
        raise ValueError(f"modes must be taken from {MODES}, got {tuple(modes)}")
    if state is None:
        state = random_state(reference, generator)
    exact = copy.deepcopy(reference).to(torch.float64)
    exact.load_state_dict(state)
    outputs = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for mode in modes:
            exact.train(mode == "train")
            output = exact(*[x.to(torch.float64) for x in inputs])
            outputs.append(output.to(inputs[0].dtype))
    return ModuleCall(question, name, tuple(args), state, outputs, inputs=tuple(inputs), modes=tuple(modes))


# --- the questions checked this way ---------------------------------------------------------------

def calls_for(assignment: str, seed: int) -> list[Call | ModuleCall]:
    """The grader's calls for ``assignment`` (none for assignments without probes)."""
    import torch

    from .probes import PROBES

    make = PROBES.get(assignment)
    if make is None:
        return []
    # The probes' tensors are tiny: one thread computes them fastest, most of all on busy cores.
    # Building reference modules draws initial weights: the global random state is put back after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return make(torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(threads)
