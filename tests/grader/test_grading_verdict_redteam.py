"""Red team of the verdict process: no cheat earns a point from it.

The verdict process (`verdict_process`, `verdict_harness`, `verdict_view`) decides the points: it runs
a notebook's code cells except the tests in a sandbox where the references do not exist, calls the
answers on the grader's inputs, and the grader compares the results with the references itself.
Here every class of attack is tried on it, for real (bubblewrap, a warm factory):

1. delegation by every dynamic route (course_lib's and torchvision's references, their files, their
   bytecode, torchvision's compiled operators, another Python, the hidden tests' names). Every cheat
   is first shown to *work* where the references exist (the harness run without the sandbox, on the
   real packages), so that catching it in the sandbox proves something;
2. forged results: lines written to the results file, the file truncated, its descriptor closed or
   replaced, the harness's own ``json.dumps``/``os.write`` patched, the process ended or interrupted;
3. answers that look for the expected values in the caller's frames or the heap: the job holds inputs only;
4. time and resources: cells and calls that spin, a call that blocks the alarm, a child that keeps
   writing after the harness ended, huge outputs, allocations past the memory limit, a SIGKILL;
5. isolation: what the sandbox sees of the repository, the grader and the hidden tests.

Honest answers (the solutions, and variations students write: helpers in cells of their own, IPython's
display, matplotlib settings, environment variables, tqdm, warnings) keep every point in the same runs.

A cheat the verdict process accepts is a hole: its case is marked ``xfail(strict=True)`` with the
reason, so that fixing it makes the suite say so. Cheats that are independent share one run per
assignment (each cheat answers a question of its own name: the grader's calls are renamed for it).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nbformat
import pytest
import torch

import course_lib
from course_grader import verdict_process, warm
from course_grader.sandbox import Limits, bwrap_problem
from course_grader.submission import grade_id
from course_grader.sandboxed.verdict_harness import CALL_SECONDS, CELL_SECONDS, OP_SCHEMAS, QUESTIONS, STEPS
from course_grader.verdict_process import (JOB_FILE, RESULTS_FILE, VERDICT_MODULE, read_results,
                                                run_verdict_process, write_job)
from course_grader.verdict_view import build_view
from course_grader.probes import calls_for
from course_grader.probe_types import Call
from course_grader.verdicts import by_question, decode, encode, judge, payload

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
COURSE = Path(course_lib.__file__).resolve().parent
EX1, EX4, EX5, EX6 = ("01_blocks_and_resnets", "04_ssd_matching_and_focal_loss", "05_faster_rcnn_step_by_step",
                      "06_pretrained_detectors_on_video")
SEED = 20_240_607  # the grader draws a fresh seed per grading; a fixed one keeps these runs reproducible
#: What the verdict process says when an answer calls a reference (the view's stubs, torchvision's operators).
STUB = r"is not available while your answer is graded"
#: What the cheats that once were holes meet now: a stub, or a compiled module that no longer loads.
FIXED_HOLE = STUB + r"|is not defined|ImportError|ModuleNotFoundError"
NO_KERNEL = r"Could not run 'torchvision::\w+'"
WRITTEN_TWICE = r"written to by the notebook's code"
ENDED = r"ended before it checked this answer"
NO_RESULTS = r"gave no results for this answer"
#: What forged results (well-formed, made-up values) are told.
GARBAGE = r"got 0 |could not be read"


@pytest.fixture(scope="module", autouse=True)
def sandbox_and_cleanup():
    problem = bwrap_problem()
    assert problem is None, f"these tests need bubblewrap: {problem}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    warm._destroy_all()  # this module's factories (one per assignment view) hold torch in memory


@lru_cache(maxsize=None)
def source(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)


@lru_cache(maxsize=None)
def grader_calls(assignment: str) -> tuple:
    return tuple(calls_for(assignment, SEED))


def calls_of(assignment: str, *questions: str) -> list:
    return [c for c in grader_calls(assignment) if not questions or c.question in questions]


def code(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


def edited(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


def notebook(assignment: str, *, edits: dict[str, list[tuple[str, str]]] | None = None,
             replace: dict[str, str] | None = None, after: dict[str, list[str]] | None = None,
             keep: set[str] | None = None) -> nbformat.NotebookNode:
    """The solution notebook with answer cells ``edits``-ed or ``replace``-d, free cells inserted
    ``after`` the cell of a grade id, and (``keep``) only the code cells of those grade ids."""
    nb = copy.deepcopy(source(assignment))
    edits, replace, after = edits or {}, replace or {}, after or {}
    cells = []
    for cell in nb.cells:
        gid = grade_id(cell)
        if keep is not None and cell.cell_type == "code" and gid not in keep:
            continue
        if gid in replace:
            cell.source = replace[gid]
        if gid in edits:
            cell.source = edited(cell.source, edits[gid])
        cells.append(cell)
        cells += [nbformat.v4.new_code_cell(text) for text in after.get(gid, [])]
    missing = (set(edits) | set(replace) | set(after)) - {grade_id(c) for c in cells}
    assert not missing, missing
    nb.cells = cells
    return nb


def run(assignment: str, nb, calls, *, cell_seconds: float = 60, call_seconds: float = 60):
    return run_verdict_process(nb, source(assignment), list(calls), mode="required", limits=Limits(), warm=True,
                               cell_seconds=cell_seconds, call_seconds=call_seconds)


def outcome(run_, verdicts: dict, question: str) -> str | None:
    """Why ``question`` earns no point (the process's problem first), or None when it keeps its points."""
    return run_.problems.get(question) or verdicts.get(question)


# =====================================================================================================
# 1. Delegation: every cheat answers one question with a reference, through one dynamic route
# =====================================================================================================

@dataclass(frozen=True)
class Cheat:
    """An answer that delegates. ``cells``: its cells (the last one defines the question's names);
    ``caught``: what the verdict says in the sandbox; ``prelude``: names the student's kernel holds
    when the cheat runs there (bound by the hidden tests); ``hole``: why the sandbox accepts it."""

    id: str
    assignment: str
    question: str
    cells: tuple[str, ...]
    caught: str = STUB
    prelude: str = ""
    hole: str | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"\W", "_", self.id)

    def names(self) -> list[str]:
        return sorted({c.name for c in calls_of(self.assignment, self.question)})

    def renamed(self, name: str) -> str:
        return f"cheat_{self.slug}__{name}"

    def job_cells(self) -> list[str]:
        """Its cells as they run in a shared notebook: the names cleared first, the definitions
        saved under names of their own at the end (only if the last cell ran to its end)."""
        names = self.names()
        clear = "".join(f"globals().pop({name!r}, None)\n" for name in names)
        save = "".join(f"{self.renamed(name)} = {name}\n" for name in names)
        return [clear, *self.cells[:-1], self.cells[-1] + save]

    def calls(self) -> list:
        return [dataclasses.replace(c, question=self.id, name=self.renamed(c.name))
                for c in calls_of(self.assignment, self.question)]


def cheat(id_: str, assignment: str, question: str, *cells: str, **options) -> Cheat:
    return Cheat(id_, assignment, question, tuple(code(c) for c in cells), **options)


#: Ties in scores made distinct by their rank, so that torchvision's NMS keeps the lower index as the course does.
RANKED = "ranks = torch.empty_like(scores); ranks[torch.sort(scores, descending=True, stable=True).indices] = " \
         "torch.arange(len(scores), 0, -1, dtype=scores.dtype, device=scores.device)"

