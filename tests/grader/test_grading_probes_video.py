"""The grader's own checks of exercise 6 (detections on video, an IoU tracker): right answers pass,
typical mistakes fail with a one-line reason, and the grader-side references are what the exercise asks.

Most tests play the student's kernel in this process: the solution notebook's set-up and answers
(or a mistaken version of one answer) are executed into a namespace, the probe cells run there, and
the grader judges what they printed. One test grades the solution and a subtly wrong answer end to
end (marked ``notebook``).
"""
from __future__ import annotations

import copy
import functools
import re
import tempfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from course_lib.detection.boxes import box_iou
from course_lib.detection.mot_metrics import clear_mot
from course_lib.detection.pretrained import coco_categories
from course_lib.detection.tracking import IoUTracker
from course_grader.audit import audit_cells
from course_grader.probes import PROBES, video_tracking
from course_grader.submission import cell_kind, grade_id
from course_grader.probes import calls_for
from course_grader.probe_types import Satisfies
from course_grader.verdicts import encode, judge

from probe_checks import grader_calls, printed as _printed, solution_answers, solution_source, verdicts
from probe_checks import with_mistake as _with_mistake

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
VIDEO = "06_pretrained_detectors_on_video"
#: Seeds of the "any seed" test (each seed draws every question's inputs afresh).
SEEDS = range(12)
#: What one question's probe may print (the grader keeps at most 1 MiB of a cell's output).
MAX_PRINTED_BYTES = 200_000
QUESTIONS = {"q1_tests": "confident_detections", "q2_tests": "frames_to_batches", "q3_tests": "associate",
             "q4_tests": "track_step", "q5_tests": "track_speed", "q6_tests": "id_switches"}


_source = functools.partial(solution_source, VIDEO)
_answers = functools.partial(solution_answers, VIDEO)
_calls = functools.partial(grader_calls, VIDEO)
_verdicts = functools.partial(verdicts, VIDEO)


@pytest.fixture(scope="module")
def solution() -> dict:
    return _answers()


# --- coverage -------------------------------------------------------------------------------------

def test_every_graded_question_is_probed(solution):
    source = _source()
    graded = {grade_id(c): c.metadata.nbgrader["points"] for c in source.cells if cell_kind(c) == "tests"}
    assert graded == {"q1_tests": 2, "q2_tests": 2, "q3_tests": 3, "q4_tests": 3, "q5_tests": 2, "q6_tests": 2}
    calls = calls_for(VIDEO, 1)
    assert PROBES[VIDEO] is video_tracking.calls
    assert {(call.question, call.name) for call in calls} == set(QUESTIONS.items())
    assert all(callable(solution.get(call.name)) for call in calls), "a probed name is not an answer"


# --- right answers -------------------------------------------------------------------------------

def test_the_solution_passes_the_graders_own_check_for_any_seed(solution):
    for seed in SEEDS:
        verdicts = _verdicts(solution, seed)
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


#: Other right answers: the probes must not depend on the solution's way of computing.
OTHER_RIGHT_ANSWERS = '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    wanted = [k for k, name in enumerate(categories)
              if k != 0 and name != "N/A" and (classes is None or name in classes)]
    wanted = torch.tensor(wanted, dtype=labels.dtype, device=labels.device)
    keep = torch.isin(labels, wanted) & ~(scores < score_threshold)
    rows = torch.nonzero(keep).flatten()
    return {"boxes": boxes.index_select(0, rows), "labels": labels.index_select(0, rows),
            "scores": scores.index_select(0, rows), "names": [categories[int(k)] for k in labels[rows]]}

def frames_to_batches(clip, batch_size, device=None):
    if device is not None:
        clip = clip.to(device)
    chunks = clip.split(batch_size) if len(clip) else ()  # split() gives one empty chunk of an empty clip
    return [chunk.permute(0, 3, 1, 2).to(torch.float32).div(255.0) for chunk in chunks]

