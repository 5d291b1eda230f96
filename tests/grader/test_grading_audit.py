"""The static audit of answers: a report of delegation and patched test machinery, however the notebook names them.

Each case adds a few lines to an exercise's solution (an answer cell, or a cell the student
added) and checks what the audit reports and which questions it zeroes: only what a question's
prose rules out (`OFF_LIMITS_IN`) costs points, everything else is reported for the instructor
(the points come from the grader's own check); ordinary code and the course's own notebooks must
raise nothing. Fast: nothing runs, the audit only reads the cells.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest

from course_grader.audit import REPORTED, audit_cells
from course_grader.submission import cell_kind, grade_id, resolve_duplicates


ROOT = Path(__file__).resolve().parents[2]
BLOCKS, CONVNEXT, YOLO, SSD = ("01_blocks_and_resnets", "02_convnext", "03_anchors_and_yolo_decoding",
                               "04_ssd_matching_and_focal_loss")
FASTER_RCNN, VIDEO = "05_faster_rcnn_step_by_step", "06_pretrained_detectors_on_video"
ASSIGNMENTS = (BLOCKS, CONVNEXT, YOLO, SSD, FASTER_RCNN, VIDEO)
HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


def _solution(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)


def _released(assignment: str) -> nbformat.NotebookNode:
    """The solution as a submission holds it: test cells without their hidden part."""
    nb = _solution(assignment)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "tests":
            cell.source = HIDDEN_TESTS.sub("", cell.source)
    return nb


def _index(nb, gid: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if grade_id(c) == gid)


def _with_answer(assignment: str, answer: str, code: str) -> nbformat.NotebookNode:
    nb = _solution(assignment)
    nb.cells[_index(nb, answer)].source += "\n" + code
    return nb


def _with_added_cell(nb, code: str, after: str) -> nbformat.NotebookNode:
    """A cell the student added (no grading metadata) right after cell ``after``."""
    nb.cells.insert(_index(nb, after) + 1, nbformat.v4.new_code_cell(code))
    return nb


def _messages(audit) -> list[str]:
    return [f.message for f in audit.findings]


def _audit(nb, *, reported: set[str], zeroed: set[str] = frozenset(), source=None) -> list[str]:
    """The audit's messages, once its zeroed and reported questions are as expected and every message
    ends as its kind says: "<question> scores 0" for what costs points, `REPORTED` for the rest."""
    audit = audit_cells(nb, source)
    messages = _messages(audit)
    assert audit.zeroed_questions == set(zeroed), messages
    assert audit.reported_questions == reported, messages
    for finding in audit.findings:
        if finding.zeroes:
            assert finding.message.endswith(f": {finding.question} scores 0"), finding.message
            assert "(which the question asks to compute by hand)" in finding.message, finding.message
        else:
            assert finding.message.endswith(f": {REPORTED}") and "scores 0" not in finding.message, finding.message
    return messages


def _question(answer: str) -> str:
    return answer.replace("_answer", "_tests")


# --- 1. modules under another name ---------------------------------------------------------------

MODULE_ALIASES = [
    (SSD, "q5_answer", "import torchvision.ops as tvo\ndef _keep(b, s):\n    return tvo.nms(b, s, 0.5)",
     "tvo.nms (torchvision.ops.nms)"),
    (SSD, "q1_answer", "from torchvision.ops import boxes as box_ops\n_iou = box_ops.box_iou",
     "torchvision.ops.boxes.box_iou"),
    (SSD, "q1_answer", "import torchvision.ops.boxes as B\n_iou = B.box_iou", "B.box_iou"),
    (SSD, "q3_answer", "from torchvision.ops import focal_loss\n_fl = focal_loss.sigmoid_focal_loss",
     "torchvision.ops.focal_loss.sigmoid_focal_loss"),
    (SSD, "q5_answer", "import course_lib.detection as det\n_nms = det.nms", "course_lib.detection"),
    (BLOCKS, "q2_answer", "import course_lib as cl\n_Block = cl.models.ResidualBlock",
     "cl.models.ResidualBlock (course_lib.models.ResidualBlock)"),
    (SSD, "q5_answer", "t = torch\n_nms = t.ops.torchvision.nms", "torch.ops.torchvision.nms"),
    (SSD, "q5_answer", "import torch as tt\n_nms = tt.ops.torchvision.nms", "torch.ops.torchvision.nms"),
    (SSD, "q5_answer", "import torchvision\nops = torchvision.ops\n_nms = ops.nms", "torchvision.ops.nms"),
    (SSD, "q5_answer", "import torchvision\n_kept = torchvision.ops.nms.__wrapped__", "torchvision.ops.nms"),
]


@pytest.mark.parametrize("assignment, answer, code, expected", MODULE_ALIASES)
def test_a_reference_reached_through_a_module_alias_is_reported(assignment, answer, code, expected):
    messages = _audit(_with_answer(assignment, answer, code), reported={_question(answer)})
    assert any(expected in m for m in messages), messages


def test_an_alias_bound_in_an_added_cell_is_followed_into_the_answers():
    for alias in ("import torchvision.ops as tvo", "from torchvision import ops as tvo",
                  "import torchvision\ntvo = torchvision.ops"):
        nb = _with_added_cell(_with_answer(SSD, "q5_answer", "_nms = tvo.nms"), alias, after="setup")
        messages = _audit(nb, reported={"q5_tests"})
        assert any("q5_answer uses tvo.nms (torchvision.ops.nms)" in m for m in messages), messages


# --- 2. torchvision's detection internals and model blocks ---------------------------------------

INTERNALS = [
    (SSD, "q1_answer", "from torchvision.ops.boxes import _box_inter_union"),
    (SSD, "q1_answer", "import torchvision\n_iu = torchvision.ops.boxes._box_inter_union"),
    (SSD, "q2_answer", "from torchvision.models.detection._utils import Matcher"),
    (SSD, "q2_answer", "from torchvision.models.detection._utils import SSDMatcher as M"),
    (SSD, "q3_answer", "from torchvision.models.detection.retinanet import sigmoid_focal_loss"),
    (SSD, "q3_answer", "import torchvision\n_fl = torchvision.models.detection.retinanet.sigmoid_focal_loss"),
    (SSD, "q4_answer", "from torchvision.models.detection._utils import BoxCoder"),
    (SSD, "q4_answer", "from torchvision.models.detection import _utils as det_utils\n_enc = det_utils.encode_boxes"),
    (SSD, "q4_answer", "import torchvision\n_coder = torchvision.models.detection._utils.BoxCoder((10, 10, 5, 5))"),
    (SSD, "q5_answer", "from torchvision.ops.boxes import _batched_nms_vanilla"),
    (BLOCKS, "q2_answer", "from torchvision.models.resnet import BasicBlock"),
    (BLOCKS, "q2_answer", "import torchvision\nclass _Block(torchvision.models.resnet.BasicBlock):\n    pass"),
    (BLOCKS, "q3_answer", "from torchvision.models import resnet\n_Block = resnet.Bottleneck"),
    (CONVNEXT, "q2_answer", "from torchvision.models.convnext import LayerNorm2d as _TorchvisionLayerNorm2d"),
    (CONVNEXT, "q3_answer", "from torchvision.ops import stochastic_depth"),
    (CONVNEXT, "q3_answer", "import torchvision\n_drop = torchvision.ops.stochastic_depth.StochasticDepth"),
    (CONVNEXT, "q4_answer", "from torchvision.models.convnext import CNBlock"),
]


@pytest.mark.parametrize("assignment, answer, code", INTERNALS)
def test_torchvisions_internals_and_blocks_count_as_the_reference(assignment, answer, code):
    messages = _audit(_with_answer(assignment, answer, code), reported={_question(answer)})
    assert messages and all(m.startswith(answer) and "(the reference it should re-implement)" in m for m in messages)


LAYER_NORM_BY_TORCH = '''
class LayerNorm2d(nn.Module):
    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        y = {call}(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)
'''


@pytest.mark.parametrize("call", ["F.layer_norm", "torch.nn.functional.layer_norm", "torch.layer_norm", "ln",
                                  "getattr(F, 'layer_norm')", "F.__dict__['layer_norm']",
                                  "getattr(F, 'layer' + '_norm')", "vars(torch)[''.join(['layer', '_norm'])]"])
def test_layer_norm2d_must_compute_mean_and_variance_itself(call):
    code = "import torch.nn.functional as F\nfrom torch.nn.functional import layer_norm as ln\n"
    messages = _audit(_with_answer(CONVNEXT, "q2_answer", code + LAYER_NORM_BY_TORCH.format(call=call)),
                      reported=set(), zeroed={"q2_tests"})
    assert any("in LayerNorm2d (which the question asks to compute by hand): q2_tests scores 0" in m
               for m in messages), messages
    assert not any("scores 0" in m and "LayerNorm2d" not in m for m in messages), messages


def test_layer_norm2d_as_a_subclass_of_nn_layer_norm_is_caught_too():
    code = "class LayerNorm2d(nn.LayerNorm):\n    def forward(self, x):\n        return super().forward(x)\n"
    messages = _audit(_with_answer(CONVNEXT, "q2_answer", code), reported=set(), zeroed={"q2_tests"})
    assert any("uses nn.LayerNorm in LayerNorm2d" in m for m in messages), messages


def test_layer_norm2d_may_have_its_own_layer_norm_method_and_compare_itself_with_torch():
    code = ("class LayerNorm2d(nn.Module):\n    def __init__(self, channels, eps=1e-6):\n        super().__init__()\n"
            "        self.eps = eps\n        self.weight = nn.Parameter(torch.ones(channels))\n"
            "        self.bias = nn.Parameter(torch.zeros(channels))\n"
            "    def layer_norm(self, x):\n        mean = x.mean(dim=1, keepdim=True)\n"
            "        return (x - mean) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)\n"
            "    def forward(self, x):\n"
            "        return self.layer_norm(x) * self.weight[:, None, None] + self.bias[:, None, None]\n"
            "_x = torch.randn(2, 8, 3, 3)\n"
            "_same = torch.allclose(LayerNorm2d(8)(_x), nn.LayerNorm(8)(_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))\n")
    assert audit_cells(_with_answer(CONVNEXT, "q2_answer", code)).findings == []


FRAMES_BY_TORCHVISION = '''
from torchvision.transforms import ToTensor
from torchvision.transforms.functional import to_tensor
from torchvision.transforms.v2.functional import to_dtype
from torchvision.transforms.v2 import functional as TF2
def frames_to_batches(clip, batch_size, device=None):
    frames = [{call} for frame in clip]
    batches = [torch.stack(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    return [b if device is None else b.to(device) for b in batches]
'''


@pytest.mark.parametrize("call", ["to_tensor(frame.numpy())", "ToTensor()(frame.numpy())",
                                  "to_dtype(frame.permute(2, 0, 1), torch.float32, scale=True)",
                                  "getattr(TF2, 'to_' + 'dtype')(frame.permute(2, 0, 1), torch.float32, scale=True)"])
def test_frames_to_batches_must_convert_uint8_itself(call):
    code = FRAMES_BY_TORCHVISION.format(call=call)
    messages = _audit(_with_answer(VIDEO, "q2_answer", code), reported=set(), zeroed={"q2_tests"})
    assert any("in frames_to_batches (which the question asks to compute by hand)" in m for m in messages), messages
    assert not any("by a computed name: " in m for m in messages), messages  # decided, not left for review


def test_to_tensor_stays_ordinary_code_outside_frames_to_batches():
    code = "from torchvision.transforms.functional import to_tensor\n_first = to_tensor(torch.zeros(4, 4, 3).numpy())\n"
    assert audit_cells(_with_answer(VIDEO, "q1_answer", code)).findings == []
    assert audit_cells(_with_answer(BLOCKS, "q1_answer", code)).findings == []


def test_an_added_cell_that_redefines_layer_norm2d_with_torchs_zeroes_question_2():
    redefinition = "class LayerNorm2d(nn.LayerNorm):\n    def forward(self, x):\n" \
                   "        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)"
    nb = _with_added_cell(_solution(CONVNEXT), redefinition, after="q2_answer")
    messages = _audit(nb, reported=set(), zeroed={"q2_tests"})
    added = f"cell {_index(nb, 'q2_answer') + 2}"
    assert messages == [f"{added} redefines LayerNorm2d of q2_answer with torch.nn.LayerNorm (which the question "
                        "asks to compute by hand): q2_tests scores 0"], messages


@pytest.mark.parametrize("where, code", [
    ("q2_answer", "LayerNorm2d = nn.LayerNorm"),
    ("q2_answer", "from torch.nn import LayerNorm as LayerNorm2d"),
    ("added", "import torch.nn.functional as F\nclass LayerNorm2d(nn.Module):\n    def __init__(self, c, eps=1e-6):\n"
              "        super().__init__()\n        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), "
              "nn.Parameter(torch.zeros(c)), eps\n    def forward(self, x):\n"
              "        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)"
              ".permute(0, 3, 1, 2)"),
])
def test_what_a_question_rules_out_costs_its_points_however_the_definition_is_bound(where, code):
    nb = _with_added_cell(_solution(CONVNEXT), code, after="q2_answer") if where == "added" \
        else _with_answer(CONVNEXT, where, code)
    messages = _audit(nb, reported=set(), zeroed={"q2_tests"})
    assert all("LayerNorm2d" in m for m in messages), messages


def test_what_counts_is_the_definition_in_force_where_the_questions_tests_stand():
    # The grader's own check calls LayerNorm2d where q2_tests stands: a cell between the answer and the
    # tests replaces the answer's; a cell after the tests does not (an answer cell still costs its own points).
    later = LAYER_NORM_BY_TORCH.format(call="torch.layer_norm")
    messages = _audit(_with_answer(CONVNEXT, "q4_answer", later), reported=set(), zeroed={"q4_tests"})
    assert messages == ["q4_answer uses torch.layer_norm in LayerNorm2d (which the question asks to compute by hand): "
                        "q4_tests scores 0"], messages
    nb = _with_added_cell(_solution(CONVNEXT), later, after="q2_tests")
    assert _audit(nb, reported=set()) == [f"cell {_index(nb, 'q2_tests') + 2} uses torch.layer_norm in LayerNorm2d "
                                          f"(which the question asks to compute by hand): {REPORTED}"]
    nb = _with_added_cell(_solution(CONVNEXT), later, after="q2_answer")
    assert _audit(nb, reported=set(), zeroed={"q2_tests"}) == [
        f"cell {_index(nb, 'q2_answer') + 2} redefines LayerNorm2d of q2_answer with torch.layer_norm (which the "
        "question asks to compute by hand): q2_tests scores 0"]


def test_layer_norm2d_written_in_an_added_cell_instead_of_its_answer_cell_is_judged_too():
    nb = _solution(CONVNEXT)
    nb.cells[_index(nb, "q2_answer")].source = "# LayerNorm2d: in the next cell"
    nb = _with_added_cell(nb, "class LayerNorm2d(nn.LayerNorm):\n    pass", after="q2_answer")
    messages = _audit(nb, reported=set(), zeroed={"q2_tests"}, source=_solution(CONVNEXT))
    added = f"cell {_index(nb, 'q2_answer') + 2}"
    assert messages == [f"{added} defines LayerNorm2d of q2_answer with torch.nn.LayerNorm (which the question asks "
                        "to compute by hand): q2_tests scores 0"], messages
    honest = _solution(CONVNEXT)  # the answer's own code, moved below it, costs nothing
    answer = honest.cells[_index(honest, "q2_answer")]
    moved, answer.source = answer.source, "# LayerNorm2d: in the next cell"
    assert audit_cells(_with_added_cell(honest, moved, after="q2_answer"), _solution(CONVNEXT)).findings == []


def test_a_scratch_layer_norm2d_before_the_answer_is_reported_since_the_answer_replaces_it():
    scratch = "class LayerNorm2d(nn.LayerNorm):\n    pass"
    messages = _audit(_with_added_cell(_solution(CONVNEXT), scratch, after="setup"), reported=set())
    assert messages == [f"cell 5 uses nn.LayerNorm in LayerNorm2d (which the question asks to compute by hand): "
                        f"{REPORTED}"], messages


DEEP = "x = " + "-" * 100_000 + "1"  # too deep for the parser: the audit cannot read the cell


def test_a_cell_the_audit_cannot_read_costs_points_only_where_a_question_rules_something_out():
    nb = _solution(CONVNEXT)
    nb.cells[_index(nb, "q2_answer")].source += "\n" + DEEP
    nb.cells[_index(nb, "q1_answer")].source += "\n" + DEEP
    messages = _audit(nb, reported={"q1_tests"}, zeroed={"q2_tests"}, source=_solution(CONVNEXT))
    assert sorted(messages) == [
        f"q1_answer could not be read: nested too deeply: {REPORTED}",
        "q2_answer could not be read: nested too deeply, so the audit cannot check what it defines as LayerNorm2d "
        "(which the question asks to compute by hand): q2_tests scores 0"], messages
    after = _with_added_cell(_solution(CONVNEXT), DEEP, after="q2_answer")  # it might redefine LayerNorm2d
    _audit(after, reported=set(), zeroed={"q2_tests"}, source=_solution(CONVNEXT))
    _audit(_with_answer(CONVNEXT, "q4_answer", DEEP), reported={"q4_tests"}, source=_solution(CONVNEXT))
    _audit(_with_added_cell(_solution(CONVNEXT), DEEP, after="q2_tests"), reported=set(), source=_solution(CONVNEXT))
    before = _with_added_cell(_solution(CONVNEXT), DEEP, after="setup")  # the answer below replaces anything
    assert _audit(before, reported=set(), source=_solution(CONVNEXT)) == [
        f"cell 5 could not be read: nested too deeply: {REPORTED}"]


def test_the_convnext_block_may_use_layer_norm_from_torch():
    # The prose of question 4 allows nn.LayerNorm (the solution uses it); F.layer_norm is as legitimate.
    code = "import torch.nn.functional as F\n_norm = F.layer_norm\n_module = nn.LayerNorm(4, eps=1e-6)"
    assert audit_cells(_with_answer(CONVNEXT, "q4_answer", code)).findings == []


# --- 3. look-ups by name -------------------------------------------------------------------------

@pytest.mark.parametrize("answer, code", [
    ("q5_answer", "import torchvision\n_nms = getattr(torchvision.ops, 'nms')"),
    ("q5_answer", "import torchvision.ops as tvo\n_nms = getattr(tvo, 'nms', None)"),
    ("q1_answer", "import course_lib as cl\n_det = getattr(cl, 'detection')"),
    ("q1_answer", "import course_lib\n_iou = getattr(getattr(course_lib, 'detection'), 'box_iou')"),
    ("q5_answer", "import torchvision\n_nms = object.__getattribute__(torchvision.ops, 'nms')"),
    ("q5_answer", "import torchvision\n_nms = torchvision.ops.__getattribute__('nms')"),
    ("q5_answer", "import torchvision\n_nms = torchvision.ops.__dict__['nms']"),
    ("q5_answer", "import torchvision\n_nms = torchvision.ops.__dict__.get('nms')"),
])
def test_a_look_up_by_a_constant_name_is_delegation(answer, code):
    messages = _audit(_with_answer(SSD, answer, code), reported={_question(answer)})
    assert all("(the reference it should re-implement)" in m for m in messages), messages


@pytest.mark.parametrize("code", [
    "import torchvision\nname = 'nms'\n_nms = getattr(torchvision.ops, name)",
    "import course_lib as cl\n_f = getattr(cl, ''.join(['detec', 'tion']))",
    "import sys\nname = 'torchvision.ops'\n_ops = sys.modules[name]",
    "import sys\n_ops = sys.modules.get('torchvision' + '.ops')",
    "import torchvision\nname = 'nms'\n_nms = torchvision.ops.__dict__[name]",
    "import __main__\nname = 'reference_box_iou'\n_iou = getattr(__main__, name)",
    "import importlib\nname = 'torchvision.ops'\n_ops = importlib.import_module(name)",
    "name = 'torchvision'\n_tv = __import__(name)",
])
def test_a_look_up_by_a_computed_name_is_reported_for_review(code):
    messages = _audit(_with_answer(SSD, "q5_answer", code), reported=set())
    assert len(messages) == 1 and "q5_answer looks up" in messages[0], messages
    assert messages[0].endswith(f"by a computed name: {REPORTED}")


def test_look_ups_in_ordinary_objects_and_allowed_modules_are_fine():
    code = ("class _Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.conv = nn.Conv2d(1, 1, 1)\n    def forward(self, x, name='conv'):\n"
            "        return getattr(self, name)(x)\n"
            "_check = getattr(checks, 'check_' + 'close')\n_cache = {}\n_hit = _cache.get('nms')\n"
            "_key = 'x'\n_value = {'x': 1}[_key]\n_dtype = getattr(torch, 'float' + '32')\n")
    assert audit_cells(_with_answer(SSD, "q5_answer", code)).findings == []


# --- 4. names bound in other cells ---------------------------------------------------------------

USES_HELPER = "_kept = helper(torch.zeros(0, 4), torch.zeros(0), 0.5)"


@pytest.mark.parametrize("added", [
    "from torchvision.ops import nms as helper",
    "import torchvision\nhelper = torchvision.ops.nms",
    "import course_lib.detection\nhelper = course_lib.detection.nms",
    "import torchvision\ndef helper(boxes, scores, threshold):\n"
    "    return torchvision.ops.nms(boxes, scores, threshold)",
    "from torchvision.ops import nms as _tv_nms\ndef helper(boxes, scores, threshold):\n"
    "    return _tv_nms(boxes, scores, threshold)",
    "from torchvision.ops import nms\ndef _inner(b, s, t):\n    return nms(b, s, t)\n"
    "class helper:\n    def __new__(cls, b, s, t):\n        return _inner(b, s, t)",
])
def test_a_reference_bound_in_an_added_cell_is_reported_for_every_answer_that_uses_it(added):
    nb = _with_answer(SSD, "q5_answer", USES_HELPER)
    nb.cells[_index(nb, "q1_answer")].source += "\n_unused = helper"
    nb = _with_added_cell(nb, added, after="setup")
    messages = _audit(nb, reported={"q1_tests", "q5_tests"})
    assert any(m.startswith("q5_answer uses helper") for m in messages), messages
    assert any(m.startswith("cell 5 ") for m in messages), messages


def test_the_helper_may_sit_in_a_later_added_cell_since_functions_read_names_when_called():
    nb = _with_answer(SSD, "q5_answer", "def _keep(b, s):\n    return helper(b, s, 0.5)")
    nb = _with_added_cell(nb, "from torchvision.ops import nms as helper", after="q5_answer")
    _audit(nb, reported={"q5_tests"})


def test_a_reference_imported_by_one_answer_and_used_by_another_is_reported_for_both():
    nb = _with_answer(SSD, "q1_answer", "from torchvision.ops import box_iou as _iou")
    nb.cells[_index(nb, "q5_answer")].source += "\n_overlaps = _iou(torch.zeros(1, 4), torch.zeros(1, 4))"
    messages = _audit(nb, reported={"q1_tests", "q5_tests"})
    assert any("q5_answer uses _iou, torchvision.ops.box_iou imported in q1_answer" in m for m in messages), messages


def test_an_added_cell_that_redefines_an_earlier_answer_with_the_reference_is_reported_for_it():
    redefinition = "import torchvision\ndef non_max_suppression(boxes, scores, iou_threshold):\n" \
                   "    return torchvision.ops.nms(boxes, scores, iou_threshold)"
    messages = _audit(_with_added_cell(_solution(SSD), redefinition, after="q5_answer"), reported={"q5_tests"})
    assert any("redefines non_max_suppression of q5_answer" in m for m in messages), messages
    alias = "from torchvision.ops import nms as non_max_suppression"
    _audit(_with_added_cell(_solution(SSD), alias, after="q5_answer"), reported={"q5_tests"})


def test_a_redefinition_after_the_tests_is_also_reported_for_the_answers_that_call_it():
    # iou_matrix passes its own tests, then becomes torchvision's for the questions that call it.
    redefinition = "from torchvision.ops import box_iou as iou_matrix"
    nb = _with_added_cell(_solution(SSD), redefinition, after="q1_tests")
    messages = _audit(nb, reported={"q1_tests", "q2_tests", "q5_tests"})
    assert any(m.startswith("q2_answer uses iou_matrix, torchvision.ops.box_iou") for m in messages), messages


def test_an_added_cell_before_the_answer_that_defines_it_again_is_reported_for_no_question():
    # A scratch cell tried torchvision first; the answer below defines its own iou_matrix, used by later answers.
    scratch = "from torchvision.ops import box_iou as iou_matrix\nprint(iou_matrix(LESSON_BOXES, ANCHORS_4x4))"
    messages = _audit(_with_added_cell(_solution(SSD), scratch, after="setup"), reported=set())
    assert len(messages) == 1 and messages[0].startswith("cell 5 imports box_iou from torchvision.ops"), messages


def test_an_import_inside_an_answers_function_stays_in_that_function():
    # q1 delegates (reported); q4 defines its own box_iou, which q5 may use.
    delegating = "def _iou(a, b):\n    from torchvision.ops import box_iou\n    return box_iou(a, b)"
    nb = _with_answer(SSD, "q1_answer", delegating)
    nb.cells[_index(nb, "q4_answer")].source += "\ndef box_iou(a, b):\n    return iou_matrix(a, b)"
    nb.cells[_index(nb, "q5_answer")].source += "\n_overlaps = box_iou(torch.zeros(1, 4), torch.zeros(1, 4))"
    _audit(nb, reported={"q1_tests"})


def test_a_star_import_in_an_added_cell_binds_the_references_it_brings():
    nb = _with_answer(SSD, "q5_answer", "_kept = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)")
    _audit(_with_added_cell(nb, "from torchvision.ops import *", after="setup"), reported={"q5_tests"})
    nb = _with_answer(SSD, "q2_answer", "_matches = match_anchors")
    _audit(_with_added_cell(nb, "from course_lib.detection import *", after="setup"), reported={"q2_tests"})


def test_a_star_import_does_not_claim_the_answers_own_parameters_and_locals():
    # torchvision.ops exports `boxes` and `nms`; the solution's answers use such names for their own values.
    own = "def _own(boxes, nms):\n    return boxes[nms]\n_total = [box_area for box_area in [1]]"
    nb = _with_answer(SSD, "q5_answer", own)
    messages = _audit(_with_added_cell(nb, "from torchvision.ops import *", after="setup"), reported=set())
    assert len(messages) == 1 and messages[0].startswith("cell 5 imports * from torchvision.ops"), messages


def test_from_course_lib_import_star_only_brings_the_allowed_helpers():
    nb = _with_added_cell(_solution(SSD), "from course_lib import *\nfrom course_lib.checks import *", after="setup")
    assert audit_cells(nb).findings == []


# --- the hidden tests' names (the assignment's source) --------------------------------------------

@pytest.mark.parametrize("assignment, answer, code, expected", [
    (SSD, "q2_answer", "_iou = reference_box_iou", "course_lib.detection.box_iou"),
    (SSD, "q6_answer", "def _loss(*args):\n    return reference_ssd_loss(*args)", "course_lib.detection.ssd.ssd_loss"),
    (YOLO, "q5_answer", "def _decode(output):\n    return _yolo.decode(output)", "course_lib.detection.yolo.decode"),
    (BLOCKS, "q3_answer", "_Block = ReferenceResidualBlock", "course_lib.models.ResidualBlock"),
])
def test_names_that_the_hidden_tests_bind_are_the_reference_too(assignment, answer, code, expected):
    nb = _released(assignment)
    nb.cells[_index(nb, answer)].source += "\n" + code
    _audit(nb, reported=set())  # a submission alone does not show the hidden tests
    messages = _audit(nb, reported={_question(answer)}, source=_solution(assignment))
    assert any(expected in m for m in messages), messages


def test_what_the_set_up_gives_stays_allowed_when_the_tests_import_it_again():
    source = _solution(SSD)
    tests = source.cells[_index(source, "q6_tests")]
    tests.source = tests.source.replace("### END HIDDEN TESTS", "from course_lib.detection import grid_anchors\n"
                                                                "### END HIDDEN TESTS")
    nb = _released(SSD)
    nb.cells[_index(nb, "q6_answer")].source += "\n_anchors = grid_anchors()"
    assert audit_cells(nb, source).findings == []


def test_a_name_added_to_the_set_up_cell_does_not_make_a_hidden_tests_name_allowed():
    # Edited read-only cells are restored when graded: the tests' reference_box_iou is what the answer gets.
    nb = _released(SSD)
    nb.cells[_index(nb, "setup")].source += "\nreference_box_iou = None"
    nb.cells[_index(nb, "q2_answer")].source += "\n_iou = reference_box_iou"
    _audit(nb, reported={"q2_tests"}, source=_solution(SSD))


# --- 5. other ways around ------------------------------------------------------------------------

@pytest.mark.parametrize("answer, code", [
    ("q5_answer", "import sys\n_nms = sys.modules['torchvision.ops'].nms"),
    ("q5_answer", "import sys\n_det = sys.modules.get('course_lib.detection')\n_nms = _det.nms"),
    ("q1_answer", "import sys as system\n_modules = system.modules\n_iou = _modules['course_lib.detection'].box_iou"),
    ("q1_answer", "def iou_matrix(a, b):\n    import torchvision\n    return torchvision.ops.box_iou(a, b)"),
    ("q1_answer", "def iou_matrix(a, b, op=None):\n    from torchvision.ops import box_iou\n    return box_iou(a, b)"),
    ("q3_answer", "import torchvision\n_fl = (lambda: torchvision.ops.sigmoid_focal_loss)()"),
    ("q5_answer", "_nms = checks.torch.ops.torchvision.nms"),
    ("q5_answer", "_nms = F.torch.ops.torchvision.__getattr__('nms')"),
    ("q2_answer", "import __main__\n_iou = __main__.reference_box_iou"),
    ("q2_answer", "import sys\n_iou = getattr(sys.modules['__main__'], 'reference_box_iou')"),
    ("q2_answer", "def _iou(a, b):\n    return locals().get('x') or locals()['reference_box_iou'](a, b)"),
    ("q2_answer", "_iou = get_ipython().user_ns['reference_box_iou']"),
    ("q2_answer", "_shell = get_ipython()\n_iou = _shell.user_global_ns.get('reference_box_iou')"),
])
def test_other_roads_to_the_reference_are_delegation(answer, code):
    _audit(_with_answer(SSD, answer, code), reported={_question(answer)})


@pytest.mark.parametrize("code", [
    "import torchvision\n%time _nms = torchvision.ops.nms",
    "import torchvision\n_nms = %time torchvision.ops.nms",
    "import torchvision\n%timeit -n1 -r 1 _nms = torchvision.ops.nms",
    "%%capture captured\nfrom torchvision.ops import nms",
    "torch?\nfiles = !ls\nfrom torchvision.ops import nms",  # IPython syntax does not hide the rest of the cell
])
def test_ipython_syntax_is_read_as_the_kernel_reads_it(code):
    nb = _solution(SSD)
    cell = nb.cells[_index(nb, "q5_answer")]
    cell.source = code + "\n" + cell.source
    _audit(nb, reported={"q5_tests"})


def test_magics_and_shell_commands_that_run_no_python_raise_nothing():
    code = "%matplotlib inline\n!ls\nfiles = !ls\ntorch.zeros?\n%timeit iou_matrix(LESSON_BOXES, ANCHORS_4x4)\n"
    nb = _solution(SSD)
    cell = nb.cells[_index(nb, "q1_answer")]
    cell.source = code + cell.source
    nb = _with_added_cell(nb, "%%bash\necho torchvision.ops.nms\n", after="setup")
    assert audit_cells(nb).findings == []


@pytest.mark.parametrize("code, expected", [
    ("import torchvision\n_ops = vars(torchvision.ops)['nms']",
     "uses vars(torchvision.ops)['nms'] (torchvision.ops.nms)"),
    ("_nms = __import__('torchvision').ops.nms", "(torchvision.ops.nms)"),
    ("_nms = __import__('torchvision.ops', fromlist=['nms']).nms", "(torchvision.ops.nms)"),
    ("import builtins\n_nms = builtins.__import__('torchvision').ops.nms", "(torchvision.ops.nms)"),
    ("import importlib\n_nms = importlib.import_module('torchvision.ops').nms", "(torchvision.ops.nms)"),
    ("from importlib import import_module\n_ops = import_module('torchvision.ops')\n_nms = _ops.nms",
     "uses _ops.nms (torchvision.ops.nms)"),
])
def test_imports_and_namespaces_reached_through_the_interpreter_are_followed(code, expected):
    messages = _audit(_with_answer(SSD, "q5_answer", code), reported={"q5_tests"})
    assert any(expected in m for m in messages), messages


@pytest.mark.parametrize("code", [
    "import torchvision\n_ops = vars(torchvision.ops)",
    "_torchvision = __import__('torchvision')",
    "import importlib\n_ops = importlib.import_module('torchvision.ops')",
    "locals()['_scratch'] = None\nglobals()['plt'] = None",
])
def test_the_interpreters_own_functions_are_ordinary_code(code):
    # What used to void the notebook (vars, __import__, importlib, writing locals()) reaches no reference here.
    assert audit_cells(_with_answer(SSD, "q5_answer", code)).findings == []


# --- 6. the test machinery: reported, the points come from the grader's own check -----------------

MACHINERY = [
    ("torch.allclose = lambda *a, **k: True", "replaces torch.allclose"),
    ("import torch as t\nt.allclose = lambda *a, **k: True", "replaces t.allclose"),
    ("del torch.allclose", "deletes torch.allclose"),
    ("torch.allclose, _x = print, 1", "replaces torch.allclose"),
    ("torch.Tensor.__eq__ = lambda a, b: True", "replaces torch.Tensor.__eq__"),
    ("torch.nn.Module.__call__ = lambda self, x: x", "replaces torch.nn.Module.__call__"),
    ("F.mse_loss = lambda a, b: a.sum() * 0", "replaces F.mse_loss"),
    ("checks.check_close = print", "replaces checks.check_close"),
    ("import course_lib\ncourse_lib.checks.check_equal = print", "replaces course_lib.checks.check_equal"),
    ("setattr(checks, 'check_equal', print)", "calls setattr on checks"),
    ("delattr(torch, 'allclose')", "calls delattr on torch"),
    ("import torchvision\ntorchvision.ops.box_iou = lambda a, b: a", "replaces torchvision.ops.box_iou"),
    ("import traceback\ntraceback.format_exception = print", "replaces traceback.format_exception"),
    ("import builtins\nbuiltins.isinstance = lambda a, b: True", "replaces builtins.isinstance"),
    ("__builtins__.isinstance = lambda a, b: True", "replaces __builtins__.isinstance"),
    ("__builtins__['isinstance'] = lambda a, b: True", "replaces __builtins__['isinstance']"),
    ("__builtins__ = {}", "replaces __builtins__"),
    ("import sys\nsys.excepthook = print", "replaces sys.excepthook"),
    ("import sys\nsys.modules['course_lib.checks'] = None", "replaces sys.modules['course_lib.checks']"),
    ("import sys\ndel sys.modules['torch']", "deletes sys.modules['torch']"),
    ("import sys\nsys.modules.update({'course_lib.checks': None})", "changes sys.modules"),
    ("torch.__dict__['allclose'] = print", "replaces torch.__dict__['allclose']"),
    ("vars(checks).update(check_close=print)", "changes vars(checks)"),
    ("locals()['checks'] = None", "replaces checks through locals()"),
    ("globals()['torch'] = None", "replaces torch through globals()"),
    ("get_ipython().user_ns['checks'] = None", "replaces checks through get_ipython().user_ns"),
    ("import __main__\n__main__.checks = None", "replaces __main__.checks"),
    ("import __main__\nsetattr(__main__, 'F', None)", "calls setattr on __main__"),
    ("import sys\nsys.settrace(print)", "calls sys.settrace"),
    ("from sys import setprofile\nsetprofile(print)", "calls setprofile"),
    ("import threading\nthreading.settrace(print)", "calls threading.settrace"),
    ("get_ipython().showtraceback = print", "replaces get_ipython().showtraceback"),
    ("_shell = get_ipython()\n_shell._showtraceback = print",
     "replaces _shell._showtraceback (get_ipython()._showtraceback)"),
    ("get_ipython().set_custom_exc((Exception,), print)", "uses get_ipython().set_custom_exc"),
    ("get_ipython().events.register('pre_run_cell', print)", "calls get_ipython().events.register"),
    ("get_ipython().ast_transformers.append(None)", "uses get_ipython().ast_transformers"),
    ("from IPython.core.interactiveshell import InteractiveShell\nInteractiveShell.showtraceback = print",
     "replaces InteractiveShell.showtraceback"),
    ("def _f():\n    pass\n_f.__code__ = print.__call__.__code__", "replaces _f.__code__"),
    ("import inspect\ninspect.currentframe().f_globals['checks'] = None",
     "replaces inspect.currentframe().f_globals['checks']"),
    ("from unittest import mock\nmock.patch('torch.allclose', print).start()",
     "patches torch.allclose with mock.patch"),
    ("import unittest.mock\nunittest.mock.patch.object(checks, 'check_close').start()",
     "patches checks with unittest.mock.patch.object"),
]


@pytest.mark.parametrize("code, expected", MACHINERY)
def test_patching_the_test_machinery_is_reported_and_costs_nothing_by_itself(code, expected):
    for nb in (_with_answer(SSD, "q5_answer", code), _with_added_cell(_solution(SSD), code, after="setup")):
        audit = audit_cells(nb)
        messages = _audit(nb, reported=set())
        assert messages and all(f.patches and f.question is None for f in audit.findings), messages
        assert any(f"{expected} (test machinery): {REPORTED}" in m for m in messages), messages


@pytest.mark.parametrize("assignment, code, expected", [
    (BLOCKS, "import contextlib\ncontextlib.redirect_stdout = print", "contextlib.redirect_stdout"),
    (BLOCKS, "import io as _io\n_io.StringIO = list", "_io.StringIO"),
    (CONVNEXT, "import math\nmath.isclose = print", "math.isclose"),
])
def test_a_module_the_tests_import_is_test_machinery_in_that_exercise(assignment, code, expected):
    # Exercise 1's hidden tests capture prints with contextlib and io, exercise 2's use math: the same
    # lines elsewhere, or without the hidden tests to show it, are ordinary code, like numpy's settings.
    nb = _with_answer(assignment, "q1_answer", code)
    assert _audit(nb, reported=set(), source=_solution(assignment)) == [
        f"q1_answer replaces {expected} (test machinery): {REPORTED}"]
    assert audit_cells(_with_answer(YOLO, "q1_answer", code), _solution(YOLO)).findings == []
    assert audit_cells(_with_answer(SSD, "q1_answer", "import numpy as np\nnp.allclose = print")).findings == []


# --- no false positives --------------------------------------------------------------------------

ORDINARY = '''
import math
import matplotlib.pyplot as plt
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
import torchvision.ops as tvo
from torch import nn
from torchvision import transforms
from torchvision.transforms import functional as TF
import course_lib
from course_lib import checks, get_device
_device = course_lib.get_device()
_conv = torch.nn.Conv2d(3, 8, 3, padding=1)
_loss = F.smooth_l1_loss(torch.zeros(2), torch.ones(2), beta=1 / 9, reduction="sum")
_bce = F.binary_cross_entropy_with_logits(torch.zeros(2), torch.ones(2), reduction="none")
_resize = T.Resize(32)
_to_tensor = transforms.ToTensor()
_flip = TF.hflip(torch.zeros(1, 2, 2))
_log = math.log(1000 / 16)
_layers = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.LayerNorm(3), nn.GELU())
_models = [_conv, _layers]
_models.append(nn.Identity())
_boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
_area = (_boxes[:, 2] - _boxes[:, 0]) * (_boxes[:, 3] - _boxes[:, 1])
_order = torch.sort(torch.rand(3), descending=True, stable=True).indices
checks.check_equal("Q", 1, 1)
fig, ax = plt.subplots()
plt.close(fig)
'''

#: What honest notebooks do besides answering: display, settings, seeds, timing, warnings, introspection.
ORDINARY_SETTINGS = '''
from IPython.display import display, HTML, Markdown
import IPython
from IPython.core.interactiveshell import InteractiveShell
InteractiveShell.ast_node_interactivity = "all"
get_ipython().run_line_magic("matplotlib", "inline")
import matplotlib
import matplotlib.pyplot as plt
plt.rcParams["figure.figsize"] = (8, 4)
plt.rcParams.update({"font.size": 12})
matplotlib.rcParams["axes.grid"] = False
matplotlib.rcParams.update({"axes.grid": True})
import os
os.environ["PYTHONHASHSEED"] = "0"
os.environ.setdefault("COURSE_QUICK", "1")
import inspect
_signature = inspect.signature(print)
_frame = inspect.currentframe()
import warnings
warnings.filterwarnings("ignore", category=UserWarning)
warnings.showwarning = warnings.showwarning
from tqdm.auto import tqdm
for _ in tqdm(range(2)):
    pass
import time
_start = time.perf_counter()
import functools
@functools.lru_cache(maxsize=None)
def _cached(n):
    warnings.warn("computing", stacklevel=2)
    return n * 2
print("shapes", torch.zeros(1), sys.path[:1] if "sys" in dir() else None)
display(Markdown("**done**"), HTML("<b>done</b>"))
torch.manual_seed(0)
torch.set_printoptions(precision=3)
torch.backends.cudnn.deterministic = True
import numpy as np
np.set_printoptions(precision=3)
np.random.seed(0)
np.random.default_rng(0)
import sys
_paths = list(sys.path)
sys.path.append(".")
sys.path[0] = sys.path[0]
sys.setrecursionlimit(2000)
import importlib, traceback, gc, ctypes, builtins
_math = importlib.import_module("math")
_text = traceback.format_exc()
gc.collect()
_names, _vars = globals(), vars()
exec("_x = 1")
_y = eval("1 + 1")
_code = compile("1", "<cell>", "eval")
_caller = sys._getframe().f_code.co_name
_kind = torch.zeros(1).__class__.__name__
_shell = get_ipython()
_shell.run_line_magic("time", "_z = 1")
@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval mode, no gradients. x: (B, C, H, W)."""
    assert x.dim() == 4, f"x must be (B, C, H, W), got {tuple(x.shape)}"
    return model.eval()(x)