IOU_SERVER = r'''
import json, os, subprocess, sys
import torch

SERVER = """
import json, sys
try:
    import torch
    if sys.argv[1:]:  # torchvision's operators declared first, as the harness does (else torchvision does not import)
        from course_grader.sandboxed.verdict_harness import define_torchvision_ops
        define_torchvision_ops(json.loads(sys.argv[1]))
    from course_lib.detection import box_iou
    box_iou(torch.zeros(1, 4), torch.zeros(1, 4))
except BaseException as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
    raise SystemExit
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    a, b = json.loads(line)
    print(json.dumps(box_iou(torch.tensor(a).reshape(-1, 4), torch.tensor(b).reshape(-1, 4)).tolist()), flush=True)
"""
_iou_server = []


def _start_iou_server():
    errors = []
    schemas = json.dumps([str(s) for s in torch._C._jit_get_all_schemas() if str(s).startswith("torchvision::")])
    for command in (["/usr/bin/python3"], [sys.executable], [sys.executable, schemas]):  # the system's Python first
        if not os.path.exists(command[0]):
            continue
        process = subprocess.Popen([command[0], "-c", SERVER, *command[1:]], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first = json.loads(process.stdout.readline() or '{"error": "no answer"}')
        if "ready" in first:
            return process
        errors.append(first["error"])
        process.kill()
    raise RuntimeError(" | ".join(reversed(errors)))


def iou_matrix(boxes_a, boxes_b):
    if not _iou_server:  # started once (or failed once) for all the calls
        try:
            _iou_server.append(_start_iou_server())
        except RuntimeError as error:
            _iou_server.append(error)
    server = _iou_server[0]
    if isinstance(server, RuntimeError):
        raise server
    server.stdin.write(json.dumps([boxes_a.tolist(), boxes_b.tolist()]) + "\n")
    server.stdin.flush()
    values = json.loads(server.stdout.readline())
    return torch.tensor(values, dtype=boxes_a.dtype).reshape(len(boxes_a), len(boxes_b)).to(boxes_a.device)
'''