def associate(track_boxes, detection_boxes, iou_threshold):
    # every pair in greedy order (a stable sort keeps ties row-major), then one pass
    ious = iou_matrix(track_boxes, detection_boxes)
    order = torch.argsort(ious.flatten(), descending=True, stable=True).tolist()
    used_tracks, used_detections, pairs = set(), set(), []
    for flat in order:
        t, d = divmod(flat, detection_boxes.shape[0])
        if ious[t, d] < iou_threshold:
            break
        if t not in used_tracks and d not in used_detections:
            pairs.append([t, d])
            used_tracks.add(t)
            used_detections.add(d)
    pairs.sort()
    device = track_boxes.device
    lost = [t for t in range(track_boxes.shape[0]) if t not in used_tracks]
    new = [d for d in range(detection_boxes.shape[0]) if d not in used_detections]
    return (torch.tensor(pairs, dtype=torch.int64, device=device).reshape(-1, 2),
            torch.tensor(lost, dtype=torch.int64, device=device), torch.tensor(new, dtype=torch.int64, device=device))

def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    device = detection_boxes.device
    matches, lost, new = associate(boxes, detection_boxes, iou_threshold)
    matched = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    matched[matches[:, 0]] = True
    boxes = boxes.index_put((matches[:, 0],), detection_boxes[matches[:, 1]])  # out of place
    misses = torch.where(matched, torch.zeros_like(misses), misses + 1)
    keep = misses <= max_age
    first = int(next_id)
    return (torch.cat([ids[keep], torch.arange(first, first + len(new), device=device)]),
            torch.cat([boxes[keep], detection_boxes.index_select(0, new)]),
            torch.cat([misses[keep], torch.zeros_like(new)]), first + len(new))

def track_speed(frames, boxes, window=None, fps=None):
    n = frames.shape[0]
    first = 0 if window is None else max(n - window, 0)
    centres = boxes[:, :2] * 0.5 + boxes[:, 2:] * 0.5
    elapsed = int(frames[n - 1] - frames[first])
    if elapsed == 0:
        return torch.tensor(float("nan"), dtype=boxes.dtype, device=boxes.device)
    speed = torch.linalg.vector_norm(centres[n - 1] - centres[first]) / elapsed
    return speed * (1.0 if fps is None else fps)

def id_switches(assigned):
    # no loop: the last frame with a match before each frame, by a running maximum
    frames, objects = assigned.shape
    if frames == 0:
        return torch.zeros(objects, dtype=torch.int64, device=assigned.device)
    index = torch.arange(frames, device=assigned.device)[:, None].expand(frames, objects)
    last_match = torch.where(assigned >= 0, index, -1).cummax(dim=0).values
    before = torch.cat([torch.full_like(last_match[:1], -1), last_match[:-1]])
    previous_id = torch.where(before >= 0, assigned.gather(0, before.clamp(min=0)), -1)
    return ((assigned >= 0) & (previous_id >= 0) & (assigned != previous_id)).sum(dim=0)
'''


def test_other_right_answers_pass_too(solution):
    namespace = dict(solution)
    exec(OTHER_RIGHT_ANSWERS, namespace)  # noqa: S102
    for seed in range(6):
        verdicts = _verdicts(namespace, seed)
        assert not any(verdicts.values()), (seed, {q: v for q, v in verdicts.items() if v})


# --- typical mistakes ------------------------------------------------------------------------------
# Each replaces one answer; `right_<name>` is the solution's function, for mistakes that change one
# thing about its result. Messages are what the grade record quotes after the question's name.

MISTAKES = {
    # Q1
    "score > threshold, as in the lecture, not >=": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    above = scores > score_threshold
    return right_confident_detections(boxes[above], labels[above], scores[above], categories, score_threshold,
                                      classes)''', "key 'boxes': shape"),
    "'N/A' labels kept": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    names = [("gap" if name == "N/A" else name) for name in categories]
    kept = right_confident_detections(boxes, labels, scores, names, score_threshold, classes)
    return {**kept, "names": [categories[k] for k in kept["labels"].tolist()]}''', "key 'boxes': shape"),
    "the background kept": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    keep = scores >= score_threshold
    keep &= torch.tensor([name != "N/A" and (classes is None or name in classes) for name in categories],
                         device=keep.device)[labels]
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep],
            "names": [categories[k] for k in labels[keep].tolist()]}''', "key 'boxes': shape"),
    "names off by one (the background forgotten)": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    kept = right_confident_detections(boxes, labels, scores, categories, score_threshold, classes)
    return {**kept, "names": [categories[k - 1] for k in kept["labels"].tolist()]}''', "key 'names': item 0: got"),
    "names as a tuple": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    kept = right_confident_detections(boxes, labels, scores, categories, score_threshold, classes)
    return {**kept, "names": tuple(kept["names"])}''', "key 'names': got a tuple, expected a list"),
    "classes ignored": ("q1_tests", '''
def confident_detections(boxes, labels, scores, categories, score_threshold=0.5, classes=None):
    return right_confident_detections(boxes, labels, scores, categories, score_threshold)''', "key 'boxes': shape"),
    # Q2
    "values not divided by 255": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    return [batch * 255 for batch in right_frames_to_batches(clip, batch_size, device)]''', "values differ"),
    "uint8 left as it is": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    return [clip[s:s + batch_size].permute(0, 3, 1, 2) for s in range(0, len(clip), batch_size)]''',
                            "dtype uint8 expected float32"),
    "channels-last frames reshaped, not permuted": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    batches = []
    for s in range(0, len(clip), batch_size):
        batch = clip[s:s + batch_size]
        b, h, w, _ = batch.shape
        batches.append(batch.reshape(b, 3, h, w).float() / 255)
    return batches''', "values differ"),
    "height and width swapped": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    return [batch.transpose(2, 3) for batch in right_frames_to_batches(clip, batch_size, device)]''',
                                 "item 0: shape (3, 3, 10, 6) expected (3, 3, 6, 10)"),
    "the last, shorter batch dropped": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    whole = len(clip) - len(clip) % batch_size
    return right_frames_to_batches(clip[:whole], batch_size, device)''', "got a list of 2 items, expected 3"),
    "divide only when the maximum is above 1, as in the lecture": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    batches = []
    for s in range(0, len(clip), batch_size):
        batch = clip[s:s + batch_size].permute(0, 3, 1, 2).float()
        batches.append(batch / 255 if batch.max() > 1 else batch)
    return batches''', "values differ"),
    "an empty clip gives one empty batch": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    return [chunk.permute(0, 3, 1, 2).float() / 255 for chunk in clip.split(batch_size)]''',
                                            "got a list of 1 items, expected 0"),
    "float64 batches": ("q2_tests", '''
