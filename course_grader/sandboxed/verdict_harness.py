"""The verdict process: a student's answers called on the grader's inputs, where no reference exists.

Runs in its own sandbox (see `verdict_process`), whose view of ``course_lib`` and torchvision has
the exercises' reference implementations replaced by stubs that raise, and whose torchvision has no
compiled operators. There it:

1. opens the results file, before any student code runs;
2. runs the notebook's code cells except the tests (set-up, answers, the student's own cells),
   in order, each under a time limit; an error in a cell is noted and the next cell runs;
3. where a question's test cell stood, calls the student's function or builds their module with the
   grader's arguments, weights and inputs (`run_call`), and appends one line of plain tagged JSON
   to the results file: ``{"question": ID, "device": "cpu", "results": [...]}``; at the end
   ``{"done": true}``. As in the notebook, a question is checked with the code above its tests, and
   a later cell that ends the process cannot take an earlier question's result with it.

The grader compares the results with the references in its own process (`verdicts.judge`). Nothing
here can help a student: the answers that work are the ones that compute the right values.

    python -m course_grader.sandboxed.verdict_harness JOB_FILE RESULTS_FILE

Standard library and torch only (it runs in the sandbox, next to the student's code).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time

#: Characters of an error message kept in a result.
MAX_ERROR_CHARS = 200
#: What a cell may print to the process's output before the rest is dropped.
MAX_PRINTED_CHARS = 64 * 1024
#: Job keys: the steps in order (``{"cell": ID, "source": ...}`` or ``{"question": ID}``), per question
#: the calls (`verdicts.payload`), the time limits and torchvision's operator schemas.
STEPS, QUESTIONS, CELL_SECONDS, CALL_SECONDS, OP_SCHEMAS = "steps", "questions", "cell_seconds", "call_seconds", \
    "op_schemas"


class TimeLimit(BaseException):
    """A cell or a question ran past its time (a BaseException: ``except Exception`` does not stop it)."""


def short_error(error: BaseException) -> str:
    return (type(error).__name__ + ": " + str(error))[:MAX_ERROR_CHARS]


def define_torchvision_ops(schemas) -> None:
    """Declare torchvision's operators without their compiled kernels (hidden here), so that
    ``import torchvision`` works and every compiled operator raises when called."""
    import torch

    if not schemas or hasattr(torch.ops, "torchvision") and _has_torchvision_op(torch, schemas[0]):
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in schemas:
        library.define(schema.split("::", 1)[1])
    _KEEP.append(library)  # a Library undefines its operators when it is garbage-collected


_KEEP: list = []


def _has_torchvision_op(torch, schema: str) -> bool:
    name = schema.split("::", 1)[1].split("(", 1)[0].split(".", 1)[0]
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


# --- plain tagged data (the grader's `verdicts.encode` and `verdicts.decode` are the other side) ----

def encode(value) -> dict:
    """A value as tagged JSON-able data: numbers, strings, tuples, lists, dicts, tensors."""
    import torch

    kind = type(value)
    if kind is bool:
        return {"bool": value}
    if kind is int:
        return {"int": value}
    if isinstance(value, float):  # numpy's float64 is a float too
        return {"float": repr(float(value))}
    if kind is str:
        return {"str": value}
    if kind in (tuple, list):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind in (torch.Tensor, torch.nn.Parameter):
        return {"tensor": {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                           "device": value.device.type,
                           "values": value.detach().cpu().double().flatten().tolist()}}
    if kind is torch.Generator:
        return {"generator": value.initial_seed()}
    return {"other": kind.__name__}


def decode_input(data, device):
    """The grader's tagged inputs as values on ``device`` (a generator: a new one, seeded the same)."""
    import torch

    (kind, value), = data.items()
    if kind in ("bool", "int", "str"):
        return value
    if kind == "float":
        return float(value)
    if kind in ("tuple", "list"):
        return (tuple if kind == "tuple" else list)(decode_input(v, device) for v in value)
    if kind == "dict":
        return {decode_input(k, device): decode_input(v, device) for k, v in value}
    if kind == "generator":
        return torch.Generator(device=device).manual_seed(value)
    if kind == "tensor":
        values = torch.tensor(value["values"], dtype=torch.float64)
        return values.to(getattr(torch, value["dtype"])).reshape(value["shape"]).to(device)
    raise ValueError(f"unknown kind {kind!r}")