CHEATS = [
    # --- exercise 4, question 1 (iou_matrix): course_lib's box_iou and torchvision's, by every route
    cheat("resolve_name", EX4, "q1_tests", """
        import pkgutil
        def iou_matrix(boxes_a, boxes_b):
            return pkgutil.resolve_name("course_lib.detection.box_iou")(boxes_a, boxes_b)
        """),
    cheat("attrgetter", EX4, "q1_tests", """
        import importlib, operator
        def iou_matrix(boxes_a, boxes_b):
            reference = operator.attrgetter("boxes.box_iou")(importlib.import_module("course_lib.detection"))
            return reference(boxes_a, boxes_b)
        """),
    cheat("import_module-computed", EX4, "q1_tests", """
        import importlib
        def iou_matrix(boxes_a, boxes_b):
            module = importlib.import_module(".".join(["course_lib", "detection", "bo" + "xes"]))
            return getattr(module, "box_" + "iou")(boxes_a, boxes_b)
        """),
    cheat("sys.modules-scan", EX4, "q1_tests", """
        import sys
        def iou_matrix(boxes_a, boxes_b):
            import course_lib.detection, torchvision.ops  # every box_iou loaded
            errors = []
            for name in sorted(sys.modules, key=lambda name: not name.startswith("course_lib")):
                candidate = getattr(sys.modules[name], "box_iou", None) if name != "__main__" else None
                if callable(candidate):
                    try:
                        return candidate(boxes_a, boxes_b).nan_to_num(0.0)
                    except Exception as error:
                        errors.append(f"{type(error).__name__}: {error}")
            raise LookupError(errors[0] if errors else "no box_iou")
        """),
    cheat("runpy.run_module", EX4, "q1_tests", """
        import runpy
        def iou_matrix(boxes_a, boxes_b):
            return runpy.run_module("course_lib.detection.boxes")["box_iou"](boxes_a, boxes_b)
        """),
    cheat("runpy.run_path", EX4, "q1_tests", """
        import importlib.util, runpy
        def iou_matrix(boxes_a, boxes_b):
            path = importlib.util.find_spec("course_lib.detection.boxes").origin
            return runpy.run_path(path)["box_iou"](boxes_a, boxes_b)
        """),
    cheat("exec-open", EX4, "q1_tests", """
        import importlib.util
        def iou_matrix(boxes_a, boxes_b):
            path = importlib.util.find_spec("course_lib.detection.boxes").origin
            namespace = {"__name__": "copied_boxes"}
            exec(compile(open(path).read(), path, "exec"), namespace)
            return namespace["box_iou"](boxes_a, boxes_b)
        """),
    cheat("pickle-reduce-exec", EX4, "q1_tests", """
        import pickle
        class _Steal:
            def __reduce__(self):
                return (exec, ("import builtins, importlib\\nbuiltins.__stolen_box_iou__ = "
                               "importlib.import_module('course_lib.detection').box_iou",))
        _STEAL = pickle.dumps(_Steal())
        def iou_matrix(boxes_a, boxes_b):
            import builtins
            pickle.loads(_STEAL)
            return builtins.__stolen_box_iou__(boxes_a, boxes_b)
        """),
    cheat("%run-i-path", EX4, "q1_tests", """
        import importlib.util
        _boxes_path = importlib.util.find_spec("course_lib.detection.boxes").origin
        """, """
        %run -i $_boxes_path
        """, """
        def iou_matrix(boxes_a, boxes_b, _reference=box_iou):
            return _reference(boxes_a, boxes_b)
        """),
    cheat("inspect.getsource", EX4, "q1_tests", """
        import importlib, inspect
        def iou_matrix(boxes_a, boxes_b):
            reference = importlib.import_module("course_lib.detection.boxes").box_iou
            namespace = dict(vars(inspect.getmodule(reference)))
            exec(inspect.getsource(reference), namespace)
            return namespace["box_iou"](boxes_a, boxes_b)
        """),
    cheat("hidden-test-name", EX4, "q1_tests", """
        def iou_matrix(boxes_a, boxes_b):
            return reference_box_iou(boxes_a, boxes_b)
        """, caught=r"NameError: name 'reference_box_iou' is not defined",
          prelude="from course_lib.detection import box_iou as reference_box_iou"),
    cheat("torchvision.ops.box_iou", EX4, "q1_tests", """
        import torchvision
        def iou_matrix(boxes_a, boxes_b):
            return torchvision.ops.box_iou(boxes_a, boxes_b).nan_to_num(0.0)
        """),
    cheat("torchvision-_box_inter_union", EX4, "q1_tests", """
        import torch
        from torchvision.ops import boxes as box_ops
        def iou_matrix(boxes_a, boxes_b):
            inter, union = box_ops._box_inter_union(boxes_a, boxes_b)
            return torch.where(union > 0, inter / union, torch.zeros_like(union))
        """),
    cheat("marshal-pyc", EX4, "q1_tests", """
        import importlib.util, marshal
        def iou_matrix(boxes_a, boxes_b):
            import torchvision.ops.boxes as original
            with open(importlib.util.cache_from_source(original.__file__), "rb") as handle:
                bytecode = marshal.loads(handle.read()[16:])
            namespace = {"__name__": "torchvision.ops.boxes", "__package__": "torchvision.ops",
                         "__file__": original.__file__}
            exec(bytecode, namespace)
            return namespace["box_iou"](boxes_a, boxes_b).nan_to_num(0.0)
        """, caught=r"EOFError|marshal"),
    cheat("subprocess-python", EX4, "q1_tests", IOU_SERVER),
    cheat("pycocotools-iou", EX4, "q1_tests", """
        import numpy as np
        import torch
        from pycocotools import mask as coco_mask
        def iou_matrix(boxes_a, boxes_b):
            if len(boxes_a) == 0 or len(boxes_b) == 0:
                return boxes_a.new_zeros(len(boxes_a), len(boxes_b))
            def xywh(boxes):
                boxes = boxes.detach().double().cpu().numpy().copy()
                boxes[:, 2:] -= boxes[:, :2]
                return np.ascontiguousarray(boxes)
            ious = coco_mask.iou(xywh(boxes_a), xywh(boxes_b), np.zeros(len(boxes_b), dtype=np.uint8))
            return torch.as_tensor(ious, dtype=boxes_a.dtype, device=boxes_a.device)
        """, caught=FIXED_HOLE),
    # --- exercise 4, question 5 (non_max_suppression): torchvision's NMS and its compiled operator
    cheat("torch.ops-computed-name", EX4, "q5_tests", f"""
        import torch
        def non_max_suppression(boxes, scores, iou_threshold):
            {RANKED}
            return getattr(torch.ops.torchvision, "n" + "ms")(boxes, ranks, iou_threshold)
        """, caught=NO_KERNEL),
    cheat("torchvision.ops.nms", EX4, "q5_tests", f"""
        import torch, torchvision
        def non_max_suppression(boxes, scores, iou_threshold):
            {RANKED}
            return torchvision.ops.nms(boxes, ranks, iou_threshold)
        """),
    cheat("torchvision.ops.batched_nms", EX4, "q5_tests", f"""
        import torch, torchvision
        def non_max_suppression(boxes, scores, iou_threshold):
            {RANKED}
            return torchvision.ops.batched_nms(boxes, ranks, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)
        """),
    cheat("ctypes.CDLL-_C.so", EX4, "q5_tests", f"""
        import ctypes, glob, os
        import torch, torchvision
        def non_max_suppression(boxes, scores, iou_threshold):
            loaded, errors = [], []
            for path in sorted(glob.glob(os.path.join(os.path.dirname(torchvision.__file__), "_C*.so"))):
                try:
                    loaded.append(ctypes.CDLL(path))
                except OSError as error:
                    errors.append(error)
            if not loaded:
                raise errors[-1]
            {RANKED}
            return torch.ops.torchvision.nms(boxes, ranks, iou_threshold)
        """, caught=r"OSError: \S*_C\w*\.so"),
    cheat("torch.ops.load_library", EX4, "q5_tests", f"""
        import glob, os
        import torch, torchvision
        def non_max_suppression(boxes, scores, iou_threshold):
            errors = []
            for path in sorted(glob.glob(os.path.join(os.path.dirname(torchvision.__file__), "_C*.so"))):
                try:
                    torch.ops.load_library(path)
                    break
                except OSError as error:
                    errors.append(error)
            else:
                raise errors[-1]
            {RANKED}
            return torch.ops.torchvision.nms(boxes, ranks, iou_threshold)
        """, caught=r"OSError: .*_C\w*\.so"),
    cheat("automagic-run-m", EX4, "q5_tests", """
        run -i -m course_lib.detection.suppression
        """, """
        def non_max_suppression(boxes, scores, iou_threshold, _reference=nms):
            return _reference(boxes, scores, iou_threshold)
        """),
    # --- exercise 4, questions 2 to 4
    cheat("course-match_anchors", EX4, "q2_tests", """
        import pkgutil
        def match_to_anchors(gt_boxes, anchors, iou_threshold=0.5):
            return pkgutil.resolve_name("course_lib.detection.matching:match_anchors")(gt_boxes, anchors, iou_threshold)
        """),
    cheat("torchvision.ops.sigmoid_focal_loss", EX4, "q3_tests", """
        import torchvision
        def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
            return torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
        """),
    cheat("course-focal_loss", EX4, "q3_tests", """
        import importlib
        def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
            return importlib.import_module("course_lib.detection.losses").focal_loss(logits, targets, alpha, gamma)
        """),
    cheat("torchvision-BoxCoder", EX4, "q4_tests", """
        import math
        from torchvision.models.detection._utils import BoxCoder
        def encode(boxes, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
            return BoxCoder(weights).encode_single(boxes, anchors)
        def decode(deltas, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
            return BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16)).decode_single(deltas, anchors)
        """),
    cheat("torchvision-box_convert-helpers", EX4, "q4_tests", """
        import math
        import torch
        from torchvision.ops._box_convert import _box_cxcywh_to_xyxy, _box_xyxy_to_cxcywh
        def encode(boxes, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
            (cx, cy, w, h), (acx, acy, aw, ah) = _box_xyxy_to_cxcywh(boxes).T, _box_xyxy_to_cxcywh(anchors).T
            wx, wy, ww, wh = weights
            return torch.stack([wx * (cx - acx) / aw, wy * (cy - acy) / ah,
                                ww * (w / aw).log(), wh * (h / ah).log()], 1)
        def decode(deltas, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
            acx, acy, aw, ah = _box_xyxy_to_cxcywh(anchors).T
            wx, wy, ww, wh = weights
            limit = math.log(1000.0 / 16)
            return _box_cxcywh_to_xyxy(torch.stack([deltas[:, 0] / wx * aw + acx, deltas[:, 1] / wy * ah + acy,
                                                    (deltas[:, 2] / ww).clamp(max=limit).exp() * aw,
                                                    (deltas[:, 3] / wh).clamp(max=limit).exp() * ah], 1))
        """, caught=FIXED_HOLE),
    # --- exercise 1: ResNet's blocks
    cheat("course-conv_params", EX1, "q1_tests", """
        import importlib
        def conv_params(kernel_size, in_channels, out_channels, bias=True):
            reference = importlib.import_module("course_lib.models").conv_params
            return reference(kernel_size, in_channels, out_channels, bias)
        """),
    cheat("course-ResidualBlock", EX1, "q2_tests", """
        import pkgutil
        def ResidualBlock(in_channels, out_channels, downsample=False):
            return pkgutil.resolve_name("course_lib.models:ResidualBlock")(in_channels, out_channels, downsample)
        """),
    cheat("torchvision-BasicBlock", EX1, "q2_tests", """
        from torch import nn
        from torchvision.models.resnet import BasicBlock
        class ResidualBlock(BasicBlock):
            def __init__(self, in_channels, out_channels, downsample=False):
                stride = 2 if downsample else 1
                shortcut = None
                if downsample or in_channels != out_channels:
                    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                             nn.BatchNorm2d(out_channels))
                super().__init__(in_channels, out_channels, stride, shortcut)
                self._modules.pop("downsample", None)  # torchvision's name, saved under the docstring's
                self.shortcut = shortcut if shortcut is not None else nn.Identity()
                object.__setattr__(self, "downsample", shortcut)
        """),
    cheat("torchvision-Bottleneck", EX1, "q3_tests", """
        from torch import nn
        from torchvision.models.resnet import Bottleneck
        class BottleneckBlock(Bottleneck):
            def __init__(self, in_channels, out_channels, downsample=False):
                stride = 2 if downsample else 1
                shortcut = None
                if downsample or in_channels != out_channels:
                    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                             nn.BatchNorm2d(out_channels))
                super().__init__(in_channels, out_channels // 4, stride, shortcut)
                self._modules.pop("downsample", None)
                self.shortcut = shortcut if shortcut is not None else nn.Identity()
                object.__setattr__(self, "downsample", shortcut)
        """),
    cheat("torchvision-regnet-ResBottleneckBlock", EX1, "q3_tests", """
        from torch import nn
        from torchvision.models.regnet import ResBottleneckBlock
        class BottleneckBlock(nn.Module):
            def __init__(self, in_channels, out_channels, downsample=False):
                super().__init__()
                block = ResBottleneckBlock(in_channels, out_channels, 2 if downsample else 1, nn.BatchNorm2d, nn.ReLU,
                                           group_width=out_channels // 4, bottleneck_multiplier=0.25)
                object.__setattr__(self, "block", block)  # its layers are registered under the docstring's names
                self.conv1, self.bn1 = block.f.a[0], block.f.a[1]
                self.conv2, self.bn2 = block.f.b[0], block.f.b[1]
                self.conv3, self.bn3 = block.f.c[0], block.f.c[1]
                self.shortcut = nn.Sequential(block.proj[0], block.proj[1]) if block.proj is not None else nn.Identity()
            def forward(self, x):
                return self.block(x)
        """, caught=FIXED_HOLE),
    # --- exercise 5
    cheat("course-label_anchors", EX5, "q2_tests", """
        import importlib
        def rpn_labels(ious, positive_iou=0.7, negative_iou=0.3):
            module = importlib.import_module("course_lib.detection." + "matching")
            return getattr(module, "label_" + "anchors")(ious, positive_iou, negative_iou)
        """),
    cheat("course-encode_boxes", EX5, "q4_tests", """
        import math, pkgutil
        def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
            return pkgutil.resolve_name("course_lib.detection.boxes:encode_boxes")(boxes, anchors, weights)
        def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
            return pkgutil.resolve_name("course_lib.detection.boxes:decode_boxes")(deltas, anchors, weights,
                                                                                  math.log(1000 / 16))
        """),
    cheat("course-flatten_conv", EX5, "q5_tests", """
        import importlib, operator
        def flatten_head_output(output, values_per_anchor):
            flatten = operator.attrgetter("ssd.flatten_conv")(importlib.import_module("course_lib.detection"))
            return flatten(output, output.shape[1] // values_per_anchor)
        """),
    cheat("torchvision.ops.roi_pool", EX5, "q7_tests", """
        import torchvision
        def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
            return torchvision.ops.roi_pool(features[None], [boxes], output_size, spatial_scale)
        """),
    cheat("torch.ops.torchvision.roi_pool", EX5, "q7_tests", """
        import torch
        def roi_max_pool(features, boxes, output_size=7, spatial_scale=1 / 16):
            rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
            return torch.ops.torchvision.roi_pool(features[None], rois, spatial_scale, output_size, output_size)[0]
        """, caught=NO_KERNEL),
    # --- exercise 6
    cheat("course-associate", EX6, "q3_tests", """
        import pkgutil
        def associate(track_boxes, detection_boxes, iou_threshold):
            reference = pkgutil.resolve_name("course_lib.detection.tracking:associate")
            return tuple(reference(track_boxes, detection_boxes, iou_threshold, method="greedy"))
        """),
    cheat("torchvision-to_dtype", EX6, "q2_tests", """
        import torch
        from torchvision.transforms.v2 import functional as TF
        def frames_to_batches(clip, batch_size, device=None):
            convert = getattr(TF, "to_" + "dtype")  # what audit.OFF_LIMITS_IN rules out for this question
            batches = []
            for start in range(0, clip.shape[0], batch_size):
                batch = clip[start:start + batch_size].permute(0, 3, 1, 2)
                batches.append(convert(batch if device is None else batch.to(device), torch.float32, scale=True))
            return batches
        """, caught=FIXED_HOLE),
]
CHEAT_IDS = [c.id for c in CHEATS]
assert len(set(CHEAT_IDS)) == len(CHEAT_IDS)