def frames_to_batches(clip, batch_size, device=None):
    return [batch.double() for batch in right_frames_to_batches(clip, batch_size, device)]''',
                        "dtype float64 expected float32"),
    # Q3
    "one detection matched to two tracks (each track takes its best)": ("q3_tests", '''
def associate(track_boxes, detection_boxes, iou_threshold):
    ious = iou_matrix(track_boxes, detection_boxes)
    if ious.numel() == 0:
        return right_associate(track_boxes, detection_boxes, iou_threshold)
    best, detection = ious.max(dim=1)
    tracks = torch.nonzero(best >= iou_threshold)[:, 0]
    matches = torch.stack([tracks, detection[tracks]], dim=1)
    used = torch.zeros(detection_boxes.shape[0], dtype=torch.bool)
    used[matches[:, 1]] = True
    lost = torch.nonzero(best < iou_threshold)[:, 0]
    return matches, lost, torch.nonzero(~used)[:, 0]''', "associate("),
    "an IoU equal to the threshold rejected (> instead of >=)": ("q3_tests", '''
def associate(track_boxes, detection_boxes, iou_threshold):
    return right_associate(track_boxes, detection_boxes, iou_threshold + 1e-6)''', "associate("),
    "the Hungarian algorithm (scipy) instead of greedy": ("q3_tests", '''
from scipy.optimize import linear_sum_assignment

def associate(track_boxes, detection_boxes, iou_threshold):
    ious = iou_matrix(track_boxes, detection_boxes)
    rows, cols = linear_sum_assignment(ious.cpu().numpy(), maximize=True)
    pairs = [[r, c] for r, c in zip(rows.tolist(), cols.tolist()) if ious[r, c] >= iou_threshold]
    matches = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    used_t = torch.zeros(len(track_boxes), dtype=torch.bool)
    used_t[matches[:, 0]] = True
    used_d = torch.zeros(len(detection_boxes), dtype=torch.bool)
    used_d[matches[:, 1]] = True
    return matches, torch.nonzero(~used_t)[:, 0], torch.nonzero(~used_d)[:, 0]''',
        "associate(<tensor (2, 4)>, <tensor (2, 4)>, 0.375): item 0: "),
    "ties go to the last detection": ("q3_tests", '''
def associate(track_boxes, detection_boxes, iou_threshold):
    matches, lost, new = right_associate(track_boxes, detection_boxes.flip(0), iou_threshold)
    last = detection_boxes.shape[0] - 1
    matches = torch.stack([matches[:, 0], last - matches[:, 1]], dim=1)
    return matches, lost, (last - new).flip(0)''', "values differ"),
    "matches in the order they were taken, not by track": ("q3_tests", '''
