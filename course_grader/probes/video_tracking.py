"""Exercise 6 (pretrained detectors on video): the grader's own calls.

Expected answers come from the course's library wherever its semantics are the question's:

- q1 ``confident_detections``: `course_lib.detection.pretrained.predict`'s score filter (a score of
  at least the threshold is kept), run on the given detections through a stand-in model, then the
  object classes of `used_categories` (no ``'N/A'``, no background) and the optional class names;
- q2 ``frames_to_batches``: the conversion `predict` applies to uint8 frames (``x / 255`` in float32),
  after moving the channels of the (N, H, W, 3) clip first; batches of ``batch_size`` frames, the
  last one shorter;
- q3 ``associate``: `course_lib.detection.tracking.associate` with ``method="greedy"`` (a plain tuple);
- q4 ``track_step``: `course_lib.detection.tracking.update_tracks` with the exercise's tracker
  (greedy, no velocity, ``min_hits=1``): the exercise's plain state (ids, boxes, misses, next_id)
  is turned into `Track` records whose last frame is ``misses`` frames before the previous one,
  and back (`track_step_reference`);
- q5 ``track_speed``: `course_lib.detection.tracking.track_speeds` of one `Track`; a track seen once
  has no speed (NaN), checked as a property since NaN never equals NaN;
- q6 ``id_switches``: `course_lib.detection.mot_metrics.ClearMOTAccumulator`'s identity switches,
  on frames built so that ground truth ``g`` is matched exactly to the hypothesis id the input gives
  (`id_switches_reference`).

Every argument is a tensor, a number or a short tuple of names (the exercise's signatures are
chosen so): the grade record names a failing call by its arguments, tensors by their shapes.
Category lists are therefore COCO's first labels (its first 'N/A' included) rather than all 91.

Box coordinates are multiples of 1/8 pixel below 128, scores multiples of 1/16 and thresholds exact
binary fractions (0.375, not 0.3): areas, intersections and unions are exact in float32, so every
right answer computes the same IoUs whatever order it does its arithmetic in, and an IoU or a score
equal to its threshold is an exact tie, as are the equal IoUs the association's tie rule is about.
"""
from __future__ import annotations

import torch
from torch import nn

from course_lib.detection.mot_metrics import ClearMOTAccumulator
from course_lib.detection.pretrained import coco_categories, predict, used_categories
from course_lib.detection.tracking import Track, associate, track_speeds, update_tracks
from ..probe_types import Call, Satisfies

#: Steps of the random inputs: box coordinates (pixels) and scores.
PIXEL_STEP = 2.0 ** -3
SCORE_STEP = 2.0 ** -4
#: Score and IoU thresholds: exact binary fractions.
SCORE_THRESHOLDS = (0.5, 0.25, 0.75, 0.0, 1.0)
IOU_THRESHOLDS = (0.25, 0.375, 0.5)
#: Frames per second of the speed questions: PAL, NTSC-like, and half of PAL's (not an integer).
FRAME_RATES = (25.0, 30.0, 12.5)
#: q1's category lists: COCO's labels 0..13 (12 is 'N/A'), a small detector's list (background
#: first); and road users to keep in a video.
COCO_LABELS_SENT = 14
SHAPES_CATEGORIES = ("background", "circle", "square", "triangle")
ROAD_USERS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
#: The id of the first track (as in `course_lib.detection.tracking`) and "no match" in q6.
FIRST_ID = 1
NO_MATCH = -1


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One int in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _quantized(values: torch.Tensor, step: float) -> torch.Tensor:
    return (values / step).round() * step


def _boxes(count: int, generator: torch.Generator, corner_range: float = 96.0, size_range: float = 24.0,
           min_size: float = 2.0) -> torch.Tensor:
    """(count, 4) xyxy boxes on the `PIXEL_STEP` grid: top-left in [0, corner_range), sides in
    [min_size, min_size + size_range]."""
    top_left = _quantized(torch.rand(count, 2, generator=generator) * corner_range, PIXEL_STEP)
    size = min_size + _quantized(torch.rand(count, 2, generator=generator) * size_range, PIXEL_STEP)
    return torch.cat([top_left, top_left + size], dim=1)