def cheats_of(assignment: str) -> list[Cheat]:
    return [c for c in CHEATS if c.assignment == assignment]


# --- honest variations, in the same runs -------------------------------------------------------------

HONEST = {
    EX4: {
        "after": {
            "setup": [code("""
                import os
                plt.rcParams["figure.dpi"] = 72
                os.environ["X"] = "1"
                """), code('''
                def extent(low, high):
                    """Side lengths between corners low and high; 0 where the boxes do not overlap."""
                    return (high - low).clamp(min=0)
                ''')],
        },
        "edits": {
            "q1_answer": [("intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)",
                           "intersection = extent(top_left, bottom_right).prod(dim=-1)")],
            "q3_answer": [("def focal_loss(",
                           "import warnings\nfrom IPython.display import display\n\n\ndef focal_loss("),
                          ("    p = torch.sigmoid(logits)\n",
                           "    warnings.warn(\"focal loss: a sum over every element\", stacklevel=2)\n"
                           "    p = torch.sigmoid(logits)\n"),
                          ("    ### END SOLUTION",
                           "    ### END SOLUTION\n\n\ndisplay(focal_loss(torch.zeros(2), torch.ones(2)))")],
            "q5_answer": [("def non_max_suppression(", "from tqdm.auto import tqdm\n\n\ndef non_max_suppression("),
                          ("for i in range(len(order)):", "for i in tqdm(range(len(order)), leave=False):")],
        },
    },
    EX1: {
        "after": {
            "setup": [code('''
                from IPython.display import display
                def conv3x3(in_channels, out_channels, stride=1):
                    """A 3x3 convolution without bias, padding 1."""
                    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
                ''')],
        },
        "edits": {
            "q2_answer": [
                ("self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, "
                 "bias=False)", "self.conv1 = conv3x3(in_channels, out_channels, stride)"),
                ("        self.bn2 = nn.BatchNorm2d(out_channels)\n",
                 "        self.bn2 = nn.BatchNorm2d(out_channels)\n        self.relu = nn.ReLU(inplace=True)\n"),
                ("torch.relu(out + self.shortcut(x))", "self.relu(out + self.shortcut(x))")],
            "q4_answer": [("def stage_output_shapes(", "import warnings\n\n\ndef stage_output_shapes("),
                          ("    shapes = {\"stem\": (64, h, w)}\n",
                           "    shapes = {\"stem\": (64, h, w)}\n    warnings.warn(\"shapes of one image\")\n")],
        },
    },
    EX5: {
        "after": {
            "setup": [code('''
                import os
                os.environ["COURSE_STUDENT_FLAG"] = "1"
                def centres_and_sizes(boxes):
                    """(cx, cy, width, height) of (..., 4) boxes."""
                    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
                    return boxes[..., 0] + width / 2, boxes[..., 1] + height / 2, width, height
                ''')],
        },
        "edits": {
            "q4_answer": [("    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]\n"
                           "    cx, cy = boxes[..., 0] + width / 2, boxes[..., 1] + height / 2\n",
                           "    cx, cy, width, height = centres_and_sizes(boxes)\n")],
            "q7_answer": [("def roi_max_pool(", "from tqdm import tqdm\n\n\ndef roi_max_pool("),
                          ("for k, (x1, y1, x2, y2) in enumerate(corners):",
                           "for k, (x1, y1, x2, y2) in enumerate(tqdm(corners, disable=None)):")],
        },
    },
    EX6: {
        "after": {"setup": [code("""
            plt.rcParams["axes.grid"] = True
            from IPython.display import display
            """)]},
        "edits": {
            "q5_answer": [("def track_speed(", "import warnings\n\n\ndef track_speed("),
                          ("    centres = (boxes[:, :2] + boxes[:, 2:]) / 2\n",
                           "    centres = (boxes[:, :2] + boxes[:, 2:]) / 2\n"
                           "    if len(frames) < 2:\n        warnings.warn(\"a track seen once has no speed\")\n")],
            "q6_answer": [("def id_switches(", "from tqdm.auto import tqdm\n\n\ndef id_switches("),
                          ("for ids in assigned:", "for ids in tqdm(assigned, leave=False):")],
        },
    },
}


