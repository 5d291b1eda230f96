"""Honest notebooks keep every point: legitimate variations of the solutions, graded end to end.

Students answer in their own way: they set figure sizes, display Markdown, set environment
variables, add helper cells, paste a cell twice, print, time, warn, loop where the solution is
vectorised, split an answer over two cells. None of that may cost a point. Each test builds one
submission as a student hands it in (the released exercise, every answer filled in from the
solution, some of them varied) and grades it with `grade_submission` against the instructor's
source (hidden tests included), in the sandbox, with the grader's own check of the answers. One
notebook holds several variations where they touch different questions: two dozen variations, six
gradings (about half a minute each).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest

from course_grader.autograde import GradingOptions, grade_submission
from course_grader.environment import isolated_environment
from course_grader.record import GradeRecord, Status
from course_grader.submission import cell_kind, grade_id

pytestmark = [pytest.mark.sandbox, pytest.mark.notebook]

ROOT = Path(__file__).resolve().parents[2]
BLOCKS, CONVNEXT, YOLO, SSD = ("01_blocks_and_resnets", "02_convnext", "03_anchors_and_yolo_decoding",
                               "04_ssd_matching_and_focal_loss")
FASTER_RCNN, VIDEO = "05_faster_rcnn_step_by_step", "06_pretrained_detectors_on_video"
#: The solution's markers, which a student's answer does not have.
SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n", re.M)
#: What an honest record's message may say: a pasted graded cell, as `submission.resolve_duplicates` notes it.
HONEST_NOTE = re.compile(r"(test|answer|read-only) cell \w+ appears \d+ times \(copied and pasted\?\): [^;]*; "
                         r"the other copies ran as ordinary cells")


def _read(folder: str, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / folder / f"{assignment}.ipynb", as_version=4)


def _index(nb, gid: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if grade_id(c) == gid)


def _answer(assignment: str, gid: str) -> str:
    """The solution's answer as a student writes it (no solution markers)."""
    solution = _read("solutions", assignment)
    return SOLUTION_MARKERS.sub("", solution.cells[_index(solution, gid)].source)


def _submission(assignment: str, **answers: str) -> nbformat.NotebookNode:
    """The released exercise with every answer cell filled in: ``answers`` (grade id -> source), else the solution's."""
    nb = _read("exercises", assignment)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_kind(cell) == "answer":
            cell.source = answers.pop(grade_id(cell), None) or _answer(assignment, grade_id(cell))
    assert not answers, f"no such answer cells: {sorted(answers)}"
    return nb


def _add_cell(nb, code: str, *, after: str | None = None, before: str | None = None) -> None:
    """A cell the student added (no grading metadata) right after ``after`` or right before ``before``."""
    index = _index(nb, after) + 1 if after else _index(nb, before)
    nb.cells.insert(index, nbformat.v4.new_code_cell(code))


def _paste(nb, gid: str) -> None:
    """Copy and paste cell ``gid`` right below itself: Jupyter keeps its grading metadata, gives a new id."""
    index = _index(nb, gid)
    copied = copy.deepcopy(nb.cells[index])
    copied.id = f"pasted-{index}"
    nb.cells.insert(index + 1, copied)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One Jupyter/IPython/matplotlib home for the module's gradings (matplotlib's font cache is built once)."""
    with isolated_environment(tmp_path_factory.mktemp("home"), ROOT):
        yield


def _assert_full_marks(assignment: str, nb) -> GradeRecord:
    source = (ROOT / "solutions" / f"{assignment}.ipynb").read_bytes()
    nbformat.validate(nb)
    record = grade_submission(assignment, source, nbformat.writes(nb).encode(), student="honest",
                              options=GradingOptions())
    print(f"{assignment}: {record.duration_s:.1f} s, {record.status}, {record.message!r}")  # pytest -s shows it
    assert "scores 0" not in record.message, record.message
    assert record.scores == record.max_scores, record.message
    assert record.total == record.max_total
    assert record.status == Status.GRADED, record.message
    assert HONEST_NOTE.sub("", record.message).strip("; ") == "", record.message
    return record


# --- exercise 1: settings, display, environment, a helper cell, a pasted test cell, %time, warnings ----

Q1_RCPARAMS = '''import matplotlib
import matplotlib.pyplot as plt

plt.rcParams["figure.figsize"] = (6, 3)  # smaller figures on a laptop screen
matplotlib.rcParams.update({"font.size": 11})


def conv_params(kernel_size: int, in_channels: int, out_channels: int, bias: bool = True) -> int:
    """Weights and biases of a square nn.Conv2d."""
    per_filter = kernel_size ** 2 * in_channels
    if bias:
        per_filter += 1
    return per_filter * out_channels


print("3x3 conv, 64 -> 64 channels, no bias:", conv_params(3, 64, 64, bias=False))
'''

Q2_DISPLAY = '''from IPython.display import HTML, Markdown, display

{solution}

parameters = count_params(ResidualBlock(64, 128, downsample=True))
display(Markdown(f"`ResidualBlock(64, 128, downsample=True)`: **{{parameters:,}}** parameters"))
display(HTML("<small>checked by hand against the lesson's table</small>"))
'''

Q3_ENVIRON = '''import os

os.environ["PYTHONHASHSEED"] = "0"  # reproducible runs on my machine

{solution}'''

Q4_HELPER_CELL = '''def side_after(size: int, kernel: int, stride: int, padding: int) -> int:
    """One side of a convolution's or a pooling's output: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1