def _jittered(boxes: torch.Tensor, generator: torch.Generator, shift: float = 2.0) -> torch.Tensor:
    """The same boxes moved by up to ``shift`` pixels per edge (the same object one frame later)."""
    moved = boxes + _quantized((torch.rand(boxes.shape, generator=generator) * 2 - 1) * shift, PIXEL_STEP)
    return torch.cat([moved[:, :2], torch.maximum(moved[:, 2:], moved[:, :2] + 1.0)], dim=1)


# --- Q1: confident detections with names -----------------------------------------------------------

class _GivenDetections(nn.Module):
    """A stand-in detector that reports the given detections for each image (`predict` filters them)."""

    def __init__(self, detections: dict[str, torch.Tensor]):
        super().__init__()
        self.detections = detections

    def forward(self, images):
        return [dict(self.detections) for _ in images]


def confident_detections_reference(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, categories,
                                   score_threshold: float = 0.5, classes=None) -> dict:
    """What q1 asks: `predict`'s score filter, then object classes only (and only ``classes``)."""
    image = torch.zeros(3, 2, 2)
    detections = {"boxes": boxes, "labels": labels, "scores": scores}
    kept = predict(_GivenDetections(detections), [image], score_threshold=score_threshold)[0]
    named = used_categories(categories)  # label -> name, without 'N/A' and the background
    wanted = [label in named and (classes is None or named[label] in classes) for label in range(len(categories))]
    keep = torch.tensor(wanted, dtype=torch.bool)[kept["labels"]]
    labels = kept["labels"][keep]
    return {"boxes": kept["boxes"][keep], "labels": labels, "scores": kept["scores"][keep],
            "names": [categories[label] for label in labels.tolist()]}


def _custom_categories(generator: torch.Generator) -> tuple[str, ...]:
    """A category list with its own 'N/A' gaps: background, then classes and gaps in random order."""
    count = _randint(4, 12, generator)
    gaps = torch.rand(count, generator=generator) < 0.3
    return ("__background__", *("N/A" if gap else f"class_{k}" for k, gap in enumerate(gaps.tolist(), 1)))


def confident_detections_calls(question: str, generator: torch.Generator) -> list[Call]:
    """COCO's first labels (the background, classes and the 'N/A' label 12), a small detector's list
    and lists with 'N/A' gaps of their own; scores on a 1/16 grid, an object scoring exactly the
    threshold and 'N/A' and background labels scoring 1; thresholds 0 and 1 too; no detections, one
    detection; the class filter with road users, a name no list has, and nothing at all."""
    coco = coco_categories()[:COCO_LABELS_SENT]
    calls = []
    for trial in range(8):
        categories = (coco, SHAPES_CATEGORIES, _custom_categories(generator))[trial % 3]
        count = {4: 0, 7: 1}.get(trial) or _randint(3, 14, generator)  # no detections, one, several
        labels = torch.randint(0, len(categories), (count,), generator=generator)
        scores = torch.randint(0, 17, (count,), generator=generator).float() * SCORE_STEP
        threshold = 0.5 if trial == 1 else SCORE_THRESHOLDS[trial % len(SCORE_THRESHOLDS)]
        first_class = next((k for k, name in enumerate(categories) if k > 0 and name != "N/A"), None)
        if count > 2:  # an 'N/A' label (if the list has one) and the background, scoring 1: never kept
            labels[0], labels[1] = categories.index("N/A") if "N/A" in categories else 0, 0
            scores[:2] = 1.0
            if first_class is not None:  # and an object scoring exactly the threshold: kept
                at = _randint(2, count, generator)
                labels[at], scores[at] = first_class, threshold
        scores, order = scores.sort(descending=True, stable=True)  # as detectors report them
        detections = (_boxes(count, generator), labels[order], scores)
        if trial in (5, 6, 7):
            options = (threshold, {5: ROAD_USERS, 6: ("car", "circle", "unicorn", "class_2"), 7: ()}[trial])
        else:
            options = () if trial == 1 else (threshold,)  # trial 1: the default threshold
        args = (*detections, categories, *options)
        calls.append(Call(question, "confident_detections", args, confident_detections_reference(*args)))
    return calls