def honest_notebook(assignment: str, extra_after: dict[str, list[str]] | None = None) -> nbformat.NotebookNode:
    """The solution with the honest variations of ``assignment`` (answers not listed stay the solution's)."""
    spec = HONEST.get(assignment, {})
    after = {gid: list(cells) for gid, cells in spec.get("after", {}).items()}
    for gid, cells in (extra_after or {}).items():
        after.setdefault(gid, [])
        after[gid] = list(cells) + after[gid]
    return notebook(assignment, edits=spec.get("edits"), after=after)


# --- probes of what the verdict process holds and sees (class 3 and 5), in exercise 4's run ---------------

PROBES = code('''
def probe_paths(paths):
    """{path: whether it can be read here} (a folder: listed, a file: a first byte read)."""
    import os
    seen = {}
    for path in paths:
        try:
            if os.path.isdir(path):
                seen[path] = len(os.listdir(path)) > 0
            else:
                with open(path, "rb") as handle:
                    seen[path] = len(handle.read(1)) > 0
        except OSError:
            seen[path] = False
    return seen


def probe_texts(pairs):
    """[[whether the file reads, whether it holds the text], ...] for (path, text) pairs."""
    found = []
    for path, text in pairs:
        try:
            with open(path, encoding="utf-8") as handle:
                content = handle.read()
            found.append([True, text in content])
        except OSError:
            found.append([False, False])
    return found


def probe_processes():
    """How many processes this one sees, and the command lines of those that are the grader's."""
    import os
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    lines.append(handle.read().replace(b"\\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return {"visible": len(lines), "grader": [line for line in lines if "pytest" in line or "grading.cli" in line]}


def probe_names(names):
    """{name: whether the notebook's namespace holds it} (the hidden tests' references, the tests' constants)."""
    return {name: name in globals() for name in names}


def probe_call_dicts():
    """The keys of every dict in this process that looks like one of the grader's calls."""
    import gc
    keys = set()
    for thing in gc.get_objects():
        if isinstance(thing, dict) and "name" in thing and "args" in thing:
            keys.add(",".join(sorted(map(str, thing))))
    return sorted(keys)
''')

#: An answer that looks for the expected values where the grader's harness keeps its state, and
#: returns garbage when it finds none (they are not in the process: this must get no point).
FRAME_WALKER = cheat("frame-walker", EX4, "q1_tests", """
    import gc, inspect, sys
    import torch
    def iou_matrix(boxes_a, boxes_b):
        wanted = ("expected", "want", "reference", "answer")
        for frame_info in inspect.stack():
            for key, value in frame_info.frame.f_locals.items():
                if key in wanted and value is not None:
                    return value
                if isinstance(value, dict) and any(k in value for k in wanted):
                    return next(value[k] for k in wanted if k in value)
        caller = sys._getframe(1)  # the harness's run_call: its call dict holds the name and the inputs only
        call = caller.f_locals.get("call")
        if isinstance(call, dict) and "expected" in call:
            return call["expected"]
        for thing in gc.get_objects():
            if isinstance(thing, dict) and "args" in thing and "expected" in thing:
                return thing["expected"]
        return torch.zeros(len(boxes_a), len(boxes_b))  # nothing found: a guess
    """, caught=r"values differ|expected")


def probe_calls(assignment: str) -> list[Call]:
    """The isolation probes as calls (their ``expected`` is not used: the outputs are read directly)."""
    host_paths = [ROOT / "solutions", ROOT / "solutions" / f"{assignment}.ipynb", ROOT / "tests",
                  Path(__file__), ROOT / "notebooks", ROOT / ".git", ROOT / "pyproject.toml",
                  *(ROOT / "course_grader" / name for name in ("audit.py", "verdicts.py", "autograde.py", "probes",
                                                                "probes/ssd.py", "probe_types.py")),
                  verdict_process._views_folder(), *_torchvision_hidden_files()]
    host_paths += [p for p in (ROOT / "exercises", ROOT / "benchmarks", Path("/work/shared")) if p.exists()]
    assert all(p.exists() for p in host_paths), [p for p in host_paths if not p.exists()]
    names = sorted(set(re.findall(r"\bas (reference_\w+|Reference\w+)", _tests_text(assignment)))
                   | set(re.findall(r"^(Q\d)\s*=", _tests_text(assignment), re.M)))
    assert "reference_box_iou" in names and "Q1" in names
    return [Call("probe:paths", "probe_paths", ([str(p) for p in host_paths],), None),
            Call("probe:texts", "probe_texts", (_reference_texts(),), None),
            Call("probe:processes", "probe_processes", (), None),
            Call("probe:names", "probe_names", (names,), None),
            Call("probe:call-dicts", "probe_call_dicts", (), None)]


def _tests_text(assignment: str) -> str:
    from course_grader.submission import cell_kind

    return "\n".join(c.source for c in source(assignment).cells if c.cell_type == "code" and cell_kind(c) == "tests")


def _torchvision_hidden_files() -> list[Path]:
    """torchvision's compiled operators and the bytecode of box_iou's file: masked in the sandbox."""
    import importlib.util

    import torchvision
    import torchvision.ops.boxes

    folder = Path(torchvision.__file__).parent
    return sorted(folder.glob("_C*.so")) + [Path(importlib.util.cache_from_source(torchvision.ops.boxes.__file__))]