'''

Q4_WITH_HELPER = '''import warnings


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    return side_after(size, kernel_size, stride, padding)


def stage_output_shapes(height: int, width: int, stage_channels=(64, 128, 256, 512)):
    """(channels, height, width) after the stem and after each stage."""
    if min(height, width) < 32:
        warnings.warn(f"a {height}x{width} image is smaller than ResNet's total stride", stacklevel=2)
    h = conv_output_size(conv_output_size(height, 7, stride=2, padding=3), 3, stride=2, padding=1)
    w = conv_output_size(conv_output_size(width, 7, stride=2, padding=3), 3, stride=2, padding=1)
    shapes = {"stem": (64, h, w)}
    for index, (name, channels) in enumerate(zip(STAGE_NAMES[1:], stage_channels)):
        if index > 0:
            h, w = conv_output_size(h, 3, stride=2, padding=1), conv_output_size(w, 3, stride=2, padding=1)
        shapes[name] = (channels, h, w)
    return shapes


%time shapes = stage_output_shapes(224, 224)
print(shapes)
'''


def test_exercise_1_settings_display_environment_helper_cell_and_pasted_tests_keep_full_marks(home):
    """rcParams and a print (q1), IPython.display (q2), os.environ and other variable names (q3), a helper
    cell the student added above the answer, warnings.warn and %time (q4), a test cell pasted twice (q1)."""
    q3 = _answer(BLOCKS, "q3_answer").replace("width", "mid_channels")
    nb = _submission(BLOCKS, q1_answer=Q1_RCPARAMS,
                     q2_answer=Q2_DISPLAY.format(solution=_answer(BLOCKS, "q2_answer")),
                     q3_answer=Q3_ENVIRON.format(solution=q3), q4_answer=Q4_WITH_HELPER)
    _add_cell(nb, Q4_HELPER_CELL, before="q4_answer")
    _paste(nb, "q1_tests")
    record = _assert_full_marks(BLOCKS, nb)
    assert record.message.startswith("test cell q1_tests appears 2 times"), record.message  # the paste, recognised


# --- exercise 4: a loop, other names, asserts on inputs, torch.no_grad, tqdm, an answer split in two ----

Q1_LOOP = '''def iou_matrix(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU (N, M), one box of boxes_a at a time."""
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    rows = []
    for box in boxes_a:
        width = (torch.minimum(box[2], boxes_b[:, 2]) - torch.maximum(box[0], boxes_b[:, 0])).clamp(min=0)
        height = (torch.minimum(box[3], boxes_b[:, 3]) - torch.maximum(box[1], boxes_b[:, 1])).clamp(min=0)
        inter = width * height
        union = (box[2] - box[0]) * (box[3] - box[1]) + area_b - inter
        rows.append(torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny),
                                torch.zeros_like(union)))
    if not rows:
        return torch.zeros(0, boxes_b.shape[0], dtype=boxes_b.dtype, device=boxes_b.device)
    return torch.stack(rows)
'''

Q3_ASSERTS = '''def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), summed.

    logits, targets: the same shape; targets are 0 or 1.
    """
    assert logits.shape == targets.shape, f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
    assert 0.0 <= alpha <= 1.0 and gamma >= 0.0
    probability = torch.sigmoid(logits)
    # -log p_t from log-sigmoids: stable for large logits, like binary_cross_entropy_with_logits
    minus_log_p_t = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    p_t = probability * targets + (1 - probability) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * minus_log_p_t).sum()