# --- Q2: frames to batches -------------------------------------------------------------------------

def frames_to_batches_reference(clip: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """(N, H, W, 3) uint8 clip -> batches (B, 3, H, W) float32 in [0, 1], as `predict` converts frames."""
    frames = clip.permute(0, 3, 1, 2)  # channels first
    return [frames[start:start + batch_size].float() / 255.0 for start in range(0, len(frames), batch_size)]


def frames_to_batches_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Clips of 0 to 9 frames, batch sizes that divide them, leave a short last batch, or exceed them;
    frames wider than tall (a swapped height and width shows); a dark clip whose values are all 0 or
    1 (a "divide when the maximum is above 1" test misses it) and a saturated one."""
    cases = [(7, 3, (6, 10)), (8, 4, (5, 4)), (1, 8, (4, 6)), (0, 4, (4, 6)), (9, 1, (3, 5)), (5, 5, (7, 3))]
    clips = [torch.randint(0, 256, (count, height, width, 3), generator=generator, dtype=torch.uint8)
             for count, _, (height, width) in cases]
    batch_sizes = [batch_size for _, batch_size, _ in cases]
    clips.append(torch.randint(0, 2, (3, 4, 6, 3), generator=generator, dtype=torch.uint8))  # dark
    clips.append(torch.stack([torch.full((2, 3, 3), 255, dtype=torch.uint8), torch.zeros(2, 3, 3, dtype=torch.uint8)]))
    batch_sizes += [2, 2]
    return [Call(question, "frames_to_batches", (clip, batch_size), frames_to_batches_reference(clip, batch_size))
            for clip, batch_size in zip(clips, batch_sizes)]


# --- Q3: greedy association ------------------------------------------------------------------------

def associate_reference(track_boxes: torch.Tensor, detection_boxes: torch.Tensor,
                        iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(associate(track_boxes, detection_boxes, iou_threshold, method="greedy"))


#: Crafted association cases: (track boxes, detection boxes, IoU threshold), with what each shows.
ASSOCIATION_CASES = [
    # an IoU exactly at the threshold matches (8 / 16 = 0.5)
    ([[0.0, 0.0, 4.0, 4.0]], [[0.0, 0.0, 4.0, 2.0]], 0.5),
    # greedy is not the largest total IoU: (0, 0) has IoU 0.6 and goes first; the Hungarian
    # algorithm would pair (0, 1) (IoU 0.5) and (1, 0) (IoU 0.52) instead
    ([[0.0, 0.0, 8.0, 8.0], [4.5, 0.0, 12.5, 8.0]], [[2.0, 0.0, 10.0, 8.0], [0.0, 0.0, 8.0, 4.0]], 0.375),
    # one detection is the best of two tracks: only the better track gets it
    ([[0.0, 0.0, 8.0, 8.0], [1.0, 0.0, 9.0, 8.0], [40.0, 40.0, 48.0, 48.0]],
     [[0.5, 0.0, 8.5, 8.0], [60.0, 60.0, 64.0, 64.0]], 0.25),
    # ties: twin detections (the lower index wins), then twin tracks (the lower index wins)
    ([[10.0, 10.0, 20.0, 20.0]], [[11.0, 10.0, 21.0, 20.0], [11.0, 10.0, 21.0, 20.0]], 0.5),
    ([[10.0, 10.0, 20.0, 20.0], [10.0, 10.0, 20.0, 20.0]], [[11.0, 10.0, 21.0, 20.0]], 0.5),
    # every IoU below the threshold; zero-area boxes (IoU 0, never a match)
    ([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 14.0, 14.0]], [[3.0, 3.0, 7.0, 7.0], [13.0, 13.0, 17.0, 17.0]], 0.375),
    ([[2.0, 2.0, 2.0, 6.0], [0.0, 0.0, 8.0, 8.0]], [[2.0, 2.0, 2.0, 6.0], [3.0, 3.0, 3.0, 3.0]], 0.25),
]


def associate_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random frames: tracks, the same objects a frame later (moved a little, some missed) and new
    objects, crowded enough that detections overlap several tracks; no tracks, no detections,
    neither; and the crafted cases of `ASSOCIATION_CASES`."""
    calls = []
    for tracks, detections in [(6, 5), (12, 14), (3, 8), (20, 16), (0, 4), (5, 0), (0, 0)]:
        track_boxes = _boxes(tracks, generator, corner_range=64.0)
        seen = torch.rand(tracks, generator=generator) < 0.8
        moved = _jittered(track_boxes[seen], generator)[:detections]
        new = _boxes(max(detections - len(moved), 0), generator, corner_range=64.0)
        detection_boxes = torch.cat([moved, new])[torch.randperm(detections, generator=generator)]
        threshold = IOU_THRESHOLDS[_randint(0, len(IOU_THRESHOLDS), generator)]
        calls.append(Call(question, "associate", (track_boxes, detection_boxes, threshold),
                          associate_reference(track_boxes, detection_boxes, threshold)))
    for tracks, detections, threshold in ASSOCIATION_CASES:
        track_boxes, detection_boxes = torch.tensor(tracks), torch.tensor(detections)
        calls.append(Call(question, "associate", (track_boxes, detection_boxes, threshold),
                          associate_reference(track_boxes, detection_boxes, threshold)))
    return calls


# --- Q4: one tracking step -------------------------------------------------------------------------

def empty_state() -> tuple:
    """The exercise's tracker state before the first frame: (ids, boxes, misses, next_id)."""
    return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), FIRST_ID