def associate(track_boxes, detection_boxes, iou_threshold):
    ious = iou_matrix(track_boxes, detection_boxes)
    matches, lost, new = right_associate(track_boxes, detection_boxes, iou_threshold)
    taken = ious[matches[:, 0], matches[:, 1]] if len(matches) else torch.zeros(0)
    return matches[torch.argsort(taken, descending=True, stable=True)], lost, new''', "item 0: values differ"),
    "a bare except hides the error of an empty frame": ("q3_tests", '''
def associate(track_boxes, detection_boxes, iou_threshold):
    try:
        ious = iou_matrix(track_boxes, detection_boxes)
        while ious.max() >= iou_threshold:  # max() of an empty matrix raises
            t, d = divmod(int(ious.argmax()), ious.shape[1])
            ious[t, :] = -1
            ious[:, d] = -1
        return right_associate(track_boxes, detection_boxes, iou_threshold)
    except:  # noqa: E722
        nothing = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, 2, dtype=torch.int64), nothing, nothing''', "shape (0,) expected"),
    # Q4
    "an id reused after its track died (largest live id + 1)": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    live = int(ids.max()) + 1 if len(ids) else next_id
    return right_track_step(ids, boxes, misses, live, detection_boxes, iou_threshold, max_age)''',
        "item 0: values differ"),
    "a track killed one frame too early (misses >= max_age)": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    return right_track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age - 1)''',
        "item 0: "),
    "a track killed one frame too late": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    return right_track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age + 1)''',
        "item 0: "),
    "misses not reset when a track is matched again": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    matches, lost, new = associate(boxes, detection_boxes, iou_threshold)
    boxes, misses = boxes.clone(), misses.clone()
    boxes[matches[:, 0]] = detection_boxes[matches[:, 1]]
    misses[lost] += 1
    alive = misses <= max_age
    born = next_id + torch.arange(len(new), device=ids.device)
    return (torch.cat([ids[alive], born]), torch.cat([boxes[alive], detection_boxes[new]]),
            torch.cat([misses[alive], torch.zeros_like(new)]), next_id + len(new))''', "item 2: values differ"),
    "a matched track keeps its old box": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    new_ids, new_boxes, new_misses, new_next = right_track_step(ids, boxes, misses, next_id, detection_boxes,
                                                                iou_threshold, max_age)
    old = torch.isin(new_ids, ids)
    new_boxes[old] = boxes[torch.searchsorted(ids, new_ids[old])]
    return new_ids, new_boxes, new_misses, new_next''', "item 1: values differ"),
    "new tracks put before the old ones": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    *state, new_next = right_track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age)
    order = torch.argsort((state[0] >= next_id).int(), descending=True, stable=True)
    return (*(value[order] for value in state), new_next)''', "item 0: values differ"),
    "next_id as a tensor": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    *state, new_next = right_track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age)
    return (*state, torch.tensor(new_next))''', "item 3: got a int64 tensor"),
    "the state as a list": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    return list(right_track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age))''',
        "got a list, expected a tuple"),
    "a bare except returns the state unchanged when there are no tracks yet": ("q4_tests", '''
