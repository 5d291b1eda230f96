"""course_lib.detection.mot_metrics: CLEAR-MOT on hand-worked sequences, against a brute-force
reference on random ones, and on the IoU tracker's output for a sequence with a known answer.

py-motmetrics is not a dependency of the course. Checked once by hand: py-motmetrics 1.4.0 (its
MOTAccumulator fed with 1 - IoU, NaN below the threshold) gives the same matches, misses, false
positives, switches, mostly tracked/partially tracked/mostly lost, MOTA, and MOTP (as 1 - ours) on
900 random sequences (300 from `random_sequence`, 600 longer and more crowded ones of the same
kind), thresholds 0.3, 0.5 and 0.7.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.boxes import box_iou
from course_lib.detection.mot_metrics import ClearMOTAccumulator, clear_mot
from course_lib.detection.tracking import IoUTracker, associate, tracks_to_tensors

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def box(cx: float, cy: float = 50.0, w: float = 20.0, h: float = 20.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def frame(ids: list[int], boxes: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


EMPTY = frame([], [])


def two_objects(n_frames: int = 6) -> list:
    """Ground truth: objects 1 and 2 far apart, still, in every frame."""
    return [frame([1, 2], [box(20), box(100)]) for _ in range(n_frames)]


# --------------------------------------------------------------------------- hand-worked sequences


def test_perfect_tracking_scores_one_whatever_the_id_numbers():
    gt = two_objects()
    hyp = [frame([7, 3], [box(20), box(100)]) for _ in gt]
    result = clear_mot(gt, hyp)
    assert (result.mota, result.motp) == (1.0, 1.0)
    assert (result.num_objects, result.num_matches, result.num_misses, result.num_false_positives,
            result.num_switches) == (12, 12, 0, 0, 0)
    assert (result.num_frames, result.num_gt_tracks, result.num_hyp_tracks, result.mostly_tracked) == (6, 2, 2, 2)


def test_one_new_id_is_one_switch_and_an_exchange_is_two():
    gt = two_objects()
    # object 1's hypothesis id changes once (7 -> 8) at frame 3
    hyp = [frame([7 if f < 3 else 8, 3], [box(20), box(100)]) for f in range(6)]
    result = clear_mot(gt, hyp)
    assert result.num_switches == 1 and result.mota == pytest.approx(1 - 1 / 12)
    # the two hypothesis ids are exchanged at frame 3: each object changes id once
    hyp = [frame([7, 3] if f < 3 else [3, 7], [box(20), box(100)]) for f in range(6)]
    assert clear_mot(gt, hyp).num_switches == 2
    # ... and exchanged back at frame 5: two more
    hyp = [frame([7, 3] if f in (0, 1, 2, 5) else [3, 7], [box(20), box(100)]) for f in range(6)]
    assert clear_mot(gt, hyp).num_switches == 4


def test_a_missed_frame_is_one_miss_and_an_extra_box_one_false_positive():
    gt = two_objects()
    hyp = [frame([7, 3], [box(20), box(100)]) for _ in gt]
    hyp[2] = frame([3], [box(100)])  # object 1 missed in frame 2
    hyp[4] = frame([7, 3, 9], [box(20), box(100), box(200)])  # a box where there is nothing
    result = clear_mot(gt, hyp)
    assert (result.num_misses, result.num_false_positives, result.num_switches) == (1, 1, 0)
    assert result.mota == pytest.approx(1 - 2 / 12) and result.num_predictions == 12


def test_the_iou_threshold_decides_a_match():
    gt = [frame([1], [[0.0, 0.0, 2.0, 1.0]])]
    hyp = [frame([5], [[0.0, 0.0, 1.0, 1.0]])]  # IoU exactly 1/2
    assert clear_mot(gt, hyp, 0.5).num_matches == 1
    at_051 = clear_mot(gt, hyp, 0.51)
    assert (at_051.num_matches, at_051.num_misses, at_051.num_false_positives, at_051.mota) == (0, 1, 1, -1.0)
    assert math.isnan(at_051.motp)
    assert clear_mot(gt, hyp, 0.5).motp == pytest.approx(0.5)


def test_a_kept_correspondence_beats_a_better_iou():
    # frame 0: object 1 matched to hypothesis 7; frame 1: hypothesis 8 fits better, but 7 still
    # has IoU >= 0.5, so the match 1-7 is kept: no switch, 8 is a false positive
    gt = [frame([1], [box(50)]), frame([1], [box(50)])]
    hyp = [frame([7], [box(50)]), frame([7, 8], [box(55), box(50)])]
    result = clear_mot(gt, hyp)
    assert (result.num_matches, result.num_switches, result.num_false_positives) == (2, 0, 1)
    assert result.motp == pytest.approx((1 + 15 / 25) / 2)  # IoU(box(50), box(55)) = 300/500
    # once 7 drops below the threshold, the better hypothesis takes over: a switch
    hyp.append(frame([7, 8], [box(62), box(50)]))
    gt.append(frame([1], [box(50)]))
    assert clear_mot(gt, hyp).num_switches == 1


def test_the_last_match_survives_a_missed_frame():
    # the object is missed in frame 1; in frame 2 its old hypothesis 7 is back (IoU 0.6) beside a
    # better one: 7 is kept (py-motmetrics does the same), so no switch
    gt = [frame([1], [box(50)])] * 3
    hyp = [frame([7], [box(50)]), EMPTY, frame([7, 8], [box(55), box(50)])]
    result = clear_mot(gt, hyp)
    assert (result.num_misses, result.num_switches, result.num_false_positives) == (1, 0, 1)


def test_as_many_matches_as_possible_then_the_best_iou():
    # threshold 0.3: (G, H1) = 0.905 alone, or (G, H2) = 0.333 plus (F, H1) = 0.379.
    # CLEAR-MOT counts the two matches (fewer misses and false positives); the tracker's
    # association takes the larger total IoU instead.
    G, F, H1, H2 = ([x1, 0.0, x2, 1.0] for x1, x2 in [(0, 10), (5, 15), (0.5, 10.5), (-5, 5)])
    result = clear_mot([frame([1, 2], [G, F])], [frame([1, 2], [H1, H2])], 0.3)
    assert (result.num_matches, result.num_misses, result.num_false_positives) == (2, 0, 0)
    assert associate(torch.tensor([G, F]), torch.tensor([H1, H2]), 0.3).matches.tolist() == [[0, 0]]


def test_two_objects_asking_for_the_same_hypothesis():
    # 7 was object 1's match in frame 0 and object 2's in frame 1; in frame 2 both still overlap
    # it: the first object keeps it, object 2 switches to 8
    gt = [frame([1], [box(50)]), frame([1, 2], [box(100), box(50)]), frame([1, 2], [box(52), box(50)])]
    hyp = [frame([7], [box(50)]), frame([7], [box(50)]), frame([7, 8], [box(51), box(53)])]
    accumulator = ClearMOTAccumulator()
    for g, h in zip(gt, hyp):
        last = accumulator.update(*g, *h)
    assert last.matches.tolist() == [[0, 0], [1, 1]] and last.switches.tolist() == [False, True]
    # frame 1: object 1 is missed (7 moved away from it) and object 2's first match is no switch
    result = accumulator.result()
    assert (result.num_switches, result.num_misses, result.num_matches) == (1, 1, 4)


def test_empty_frames_and_empty_sequences():
    gt = two_objects(4)
    gt[1] = EMPTY
    hyp = [frame([7, 3], [box(20), box(100)]) for _ in gt]
    hyp[1], hyp[2] = EMPTY, EMPTY
    result = clear_mot(gt, hyp)  # frame 1 empty on both sides; frame 2: both objects missed
    assert (result.num_objects, result.num_matches, result.num_misses, result.num_false_positives) == (6, 4, 2, 0)
    assert result.num_switches == 0 and result.mota == pytest.approx(1 - 2 / 6)

    nothing = clear_mot([EMPTY] * 3, [EMPTY] * 3)
    assert math.isnan(nothing.mota) and math.isnan(nothing.motp)  # undefined without ground truth
    assert (nothing.num_frames, nothing.num_objects, nothing.num_gt_tracks, nothing.mostly_lost) == (3, 0, 0, 0)
    assert math.isnan(clear_mot([], []).mota) and clear_mot([], []).num_frames == 0

    only_false_positives = clear_mot([EMPTY] * 2, hyp[:2])
    assert only_false_positives.num_false_positives == 2 and math.isnan(only_false_positives.mota)
    only_misses = clear_mot(gt, [EMPTY] * 4)
    assert only_misses.mota == 0.0 and only_misses.num_misses == 6 and only_misses.mostly_lost == 2


def test_mostly_tracked_partially_tracked_mostly_lost():
    # 10 frames; object 1 matched in 8 (0.8: mostly tracked), object 2 in 2 (0.2: partially),
    # object 3 in 1 (0.1: mostly lost), object 4 in 9 of the 9 frames it appears in
    gt = [frame([1, 2, 3] + ([4] if f else []), [box(20), box(100), box(180)] + ([box(260)] if f else []))
          for f in range(10)]
    hyp = []
    for f in range(10):
        ids, boxes = [4], [box(260)] if f else []
        ids = ids if f else []
        for object_id, x, frames in [(1, 20, range(8)), (2, 100, range(2)), (3, 180, range(1))]:
            if f in frames:
                ids.append(object_id)
                boxes.append(box(x))
        hyp.append(frame(ids, boxes))
    result = clear_mot(gt, hyp)
    assert (result.mostly_tracked, result.partially_tracked, result.mostly_lost) == (2, 1, 1)
    assert result.num_gt_tracks == 4 and result.num_misses == 2 + 8 + 9


def test_frame_matches_say_what_happened():
    accumulator = ClearMOTAccumulator()
    accumulator.update([1, 2], torch.tensor([box(20), box(100)]), [5], torch.tensor([box(100)]))
    out = accumulator.update([1, 2], torch.tensor([box(20), box(100)]), [6, 9], torch.tensor([box(300), box(101)]))
    assert out.matches.tolist() == [[1, 1]] and out.switches.tolist() == [True]
    assert out.misses.tolist() == [0] and out.false_positives.tolist() == [0]
    torch.testing.assert_close(out.iou, box_iou(torch.tensor([box(100)]), torch.tensor([box(101)]))[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_devices_dtypes_and_id_types(device, dtype):
    gt = [(torch.tensor([1, 2], device=device), torch.tensor([box(20), box(100)], device=device).to(dtype))] * 2
    hyp = [([4, 5], torch.tensor([box(20), box(100)], device=device).to(dtype))] * 2
    result = clear_mot(gt, hyp)
    assert (result.mota, result.num_matches) == (1.0, 4)


def test_bad_input_is_named():
    good = frame([1], [box(20)])
    with pytest.raises(ValueError, match="one entry per frame, got 2 and 1"):
        clear_mot([good, good], [good])
    with pytest.raises(ValueError, match="gt_ids must be unique within a frame"):
        clear_mot([frame([1, 1], [box(20), box(50)])], [good])
    with pytest.raises(ValueError, match=r"hyp_ids must have shape \(1,\)"):
        clear_mot([good], [(torch.tensor([1, 2]), good[1])])
    with pytest.raises(TypeError, match="gt_ids must hold integers"):
        clear_mot([(torch.tensor([1.0]), good[1])], [good])
    with pytest.raises(TypeError, match="hyp_ids must be an integer tensor or a sequence of ints"):
        clear_mot([good], [("a", good[1])])
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \(N, 4\)"):
        clear_mot([(good[0], torch.zeros(1, 5))], [good])
    with pytest.raises(ValueError, match=r"hypotheses\[0\] must be an \(ids, boxes\) pair"):
        clear_mot([good], [good[1]])
    with pytest.raises(ValueError, match="iou_threshold must be a number in"):
        clear_mot([good], [good], 0.0)


# --------------------------------------------------------------------------- against a brute-force reference


def reference_clear_mot(gt_frames, hyp_frames, threshold):
    """CLEAR-MOT written plainly: dictionaries, and every matching tried (small frames only)."""
    last, counts, iou_sum = {}, dict(objects=0, predictions=0, matches=0, switches=0), 0.0
    for (gt_ids, gt_boxes), (hyp_ids, hyp_boxes) in zip(gt_frames, hyp_frames):
        gt_ids, hyp_ids = gt_ids.tolist(), hyp_ids.tolist()
        iou = box_iou(gt_boxes, hyp_boxes).tolist()
        pairs = []
        for i, o in enumerate(gt_ids):  # keep last matches, first object first
            if o in last and last[o] in hyp_ids:
                j = hyp_ids.index(last[o])
                if iou[i][j] >= threshold and j not in [p[1] for p in pairs]:
                    pairs.append((i, j))
        rows = [i for i in range(len(gt_ids)) if i not in [p[0] for p in pairs]]
        cols = [j for j in range(len(hyp_ids)) if j not in [p[1] for p in pairs]]
        best, best_key = [], (0, 0.0)
        for k in range(1, min(len(rows), len(cols)) + 1):  # every matching of k pairs
            for chosen_rows in itertools.combinations(rows, k):
                for chosen_cols in itertools.permutations(cols, k):
                    match = list(zip(chosen_rows, chosen_cols))
                    if all(iou[i][j] >= threshold for i, j in match):
                        key = (k, -sum(1 - iou[i][j] for i, j in match))
                        if key > best_key:
                            best, best_key = match, key
        for i, j in best:
            counts["switches"] += gt_ids[i] in last and last[gt_ids[i]] != hyp_ids[j]
        for i, j in pairs + best:
            last[gt_ids[i]] = hyp_ids[j]
            iou_sum += iou[i][j]
        counts["objects"] += len(gt_ids)
        counts["predictions"] += len(hyp_ids)
        counts["matches"] += len(pairs) + len(best)
    return counts, iou_sum


def random_sequence(seed: int, n_frames: int, n_objects: int):
    """Objects wandering in a small area (crowded), noisy hypotheses whose ids get reshuffled,
    missed objects and false positives: every kind of event happens."""
    g = torch.Generator().manual_seed(seed)
    position = torch.rand(n_objects, 2, generator=g, dtype=torch.float64) * 40
    size = 8 + torch.rand(n_objects, 2, generator=g, dtype=torch.float64) * 12
    hyp_id = torch.randperm(n_objects + 2, generator=g)[:n_objects]
    gt_frames, hyp_frames = [], []
    for _ in range(n_frames):
        position = position + 2 * torch.randn(n_objects, 2, generator=g, dtype=torch.float64)
        boxes = torch.cat((position, position + size), dim=1)
        present = torch.rand(n_objects, generator=g) < 0.8
        gt_frames.append((torch.arange(n_objects)[present], boxes[present]))
        if torch.rand(1, generator=g) < 0.3:
            hyp_id = torch.randperm(n_objects + 2, generator=g)[:n_objects]
        seen = present & (torch.rand(n_objects, generator=g) < 0.85)
        noisy = boxes[seen] + 2 * torch.randn(int(seen.sum()), 4, generator=g, dtype=torch.float64)
        noisy = torch.cat((noisy[:, :2], torch.maximum(noisy[:, 2:], noisy[:, :2])), dim=1)
        extra = torch.rand(int(torch.randint(0, 2, (1,), generator=g)), 2, generator=g, dtype=torch.float64) * 40
        hyp_frames.append((torch.cat((hyp_id[seen], torch.tensor([99] * extra.shape[0], dtype=torch.int64))),
                           torch.cat((noisy, torch.cat((extra, extra + 10), dim=1)))))
    return gt_frames, hyp_frames


@SETTINGS
@given(seed=st.integers(0, 2**16), n_frames=st.integers(1, 8), n_objects=st.integers(0, 4),
       threshold=st.sampled_from([0.3, 0.5, 0.7]))
def test_equals_a_brute_force_reference(seed, n_frames, n_objects, threshold):
    gt, hyp = random_sequence(seed, n_frames, n_objects)
    result = clear_mot(gt, hyp, threshold)
    counts, iou_sum = reference_clear_mot(gt, hyp, threshold)
    assert (result.num_objects, result.num_predictions, result.num_matches, result.num_switches) == (
        counts["objects"], counts["predictions"], counts["matches"], counts["switches"])
    assert result.num_misses == counts["objects"] - counts["matches"]
    assert result.num_false_positives == counts["predictions"] - counts["matches"]
    errors = result.num_misses + result.num_false_positives + result.num_switches
    if counts["objects"]:
        assert result.mota == pytest.approx(1 - errors / counts["objects"])
    if counts["matches"]:
        assert result.motp == pytest.approx(iou_sum / counts["matches"])
    assert result.mostly_tracked + result.partially_tracked + result.mostly_lost == result.num_gt_tracks


# --------------------------------------------------------------------------- the tracker's output


def test_mota_of_the_tracker_on_a_sequence_with_a_known_answer():
    """Objects A and B move apart for 10 frames; the detector misses A in frame 4, misses B in
    frames 3-7 and sees a false object in frame 6. With max_age=3 the tracker keeps A's id
    through its one-frame gap, but B's track ends during its 5-frame gap and B comes back in
    frame 8 with a new id. By hand: GT = 20 boxes; misses = 1 (A) + 5 (B) = 6; false positives
    = 1; switches = 1 (B: id 2 -> id 4); MOTA = 1 - 8/20 = 0.6; MOTP = 1 (exact boxes);
    A is matched in 9/10 frames (mostly tracked), B in 5/10 (partially tracked)."""
    tracker = IoUTracker(max_age=3)
    gt, hyp = [], []
    for f in range(10):
        a, b = box(20 + 3 * f, 50), box(200 - 3 * f, 150)
        gt.append(frame([0, 1], [a, b]))
        detections = ([a] if f != 4 else []) + ([b] if not 3 <= f <= 7 else []) + ([box(300, 300)] if f == 6 else [])
        active = tracker.update(torch.tensor(detections).reshape(-1, 4))
        hyp.append(tracks_to_tensors(active))
    assert [t.id for t in tracker.all_tracks] == [1, 2, 3, 4]
    result = clear_mot(gt, hyp)
    assert (result.num_objects, result.num_misses, result.num_false_positives, result.num_switches) == (20, 6, 1, 1)
    assert result.mota == pytest.approx(0.6) and result.motp == pytest.approx(1.0)
    assert (result.mostly_tracked, result.partially_tracked, result.mostly_lost) == (1, 1, 0)
    assert result.num_hyp_tracks == 4