def track_step_reference(ids: torch.Tensor, boxes: torch.Tensor, misses: torch.Tensor, next_id: int,
                         detection_boxes: torch.Tensor, iou_threshold: float, max_age: int) -> tuple:
    """q4 through `update_tracks`: the state's tracks become `Track` records (one observation each,
    ``misses`` frames before the previous frame; without velocity only the last box matters), one
    step runs with the exercise's tracker, and the live tracks become a state again (by id)."""
    frame = max(misses.tolist(), default=-1) + 1  # every track's last frame is then >= 0 and before it
    tracks = [Track(track_id, [frame - 1 - missed], [box], misses=missed, confirmed=True)
              for track_id, box, missed in zip(ids.tolist(), boxes, misses.tolist())]
    step = update_tracks(tracks, detection_boxes, frame, next_id, iou_threshold=iou_threshold,
                         max_age=max_age, min_hits=1, method="greedy", use_velocity=False)
    live = step.tracks
    return (torch.tensor([t.id for t in live], dtype=torch.int64),
            torch.stack([t.box for t in live]) if live else torch.zeros(0, 4, dtype=detection_boxes.dtype),
            torch.tensor([t.misses for t in live], dtype=torch.int64),
            step.next_id)


def _random_state(count: int, max_age: int, generator: torch.Generator) -> tuple:
    """``count`` live tracks with increasing ids (gaps where tracks died; the last ones may have died
    too, so next_id can be above every live id), misses in 0..max_age."""
    ids = (torch.randperm(3 * count + 3, generator=generator)[:count] + FIRST_ID).sort().values
    top = int(ids.max()) if count else FIRST_ID - 1
    misses = torch.randint(0, max_age + 1, (count,), generator=generator)
    return ids, _boxes(count, generator, corner_range=72.0), misses, top + 1 + _randint(0, 4, generator)