def run_call(call: dict, namespace: dict, device) -> dict:
    """One call of the student's code: ``{"ok": data}``, ``{"error": text}`` or, when a module does
    not accept the grader's weights, ``{"layout": [[name, shape], ...]}`` (the grader names the difference)."""
    import torch

    target = namespace.get(call["name"])
    if target is None:
        return {"error": f"NameError: {call['name']} is not defined"}
    args = [decode_input(a, device) for a in call["args"]]
    if "modes" not in call:  # a function
        return {"ok": encode(target(*args))}
    module = target(*args)  # a module: the student's class with the grader's weights
    if call["state"] is not None:
        try:
            module.load_state_dict(decode_input(call["state"], "cpu"))
        except Exception:
            return {"layout": [[name, list(v.shape)] for name, v in module.state_dict().items()]}
    module.to(device)
    if call["read"] is not None:
        return {"ok": encode(module.state_dict()[call["read"]])}
    inputs = [decode_input(x, device) for x in call["inputs"]]
    outputs = []
    for mode in call["modes"]:
        module.train(mode == "train")
        with torch.no_grad():
            outputs.append(module(*inputs))
    return {"ok": encode(outputs)}


# --- the process ------------------------------------------------------------------------------------

class _CappedText(io.TextIOBase):
    """A text stream that passes on the first `MAX_PRINTED_CHARS` characters and drops the rest."""

    def __init__(self, target) -> None:
        self.target, self.left = target, MAX_PRINTED_CHARS

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.left > 0:
            kept = text[:self.left]
            self.left -= len(kept)
            with contextlib.suppress(Exception):
                self.target.write(kept)
                self.target.flush()
        return len(text)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `TimeLimit` in this (the main) thread after ``seconds``; the grader's own deadline is the
    backstop for code that blocks signals."""
    def expire(signum, frame):
        raise TimeLimit(f"ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file in the sandbox's home
    return InteractiveShell.instance(config=config)


def _full_precision(torch) -> None:
    """Float32 without TF32 on GPUs (as the grader's reference), one CPU thread (the inputs are tiny).
    The precision stays set: the grader's calls may come between a student's cells at any point."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv"):  # torch >= 2.9
        backends.cudnn.conv.fp32_precision = "ieee"
        backends.cuda.matmul.fp32_precision = "ieee"
    else:
        backends.cudnn.allow_tf32 = False
        backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(1)


def run_job(job: dict, channel: int) -> None:
    """Run the steps: cells, and each question's calls where its tests stood; one JSON line each."""
    def say(message: dict) -> None:
        os.write(channel, (json.dumps(message, separators=(",", ":")) + "\n").encode())

    define_torchvision_ops(job.get(OP_SCHEMAS) or [])
    import torch

    from course_lib import get_device

    shell, device = _shell(), get_device()
    for step in job[STEPS]:
        if "cell" in step:
            say(_run_cell(shell, step, job[CELL_SECONDS]))
        else:
            say(_check_question(shell.user_ns, step["question"], job[QUESTIONS][step["question"]], device, torch,
                                job[CALL_SECONDS]))
    say({"done": True})


def _run_cell(shell, step: dict, seconds: float) -> dict:
    started, error = time.monotonic(), None
    try:
        with time_limit(seconds):
            result = shell.run_cell(step["source"], store_history=False, silent=True)
        failure = result.error_before_exec or result.error_in_exec
        error = short_error(failure) if failure is not None else None
    except TimeLimit as stop:
        error = short_error(stop)
    return {"cell": step["cell"], "error": error, "seconds": round(time.monotonic() - started, 3)}


def _check_question(namespace: dict, question: str, calls: list[dict], device, torch, seconds: float) -> dict:
    threads = torch.get_num_threads()
    _full_precision(torch)
    results = []
    try:
        with time_limit(seconds):
            for call in calls:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # what the answer prints is not kept
                        results.append(run_call(call, namespace, device))
                except Exception as error:
                    results.append({"error": short_error(error)})
    except TimeLimit as stop:
        return {"question": question, "device": device.type, "timeout": short_error(stop)}
    finally:
        torch.set_num_threads(threads)  # the student's cells after this one run as they would have
    return {"question": question, "device": device.type, "results": results}


def main(argv: list[str]) -> None:
    job_path, results_path = argv
    channel = os.open(results_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # before any student code
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    os.unlink(job_path)
    sys.stdout, sys.stderr = _CappedText(sys.stdout), _CappedText(sys.stderr)
    os.environ.setdefault("MPLBACKEND", "Agg")
    run_job(job, channel)


if __name__ == "__main__":
    main(sys.argv[1:])
