"""course_lib.detection.tracking: IoU association (Hungarian and greedy) and the IoU tracker on
synthetic objects (linear motion with noise, crossings, gaps, births and deaths)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.boxes import box_iou
from course_lib.detection.tracking import (
    FIRST_ID,
    IoUTracker,
    Track,
    associate,
    predict_boxes,
    track_speed,
    track_speeds,
    track_velocities,
    tracks_to_tensors,
    update_tracks,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
METHODS = ["hungarian", "greedy"]


def box(cx: float, cy: float, w: float = 20.0, h: float = 20.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def random_boxes(n: int, seed: int, size: float = 60.0) -> torch.Tensor:
    """(n, 4) boxes crowded into a small area, so that many pairs overlap."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2
    return torch.cat((xy, xy + wh), dim=1)


def simulate(objects: list[dict], n_frames: int, noise: float = 0.0, seed: int = 0):
    """Per frame: (object ids (N,), detections (N, 4)) of objects moving at constant velocity.

    Each object: ``start`` (cx, cy), ``velocity`` (vx, vy) px/frame, ``size`` (w, h) and
    ``visible`` (the frames where it is detected; default all). Gaussian noise (std ``noise`` px)
    on every coordinate.
    """
    g = torch.Generator().manual_seed(seed)
    frames = []
    for f in range(n_frames):
        ids, boxes = [], []
        for k, obj in enumerate(objects):
            if f in obj.get("visible", range(n_frames)):
                (x, y), (vx, vy) = obj["start"], obj["velocity"]
                boxes.append(box(x + vx * f, y + vy * f, *obj.get("size", (30.0, 30.0))))
                ids.append(k)
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        frames.append((torch.tensor(ids, dtype=torch.int64), b + noise * torch.randn(b.shape, generator=g)))
    return frames


def track_ids_of_objects(frames, **tracker_args) -> dict[int, list[int]]:
    """Run the tracker; for each object, the track ids it got (in frame order, repeats removed)."""
    tracker = IoUTracker(**tracker_args)
    ids_of: dict[int, list[int]] = {}
    for object_ids, boxes in frames:
        for track in tracker.update(boxes):
            # An active track's box is the detection it was matched with in this frame.
            row = int(torch.nonzero((boxes == track.box).all(dim=1))[0, 0])
            seen = ids_of.setdefault(int(object_ids[row]), [])
            if not seen or seen[-1] != track.id:
                seen.append(track.id)
    return ids_of


# --------------------------------------------------------------------------- associate


def test_associate_worked_example():
    tracks = torch.tensor([box(10, 10), box(50, 10), box(100, 100)])
    detections = torch.tensor([box(52, 10), box(200, 200), box(11, 10)])
    # IoU(track 0, det 2) = 19*20 / (800 - 380) = 0.905; IoU(track 1, det 0) = 18*20 / 440 = 0.818
    for method in METHODS:
        matches, lost, new = associate(tracks, detections, 0.3, method)
        assert matches.dtype == lost.dtype == new.dtype == torch.int64
        assert matches.tolist() == [[0, 2], [1, 0]]
        assert lost.tolist() == [2] and new.tolist() == [1]
    # a threshold above both IoUs rejects both pairs
    matches, lost, new = associate(tracks, detections, 0.95)
    assert matches.shape == (0, 2) and lost.tolist() == [0, 1, 2] and new.tolist() == [0, 1, 2]
    # ... at 0.85 only the better pair is left
    assert associate(tracks, detections, 0.85).matches.tolist() == [[0, 2]]