def track_step_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random states and frames (tracks seen again, missed, new objects) with max_age 0 to 3; the
    first frame (no tracks yet); a frame without detections (every track ages, the oldest die);
    a track missed exactly max_age times in a row (it lives) and one more time (it dies); ids of
    dead tracks above every live one (never given again)."""
    calls = []
    for count, new, max_age in [(5, 2, 2), (8, 3, 1), (12, 4, 3), (4, 0, 0), (6, 6, 2), (1, 1, 1)]:
        state = _random_state(count, max_age, generator)
        seen = torch.rand(count, generator=generator) < 0.7
        detections = torch.cat([_jittered(state[1][seen], generator), _boxes(new, generator, corner_range=72.0)])
        detections = detections[torch.randperm(len(detections), generator=generator)]
        threshold = IOU_THRESHOLDS[_randint(0, len(IOU_THRESHOLDS), generator)]
        case = (*state, detections, threshold, max_age)
        calls.append(Call(question, "track_step", case, track_step_reference(*case)))
    first = (*empty_state(), _boxes(3, generator), 0.375, 2)
    ageing = (torch.tensor([2, 5, 7]), _boxes(3, generator), torch.tensor([0, 1, 2]), 9, torch.zeros(0, 4), 0.375, 2)
    boundary = (torch.tensor([1, 3]), torch.tensor([[0.0, 0.0, 8.0, 8.0], [40.0, 40.0, 48.0, 48.0]]),
                torch.tensor([2, 1]), 6, torch.tensor([[60.0, 0.0, 68.0, 8.0]]), 0.5, 2)
    lost = (torch.tensor([3, 4]), _boxes(2, generator), torch.tensor([1, 1]), 5, _boxes(0, generator), 0.25, 1)
    for case in (first, ageing, boundary, lost):
        calls.append(Call(question, "track_step", case, track_step_reference(*case)))
    return calls


# --- Q5: speed -------------------------------------------------------------------------------------

def track_speed_reference(frames: torch.Tensor, boxes: torch.Tensor, window: int | None = None,
                          fps: float | None = None) -> torch.Tensor:
    track = Track(FIRST_ID, frames.tolist(), list(boxes))
    return track_speeds([track], window, fps)[0]


def _is_nan(result: torch.Tensor, earlier: list) -> str | None:
    if not bool(torch.isnan(result)):
        return f"got {float(result):.6g}, expected nan (a track seen once has no speed yet)"
    return None


def _track(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A track seen in ``count`` frames (gaps where it was missed), its box moving and changing size."""
    gaps = torch.randint(1, 4, (count,), generator=generator)
    frames = torch.cumsum(gaps, 0) - gaps[0] + _randint(0, 20, generator)
    start = _boxes(1, generator, corner_range=32.0, size_range=16.0, min_size=8.0)[0]
    velocity = _quantized((torch.rand(2, generator=generator) * 2 - 1) * 3, PIXEL_STEP)
    growth = _quantized(torch.rand(1, generator=generator) * 0.5, PIXEL_STEP)  # the object comes closer
    elapsed = (frames - frames[0]).float()[:, None]
    top_left = start[:2] + elapsed * velocity
    bottom_right = start[2:] + elapsed * (velocity + growth)
    noise = _quantized(torch.rand(count, 4, generator=generator) - 0.5, PIXEL_STEP)
    return frames.to(torch.int64), torch.cat([top_left, bottom_right], dim=1) + noise