'''

Q5_NO_GRAD = '''@torch.no_grad()
{solution}'''

Q5_TQDM_CELL = '''from tqdm.auto import tqdm

for threshold in tqdm([0.3, 0.5, 0.7], desc="NMS thresholds"):
    print(threshold, non_max_suppression(LESSON_BOXES, torch.linspace(1, 0.5, len(LESSON_BOXES)), threshold).tolist())
'''

Q6_FIRST_PART = '''def ssd_targets(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, anchors: torch.Tensor):
    """(labels (A,), positive (A,) bool, wanted offsets (P, 4)) of one image's anchors."""
    matches = match_to_anchors(gt_boxes, anchors, 0.5)
    positive = matches >= 0
    labels = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
    labels[positive] = gt_labels[matches[positive]]
    return labels, positive, encode(gt_boxes[matches[positive]], anchors[positive])
'''

Q6_SECOND_PART = '''def ssd_loss_one_image(class_logits, box_outputs, gt_boxes, gt_labels, anchors):
    labels, positive, wanted = ssd_targets(gt_boxes, gt_labels, anchors)
    num_positive = max(int(positive.sum()), 1)
    localization = F.smooth_l1_loss(box_outputs[positive], wanted, beta=1 / 9, reduction="sum")
    one_hot = F.one_hot(labels, class_logits.shape[1])[:, 1:].to(class_logits.dtype)
    return localization / num_positive, focal_loss(class_logits[:, 1:], one_hot) / num_positive