def test_hungarian_and_greedy_differ_on_a_crafted_case():
    # 1-D intervals as boxes of height 1: IoU(A, a) = 8/12, IoU(A, b) = 7/13, IoU(B, a) = 6/14, IoU(B, b) = 1/19
    A, B, a, b = ([x1, 0.0, x2, 1.0] for x1, x2 in [(0, 10), (6, 16), (2, 12), (-3, 7)])
    tracks, detections = torch.tensor([A, B]), torch.tensor([a, b])
    greedy = associate(tracks, detections, 0.3, "greedy")
    hungarian = associate(tracks, detections, 0.3, "hungarian")
    # greedy takes the best pair (A, a) = 0.667 and then nothing is left above 0.3 for B;
    # the Hungarian matching (A, b) + (B, a) = 0.538 + 0.429 = 0.967 has the larger total
    assert greedy.matches.tolist() == [[0, 0]] and greedy.unmatched_tracks.tolist() == [1]
    assert greedy.unmatched_detections.tolist() == [1]
    assert hungarian.matches.tolist() == [[0, 1], [1, 0]]
    assert hungarian.unmatched_tracks.numel() == 0 and hungarian.unmatched_detections.numel() == 0


def test_hungarian_maximises_total_iou_not_the_number_of_pairs():
    # (G, H1) = 0.905 alone beats (G, H2) + (F, H1) = 0.333 + 0.379: pairs under the threshold
    # count as IoU 0 and are dropped (course_lib.detection.mot_metrics instead prefers more pairs)
    G, F, H1, H2 = ([x1, 0.0, x2, 1.0] for x1, x2 in [(0, 10), (5, 15), (0.5, 10.5), (-5, 5)])
    result = associate(torch.tensor([G, F]), torch.tensor([H1, H2]), 0.3)
    assert result.matches.tolist() == [[0, 0]]


def test_greedy_ties_go_by_track_then_detection_index():
    same = torch.tensor([box(10, 10)] * 3)
    assert associate(same, same[:2], 0.5, "greedy").matches.tolist() == [[0, 0], [1, 1]]
    assert associate(same[:1], same, 0.5, "greedy").matches.tolist() == [[0, 0]]
    assert associate(same, same[:1], 0.5, "greedy").unmatched_tracks.tolist() == [1, 2]


def greedy_reference(iou: torch.Tensor, threshold: float) -> list[list[int]]:
    """The plain sequential greedy loop: pairs by IoU descending, ties by (track, detection)."""
    pairs = sorted(((-float(iou[t, d]), t, d) for t in range(iou.shape[0]) for d in range(iou.shape[1])))
    used_t, used_d, matches = set(), set(), []
    for neg_iou, t, d in pairs:
        if -neg_iou >= threshold and t not in used_t and d not in used_d:
            used_t.add(t), used_d.add(d), matches.append([t, d])
    return sorted(matches)


@SETTINGS
@given(t=st.integers(0, 9), d=st.integers(0, 9), seed=st.integers(0, 2**16), threshold=st.sampled_from([0.1, 0.3, 0.5]))
def test_greedy_equals_the_sequential_loop(t, d, seed, threshold):
    tracks, detections = random_boxes(t, seed), random_boxes(d, seed + 1)
    # round IoUs to a coarse grid so that ties occur often
    tracks, detections = tracks.round(), detections.round()
    got = associate(tracks, detections, threshold, "greedy")
    assert got.matches.tolist() == greedy_reference(box_iou(tracks, detections), threshold)


@SETTINGS
@given(t=st.integers(0, 6), d=st.integers(0, 6), seed=st.integers(0, 2**16), threshold=st.sampled_from([0.1, 0.3, 0.5]))
def test_hungarian_total_iou_equals_brute_force(t, d, seed, threshold):
    tracks, detections = random_boxes(t, seed), random_boxes(d, seed + 1)
    iou = box_iou(tracks, detections)
    gain = torch.where(iou >= threshold, iou, torch.zeros_like(iou))
    best = 0.0  # every way to give min(t, d) tracks distinct detections
    small, large = (range(t), range(d)) if t <= d else (range(d), range(t))
    for chosen in itertools.permutations(large, len(small)):
        pairs = zip(small, chosen) if t <= d else zip(chosen, small)
        best = max(best, sum(float(gain[i, j]) for i, j in pairs))
    matches, lost, new = associate(tracks, detections, threshold, "hungarian")
    assert math.isclose(float(iou[matches[:, 0], matches[:, 1]].sum()), best, rel_tol=1e-9, abs_tol=1e-12)
    assert bool((iou[matches[:, 0], matches[:, 1]] >= threshold).all())
    # every index is either matched or unmatched, once
    assert sorted(matches[:, 0].tolist() + lost.tolist()) == list(range(t))
    assert sorted(matches[:, 1].tolist() + new.tolist()) == list(range(d))
    assert matches[:, 0].tolist() == sorted(matches[:, 0].tolist())