def track_speed_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Tracks with gaps, moving and growing, over windows of 2, 3 and 5 observations and the whole
    track (window = its length or more), in pixels per frame and per second; a track seen once (NaN)."""
    calls = []
    pal, ntsc, half = FRAME_RATES
    for count, window, fps in [(6, None, None), (9, 3, None), (12, 5, None), (7, 2, None), (8, 8, pal),
                               (10, 4, half), (5, 50, ntsc), (2, None, None)]:
        frames, boxes = _track(count, generator)
        args = (frames, boxes) if window is None else (frames, boxes, window) if fps is None else \
            (frames, boxes, window, fps)
        calls.append(Call(question, "track_speed", args, track_speed_reference(frames, boxes, window, fps)))
    frames, boxes = _track(1, generator)
    calls.append(Call(question, "track_speed", (frames, boxes), Satisfies(like=torch.tensor(0.0), check=_is_nan)))
    return calls


# --- Q6: identity switches -------------------------------------------------------------------------

#: Ground-truth boxes of q6's reference: object g at x = g * OBJECT_SPACING, far from the others.
OBJECT_SPACING, OBJECT_SIDE = 20.0, 10.0


def id_switches_reference(assigned: torch.Tensor) -> torch.Tensor:
    """(F, G) track id matched to each object in each frame (-1: none) -> (G,) identity switches,
    counted by CLEAR-MOT's accumulator on frames where each match is an exact box overlap."""
    num_frames, num_objects = assigned.shape
    x = torch.arange(num_objects, dtype=torch.float32) * OBJECT_SPACING
    boxes = torch.stack([x, torch.zeros_like(x), x + OBJECT_SIDE, torch.full_like(x, OBJECT_SIDE)], dim=1)
    objects = torch.arange(num_objects, dtype=torch.int64)
    accumulator = ClearMOTAccumulator()
    switches = torch.zeros(num_objects, dtype=torch.int64)
    for row in assigned:
        matched = row != NO_MATCH
        frame = accumulator.update(objects, boxes, row[matched], boxes[matched])
        switches.index_add_(0, frame.matches[:, 0], frame.switches.to(torch.int64))
    return switches


def _assignments(num_frames: int, num_objects: int, generator: torch.Generator, pool: int = 30) -> torch.Tensor:
    """Track ids of ``num_objects`` objects over ``num_frames`` frames, unique within a frame: ids
    mostly stay, sometimes two objects swap theirs (a crossing) or one gets a fresh id (a track
    lost and reborn); about a quarter of the entries are misses (-1)."""
    current = torch.randperm(pool, generator=generator)[:num_objects] + FIRST_ID
    fresh = pool + FIRST_ID
    rows = []
    for _ in range(num_frames):
        event = float(torch.rand(1, generator=generator))
        if num_objects >= 2 and event < 0.2:
            a, b = torch.randperm(num_objects, generator=generator)[:2].tolist()
            current[[a, b]] = current[[b, a]]
        elif num_objects and event < 0.35:
            current[_randint(0, num_objects, generator)] = fresh
            fresh += 1
        missed = torch.rand(num_objects, generator=generator) < 0.25
        rows.append(torch.where(missed, NO_MATCH, current))
    return torch.stack(rows) if rows else torch.zeros(0, num_objects, dtype=torch.int64)


#: Crafted identity histories: a miss between two matches of the same id (no switch), a miss between
#: different ids (one switch), back and forth (two), the first match (none), never matched.
SWITCH_CASES = [
    [[5, 8], [-1, 8], [5, 9]],
    [[5, -1], [-1, -1], [7, -1], [7, 3]],
    [[1, 2], [2, 1], [1, 2]],
    [[-1, -1, 4], [-1, 6, 4]],
    [[-1], [-1], [-1]],
]


def id_switches_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random histories (one frame, many frames, one object, many objects), no frames, no objects,
    and `SWITCH_CASES`."""
    calls = []
    for num_frames, num_objects in [(12, 4), (30, 7), (1, 3), (20, 1), (0, 3), (5, 0)]:
        assigned = _assignments(num_frames, num_objects, generator)
        calls.append(Call(question, "id_switches", (assigned,), id_switches_reference(assigned)))
    for case in SWITCH_CASES:
        assigned = torch.tensor(case, dtype=torch.int64)
        calls.append(Call(question, "id_switches", (assigned,), id_switches_reference(assigned)))
    return calls


def calls(generator: torch.Generator) -> list[Call]:
    return [
        *confident_detections_calls("q1_tests", generator),
        *frames_to_batches_calls("q2_tests", generator),
        *associate_calls("q3_tests", generator),
        *track_step_calls("q4_tests", generator),
        *track_speed_calls("q5_tests", generator),
        *id_switches_calls("q6_tests", generator),
    ]

