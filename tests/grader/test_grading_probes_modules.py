"""The grader's own checks for exercises 1 and 2: module questions, random answers, expected errors.

The probe cells run here in this process on the solution notebook's answers (as the kernel would),
for many seeds: right answers always pass, typical mistakes fail with a readable one-line problem.
One end-to-end test grades exercise 2 with the real `grade_submission` in the sandbox.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch

from course_grader.submission import grade_id
from course_grader.probes import calls_for
from course_grader.probe_types import ModuleCall
from course_grader.verdicts import by_question, encode, judge, payload, results_in_process

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[2]
EX1, EX2 = "01_blocks_and_resnets", "02_convnext"
#: The grader's check must print well under what it keeps of a cell's output (1 MiB).
MAX_PROBE_BYTES = 200_000


def _cells(assignment: str) -> dict[str, str]:
    nb = nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)
    return {grade_id(c): c.source for c in nb.cells if c.cell_type == "code" and grade_id(c)}


CELLS = {EX1: _cells(EX1), EX2: _cells(EX2)}


def answers(assignment: str, **changes: tuple[str, str] | str) -> dict:
    """The namespace of the set-up cell and every answer; ``q2_answer=(old, new)`` edits one answer,
    ``q2_answer="..."`` replaces it."""
    namespace: dict = {}
    exec(CELLS[assignment]["setup"], namespace)  # noqa: S102 - the test plays the student's kernel
    for gid, source in CELLS[assignment].items():
        if not gid.endswith("_answer"):
            continue
        change = changes.get(gid)
        if isinstance(change, tuple):
            old, new = change
            assert old in source, old
            source = source.replace(old, new)
        elif isinstance(change, str):
            source = change
        exec(source, namespace)  # noqa: S102
    return namespace


def probe_output(calls, namespace: dict) -> dict:
    """What the verdict process would report for ``namespace``'s answers (computed here, in-process)."""
    return results_in_process(calls, dict(namespace))


def verdicts(assignment: str, namespace: dict, seed: int) -> dict[str, str | None]:
    calls = calls_for(assignment, seed)
    return judge(calls, probe_output(calls, namespace))


# --- right answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment, questions", [(EX1, 4), (EX2, 5)])
def test_every_question_is_probed_and_the_solution_passes_for_any_seed(assignment, questions):
    namespace = answers(assignment)
    for seed in range(1, 16):
        assert verdicts(assignment, namespace, seed) == {f"q{i}_tests": None for i in range(1, questions + 1)}, seed


def answer_source(assignment: str, gid: str, change: tuple[str, str] | list[tuple[str, str]] | str) -> str:
    """The solution's answer cell with ``(old, new)`` edits, or with ``change`` as the body of its solution."""
    source = CELLS[assignment][gid]
    if isinstance(change, str):
        return re.sub(r"### BEGIN SOLUTION\n.*### END SOLUTION", lambda _: "### BEGIN SOLUTION\n" + change +
                      "    ### END SOLUTION", source, flags=re.S)
    for old, new in change if isinstance(change, list) else [change]:
        assert old in source, old
        source = source.replace(old, new)
    return source


RIGHT_VARIANTS = {
    # other right answers, written as students do: the grader's check must not fail them
    "ReLU modules, in place": (EX1, "q2_answer", [
        ("        self.bn2 = nn.BatchNorm2d(out_channels)\n",
         "        self.bn2 = nn.BatchNorm2d(out_channels)\n        self.relu = nn.ReLU(inplace=True)\n"),
        ("torch.relu(out + self.shortcut(x))", "self.relu(out + self.shortcut(x))")]),
    "ceil division for the stride-2 stages": (
        EX1, "q4_answer", ("h = conv_output_size(h, 3, stride=2, padding=1)", "h = -(-h // 2)")),
    "var_mean and rsqrt": (EX2, "q2_answer", [
        ("variance = x.var(dim=1, keepdim=True, unbiased=False)",
         "variance, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)"),
        ("/ torch.sqrt(variance + self.eps)", "* torch.rsqrt(variance + self.eps)")]),
    "keep when u >= p": (EX2, "q3_answer", ("device=x.device) < keep_prob)", "device=x.device) >= p)")),
    "a Bernoulli draw": (EX2, "q3_answer", (
        "keep = (torch.rand(mask_shape, generator=generator, device=x.device) < keep_prob).to(x.dtype)",
        "keep = torch.bernoulli(torch.full(mask_shape, keep_prob, device=x.device, dtype=x.dtype), "
        "generator=generator)")),
    "LayerNorm2d on the channels-first tensor": (EX2, "q4_answer", [
        ("self.norm = nn.LayerNorm(channels, eps=1e-6)", "self.norm = LayerNorm2d(channels)"),
        ("branch = self.dwconv(x).permute(0, 2, 3, 1)", "branch = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)"),
        ("self.pwconv1(self.norm(branch))", "self.pwconv1(branch)")]),
    "a list of numpy floats": (
        EX2, "q5_answer", "    import numpy as np\n    return list(np.linspace(0.0, max_rate, sum(depths)))\n"),
    "torch.linspace": (EX2, "q5_answer", "    return torch.linspace(0.0, max_rate, sum(depths)).tolist()\n"),
}