def track_step(ids, boxes, misses, next_id, detection_boxes, iou_threshold, max_age):
    try:
        last_boxes = torch.stack(list(boxes))  # stack of an empty list raises
        return right_track_step(ids, last_boxes, misses, next_id, detection_boxes, iou_threshold, max_age)
    except:  # noqa: E722
        return ids, boxes, misses, next_id''', "item 0: shape (0,) expected"),
    # Q5
    "speed of the top-left corner, not the centre": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    corners = torch.cat([boxes[:, :2], boxes[:, :2]], dim=1)
    return right_track_speed(frames, corners, window, fps)''', "values differ"),
    "divided by the number of boxes, not the frames elapsed": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    used = len(frames) if window is None else min(window, len(frames))
    steps = torch.arange(len(frames), device=frames.device)
    return right_track_speed(steps, boxes, window, fps) * (used - 1) / used''', "values differ"),
    "divided by the steps between boxes: the missed frames ignored": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    steps = torch.arange(len(frames), device=frames.device)
    return right_track_speed(steps, boxes, window, fps)''', "values differ"),
    "path length instead of net displacement": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    if window is not None:
        frames, boxes = frames[-window:], boxes[-window:]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    path = (centres[1:] - centres[:-1]).norm(dim=1).sum()
    speed = path / (frames[-1] - frames[0]).to(boxes.dtype)
    return speed * fps if fps is not None else speed''', "values differ"),
    "per second divided by fps": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    speed = right_track_speed(frames, boxes, window)
    return speed / fps if fps is not None else speed''', "values differ"),
    "the first window observations, not the last": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    if window is not None:
        frames, boxes = frames[:window], boxes[:window]
    return right_track_speed(frames, boxes, None, fps)''', "values differ"),
    "0 for a track seen once": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    return torch.nan_to_num(right_track_speed(frames, boxes, window, fps), nan=0.0)''', "expected nan"),
    "a Python float": ("q5_tests", '''
def track_speed(frames, boxes, window=None, fps=None):
    return float(right_track_speed(frames, boxes, window, fps))''', "got a float, expected a float32 tensor"),
    # Q6
    "a miss counted as an id": ("q6_tests", '''
def id_switches(assigned):
    changed = assigned[1:] != assigned[:-1]
    return changed.sum(dim=0) if len(assigned) else torch.zeros(assigned.shape[1], dtype=torch.int64)''',
        "values differ"),
    "compared with the previous frame only": ("q6_tests", '''
def id_switches(assigned):
    if len(assigned) == 0:
        return torch.zeros(assigned.shape[1], dtype=torch.int64)
    before, now = assigned[:-1], assigned[1:]
    return ((before >= 0) & (now >= 0) & (before != now)).sum(dim=0)''', "values differ"),
    "the first match counted as a switch": ("q6_tests", '''
def id_switches(assigned):
    first = (assigned >= 0).any(dim=0).long()
    return right_id_switches(assigned) + first''', "values differ"),
    "one total instead of one count per object": ("q6_tests", '''
def id_switches(assigned):
    return right_id_switches(assigned).sum()''', "shape () expected"),
}



def test_there_are_enough_typical_mistakes_for_every_question():
    per_question = {q: sum(1 for question, _, _ in MISTAKES.values() if question == q) for q in QUESTIONS}
    assert len(MISTAKES) >= 12 and min(per_question.values()) >= 4, per_question


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_typical_mistakes_fail_the_graders_own_check(mistake, solution):
    question, code, message = MISTAKES[mistake]
    namespace = _with_mistake(solution, code)
    for seed in (3, 4):
        problem = _verdicts(namespace, seed, question)[question]
        assert problem is not None and message in problem, (seed, problem)
        assert len(problem) < 400 and "\n" not in problem, "the record's message is one readable line"


# --- devices --------------------------------------------------------------------------------------

def _expected_outputs(calls, device: str) -> dict:
    """What a right answer prints, with its inputs on ``device`` (NaN where a property is checked)."""
    results: dict[str, list] = {}
    for call in calls:
        value = torch.tensor(float("nan")) if isinstance(call.expected, Satisfies) else call.expected
        results.setdefault(call.question, []).append({"ok": encode(value)})
    return {question: {"device": device, "results": found} for question, found in results.items()}


def test_outputs_on_another_device_than_the_inputs_are_caught():
    """On a GPU grader the inputs are on cuda: results left on the cpu fail, inside lists, tuples and dicts too."""
    calls = list(_calls(2))
    assert not any(judge(calls, _expected_outputs(calls, "cpu")).values())
    on_cuda = judge(calls, _expected_outputs(calls, "cuda"))
    assert all("the input was on cuda" in on_cuda[q] for q in QUESTIONS), on_cuda