@pytest.mark.parametrize("method", METHODS)
def test_class_aware_association(method):
    boxes = torch.tensor([box(10, 10), box(12, 10)])
    labels = torch.tensor([1, 2])
    # class-agnostic: the identical boxes match; class-aware: each box matches its own label
    assert associate(boxes, boxes, 0.5, method).matches.tolist() == [[0, 0], [1, 1]]
    swapped = associate(boxes, boxes, 0.5, method, labels, labels.flip(0)).matches
    assert swapped.tolist() == [[0, 1], [1, 0]]
    none = associate(boxes[:1], boxes[:1], 0.5, method, labels[:1], labels[1:])
    assert none.matches.shape == (0, 2) and none.unmatched_tracks.tolist() == [0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs_and_device(method, device):
    some = random_boxes(3, 0).to(device)
    empty = torch.zeros(0, 4, device=device)
    for tracks, detections in [(empty, some), (some, empty), (empty, empty)]:
        matches, lost, new = associate(tracks, detections, 0.3, method)
        assert matches.shape == (0, 2)
        assert lost.tolist() == list(range(tracks.shape[0])) and new.tolist() == list(range(detections.shape[0]))
        assert matches.device.type == lost.device.type == new.device.type == torch.device(device).type
    matches, _, _ = associate(some, some.float(), 0.3, method)
    assert matches.device.type == torch.device(device).type and matches.tolist() == [[0, 0], [1, 1], [2, 2]]


def test_associate_bad_input_is_named():
    good = random_boxes(2, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        associate(good, good, 0.3, "auction")
    for threshold in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="iou_threshold must be a number in"):
            associate(good, good, threshold)
    with pytest.raises(ValueError, match=r"track_boxes must have shape \(N, 4\)"):
        associate(good[:, :3], good)
    with pytest.raises(ValueError, match="detection_boxes must be .x1, y1, x2, y2. with x1 <= x2"):
        associate(good, good[:, [2, 1, 0, 3]])
    with pytest.raises(ValueError, match="given together"):
        associate(good, good, 0.3, track_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"detection_labels must have shape \(2,\)"):
        associate(good, good, 0.3, track_labels=torch.tensor([0, 1]), detection_labels=torch.tensor([0]))
    with pytest.raises(TypeError, match="track_labels must be an integer tensor"):
        associate(good, good, 0.3, track_labels=torch.tensor([0.0, 1.0]), detection_labels=torch.tensor([0, 1]))


# --------------------------------------------------------------------------- the tracker


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_motion_with_noise_keeps_one_id_per_object(method, seed):
    objects = [
        {"start": (20, 30), "velocity": (4, 1)},
        {"start": (200, 40), "velocity": (-3, 2)},
        {"start": (100, 150), "velocity": (0, -4)},
    ]
    ids = track_ids_of_objects(simulate(objects, 30, noise=1.0, seed=seed), method=method)
    assert ids == {0: [1], 1: [2], 2: [3]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossing_objects_keep_their_ids(seed):
    # Two objects cross (their boxes overlap with IoU up to 0.64 at the crossing).
    objects = [{"start": (0, 50), "velocity": (5, 0)}, {"start": (150, 56), "velocity": (-5, 0)}]
    ids = track_ids_of_objects(simulate(objects, 30, noise=1.0, seed=seed))
    assert ids == {0: [1], 1: [2]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossing_swaps_ids_without_the_velocity(seed):
    # Head-on at 10 px per frame, 30 px boxes. Frame 7: A at x = 70, B at x = 75; frame 8: A at
    # 80, B at 65. Track A's last box (70) has IoU 25/35 with B's detection (65) but only 20/40
    # with A's own (80), and the other way round for track B: the Hungarian matching swaps them.
    # Moved by the tracks' velocities, the boxes land on the right detections (IoU 1).
    objects = [{"start": (0, 50), "velocity": (10, 0)}, {"start": (145, 50), "velocity": (-10, 0)}]
    frames = simulate(objects, 30, noise=1.0, seed=seed)
    assert track_ids_of_objects(frames, use_velocity=True) == {0: [1], 1: [2]}
    without = track_ids_of_objects(frames, use_velocity=False)
    assert len(without[0]) > 1 and len(without[1]) > 1
    # without noise: exactly one swap
    assert track_ids_of_objects(simulate(objects, 30), use_velocity=False) == {0: [1, 2], 1: [2, 1]}


@pytest.mark.parametrize("use_velocity", [True, False])
def test_gap_with_long_and_short_max_age(use_velocity):
    # The object moves 2 px/frame and is not detected in frames 8-11 (4 frames).
    objects = [{"start": (50, 50), "velocity": (2, 0), "visible": [f for f in range(20) if not 8 <= f <= 11]}]
    frames = simulate(objects, 20, noise=0.5, seed=3)
    assert track_ids_of_objects(frames, max_age=4, use_velocity=use_velocity) == {0: [1]}
    assert track_ids_of_objects(frames, max_age=10, use_velocity=use_velocity) == {0: [1]}
    assert track_ids_of_objects(frames, max_age=3, use_velocity=use_velocity) == {0: [1, 2]}
    tracker = IoUTracker(max_age=3)
    for _, boxes in frames[:12]:
        tracker.update(boxes)
    assert [t.id for t in tracker.ended] == [1] and tracker.ended[0].misses == 4
    assert tracker.ended[0].frames == list(range(8))


def test_gap_while_moving_fast_needs_the_velocity():
    # 6 px/frame, 30 px box, hidden 5 frames: it reappears 36 px further than last seen
    objects = [{"start": (30, 50), "velocity": (6, 0), "visible": [f for f in range(20) if not 8 <= f <= 12]}]
    frames = simulate(objects, 20, noise=0.5, seed=4)
    assert track_ids_of_objects(frames, max_age=10, use_velocity=True) == {0: [1]}
    assert track_ids_of_objects(frames, max_age=10, use_velocity=False) == {0: [1, 2]}


def test_objects_appear_and_disappear_and_ids_are_never_reused():
    objects = [
        {"start": (30, 30), "velocity": (1, 0), "visible": range(0, 6)},
        {"start": (150, 30), "velocity": (0, 1), "visible": range(3, 15)},
        {"start": (30, 30), "velocity": (1, 0), "visible": range(12, 15)},  # where object 0 was
    ]
    frames = simulate(objects, 15, noise=0.5, seed=5)
    tracker = IoUTracker(max_age=2)
    births = {}
    for f, (_, boxes) in enumerate(frames):
        for track in tracker.update(boxes):
            births.setdefault(track.id, f)
    assert births == {1: 0, 2: 3, 3: 12}  # ids in order of appearance
    assert [t.id for t in tracker.ended] == [1]
    assert [t.id for t in tracker.all_tracks] == [1, 2, 3] and tracker.next_id == 4


def test_min_hits_hides_a_flickering_detection():
    objects = [{"start": (50, 50), "velocity": (2, 0)}, {"start": (150, 150), "velocity": (0, 0), "visible": [2]}]
    frames = simulate(objects, 6)
    tracker = IoUTracker(min_hits=3)
    shown = [[t.id for t in tracker.update(boxes)] for _, boxes in frames]
    # object 0 is reported from its third frame on; the one-frame detection (id 2) never, and it
    # ends at its first miss because it was never confirmed
    assert shown == [[], [], [1], [1], [1], [1]]
    assert [t.id for t in tracker.ended] == [2] and tracker.ended[0].misses == 1


def test_empty_frames_one_frame_and_all_tracks_lost():
    tracker = IoUTracker(max_age=2)
    assert tracker.update(torch.zeros(0, 4)) == [] and tracker.tracks == []
    active = tracker.update(torch.tensor([box(10, 10), box(80, 80)]))
    assert [t.id for t in active] == [1, 2] and [t.frames for t in active] == [[1], [1]]
    for expected_live in (2, 2, 0):  # misses 1, 2, then 3 > max_age
        assert tracker.update(torch.zeros(0, 4)) == []
        assert len(tracker.tracks) == expected_live
    assert [(t.id, t.misses) for t in tracker.ended] == [(1, 3), (2, 3)]
    assert tracker.frame_index == 5
    tracker.reset()
    assert tracker.frame_index == 0 and tracker.next_id == FIRST_ID and tracker.all_tracks == []


def test_class_aware_tracking():
    place = torch.tensor([box(50, 50)])
    for class_aware, expected in [(True, [2]), (False, [1])]:
        tracker = IoUTracker(class_aware=class_aware)
        tracker.update(place, labels=torch.tensor([3]))
        active = tracker.update(place, labels=torch.tensor([7]))  # same place, another class
        assert [t.id for t in active] == expected and active[0].label == 7
    # two classes side by side whose boxes overlap: ids follow the labels, not the positions
    tracker = IoUTracker()
    boxes = torch.tensor([box(50, 50), box(56, 50)])
    first = tracker.update(boxes, labels=torch.tensor([0, 1]))
    second = tracker.update(boxes.flip(0), labels=torch.tensor([0, 1]))
    assert [(t.id, t.label) for t in first] == [(1, 0), (2, 1)]
    assert [(t.id, t.label, t.box.tolist()) for t in second] == [(1, 0, box(56, 50)), (2, 1, box(50, 50))]


def test_scores_and_labels_are_kept_and_inputs_copied():
    tracker = IoUTracker(class_aware=False)
    boxes = torch.tensor([box(50, 50)])
    tracker.update(boxes, labels=torch.tensor([2]), scores=torch.tensor([0.75]))
    boxes += 100  # the caller reuses its tensor: the track's history must not change
    (track,) = tracker.tracks
    assert track.box.tolist() == box(50, 50) and track.label == 2 and track.score == 0.75


def test_tracker_is_deterministic_and_equals_the_function_form():
    objects = [{"start": (20 + 25 * k, 50), "velocity": (3 - k, 1)} for k in range(4)]
    frames = simulate(objects, 15, noise=1.5, seed=7)
    runs = []
    for _ in range(2):
        tracker = IoUTracker()
        runs.append([[(t.id, t.box.tolist()) for t in tracker.update(boxes)] for _, boxes in frames])
    tracks, next_id, by_function = [], FIRST_ID, []
    for f, (_, boxes) in enumerate(frames):
        step = update_tracks(tracks, boxes, f, next_id)
        tracks, next_id = step.tracks, step.next_id
        by_function.append([(t.id, t.box.tolist()) for t in step.active])
    assert runs[0] == runs[1] == by_function


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_dtype_and_device(device, dtype):
    tracker = IoUTracker()
    for f in range(3):
        active = tracker.update(torch.tensor([box(10 + 2 * f, 10)], dtype=dtype, device=device))
    frames, boxes = active[0].history()
    assert frames.tolist() == [0, 1, 2] and boxes.shape == (3, 4)
    assert boxes.device.type == frames.device.type == torch.device(device).type
    assert boxes.dtype == (dtype if dtype.is_floating_point else torch.float32)
    ids, last = tracks_to_tensors(active)
    assert ids.tolist() == [1] and last.device.type == torch.device(device).type


def test_tracker_bad_input_is_named():
    with pytest.raises(ValueError, match="max_age must be an int >= 0"):
        IoUTracker(max_age=-1)
    with pytest.raises(ValueError, match="min_hits must be an int >= 1"):
        IoUTracker(min_hits=0)
    with pytest.raises(ValueError, match="method must be one of"):
        IoUTracker(method="nearest")
    tracker = IoUTracker()
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        tracker.update(torch.zeros(4))
    with pytest.raises(ValueError, match="boxes must be finite"):
        tracker.update(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="boxes must be .x1, y1, x2, y2. with x1 <= x2"):
        tracker.update(torch.tensor([[10.0, 10.0, 20.0, 5.0]]))  # (x, y, w, h) by mistake
    with pytest.raises(ValueError, match=r"scores must have shape \(1,\)"):
        tracker.update(torch.tensor([box(5, 5)]), scores=torch.tensor([0.5, 0.2]))
    tracker.update(torch.tensor([box(5, 5)]))
    with pytest.raises(ValueError, match="labels must be given in every frame or in none"):
        tracker.update(torch.tensor([box(5, 5)]), labels=torch.tensor([1]))
    step = update_tracks([], torch.tensor([box(5, 5)]), 4)
    with pytest.raises(ValueError, match="frame_index must increase"):
        update_tracks(step.tracks, torch.tensor([box(5, 5)]), 4, step.next_id)


# --------------------------------------------------------------------------- history, speed, prediction


def moving_track(track_id: int = 1, velocity=(3.0, 4.0), frames=(0, 1, 2, 3, 4)) -> Track:
    boxes = [torch.tensor(box(10 + velocity[0] * f, 20 + velocity[1] * f)) for f in frames]
    return Track(track_id, list(frames), boxes, confirmed=True)


def test_speed_in_pixels_per_frame_and_per_second():
    track = moving_track()  # (3, 4) px per frame: 5 px per frame
    assert track_speed(track) == pytest.approx(5.0)
    assert track_speed(track, fps=25) == pytest.approx(125.0)
    gappy = moving_track(frames=(0, 3, 10))  # gaps do not change the speed
    assert track_speed(gappy) == pytest.approx(5.0)
    torch.testing.assert_close(track_velocities([track, gappy]), torch.tensor([[3.0, 4.0], [3.0, 4.0]]))
    single = moving_track(frames=(7,))
    assert math.isnan(track_speed(single))
    assert track_velocities([single]).tolist() == [[0.0, 0.0]]
    speeds = track_speeds([track, single, moving_track(velocity=(0.0, -2.0))])
    assert speeds.shape == (3,) and speeds[0] == pytest.approx(5.0) and speeds[2] == pytest.approx(2.0)
    assert track_speeds([]).shape == (0,)


def test_speed_is_net_displacement_over_the_window():
    # there and back: the net displacement over the whole history is 0, over the last 2 it is 10 px
    boxes = [torch.tensor(box(x, 0)) for x in (0, 10, 20, 10, 0)]
    track = Track(1, [0, 1, 2, 3, 4], boxes)
    assert track_speed(track) == 0.0
    assert track_speed(track, window=2) == pytest.approx(10.0)
    assert track_velocities([track], window=3).tolist() == [[-10.0, 0.0]]
    with pytest.raises(ValueError, match="window must be None"):
        track_speed(track, window=1)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        track_speed(track, fps=0)


def test_prediction_moves_the_centre_and_keeps_the_size():
    track = moving_track(frames=(0, 1, 2))  # last box centred (16, 28)
    (predicted,) = predict_boxes([track], 5)  # 3 frames later
    torch.testing.assert_close(predicted, torch.tensor(box(16 + 9, 28 + 12)))
    assert predict_boxes([track], 5, use_velocity=False)[0].tolist() == track.box.tolist()
    assert predict_boxes([], 5).shape == (0, 4)