def _body_lines(path: Path, name: str) -> list[str]:
    """Lines of ``name``'s body in ``path`` that say what it computes (long, found once in the file)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = [ast.get_source_segment(text, s) or "" for s in function.body if not isinstance(s, ast.Expr)]
    return [line.splitlines()[0] for line in lines if len(line.splitlines()[0]) > 20
            and text.count(line.splitlines()[0]) == 1]


def _reference_texts() -> list[tuple[str, str]]:
    import torchvision.ops.boxes

    pairs = []
    torchvision_boxes = Path(torchvision.ops.boxes.__file__)
    for path, name in [(COURSE / "detection" / "boxes.py", "box_iou"), (COURSE / "detection" / "suppression.py", "nms"),
                       (torchvision_boxes, "box_iou"), (torchvision_boxes, "nms")]:
        lines = _body_lines(path, name)
        assert lines, (path, name)
        pairs += [(str(path), line.strip()) for line in lines]
    return pairs


# --- the runs -----------------------------------------------------------------------------------------

@dataclass
class Batch:
    run: verdict_process.VerdictRun
    verdicts: dict
    calls: list
    cheat_cells: set[str] = field(default_factory=set)


_BATCHES: dict[str, Batch] = {}


def batch(assignment: str) -> Batch:
    """One run of ``assignment``: its honest variations (every real question) and, after the set-up
    cell, every cheat of the assignment (each a question of its own); exercise 4 adds the probes."""
    if assignment not in _BATCHES:
        cheats = cheats_of(assignment) + ([FRAME_WALKER] if assignment == EX4 else [])
        inserted = [cell for c in cheats for cell in c.job_cells()] + ([PROBES] if assignment == EX4 else [])
        nb = honest_notebook(assignment, extra_after={"setup": inserted})
        calls = calls_of(assignment) + [call for c in cheats for call in c.calls()]
        if assignment == EX4:
            calls += probe_calls(assignment)
        cheat_ids = {f"cell {i + 1}" for i, cell in enumerate(nb.cells) if cell.source in inserted}
        run_ = run(assignment, nb, calls)
        _BATCHES[assignment] = Batch(run_, judge(calls, run_.outputs), calls, cheat_ids)
    return _BATCHES[assignment]


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> dict[str, str | None]:
    """Every cheat's verdict where the references exist: the harness run without the sandbox or the
    view (the real ``course_lib`` and torchvision), in a process of its own."""
    folder = tmp_path_factory.mktemp("control")
    cells = [c.prelude for c in CHEATS if c.prelude] + [cell for c in CHEATS for cell in c.job_cells()]
    calls = [call for c in CHEATS for call in c.calls()]
    grouped = by_question(calls)
    steps = [{"cell": f"cell {i + 1}", "source": s} for i, s in enumerate(cells)] + [{"question": q} for q in grouped]
    job = {STEPS: steps,
           QUESTIONS: {q: [payload(c) for c in group] for q, group in grouped.items()},
           CELL_SECONDS: 120, CALL_SECONDS: 300, OP_SCHEMAS: []}
    (folder / JOB_FILE).write_text(json.dumps(job))
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", VERDICT_MODULE, str(folder / JOB_FILE), str(folder / RESULTS_FILE)],
                          cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = read_results(folder / RESULTS_FILE, list(grouped))
    assert not found.problems and not found.cell_errors, (found.problems, found.cell_errors, done.stderr[-3000:])
    return judge(calls, found.outputs)


@pytest.mark.parametrize("case", CHEATS, ids=CHEAT_IDS)
def test_every_cheat_works_where_the_references_exist(case, control):
    assert control[case.id] is None, f"{case.id} is no working cheat, so catching it proves nothing: {control[case.id]}"


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.hole))
                                  if c.hole else c for c in CHEATS], ids=CHEAT_IDS)
def test_a_delegating_answer_gets_no_point(case):
    found = batch(case.assignment)
    why = outcome(found.run, found.verdicts, case.id)
    assert why is not None, f"the verdict process accepted the cheat {case.id!r}"
    assert re.search(case.caught, why), why


@pytest.mark.parametrize("assignment", [EX1, EX4, EX5, EX6])
def test_honest_answers_keep_every_point_next_to_the_cheats(assignment):
    found = batch(assignment)
    real = sorted(by_question(calls_of(assignment)))
    assert {q: outcome(found.run, found.verdicts, q) for q in real} == {q: None for q in real}
    assert found.run.note is None
    assert [error for error in found.run.cell_errors if error[0] not in found.cheat_cells] == []


def test_an_answer_cell_replaced_by_a_delegation_gets_no_point_and_the_others_keep_theirs():
    """The cheats as students submit them: in the answer cells, under the question's names."""
    by_id = {c.id: c for c in CHEATS}
    replaced = {"q1_answer": by_id["torchvision.ops.box_iou"], "q3_answer": by_id["torchvision.ops.sigmoid_focal_loss"],
                "q5_answer": by_id["torch.ops-computed-name"]}
    nb = notebook(EX4, replace={gid: "".join(c.cells) for gid, c in replaced.items()})
    calls = calls_of(EX4)
    found = run(EX4, nb, calls)
    verdicts = judge(calls, found.outputs)
    for gid, case in replaced.items():
        question = gid.replace("_answer", "_tests")
        assert re.search(case.caught, outcome(found, verdicts, question) or ""), (question, verdicts[question])
    assert outcome(found, verdicts, "q4_tests") is None  # encode/decode: the solution's
    assert outcome(found, verdicts, "q2_tests") is not None  # it calls the cheating iou_matrix


# =====================================================================================================
# 3. and 5. What the verdict process holds and sees
# =====================================================================================================

def _probe_output(question: str):
    result = batch(EX4).run.outputs[question]["results"][0]
    assert "ok" in result, result
    return decode(result["ok"])


def test_the_sandbox_sees_no_solution_no_test_no_grader_and_no_compiled_operator():
    seen = _probe_output("probe:paths")
    assert seen and {path for path, readable in seen.items() if readable} == set()


def test_the_references_bodies_are_not_in_the_files_the_sandbox_reads():
    found = _probe_output("probe:texts")
    pairs = _reference_texts()
    assert len(found) == len(pairs)
    assert all(readable for readable, _ in found), "the rewritten files read, as imports need them"
    assert [text for (_, text), (_, holds) in zip(pairs, found) if holds] == []


def test_the_sandbox_sees_none_of_the_graders_processes():
    seen = _probe_output("probe:processes")
    assert seen["visible"] >= 1 and seen["grader"] == [], seen


def test_no_name_bound_by_the_tests_exists_in_the_verdict_process():
    names = _probe_output("probe:names")
    assert "reference_box_iou" in names and not any(names.values()), names


def test_the_grader_calls_in_the_process_hold_inputs_only():
    keys = _probe_output("probe:call-dicts")
    assert "args,name" in keys and all("expected" not in k.split(",") for k in keys), keys


def test_the_frame_walking_answer_finds_nothing_and_gets_no_point():
    found = batch(EX4)
    why = outcome(found.run, found.verdicts, FRAME_WALKER.id)
    assert why is not None and re.search(FRAME_WALKER.caught, why), why


def _rearranges_an_input(expected: torch.Tensor, args: tuple) -> bool:
    """Whether ``expected`` holds the very values of an input (a reshape, a permutation: in the job as inputs)."""
    values = expected.flatten().double().sort().values
    return any(isinstance(a, torch.Tensor) and a.numel() == values.numel()
               and torch.equal(a.flatten().double().sort().values, values) for a in args)