'''


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("code", [ORDINARY, ORDINARY_SETTINGS], ids=["code", "settings"])
def test_ordinary_code_in_answers_and_added_cells_raises_nothing(assignment, code):
    nb = _solution(assignment)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "answer":
            cell.source += "\n" + code
    nb = _with_added_cell(nb, code, after="setup")
    assert audit_cells(nb, _solution(assignment)).findings == []


@pytest.mark.parametrize("line", ["%matplotlib inline", "%time _kept = non_max_suppression(LESSON_BOXES[:0], "
                                  "torch.zeros(0), 0.5)", "%timeit -n1 -r1 iou_matrix(LESSON_BOXES, ANCHORS_4x4)",
                                  "%%time\n_overlaps = iou_matrix(LESSON_BOXES, ANCHORS_4x4)"])
def test_magics_in_an_answer_raise_nothing(line):
    nb = _solution(SSD)
    cell = nb.cells[_index(nb, "q5_answer")]
    cell.source = line + "\n" + cell.source  # a cell magic's line comes first
    assert audit_cells(nb, _solution(SSD)).findings == []


def test_pasted_cells_and_helper_cells_raise_nothing():
    """Jupyter keeps grading metadata on paste: an answer and a test cell pasted twice, before and after
    the grader leaves one copy of each its role; a helper cell above an answer, an answer split in two."""
    nb = _released(SSD)
    for gid in ("q1_answer", "q1_tests"):
        index = _index(nb, gid)
        nb.cells.insert(index + 1, nbformat.NotebookNode(copy.deepcopy(nb.cells[index])))
        nb.cells[index + 1].id = f"pasted-{gid}".replace("_", "-")
    helper = "def _corners(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:\n    return boxes.unbind(dim=1)"
    nb = _with_added_cell(nb, helper, after="setup")
    nb = _with_added_cell(nb, "_overlaps = iou_matrix(LESSON_BOXES, LESSON_BOXES)\nprint(_overlaps)", after="q2_answer")
    assert audit_cells(nb, _solution(SSD)).findings == []
    notes = resolve_duplicates(nb, nbformat.read(ROOT / "exercises" / f"{SSD}.ipynb", as_version=4))
    assert len(notes) == 2, notes
    assert audit_cells(nb, _solution(SSD)).findings == []


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_course_notebooks_raise_nothing_with_or_without_their_source(assignment):
    solution = _solution(assignment)
    released = nbformat.read(ROOT / "exercises" / f"{assignment}.ipynb", as_version=4)
    for nb in (solution, released, _released(assignment)):
        assert audit_cells(nb).findings == []
        assert audit_cells(nb, solution).findings == []


# --- the audit's cost grows linearly with an answer's length -------------------------------------

IMPORTS_IOU = "from torchvision.ops import box_iou as _iou"  # in q1_answer: a name that reaches a reference


@pytest.mark.parametrize("code, used", [
    ("_first = _iou\n_iou = None", True),  # read before the answer binds it: the reference
    ("_iou = None\n_after = _iou", False),  # read after the answer's own binding
    ("_iou = _iou", True),  # the right-hand side runs before the name is bound
    ("for _i in range(2):\n    _iou = _i\n_last = _iou", False),  # bound by an earlier (compound) statement
    ("def _f():\n    return _iou\n_iou = None", False),  # a function reads the name when it is called
    ("def _f():\n    return _iou", True),
])
def test_an_answers_own_bindings_count_only_from_where_they_stand(code, used):
    nb = _with_answer(SSD, "q1_answer", IMPORTS_IOU)
    nb.cells[_index(nb, "q5_answer")].source += "\n" + code
    messages = _audit(nb, reported={"q1_tests", "q5_tests"} if used else {"q1_tests"})
    uses = [m for m in messages if m.startswith("q5_answer uses _iou, torchvision.ops.box_iou")]
    assert len(uses) == int(used), messages


def test_a_long_answer_is_audited_in_linear_time_with_the_same_findings():
    """3,000 look-ups by a computed name took minutes when each statement re-read all those before it."""
    import time

    def audited(lines: int) -> tuple[list[str], float]:
        nb = _with_answer(SSD, "q1_answer", IMPORTS_IOU)
        nb.cells[_index(nb, "q5_answer")].source += ("\nimport torchvision\nname = 'nms'\n"
                                                     + "y = getattr(torchvision.ops, name)\n" * lines + "_late = _iou\n")
        started = time.process_time()
        messages = _audit(nb, reported={"q1_tests", "q5_tests"})
        return messages, time.process_time() - started

    small, _ = audited(3)
    assert any(m.startswith("q5_answer looks up getattr(torchvision.ops, name) by a computed name") for m in small)
    assert any(m.startswith("q5_answer uses _iou, torchvision.ops.box_iou imported in q1_answer") for m in small)
    large, seconds = audited(3000)
    assert large == small
    assert seconds < 10.0, f"{seconds:.1f} s of CPU for 3,000 lines"