def test_a_hard_coded_cuda_call_fails_on_a_cpu_grader(solution, monkeypatch):
    """A `.cuda()` in an answer: on a CPU grader it raises, on a GPU machine its output leaves the CPU inputs."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    namespace = _with_mistake(solution, '''
def frames_to_batches(clip, batch_size, device=None):
    return [batch.cuda() for batch in right_frames_to_batches(clip, batch_size, device)]''')
    problem = _verdicts(namespace, 5, "q2_tests")["q2_tests"]
    caught = ("raised", "the output is on cuda, the input was on cpu")
    assert problem is not None and any(reason in problem for reason in caught), problem


def test_batches_go_to_the_device_asked_for(solution):
    """The device argument (not probed: the grader's inputs are already on its device) moves the batches."""
    clip = torch.randint(0, 256, (3, 4, 6, 3), dtype=torch.uint8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for batch in solution["frames_to_batches"](clip, 2, device=device):
        assert batch.device.type == device.type and batch.dtype == torch.float32


# --- the probes themselves -----------------------------------------------------------------------

def test_what_a_question_prints_stays_small(solution):
    _, sizes = _printed(calls_for(VIDEO, 5), solution)
    assert len(sizes) == len(QUESTIONS) and all(0 < size < MAX_PRINTED_BYTES for size in sizes.values()), sizes


def test_the_same_seed_gives_the_same_calls():
    first, again, other = calls_for(VIDEO, 7), calls_for(VIDEO, 7), calls_for(VIDEO, 8)
    assert [encode(c.args) for c in first] == [encode(c.args) for c in again]
    assert [encode(c.args) for c in first] != [encode(c.args) for c in other]


def test_probe_inputs_are_exact_binary_fractions():
    """Boxes on a 1/8-pixel grid below 128 give exact areas and IoUs in float32; scores are sixteenths;
    thresholds are binary fractions: ties and IoUs at the threshold are exact for every right answer."""
    for call in calls_for(VIDEO, 9):
        if call.name in ("associate", "track_step"):
            boxes_sent, threshold = ((call.args[0], call.args[1]), call.args[2]) if call.name == "associate" \
                else ((call.args[1], call.args[4]), call.args[5])
            for boxes in boxes_sent:
                assert torch.equal(boxes * 8, (boxes * 8).round()) and bool((boxes.abs() < 128).all()), call.name
            assert (threshold * 16).is_integer()
        if call.name == "confident_detections":
            scores = call.args[2]
            assert torch.equal(scores * 16, (scores * 16).round())
            assert len(call.args) < 5 or (call.args[4] * 16).is_integer()


def test_every_argument_is_named_briefly_in_the_grade_record():
    """Tensors appear as their shapes; the only other arguments are numbers and short tuples of names."""
    for call in calls_for(VIDEO, 10):
        for arg in call.args:
            assert isinstance(arg, (torch.Tensor, int, float)) or (
                isinstance(arg, tuple) and all(isinstance(name, str) for name in arg) and len(repr(arg)) < 250), arg


def test_the_crafted_association_cases_show_what_they_claim():
    """Greedy differs from the Hungarian algorithm; an IoU equals its threshold; ties are exact."""
    cases = [(torch.tensor(t), torch.tensor(d), threshold) for t, d, threshold in video_tracking.ASSOCIATION_CASES]
    exact_tracks, exact_detections, threshold = cases[0]
    assert box_iou(exact_tracks, exact_detections).item() == threshold
    tracks, detections, threshold = cases[1]
    ious = box_iou(tracks, detections)
    rows, cols = linear_sum_assignment(ious.numpy(), maximize=True)
    hungarian = {(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if ious[r, c] >= threshold}
    greedy = {tuple(pair) for pair in video_tracking.associate_reference(tracks, detections, threshold)[0].tolist()}
    assert greedy == {(0, 0)} and hungarian == {(0, 1), (1, 0)}
    for tracks, detections, _ in cases[3:5]:
        ious = box_iou(tracks, detections).flatten()
        assert int((ious == ious.max()).sum()) == 2  # an exact tie


def test_track_step_reference_is_the_course_tracker_frame_by_frame():
    """Chained, the grader's q4 reference follows `IoUTracker` (greedy, no velocity, min_hits 1) exactly."""
    generator = torch.Generator().manual_seed(0)
    for max_age, threshold in [(0, 0.25), (2, 0.375), (3, 0.5)]:
        tracker = IoUTracker(iou_threshold=threshold, max_age=max_age, min_hits=1, method="greedy", use_velocity=False)
        state = video_tracking.empty_state()  # (ids, boxes, misses, next_id)
        objects = video_tracking._boxes(6, generator, corner_range=64.0)
        for _ in range(25):
            objects = video_tracking._jittered(objects, generator, shift=1.5)
            seen = torch.rand(len(objects), generator=generator) < 0.7
            detections = torch.cat([objects[seen], video_tracking._boxes(int(torch.rand(1, generator=generator) < 0.3),
                                                                         generator)])
            state = video_tracking.track_step_reference(*state, detections, threshold, max_age)
            tracker.update(detections)
            ids, boxes, misses, next_id = state
            assert ids.tolist() == [t.id for t in tracker.tracks]
            assert misses.tolist() == [t.misses for t in tracker.tracks]
            assert torch.equal(boxes, torch.stack([t.box for t in tracker.tracks]).reshape(-1, 4))
            assert next_id == tracker.next_id


def _switches_by_hand(assigned: torch.Tensor) -> list[int]:
    counts = []
    for column in assigned.T.tolist():
        last, switches = None, 0
        for track in column:
            if track >= 0:
                switches += last is not None and track != last
                last = track
        counts.append(switches)
    return counts


def test_id_switches_reference_counts_what_the_question_defines_and_what_clear_mot_reports():
    generator = torch.Generator().manual_seed(1)
    for frames, objects in [(25, 5), (1, 2), (40, 1), (0, 3), (6, 0)]:
        assigned = video_tracking._assignments(frames, objects, generator)
        counts = video_tracking.id_switches_reference(assigned)
        assert counts.tolist() == _switches_by_hand(assigned)
        x = torch.arange(objects, dtype=torch.float32) * 20
        boxes = torch.stack([x, torch.zeros_like(x), x + 10, torch.full_like(x, 10.0)], 1)
        truth = [(torch.arange(objects), boxes)] * frames
        tracks = [(row[row >= 0], boxes[row >= 0]) for row in assigned]
        assert clear_mot(truth, tracks).num_switches == int(counts.sum())
    for case in video_tracking.SWITCH_CASES:
        assigned = torch.tensor(case)
        assert video_tracking.id_switches_reference(assigned).tolist() == _switches_by_hand(assigned)


def test_confident_detections_reference_is_the_rule_of_the_question():
    coco = coco_categories()
    for call in calls_for(VIDEO, 11):
        if call.name != "confident_detections":
            continue
        boxes, labels, scores, categories, threshold, *rest = (*call.args, 0.5) if len(call.args) == 4 else call.args
        classes = rest[0] if rest else None
        keep = [float(score) >= threshold and label != 0 and categories[label] != "N/A"
                and (classes is None or categories[label] in classes)
                for label, score in zip(labels.tolist(), scores)]
        assert call.expected["names"] == [categories[k] for k, kept in zip(labels.tolist(), keep) if kept]
        assert torch.equal(call.expected["boxes"], boxes[torch.tensor(keep, dtype=torch.bool)])
        assert categories in (coco[:video_tracking.COCO_LABELS_SENT], video_tracking.SHAPES_CATEGORIES) or \
            categories[0] == "__background__"
    assert sum(name == "N/A" for name in coco) == 10 and coco[0] == "__background__"
    assert "N/A" in coco[:video_tracking.COCO_LABELS_SENT]


def test_frames_and_speed_references_agree_with_plain_arithmetic():
    for call in calls_for(VIDEO, 12):
        if call.name == "frames_to_batches":
            clip, batch_size = call.args
            flat = [np.transpose(frame.numpy(), (2, 0, 1)) / 255 for frame in clip]
            got = [image for batch in call.expected for image in batch]
            assert len(got) == len(clip) and all(np.allclose(a.double().numpy(), b) for a, b in zip(got, flat))
            assert all(batch.dtype == torch.float32 for batch in call.expected)
            assert [len(b) for b in call.expected][:-1] == [batch_size] * (len(call.expected) - 1)
        if call.name == "track_speed" and not isinstance(call.expected, Satisfies):
            frames, boxes, *options = call.args
            window, fps = (options + [None, None])[:2]
            rows = slice(-window, None) if window else slice(None)
            centres = ((boxes[rows, :2] + boxes[rows, 2:]) / 2).double().numpy()
            used = frames[rows].tolist()
            speed = np.hypot(*(centres[-1] - centres[0])) / (used[-1] - used[0]) * (fps or 1.0)
            assert abs(float(call.expected) - speed) <= 1e-5 * max(speed, 1.0), (speed, call.expected)


# --- the static audit -------------------------------------------------------------------------------

DELEGATIONS = [
    ("q1_answer", "from course_lib.detection.pretrained import used_categories"),
    ("q1_answer", "from course_lib.detection.pretrained import predict"),
    ("q2_answer", "import course_lib.data.video as video"),
    ("q3_answer", "from course_lib.detection.tracking import associate as greedy"),
    ("q3_answer", "from course_lib.detection import tracking"),
    ("q3_answer", "from torchvision.ops import box_iou"),
    ("q3_answer", "import torchvision\nx = torchvision.ops.box_iou"),
    ("q4_answer", "from course_lib.detection.tracking import update_tracks"),
    ("q4_answer", "import course_lib.detection.tracking as tracking"),
    ("q4_answer", "from course_lib.detection.tracking import IoUTracker"),
    ("q5_answer", "from course_lib.detection.tracking import track_speeds"),
    ("q6_answer", "from course_lib.detection.mot_metrics import clear_mot"),
    ("q6_answer", "from course_lib.detection.mot_metrics import ClearMOTAccumulator as A"),
]


@pytest.mark.parametrize("answer, code", DELEGATIONS)
def test_the_audit_reports_an_answer_that_calls_the_reference(answer, code):
    nb = _source()
    cell = next(c for c in nb.cells if grade_id(c) == answer)
    cell.source += "\n" + code
    audit = audit_cells(nb)
    question = answer.replace("_answer", "_tests")
    assert audit.reported_questions == {question}, [f.message for f in audit.findings]
    assert audit.zeroed_questions == set(), [f.message for f in audit.findings]
    assert audit.findings[0].message.endswith("reported; the points come from the grader's own check")
    assert "scores 0" not in audit.findings[0].message


def test_the_audit_leaves_the_solution_and_the_set_up_helpers_alone():
    assert audit_cells(_source()).findings == []
    nb = _source()  # an answer may use what the set-up gives: COCO, iou_matrix, empty_tracks
    cell = next(c for c in nb.cells if grade_id(c) == "q4_answer")
    cell.source += "\n_start, _names, _iou = empty_tracks(), COCO[:3], iou_matrix(torch.zeros(1, 4), torch.zeros(1, 4))"
    assert audit_cells(nb, _source()).findings == []


def test_scipy_hungarian_is_left_to_the_graders_own_check():
    """The audit reads only course_lib and torchvision: an answer built on scipy's linear_sum_assignment
    is not flagged, but it does not compute greedy association (the Hungarian mistake above fails)."""
    nb = _source()
    cell = next(c for c in nb.cells if grade_id(c) == "q3_answer")
    cell.source += "\nfrom scipy.optimize import linear_sum_assignment"
    assert audit_cells(nb).findings == []
    assert "the Hungarian algorithm (scipy) instead of greedy" in MISTAKES


# --- end to end ----------------------------------------------------------------------------------

HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)
#: A subtle mistake that the visible tests do not see (they move at a constant speed): the first
#: `window` observations instead of the last ones.
SUBTLE = ("q5_tests", "q5_answer", "frames, boxes = frames[-window:], boxes[-window:]",
          "frames, boxes = frames[:window], boxes[:window]")


@pytest.mark.notebook
def test_grading_the_solution_and_a_subtly_wrong_answer_end_to_end():
    from course_grader.autograde import GradingOptions, grade_submission
    from course_grader.environment import isolated_environment
    from course_grader.record import Status

    options = GradingOptions(timeout=60, setup_timeout=180, probe_seed=20246)
    with tempfile.TemporaryDirectory() as home, isolated_environment(Path(home), ROOT):
        source = _source()
        source_bytes = nbformat.writes(source).encode()
        record = grade_submission(VIDEO, source_bytes, source_bytes, student="solution", options=options)
        print(f"{VIDEO} solution: {record.duration_s:.1f} s")  # shown with pytest -s
        assert (record.status, record.message) == (Status.GRADED, ""), record.message
        assert record.total == record.max_total == 14, record.scores

        question, answer, right, wrong = SUBTLE
        without_hidden = copy.deepcopy(source)
        tests = next(c for c in without_hidden.cells if grade_id(c) == question)
        tests.source = HIDDEN_TESTS.sub("", tests.source)
        submission = copy.deepcopy(without_hidden)
        cell = next(c for c in submission.cells if grade_id(c) == answer)
        assert right in cell.source
        cell.source = cell.source.replace(right, wrong)
        record = grade_submission(VIDEO, nbformat.writes(without_hidden).encode(), nbformat.writes(submission).encode(),
                                  student="subtle", options=options)
        print(f"{VIDEO} subtle: {record.duration_s:.1f} s, {record.message}")
        assert record.scores[question] == 0.0, record.scores
        assert record.total == record.max_total - record.max_scores[question], record.scores
        assert f"{question} passed in the notebook but not the grader's own check (scores 0)" in record.message
        assert record.status == Status.TAMPERED, record.message