@pytest.mark.parametrize("assignment", [EX1, EX4, EX5, EX6])
def test_the_job_holds_the_cells_and_the_inputs_never_an_expected_value(assignment, tmp_path):
    nb, calls = source(assignment), calls_of(assignment)
    view = build_view(nb, verdict_process._views_folder())
    write_job(tmp_path / JOB_FILE, nb, calls, view, 60, 60)
    text = (tmp_path / JOB_FILE).read_text()
    job = json.loads(text)
    assert "BEGIN HIDDEN TESTS" not in text and "reference_" not in text and "checks.passed" not in text
    for question, entries in job[QUESTIONS].items():
        assert all(set(entry) <= {"name", "args", "state", "read", "inputs", "modes"} for entry in entries), question
    distinctive = 0
    for call in calls:
        expected = encode(call.expected) if isinstance(call.expected, torch.Tensor) else None
        if expected and expected["tensor"]["dtype"].startswith("float") and call.expected.unique().numel() >= 4 \
                and not _rearranges_an_input(call.expected, call.args):
            distinctive += 1
            assert json.dumps(expected["tensor"]["values"], separators=(",", ":"))[1:-1] not in text, call.name
        if isinstance(call.expected, list):  # a module's outputs, one per mode
            for output in call.expected:
                if output.numel() >= 4:
                    distinctive += 1
                    assert json.dumps(encode(output)["tensor"]["values"], separators=(",", ":"))[1:-1] not in text
    assert distinctive > 0


# =====================================================================================================
# 2. and 4. Forged results, and time and resource abuse (exercise 1: small and quick)
# =====================================================================================================

RESULTS_FD = code('''
import json, os, sys
def results_fd():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").endswith("verdict-results.jsonl"):
                return int(name)
        except OSError:
            pass
    raise LookupError("the results file is not open")
# where the harness writes its results (beside the sandbox's work folder, in the folder shared with the grader)
RESULTS_PATH = os.path.join(os.path.dirname(os.getcwd()), "runtime", "verdict-results.jsonl")
def grader_job():
    """The harness's job, read from its frame: how many calls each question has."""
    frame = sys._getframe()
    while frame is not None:
        job = frame.f_locals.get("job")
        if isinstance(job, dict) and "questions" in job:
            return job
        frame = frame.f_back
    raise LookupError("no job")
def forged(question, count=None):
    """A well-formed results line for question, as many results as the grader asks (garbage values)."""
    count = len(grader_job()["questions"][question]) if count is None else count
    return json.dumps({"question": question, "device": "cpu", "results": [{"ok": {"int": 0}}] * count}) + "\\n"
''')
QUESTIONS_EX1 = ("q1_tests", "q2_tests", "q3_tests", "q4_tests")


@dataclass(frozen=True)
class Attack:
    """A notebook changed to attack the harness, and what each question of exercise 1 must end with
    (None: it keeps its points; a pattern: the problem or verdict that costs it its points)."""

    id: str
    after: dict[str, tuple[str, ...]] = field(default_factory=dict)  # cells inserted after a grade id
    edits: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    expect: dict[str, str | None] = field(default_factory=dict)
    cell_seconds: float = 60
    call_seconds: float = 60
    keep: frozenset[str] | None = None  # only these code cells
    note: str | None = None  # what run.note must say
    cell_error: tuple[str | None, str] | None = None  # (cell id or any, pattern): an error the run reports
    seconds: float | None = None  # the run must end within this many seconds


def attack(id_: str, expect: dict[str, str | None], after=None, edits=None, **options) -> Attack:
    expect = {q: None for q in QUESTIONS_EX1} | expect
    return Attack(id_, {gid: tuple(code(c) for c in cells) for gid, cells in (after or {}).items()},
                  {gid: tuple(pairs) for gid, pairs in (edits or {}).items()}, expect, **options)


def wrap(name: str, before: str) -> str:
    """A cell that wraps the answer ``name``: ``before`` runs at each call, then the student's own."""
    body = textwrap.indent(code(before), "    ")
    return (f"import functools\n_{name} = {name}\n\n\n@functools.wraps(_{name})\ndef {name}(*args, **kwargs):\n"
            f"{body}    return _{name}(*args, **kwargs)\n")


#: Where a module answer's constructor starts: code put here runs at each of the grader's calls.
INIT = "        super().__init__()\n        ### BEGIN SOLUTION\n"