'''


def test_exercise_4_loops_names_asserts_no_grad_tqdm_and_a_split_answer_keep_full_marks(home):
    """A loop over boxes (q1), other variable names (q2), asserts on inputs and logsigmoid (q3), inspect
    (q4), @torch.no_grad() and tqdm in an added cell (q5), the answer split over two cells (q6)."""
    q2 = _answer(SSD, "q2_answer").replace("ious", "overlaps").replace("matches", "assigned")
    q4 = _answer(SSD, "q4_answer") + ('\n\nimport inspect\n\nassert list(inspect.signature(encode).parameters)'
                                      '[:2] == ["boxes", "anchors"]\n')
    nb = _submission(SSD, q1_answer=Q1_LOOP, q2_answer=q2, q3_answer=Q3_ASSERTS, q4_answer=q4,
                     q5_answer=Q5_NO_GRAD.format(solution=_answer(SSD, "q5_answer")), q6_answer=Q6_FIRST_PART)
    _add_cell(nb, Q5_TQDM_CELL, after="q5_answer")
    _add_cell(nb, Q6_SECOND_PART, after="q6_answer")
    _assert_full_marks(SSD, nb)


# --- exercise 2: the block's norm channels-first, print options and warnings filters ---------------

Q2_OWN_NAMES = '''class LayerNorm2d(nn.Module):
    """LayerNorm over channels, channels-first: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4, f"expected (B, C, H, W), got {tuple(x.shape)}"
        centred = x - x.mean(dim=1, keepdim=True)
        spread = centred.pow(2).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(spread + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
'''

SETTINGS_CELL = '''import warnings

import numpy as np

torch.set_printoptions(precision=4, sci_mode=False)
np.set_printoptions(precision=4)
warnings.filterwarnings("ignore", category=UserWarning)
'''


def test_exercise_2_own_layer_norm_channels_first_block_and_print_options_keep_full_marks(home):
    """LayerNorm2d with its own names, rsqrt and an assert (q2, whose prose rules out torch's layer norm),
    a ConvNeXt block normalising channels-first with that LayerNorm2d (q4, which its docstring allows),
    print options and a warnings filter in an added cell."""
    q4 = _answer(CONVNEXT, "q4_answer")
    q4 = q4.replace("self.norm = nn.LayerNorm(channels, eps=1e-6)", "self.norm = LayerNorm2d(channels)")
    q4 = q4.replace("branch = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)\n"
                    "        branch = self.pwconv2(self.act(self.pwconv1(self.norm(branch))))",
                    "branch = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # normalised channels-first\n"
                    "        branch = self.pwconv2(self.act(self.pwconv1(branch)))")
    assert "LayerNorm2d(channels)" in q4 and "self.norm(self.dwconv(x))" in q4
    nb = _submission(CONVNEXT, q2_answer=Q2_OWN_NAMES, q4_answer=q4)
    _add_cell(nb, SETTINGS_CELL, after="setup")
    _assert_full_marks(CONVNEXT, nb)


# --- exercise 3: math.ceil, prints, inspect in an added cell -----------------------------------------

Q1_CEIL = '''import math


def grid_and_channels(image_size, num_anchors: int, num_classes: int, stride: int = 32):
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    grid = (math.ceil(height / stride), math.ceil(width / stride))
    print(f"{height}x{width} at stride {stride}: grid {grid}")
    return grid, num_anchors * (4 + num_classes)
'''

INSPECT_CELL = '''import inspect

print(inspect.signature(select_detections))
print([name for name, value in inspect.signature(decode_output).parameters.items()])
'''


def test_exercise_3_math_ceil_prints_and_inspect_keep_full_marks(home):
    """math.ceil instead of integer division and a print in the function (q1), inspect in an added cell (q6)."""
    nb = _submission(YOLO, q1_answer=Q1_CEIL)
    _add_cell(nb, INSPECT_CELL, after="q6_answer")
    _assert_full_marks(YOLO, nb)


# --- exercise 5: the matplotlib magic, seeds, movedim --------------------------------------------------

Q5_MOVEDIM = '''def flatten_head_output(output: torch.Tensor, values_per_anchor: int) -> torch.Tensor:
    batch = output.shape[0]
    return torch.movedim(output, 1, -1).reshape(batch, -1, values_per_anchor)  # (B, H, W, A * D) -> rows
'''


def test_exercise_5_magics_seeds_and_movedim_keep_full_marks(home):
    """get_ipython().run_line_magic and %matplotlib in an added cell, torch.manual_seed in q3's answer,
    torch.movedim instead of permute (q5)."""
    q3 = "torch.manual_seed(0)  # the same draws while I debug\n\n" + _answer(FASTER_RCNN, "q3_answer")
    nb = _submission(FASTER_RCNN, q3_answer=q3, q5_answer=Q5_MOVEDIM)
    _add_cell(nb, 'get_ipython().run_line_magic("matplotlib", "inline")\n%config InlineBackend.figure_format = "png"',
              after="setup")
    _assert_full_marks(FASTER_RCNN, nb)


# --- exercise 6: division by 255 written otherwise, lru_cache, time, sys.path --------------------------

Q2_DIV = '''def frames_to_batches(clip: torch.Tensor, batch_size: int, device=None) -> list:
    target = clip.device if device is None else torch.device(device)
    frames = clip.to(target).permute(0, 3, 1, 2).to(torch.float32).div(255.0)  # (N, 3, H, W) in [0, 1]
    return list(torch.split(frames, batch_size)) if len(frames) else []
'''

Q5_CACHED = '''import functools
import sys
import time


@functools.lru_cache(maxsize=None)
def per_second(fps: float | None) -> float:
    return 1.0 if fps is None else float(fps)


def track_speed(frames: torch.Tensor, boxes: torch.Tensor, window: int | None = None,
                fps: float | None = None) -> torch.Tensor:
    if window is not None:
        frames, boxes = frames[-window:], boxes[-window:]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    distance = torch.linalg.vector_norm(centres[-1] - centres[0])
    elapsed = (frames[-1] - frames[0]).to(boxes.dtype)
    speed = torch.where(elapsed > 0, distance / elapsed, torch.full_like(distance, float("nan")))
    return speed * per_second(fps) if fps is not None else speed


started = time.perf_counter()
print(track_speed(torch.tensor([0, 2]), torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 3.0, 6.0, 5.0]])),
      f"{time.perf_counter() - started:.4f} s", len(sys.path))
'''


def test_exercise_6_torch_conversion_lru_cache_and_timing_keep_full_marks(home):
    """uint8 -> float with .to and .div and torch.split (q2: its prose rules out to_tensor, not this),
    functools.lru_cache, time and a sys.path read around track_speed (q5)."""
    nb = _submission(VIDEO, q2_answer=Q2_DIV, q5_answer=Q5_CACHED)
    _assert_full_marks(VIDEO, nb)
