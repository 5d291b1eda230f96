"""The static audit of answers: delegation to the reference, however the notebook names it.

Each case adds a few lines to an exercise's solution (an answer cell, or a cell the student
added) and checks which questions the audit zeroes and what it says; ordinary code and the course's
own notebooks must raise nothing. Fast: nothing runs, the audit only reads the cells.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from course_lib.grading.audit import audit_cells
from course_lib.grading.submission import cell_kind, grade_id

pytestmark = pytest.mark.grading

ROOT = Path(__file__).resolve().parents[1]
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


def _zeroes(nb, expected: set[str], *, source=None) -> list[str]:
    audit = audit_cells(nb, source)
    assert audit.zeroed_questions == expected, _messages(audit)
    return _messages(audit)


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
def test_a_reference_reached_through_a_module_alias_zeroes_the_answer(assignment, answer, code, expected):
    messages = _zeroes(_with_answer(assignment, answer, code), {answer.replace("_answer", "_tests")})
    assert any(expected in m for m in messages), messages


def test_an_alias_bound_in_an_added_cell_is_followed_into_the_answers():
    for alias in ("import torchvision.ops as tvo", "from torchvision import ops as tvo",
                  "import torchvision\ntvo = torchvision.ops"):
        nb = _with_added_cell(_with_answer(SSD, "q5_answer", "_nms = tvo.nms"), alias, after="setup")
        messages = _zeroes(nb, {"q5_tests"})
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
    question = answer.replace("_answer", "_tests")
    messages = _zeroes(_with_answer(assignment, answer, code), {question})
    assert all("the reference it should re-implement" in m and m.endswith(f"{question} scores 0") for m in messages)


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


@pytest.mark.parametrize("call", ["F.layer_norm", "torch.nn.functional.layer_norm", "torch.layer_norm", "ln"])
def test_layer_norm2d_must_compute_mean_and_variance_itself(call):
    code = "import torch.nn.functional as F\nfrom torch.nn.functional import layer_norm as ln\n"
    messages = _zeroes(_with_answer(CONVNEXT, "q2_answer", code + LAYER_NORM_BY_TORCH.format(call=call)), {"q2_tests"})
    assert any("in LayerNorm2d (which the question asks to compute by hand)" in m for m in messages), messages


def test_layer_norm2d_as_a_subclass_of_nn_layer_norm_is_caught_too():
    code = "class LayerNorm2d(nn.LayerNorm):\n    def forward(self, x):\n        return super().forward(x)\n"
    messages = _zeroes(_with_answer(CONVNEXT, "q2_answer", code), {"q2_tests"})
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
def frames_to_batches(clip, batch_size, device=None):
    frames = [{call} for frame in clip]
    batches = [torch.stack(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    return [b if device is None else b.to(device) for b in batches]
'''


@pytest.mark.parametrize("call", ["to_tensor(frame.numpy())", "ToTensor()(frame.numpy())",
                                  "to_dtype(frame.permute(2, 0, 1), torch.float32, scale=True)"])
def test_frames_to_batches_must_convert_uint8_itself(call):
    code = FRAMES_BY_TORCHVISION.format(call=call)
    messages = _zeroes(_with_answer(VIDEO, "q2_answer", code), {"q2_tests"})
    assert any("in frames_to_batches (which the question asks to compute by hand)" in m for m in messages), messages


def test_to_tensor_stays_ordinary_code_outside_frames_to_batches():
    code = "from torchvision.transforms.functional import to_tensor\n_first = to_tensor(torch.zeros(4, 4, 3).numpy())\n"
    assert audit_cells(_with_answer(VIDEO, "q1_answer", code)).findings == []
    assert audit_cells(_with_answer(BLOCKS, "q1_answer", code)).findings == []


def test_an_added_cell_that_redefines_layer_norm2d_with_torchs_zeroes_question_2():
    redefinition = "class LayerNorm2d(nn.LayerNorm):\n    def forward(self, x):\n" \
                   "        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)"
    messages = _zeroes(_with_added_cell(_solution(CONVNEXT), redefinition, after="q2_answer"), {"q2_tests"})
    assert any("redefines LayerNorm2d of q2_answer" in m for m in messages), messages


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
    _zeroes(_with_answer(SSD, answer, code), {answer.replace("_answer", "_tests")})


@pytest.mark.parametrize("code", [
    "import torchvision\nname = 'nms'\n_nms = getattr(torchvision.ops, name)",
    "import course_lib as cl\n_f = getattr(cl, ''.join(['detec', 'tion']))",
    "import sys\nname = 'torchvision.ops'\n_ops = sys.modules[name]",
    "import sys\n_ops = sys.modules.get('torchvision' + '.ops')",
    "import torchvision\nname = 'nms'\n_nms = torchvision.ops.__dict__[name]",
    "import __main__\nname = 'reference_box_iou'\n_iou = getattr(__main__, name)",
])
def test_a_look_up_by_a_computed_name_is_flagged_for_review_without_costing_points(code):
    messages = _zeroes(_with_answer(SSD, "q5_answer", code), set())
    assert len(messages) == 1 and "q5_answer looks up" in messages[0], messages
    assert messages[0].endswith("by a computed name: flagged for review")


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
def test_a_reference_bound_in_an_added_cell_zeroes_every_answer_that_uses_it(added):
    nb = _with_answer(SSD, "q5_answer", USES_HELPER)
    nb.cells[_index(nb, "q1_answer")].source += "\n_unused = helper"
    nb = _with_added_cell(nb, added, after="setup")
    messages = _zeroes(nb, {"q1_tests", "q5_tests"})
    assert any(m.startswith("q5_answer uses helper") and "q5_tests scores 0" in m for m in messages), messages
    assert any(m.startswith("cell 5 ") and m.endswith("flagged for review") for m in messages), messages


def test_the_helper_may_sit_in_a_later_added_cell_since_functions_read_names_when_called():
    nb = _with_answer(SSD, "q5_answer", "def _keep(b, s):\n    return helper(b, s, 0.5)")
    nb = _with_added_cell(nb, "from torchvision.ops import nms as helper", after="q5_answer")
    _zeroes(nb, {"q5_tests"})


def test_a_reference_imported_by_one_answer_and_used_by_another_zeroes_both():
    nb = _with_answer(SSD, "q1_answer", "from torchvision.ops import box_iou as _iou")
    nb.cells[_index(nb, "q5_answer")].source += "\n_overlaps = _iou(torch.zeros(1, 4), torch.zeros(1, 4))"
    messages = _zeroes(nb, {"q1_tests", "q5_tests"})
    assert any("q5_answer uses _iou, torchvision.ops.box_iou imported in q1_answer" in m for m in messages), messages


def test_an_added_cell_that_redefines_an_earlier_answer_with_the_reference_zeroes_it():
    redefinition = "import torchvision\ndef non_max_suppression(boxes, scores, iou_threshold):\n" \
                   "    return torchvision.ops.nms(boxes, scores, iou_threshold)"
    messages = _zeroes(_with_added_cell(_solution(SSD), redefinition, after="q5_answer"), {"q5_tests"})
    assert any("redefines non_max_suppression of q5_answer" in m and m.endswith("q5_tests scores 0")
               for m in messages), messages
    alias = "from torchvision.ops import nms as non_max_suppression"
    _zeroes(_with_added_cell(_solution(SSD), alias, after="q5_answer"), {"q5_tests"})


def test_a_redefinition_after_the_tests_also_zeroes_the_answers_that_call_it():
    # iou_matrix passes its own tests, then becomes torchvision's for the questions that call it.
    redefinition = "from torchvision.ops import box_iou as iou_matrix"
    nb = _with_added_cell(_solution(SSD), redefinition, after="q1_tests")
    messages = _zeroes(nb, {"q1_tests", "q2_tests", "q5_tests"})
    assert any(m.startswith("q2_answer uses iou_matrix, torchvision.ops.box_iou") for m in messages), messages


def test_an_added_cell_before_the_answer_that_defines_it_again_costs_no_points():
    # A scratch cell tried torchvision first; the answer below defines its own iou_matrix, used by later answers.
    scratch = "from torchvision.ops import box_iou as iou_matrix\nprint(iou_matrix(LESSON_BOXES, ANCHORS_4x4))"
    messages = _zeroes(_with_added_cell(_solution(SSD), scratch, after="setup"), set())
    assert len(messages) == 1 and messages[0].endswith("flagged for review"), messages


def test_an_import_inside_an_answers_function_stays_in_that_function():
    # q1 delegates (and scores 0); q4 defines its own box_iou, which q5 may use.
    delegating = "def _iou(a, b):\n    from torchvision.ops import box_iou\n    return box_iou(a, b)"
    nb = _with_answer(SSD, "q1_answer", delegating)
    nb.cells[_index(nb, "q4_answer")].source += "\ndef box_iou(a, b):\n    return iou_matrix(a, b)"
    nb.cells[_index(nb, "q5_answer")].source += "\n_overlaps = box_iou(torch.zeros(1, 4), torch.zeros(1, 4))"
    _zeroes(nb, {"q1_tests"})


def test_a_star_import_in_an_added_cell_binds_the_references_it_brings():
    nb = _with_answer(SSD, "q5_answer", "_kept = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)")
    _zeroes(_with_added_cell(nb, "from torchvision.ops import *", after="setup"), {"q5_tests"})
    nb = _with_answer(SSD, "q2_answer", "_matches = match_anchors")
    _zeroes(_with_added_cell(nb, "from course_lib.detection import *", after="setup"), {"q2_tests"})


def test_a_star_import_does_not_claim_the_answers_own_parameters_and_locals():
    # torchvision.ops exports `boxes` and `nms`; the solution's answers use such names for their own values.
    own = "def _own(boxes, nms):\n    return boxes[nms]\n_total = [box_area for box_area in [1]]"
    nb = _with_answer(SSD, "q5_answer", own)
    messages = _zeroes(_with_added_cell(nb, "from torchvision.ops import *", after="setup"), set())
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
    assert audit_cells(nb).zeroed_questions == set()  # a submission alone does not show the hidden tests
    messages = _zeroes(nb, {answer.replace("_answer", "_tests")}, source=_solution(assignment))
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
    _zeroes(nb, {"q2_tests"}, source=_solution(SSD))


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
])
def test_other_roads_to_the_reference_are_delegation(answer, code):
    _zeroes(_with_answer(SSD, answer, code), {answer.replace("_answer", "_tests")})


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
    _zeroes(nb, {"q5_tests"})


def test_magics_and_shell_commands_that_run_no_python_raise_nothing():
    code = "%matplotlib inline\n!ls\nfiles = !ls\ntorch.zeros?\n%timeit iou_matrix(LESSON_BOXES, ANCHORS_4x4)\n"
    nb = _solution(SSD)
    cell = nb.cells[_index(nb, "q1_answer")]
    cell.source = code + cell.source
    nb = _with_added_cell(nb, "%%bash\necho torchvision.ops.nms\n", after="setup")
    assert audit_cells(nb).findings == []


@pytest.mark.parametrize("code, expected", [
    ("import torchvision\n_ops = vars(torchvision.ops)['nms']", "calls vars"),
    ("_torchvision = __import__('torchvision')", "calls __import__"),
    ("import importlib\n_ops = importlib.import_module('torchvision.ops')", "imports importlib"),
    ("locals()['checks'] = None", "replaces a name through locals()"),
])
def test_reaching_into_the_interpreter_is_patching_and_voids_the_notebook(code, expected):
    audit = audit_cells(_with_answer(SSD, "q5_answer", code))
    assert audit.zeroed_questions is None
    assert any(expected in m for m in _messages(audit)), _messages(audit)


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


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_ordinary_code_in_answers_and_added_cells_raises_nothing(assignment):
    nb = _solution(assignment)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "answer":
            cell.source += "\n" + ORDINARY
    nb = _with_added_cell(nb, ORDINARY, after="setup")
    assert audit_cells(nb, _solution(assignment)).findings == []


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_course_notebooks_raise_nothing_with_or_without_their_source(assignment):
    solution = _solution(assignment)
    released = nbformat.read(ROOT / "exercises" / f"{assignment}.ipynb", as_version=4)
    for nb in (solution, released, _released(assignment)):
        assert audit_cells(nb).findings == []
        assert audit_cells(nb, solution).findings == []