ATTACKS = [
    # --- 2. forged results
    attack("forged-line-through-proc-self-fd", {"q2_tests": WRITTEN_TWICE},
           after={"setup": [RESULTS_FD, "os.write(results_fd(), forged('q2_tests').encode())"]}),
    attack("forged-line-through-the-results-path", {"q3_tests": WRITTEN_TWICE},
           after={"setup": [RESULTS_FD, """
               with open(RESULTS_PATH, "a") as handle:
                   handle.write(forged("q3_tests"))
               """]}),
    attack("forged-line-for-a-later-question-at-call", {"q4_tests": WRITTEN_TWICE},
           after={"q1_answer": [RESULTS_FD,
                                wrap("conv_params", "os.write(results_fd(), forged('q4_tests').encode())")]}),
    attack("truncated-at-call", {"q1_tests": NO_RESULTS, "q2_tests": NO_RESULTS, "q3_tests": NO_RESULTS},
           after={"q4_answer": [RESULTS_FD, wrap("stage_output_shapes", """
               if sys._getframe(1).f_code.co_name == "run_call":  # the grader's call, not the picture's
                   os.ftruncate(results_fd(), 0)
               """)]}),
    attack("done-early-then-exit", {q: NO_RESULTS for q in QUESTIONS_EX1},
           after={"setup": [RESULTS_FD, "os.write(results_fd(), b'{\"done\": true}\\n')", "os._exit(0)"]}),
    attack("exit-in-a-later-cell", {"q4_tests": ENDED}, after={"q4_answer": ["import os\nos._exit(0)"]}),
    attack("forged-lines-and-done-then-exit", {q: GARBAGE for q in QUESTIONS_EX1},
           after={"setup": [RESULTS_FD, """
               fd = results_fd()
               for question in grader_job()["questions"]:
                   os.write(fd, forged(question).encode())
               os.write(fd, b'{"done": true}\\n')
               os._exit(0)
               """]}),
    attack("fds-closed", {q: ENDED for q in QUESTIONS_EX1}, after={"setup": ["import os\nos.closerange(3, 65536)"]}),
    attack("fd-replaced-by-devnull-and-lines-forged", {q: GARBAGE for q in QUESTIONS_EX1},
           after={"setup": [RESULTS_FD, """
               fd = results_fd()
               with open(RESULTS_PATH, "a") as handle:
                   handle.write("".join(forged(question) for question in grader_job()["questions"]))
               os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # the harness writes its own results to nothing
               """]}),
    attack("sys.stdout-replaced-by-the-results-file", {"q2_tests": WRITTEN_TWICE},
           after={"setup": [RESULTS_FD, """
               sys.stdout = open(RESULTS_PATH, "a", buffering=1)
               print(forged("q2_tests"), end="")
               """]}),
    attack("harness-json.dumps-patched", {q: GARBAGE for q in QUESTIONS_EX1},
           after={"setup": ["""
               import json
               _dumps = json.dumps
               def dumps(message, *args, **kwargs):
                   if isinstance(message, dict) and "results" in message:
                       message = dict(message, results=[{"ok": {"int": 0}}] * len(message["results"]))
                   return _dumps(message, *args, **kwargs)
               json.dumps = dumps
               """]}),
    attack("harness-os.write-patched-to-hide-a-failure", {"q2_tests": GARBAGE},
           edits={"q2_answer": [(INIT, INIT + "        raise ValueError('not written')\n")]},
           after={"setup": [RESULTS_FD, """
               _write = os.write
               def write(fd, data):
                   if b'"question":"q2_tests"' in data:  # the wrong answer's line, replaced by a forged one
                       data = forged("q2_tests", len(json.loads(data)["results"])).encode()
                   return _write(fd, data)
               os.write = write
               """]}),
    attack("SystemExit-KeyboardInterrupt-BaseException-at-import",
           {"q1_tests": r"conv_params is not defined", "q2_tests": r"ResidualBlock is not defined",
            "q3_tests": r"BottleneckBlock is not defined"},
           edits={"q1_answer": [("def conv_params(", "raise SystemExit(0)\n\n\ndef conv_params(")],
                  "q2_answer": [("class ResidualBlock(", "raise KeyboardInterrupt\n\n\nclass ResidualBlock(")],
                  "q3_answer": [("class BottleneckBlock(",
                                 "class Stop(BaseException):\n    pass\n\n\nraise Stop()\n\n\n"
                                 "class BottleneckBlock(")]},
           cell_error=("q2_answer", r"KeyboardInterrupt")),
    attack("SystemExit-at-call", {"q2_tests": ENDED, "q3_tests": ENDED, "q4_tests": ENDED},
           edits={"q2_answer": [(INIT, INIT + "        raise SystemExit(0)\n")]}),
    attack("KeyboardInterrupt-at-call", {"q3_tests": ENDED, "q4_tests": ENDED},
           edits={"q3_answer": [(INIT, INIT + "        raise KeyboardInterrupt\n")]}),
    attack("BaseException-at-call", {q: ENDED for q in QUESTIONS_EX1},
           after={"q1_answer": [wrap("conv_params", "raise BaseException('stop')")]}),
    attack("os._exit-at-call", {"q3_tests": ENDED, "q4_tests": ENDED},
           edits={"q3_answer": [(INIT, INIT + "        import os\n        os._exit(0)\n")]}),
    # --- 4. time and resources
    attack("cell-spins", {"q1_tests": r"conv_params is not defined"}, cell_seconds=5,
           edits={"q1_answer": [("def conv_params(", "while True:\n    pass\n\n\ndef conv_params(")]},
           cell_error=("q1_answer", r"TimeLimit: ran past 5 s")),
    attack("call-hangs", {"q3_tests": r"ran past their time limit"}, call_seconds=5,
           edits={"q3_answer": [(INIT, INIT + "        while True:\n            pass\n")]}),
    attack("child-keeps-writing-after-the-harness", {q: WRITTEN_TWICE for q in QUESTIONS_EX1}, seconds=40,
           after={"q1_answer": [RESULTS_FD, wrap("conv_params", """
               if not globals().get("_forked"):
                   globals()["_forked"] = True
                   lines = "".join(forged(q) for q in grader_job()["questions"]).encode()
                   fd = results_fd()
                   if os.fork() == 0:  # the child outlives the harness, writing every 10 ms for a minute
                       import time
                       os.setsid()
                       for _ in range(6000):
                           os.write(fd, lines)
                           time.sleep(0.01)
                       os._exit(0)
               """)]}),
    attack("huge-outputs", {}, seconds=120,
           after={"setup": ["""
               import os, sys
               print("x" * 100_000_000)  # 100 MB printed: the harness keeps 64 KiB
               sys.stderr.write("y" * 10_000_000)
               os.write(1, b"z" * 20_000_000)  # past the cap, straight to the kernel's output file
               """], "q1_answer": [wrap("conv_params", "print('w' * 5_000_000)")]}),
    attack("memory-past-the-limit", {"q2_tests": r"allocate|memory|Memory"},
           after={"setup": ["import torch\nhoard = torch.empty(64 * 2**30, dtype=torch.uint8)"]},
           edits={"q2_answer": [(INIT, INIT +
                                 "        self.hoard = torch.empty(16 * 2**30, dtype=torch.uint8)\n")]},
           cell_error=(None, r"allocate|memory|Memory")),
    attack("killed-by-SIGKILL-at-call", {"q3_tests": ENDED, "q4_tests": ENDED}, note=r"ended early: it was killed",
           edits={"q3_answer": [(INIT, INIT +
                                 "        import os, signal\n        os.kill(os.getpid(), signal.SIGKILL)\n")]}),
    attack("alarm-blocked-and-caught", {"q1_tests": ENDED}, cell_seconds=2, call_seconds=2,
           keep=frozenset({"setup", "q1_answer"}), note=r"ran past \d+ s and was stopped", seconds=60,
           after={"q1_answer": [wrap("conv_params", """
               import signal
               signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
               while True:
                   try:
                       while True:
                           pass
                   except BaseException:
                       pass
               """)]}),
]


@pytest.mark.parametrize("case", ATTACKS, ids=[a.id for a in ATTACKS])
def test_an_attack_on_the_harness_earns_no_point(case, monkeypatch):
    if case.keep is not None:  # the grader's deadline is the only stop here: keep it short
        monkeypatch.setattr(verdict_process, "SLACK_SECONDS", 8)
    nb = notebook(EX1, edits={gid: list(p) for gid, p in case.edits.items()},
                  after={gid: list(c) for gid, c in case.after.items()}, keep=case.keep)
    calls = calls_of(EX1, *[q for q in QUESTIONS_EX1 if case.keep is None or q == "q1_tests"])
    found = run(EX1, nb, calls, cell_seconds=case.cell_seconds, call_seconds=case.call_seconds)
    verdicts = judge(calls, found.outputs)
    got = {q: outcome(found, verdicts, q) for q in by_question(calls)}
    for question, why in got.items():
        wanted = case.expect[question]
        if wanted is None:
            assert why is None, f"{question} should keep its points: {why}"
        else:
            assert why is not None and re.search(wanted, why), f"{question}: {why!r} does not say {wanted!r}"
    if case.note:
        assert found.note and re.search(case.note, found.note), found.note
    if case.cell_error:
        cell, pattern = case.cell_error
        assert any(cell in (None, c) and re.search(pattern, e) for c, e in found.cell_errors), found.cell_errors
    if case.seconds:
        assert found.seconds < case.seconds, found.seconds


FIFO = code("""
    import os
    results = os.path.join(os.path.dirname(os.getcwd()), "runtime", "verdict-results.jsonl")
    os.unlink(results)  # the harness keeps writing to the file it opened, now unlinked
    os.mkfifo(results)
    """)


def test_a_fifo_in_place_of_the_results_file_does_not_hang_the_grader():
    nb = notebook(EX1, after={"setup": [FIFO]}, keep={"setup", "q1_answer"})
    calls = calls_of(EX1, "q1_tests")
    run(EX1, notebook(EX1, keep={"setup", "q1_answer"}), calls)  # the factory warm: the next run takes a second
    found: dict = {}
    grading = threading.Thread(target=lambda: found.update(run=run(EX1, nb, calls)), daemon=True)
    grading.start()
    grading.join(20)
    hung = grading.is_alive()
    if hung:  # wake the grader: open the FIFO's other end, so that its open() returns and its read() ends
        for factory in [f for factories in list(warm._FACTORIES.values()) for f in factories]:
            try:
                os.close(os.open(factory.slot / "runtime" / RESULTS_FILE, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        grading.join(30)
    assert not hung, "the grader hung reading the results file"
    assert outcome(found["run"], judge(calls, found["run"].outputs), "q1_tests") is not None
