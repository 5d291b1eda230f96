"""The probes' vocabulary: what the grader asks of a student's answer, and the inputs it draws.

A probe (`course_grader.probes`) is a list of calls the verdict process makes on a student's
answers: `Call` for a function (expecting a value, `Raises` or `Satisfies`), `ModuleCall` for an
``nn.Module`` class run on the grader's weights. `module_call` builds one with the reference's
outputs; `random_input`, `random_state`, `random_int` and `on_grid` draw the inputs and weights.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: A module's float32 forward against the reference's float64 one (the hidden tests' tolerances).
MODULE_ATOL, MODULE_RTOL = 1e-4, 1e-4
#: Random weights and inputs are multiples of these steps: exact in float32, and short in JSON.
WEIGHT_STEP, INPUT_STEP = 1 / 256, 1 / 64
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
        return f"{self.name}({', '.join(short(a) for a in self.args)})"

    def describe(self) -> str:
        if self.read is not None:
            return f"{self.built()}.{self.read}"
        return f"{self.built()} on {', '.join(short(x) for x in self.inputs)}"


def short(value) -> str:
    """A value as a message shows it: tensors by shape and dtype, generators by name."""
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