@pytest.mark.parametrize("name", list(RIGHT_VARIANTS))
def test_other_right_answers_pass_too(name):
    assignment, gid, change = RIGHT_VARIANTS[name]
    namespace = answers(assignment, **{gid: answer_source(assignment, gid, change)})
    for seed in (3, 4, 5):
        assert verdicts(assignment, namespace, seed)[gid.replace("_answer", "_tests")] is None, seed


# --- typical mistakes -------------------------------------------------------------------------------

MISTAKES = {
    # name: (assignment, answer cell, (old, new) edits or a new body, words of the one-line problem)
    "residual block without its second BatchNorm": (
        EX1, "q2_answer", ("out = self.bn2(self.conv2(out))", "out = self.conv2(out)"),
        "values differ from the reference"),
    "ReLU on the shortcut (passes the visible checks)": (
        EX1, "q2_answer", ("torch.relu(out + self.shortcut(x))", "torch.relu(out + torch.relu(self.shortcut(x)))"),
        "values differ from the reference"),
    "BatchNorms swapped": (
        EX1, "q2_answer", ("out = torch.relu(self.bn1(self.conv1(x)))\n        out = self.bn2(self.conv2(out))",
                           "out = torch.relu(self.bn2(self.conv1(x)))\n        out = self.bn1(self.conv2(out))"),
        "values differ from the reference"),
    "running statistics used in training too": (
        EX1, "q2_answer", ("out = torch.relu(self.bn1(self.conv1(x)))",
                           "out = torch.relu(torch.nn.functional.batch_norm(self.conv1(x), self.bn1.running_mean, "
                           "self.bn1.running_var, self.bn1.weight, self.bn1.bias))"),
        "in train mode, values differ"),
    "projection only when downsampling": (
        EX1, "q2_answer", ("if downsample or in_channels != out_channels:", "if downsample:"),
        "the parameter names differ from the docstring's: missing shortcut.0.weight"),
    "convolutions with a bias": (
        EX1, "q2_answer", ("stride=stride, padding=1, bias=False", "stride=stride, padding=1"), "unexpected conv1.bias"),
    "other layer names": (
        EX1, "q2_answer", ("self.bn1 = nn.BatchNorm2d", "self.norm1 = self.bn1 = nn.BatchNorm2d"), "unexpected norm1.bias"),
    "float64 output": (
        EX1, "q2_answer", ("torch.relu(out + self.shortcut(x))", "torch.relu(out + self.shortcut(x)).double()"),
        "dtype float64 expected float32"),
    "a tuple instead of a tensor": (
        EX1, "q2_answer", ("return torch.relu(out + self.shortcut(x))", "return torch.relu(out + self.shortcut(x)), x"),
        "got a tuple, expected a float32 tensor"),
    "bottleneck stride on the first 1x1 conv, not the 3x3": (
        EX1, "q3_answer", [("self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)\n",
                            "self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, stride=stride, bias=False)\n"),
                           ("kernel_size=3, stride=stride, padding=1", "kernel_size=3, stride=1, padding=1")],
        "values differ from the reference"),
    "bottleneck without ReLU after the 3x3 conv": (
        EX1, "q3_answer", ("out = torch.relu(self.bn2(self.conv2(out)))", "out = self.bn2(self.conv2(out))"),
        "values differ from the reference"),
    "bottleneck width out_channels // 2": (
        EX1, "q3_answer", ("width = out_channels // 4", "width = out_channels // 2"), "conv1.weight has shape ("),
    "stage sides halved with floor": (
        EX1, "q4_answer", ("h = conv_output_size(h, 3, stride=2, padding=1)", "h = h // 2"), "stage_output_shapes("),
    "stage shapes as lists": (
        EX1, "q4_answer", ("shapes[name] = (channels, h, w)", "shapes[name] = [channels, h, w]"),
        "got a list, expected a tuple"),
    "stem channels from the first stage": (
        EX1, "q4_answer", ('shapes = {"stem": (64, h, w)}', 'shapes = {"stem": (stage_channels[0], h, w)}'),
        "key 'stem'"),
    "groups ignored": (
        EX2, "q1_answer", ("(in_channels // groups)", "in_channels"), "grouped_conv_params("),
    "true division by groups": (
        EX2, "q1_answer", ("(in_channels // groups)", "(in_channels / groups)"), "got a float, expected"),
    "unbiased variance": (
        EX2, "q2_answer", ("unbiased=False", "unbiased=True"), "values differ from the reference"),
    "eps outside the square root": (
        EX2, "q2_answer", ("torch.sqrt(variance + self.eps)", "(torch.sqrt(variance) + self.eps)"),
        "values differ from the reference"),
    "eps written in, not the argument": (
        EX2, "q2_answer", ("torch.sqrt(variance + self.eps)", "torch.sqrt(variance + 1e-6)"), "LayerNorm2d("),
    "normalised over channels, height and width": (
        EX2, "q2_answer", ("x.mean(dim=1, keepdim=True)", "x.mean(dim=(1, 2, 3), keepdim=True)"),
        "values differ from the reference"),
    "gamma and beta for weight and bias": (
        EX2, "q2_answer", [("self.weight = nn.Parameter", "self.gamma = nn.Parameter"),
                           ("self.bias = nn.Parameter", "self.beta = nn.Parameter")],
        "the parameter names differ from the docstring's: missing bias, weight; unexpected beta, gamma"),
    "one draw per value, not per sample": (
        EX2, "q3_answer", ("mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)", "mask_shape = x.shape"),
        "each sample should be dropped whole"),
    "kept samples not rescaled": (
        EX2, "q3_answer", ("keep = keep / keep_prob", "keep = keep"), "each sample should be dropped whole"),
    "keeping with probability p (right for p = 0 and 1)": (
        EX2, "q3_answer", ("device=x.device) < keep_prob)", "device=x.device) < (p if p < 1 else keep_prob))"),
        "of the samples were dropped"),
    "generator ignored": (
        EX2, "q3_answer", ("generator=generator, device=x.device", "device=x.device"), "the same seed gave another draw"),
    "a fixed seed of its own": (
        EX2, "q3_answer", ("generator=generator, device=x.device",
                           "generator=torch.Generator(device=x.device).manual_seed(0), device=x.device"),
        "another seed gave the same draw"),
    "drops in evaluation too": (
        EX2, "q3_answer", ("if not training or p == 0.0:", "if p == 0.0:"), "values differ from the reference"),
    "no ValueError for p outside [0, 1]": (
        EX2, "q3_answer", ("raise ValueError(f\"p must be in [0, 1], got {p}\")", "pass"), "expected a ValueError"),
    "a list instead of a tensor": (
        EX2, "q3_answer", ("    return x * keep\n", "    return (x * keep).tolist()\n"),
        "got a list, expected a float32 tensor"),
    "division by zero when p = 1": (
        EX2, "q3_answer", ("    if keep_prob > 0.0:\n        keep = keep / keep_prob", "    keep = keep / keep_prob"),
        "values differ from the reference"),
    "tanh approximation of GELU (passes the visible checks)": (
        EX2, "q4_answer", ("self.act = nn.GELU()", "self.act = nn.GELU(approximate='tanh')"),
        "values differ from the reference"),
    "layer scale forgotten in forward": (
        EX2, "q4_answer", ("(branch * self.layer_scale).permute(0, 3, 1, 2)", "branch.permute(0, 3, 1, 2)"),
        "values differ from the reference"),
    "nn.LayerNorm's default eps": (
        EX2, "q4_answer", ("self.norm = nn.LayerNorm(channels, eps=1e-6)", "self.norm = nn.LayerNorm(channels)"),
        "values differ from the reference"),
    "stochastic depth forgotten": (
        EX2, "q4_answer", ("return x + drop_path(branch, self.drop_prob, self.training)", "return x + branch"),
        "in train mode, values differ"),
    "stochastic depth in evaluation too": (
        EX2, "q4_answer", ("drop_path(branch, self.drop_prob, self.training)", "drop_path(branch, self.drop_prob)"),
        "in eval mode, values differ"),
    "depthwise conv without groups": (
        EX2, "q4_answer", ("kernel_size=7, padding=3, groups=channels)", "kernel_size=7, padding=3)"),
        "dwconv.weight has shape"),
    "layer scale initialised to 1e-6 whatever the argument": (
        EX2, "q4_answer", ("torch.full((channels,), float(layer_scale))", "torch.full((channels,), 1e-6)"),
        ".layer_scale: values differ from the reference"),
    "rates as a tuple": (
        EX2, "q5_answer", "    return tuple(max_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths)))\n",
        "got a tuple, expected a list"),
    "rates divided by the number of blocks": (
        EX2, "q5_answer", "    return [max_rate * i / sum(depths) for i in range(sum(depths))]\n", "drop_path_rates("),
    "a single block divides by zero": (
        EX2, "q5_answer", "    return [max_rate * i / (sum(depths) - 1) for i in range(sum(depths))]\n",
        "raised ZeroDivisionError"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
@pytest.mark.filterwarnings("ignore:var\\(\\)")  # the unbiased variance of one channel
def test_typical_mistakes_fail_with_a_one_line_reason(name):
    assignment, gid, change, words = MISTAKES[name]
    namespace = answers(assignment, **{gid: answer_source(assignment, gid, change)})
    for seed in (1, 2):
        problem = verdicts(assignment, namespace, seed)[gid.replace("_answer", "_tests")]
        assert problem is not None and words in problem and "\n" not in problem, (seed, problem)


def test_a_module_whose_weights_do_not_load_is_named_with_its_arguments():
    renamed = answer_source(EX1, "q2_answer", [("self.bn2 = nn.BatchNorm2d", "self.bn_2 = nn.BatchNorm2d"),
                                               ("self.bn2(", "self.bn_2(")])
    namespace = answers(EX1, q2_answer=renamed)
    problem = verdicts(EX1, namespace, 9)["q2_tests"]
    assert re.fullmatch(r"ResidualBlock\(\d+, \d+, (True|False)\): the parameter names differ from the docstring's: "
                        r"missing bn2\.bias, bn2\.num_batches_tracked, bn2\.running_mean, bn2\.running_var \.\.\.; "
                        r"unexpected bn_2\.bias, .*", problem), problem


def test_what_a_module_prints_stays_out_of_the_results():
    printing = answer_source(EX1, "q2_answer", ("out = torch.relu(self.bn1(", "print(x.shape); out = torch.relu(self.bn1("))
    calls = [c for c in calls_for(EX1, 4) if c.question == "q2_tests"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        outputs = results_in_process(calls, answers(EX1, q2_answer=printing))
    assert printed.getvalue() == ""
    assert judge(calls, outputs) == {"q2_tests": None}


def test_outputs_of_modules_must_stay_on_the_input_device():
    calls = [c for c in calls_for(EX2, 5) if c.question == "q4_tests"]
    results = [{"ok": encode(c.expected)} for c in calls]
    assert judge(calls, {"q4_tests": {"device": "cpu", "results": results}}) == {"q4_tests": None}
    problem = judge(calls, {"q4_tests": {"device": "cuda", "results": results}})["q4_tests"]
    assert "the output is on cpu, the input was on cuda" in problem


def test_forged_or_missing_module_results_fail():
    calls = [c for c in calls_for(EX1, 5) if c.question == "q2_tests"]
    assert judge(calls, {})["q2_tests"] == "the verdict process gave no results for this answer"
    for forged in ({"ok": {"int": 0}}, {"layout": "everything"}, {"ok": {"list": []}}, {"nothing": 1}):
        assert judge(calls, {"q2_tests": {"device": "cpu", "results": [forged] * len(calls)}})["q2_tests"], forged


# --- the grader's side: references, sizes, no side effects ------------------------------------------

def test_the_references_use_the_docstrings_names_and_shapes():
    """The grader's weights come from the reference modules: their state dicts must be the docstrings'."""
    ex1, ex2 = answers(EX1), answers(EX2)
    from course_lib.models import BottleneckBlock, ConvNeXtBlock, LayerNorm2d, ResidualBlock

    pairs = [(ex1["ResidualBlock"], ResidualBlock, args) for args in [(4, 4, False), (4, 8, True), (4, 8, False)]]
    pairs += [(ex1["BottleneckBlock"], BottleneckBlock, args) for args in [(8, 8, False), (4, 8, False), (8, 16, True)]]
    pairs += [(ex2["LayerNorm2d"], LayerNorm2d, (5,)), (ex2["ConvNeXtBlock"], ConvNeXtBlock, (6,))]
    for solution, reference, args in pairs:
        layout = {k: tuple(v.shape) for k, v in solution(*args).state_dict().items()}
        assert layout == {k: tuple(v.shape) for k, v in reference(*args).state_dict().items()}, (reference, args)


def test_module_calls_send_random_batchnorm_statistics_and_both_modes():
    calls = [c for c in calls_for(EX1, 3) if isinstance(c, ModuleCall)]
    assert {c.question for c in calls} == {"q2_tests", "q3_tests"}
    assert any(c.modes == ("eval", "train") for c in calls) and all("eval" in c.modes for c in calls)
    for call in calls:
        variances = [v for k, v in call.state.items() if k.endswith("running_var")]
        assert variances and all(not torch.allclose(v, torch.ones_like(v)) for v in variances)
        assert all(not torch.allclose(call.state[k], torch.ones_like(call.state[k]))
                   for k in call.state if k.endswith("bn1.weight"))


@pytest.mark.parametrize("assignment", [EX1, EX2])
def test_probes_stay_small_and_leave_no_global_state_behind(assignment):
    """Drawing the calls keeps the grader's random state and threads; what crosses to and from the
    verdict process stays small."""
    namespace = answers(assignment)
    torch.set_num_threads(2)
    for seed in (21, 22, 23):
        rng, threads = torch.get_rng_state(), torch.get_num_threads()
        calls = calls_for(assignment, seed)
        assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
        outputs = results_in_process(calls, namespace)
        for question, group in by_question(calls).items():
            assert len(json.dumps([payload(c) for c in group])) < MAX_PROBE_BYTES
            assert len(json.dumps(outputs[question])) < MAX_PROBE_BYTES
    assert torch.get_num_threads() == 2


def test_the_same_seed_gives_the_same_calls():
    first, second = calls_for(EX2, 77), calls_for(EX2, 77)
    assert [encode(c.args) for c in first] == [encode(c.args) for c in second]
    assert [c.args for c in calls_for(EX2, 78)] != [c.args for c in first]


# --- end to end -------------------------------------------------------------------------------------

def _without_hidden_tests(nb: nbformat.NotebookNode, gid: str) -> None:
    cell = next(c for c in nb.cells if grade_id(c) == gid)
    cell.source = cell.source.split("### BEGIN HIDDEN TESTS")[0].rstrip() + "\n"


@pytest.mark.notebook
def test_grading_exercise_2_keeps_full_marks_and_the_probe_alone_zeroes_a_subtle_mistake(tmp_path):
    """The solution keeps every point; a block with the tanh GELU passes the visible checks (and no hidden
    tests, removed from this copy of the source) but not the grader's own check."""
    from course_grader.autograde import GradingOptions, grade_submission
    from course_grader.environment import isolated_environment

    options = GradingOptions(timeout=120, setup_timeout=180, probe_seed=12345)
    source = (ROOT / "solutions" / f"{EX2}.ipynb").read_bytes()
    visible_only = nbformat.reads(source.decode(), as_version=4)
    _without_hidden_tests(visible_only, "q4_tests")
    wrong = copy.deepcopy(visible_only)
    answer = next(c for c in wrong.cells if grade_id(c) == "q4_answer")
    answer.source = answer.source.replace("nn.GELU()", "nn.GELU(approximate='tanh')")
    with isolated_environment(tmp_path / "home", ROOT):
        solution = grade_submission(EX2, source, source, student="solution", options=options)
        subtle = grade_submission(EX2, nbformat.writes(visible_only).encode(), nbformat.writes(wrong).encode(),
                                  student="tanh", options=options)

    assert (solution.status, solution.message) == ("graded", ""), solution.message
    assert solution.scores == solution.max_scores
    assert subtle.scores == {**subtle.max_scores, "q4_tests": 0.0}, subtle.message
    assert subtle.message.startswith("q4_tests passed in the notebook but not the grader's own check (scores 0): "
                                     "ConvNeXtBlock("), subtle.message
    assert "values differ from the reference" in subtle.message
