"""CLEAR-MOT: how well a tracker follows objects (Bernardin & Stiefelhagen, 2008).

Each frame, the ground-truth objects are matched to the tracker's hypotheses (boxes with track
ids); a pair may match when its IoU is >= ``iou_threshold`` (0.5 by default):

1. a ground truth keeps the hypothesis it was last matched to (in any earlier frame) when that
   pair may still match: a tracker is not asked to win the same match again every frame;
2. the remaining objects and hypotheses are matched by the Hungarian algorithm: as many pairs as
   possible, and among those the smallest total ``1 - IoU`` (as py-motmetrics does);
3. a ground truth matched in step 2 to another hypothesis id than its last match is an *identity
   switch*; unmatched ground truths are *misses* (false negatives), unmatched hypotheses are
   *false positives*.

Over the sequence (``GT`` = number of ground-truth boxes in all frames):

- ``MOTA = 1 - (misses + false positives + switches) / GT``: 1 is perfect; it can go below 0.
- ``MOTP`` = the mean IoU of the matched pairs (higher is better), as MOTChallenge reports it.
  py-motmetrics reports the mean distance ``1 - IoU`` instead (lower is better).
- mostly tracked / partially tracked / mostly lost: ground-truth tracks matched in at least 80 %,
  20-80 %, under 20 % of the frames they appear in.

MOTA is NaN when there is no ground truth, MOTP when nothing was matched: they are undefined.
Boxes are (x1, y1, x2, y2) in pixels; ids are integers, unique within a frame.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .boxes import _check_boxes, box_iou

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "MOSTLY_TRACKED",
    "MOSTLY_LOST",
    "ClearMOT",
    "FrameMatches",
    "ClearMOTAccumulator",
    "clear_mot",
]

#: A ground truth and a hypothesis may match when their IoU is at least this.
DEFAULT_IOU_THRESHOLD = 0.5
#: A ground-truth track matched in at least this fraction of its frames is "mostly tracked" ...
MOSTLY_TRACKED = 0.8
#: ... and "mostly lost" when matched in less than this fraction.
MOSTLY_LOST = 0.2


@dataclass(frozen=True)
class ClearMOT:
    """CLEAR-MOT counts and scores of a sequence (see the module's docstring)."""

    mota: float
    motp: float  # mean IoU of the matched pairs
    num_frames: int
    num_objects: int  # ground-truth boxes, all frames
    num_predictions: int  # hypothesis boxes, all frames
    num_matches: int  # matched pairs, switches included (py-motmetrics' num_detections)
    num_misses: int
    num_false_positives: int
    num_switches: int
    num_gt_tracks: int  # distinct ground-truth ids
    num_hyp_tracks: int  # distinct hypothesis ids
    mostly_tracked: int
    partially_tracked: int
    mostly_lost: int


class FrameMatches(NamedTuple):
    """How one frame was scored (indices into that frame's ground truth and hypotheses)."""

    matches: Tensor  # (K, 2) int64 rows (gt index, hypothesis index), by gt index
    switches: Tensor  # (K,) bool: this match is an identity switch
    misses: Tensor  # (N - K,) int64 unmatched ground truths
    false_positives: Tensor  # (M - K,) int64 unmatched hypotheses
    iou: Tensor  # (K,) IoU of each match


def _check_frame(ids, boxes, what: str) -> tuple[Tensor, Tensor]:
    _check_boxes(boxes, f"{what}_boxes")
    if not isinstance(ids, Tensor):
        if not isinstance(ids, Sequence) or not all(isinstance(i, (int, np.integer)) for i in ids):
            raise TypeError(f"{what}_ids must be an integer tensor or a sequence of ints, got {type(ids).__name__}")
        ids = torch.tensor(list(ids), dtype=torch.int64)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{what}_ids must hold integers, got {ids.dtype}")
    if ids.shape != (boxes.shape[0],):
        raise ValueError(f"{what}_ids must have shape ({boxes.shape[0]},), one per row of {what}_boxes, "
                         f"got {tuple(ids.shape)}")
    ids = ids.detach().cpu().to(torch.int64)
    if ids.unique().numel() != ids.numel():
        raise ValueError(f"{what}_ids must be unique within a frame, got {ids.tolist()}")
    return ids, boxes


def _lookup(keys: Tensor, values: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Dictionary look-up on tensors: ``keys`` sorted and unique -> (found (Q,), value (Q,))."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=torch.bool), torch.zeros_like(query)
    pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return keys[pos] == query, values[pos]


def _store(keys: Tensor, values: Tensor, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
    """Set ``keys[new_keys] = new_values`` (new keys unique); returns the sorted keys and values."""
    all_keys, all_values = torch.cat((keys, new_keys)), torch.cat((values, new_values))
    unique, inverse = torch.unique(all_keys, return_inverse=True)
    # The new value of a key comes after its old one: keep each key's last position.
    last = torch.full((unique.numel(),), -1, dtype=torch.int64)
    last = last.scatter_reduce(0, inverse, torch.arange(all_keys.numel()), reduce="amax")
    return unique, all_values[last]


def _most_pairs(iou: Tensor, allowed: Tensor) -> Tensor:
    """(K, 2) pairs: as many allowed pairs as possible, then the least total ``1 - IoU``.

    A pair that is not allowed costs more than the sum of the costs of a whole matching of
    allowed pairs (each <= 1), so the solver uses one only where no allowed pair is left.
    """
    if not bool(allowed.any()):
        return torch.zeros(0, 2, dtype=torch.int64)
    cost = torch.where(allowed, 1 - iou.double(), float(min(iou.shape) + 1))
    rows, cols = linear_sum_assignment(cost.numpy())
    pairs = torch.from_numpy(np.stack((rows, cols), axis=1)).to(torch.int64)
    return pairs[allowed[pairs[:, 0], pairs[:, 1]]]


def _check_threshold(iou_threshold) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    return float(iou_threshold)


class ClearMOTAccumulator:
    """Score a tracker frame by frame: `update` once per frame, then `result`.

    Only the last match of each ground-truth id is remembered between frames (plus, for the
    mostly-tracked counts, which ground-truth ids were present and matched in each frame).
    """

    def __init__(self, iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> None:
        self.iou_threshold = _check_threshold(iou_threshold)
        self._last_gt = torch.zeros(0, dtype=torch.int64)  # sorted gt ids that were ever matched ...
        self._last_hyp = torch.zeros(0, dtype=torch.int64)  # ... and the hypothesis id of their last match
        self._gt_seen: list[Tensor] = []  # per frame: gt ids present
        self._gt_matched: list[Tensor] = []  # per frame: was each of them matched
        self._hyp_seen: list[Tensor] = []
        self._iou_sum = 0.0
        self.num_frames = self.num_objects = self.num_predictions = 0
        self.num_matches = self.num_switches = 0

    def update(self, gt_ids, gt_boxes: Tensor, hyp_ids, hyp_boxes: Tensor) -> FrameMatches:
        """Score one frame. gt_ids: (N,) int, gt_boxes: (N, 4) xyxy; hyp_ids: (M,) int,
        hyp_boxes: (M, 4) xyxy  ->  `FrameMatches` (indices on the CPU)."""
        gt_ids, gt_boxes = _check_frame(gt_ids, gt_boxes, "gt")
        hyp_ids, hyp_boxes = _check_frame(hyp_ids, hyp_boxes, "hyp")
        if gt_boxes.device != hyp_boxes.device:
            hyp_boxes = hyp_boxes.to(gt_boxes.device)
        iou = box_iou(gt_boxes, hyp_boxes).detach().cpu()  # (N, M)
        allowed = iou >= self.iou_threshold
        n_gt, n_hyp = iou.shape

        # 1. Keep last matches that may still match. Two ground truths whose last match was the
        # same hypothesis both ask for it: the first (lowest index) keeps it.
        had_match, last_hyp = _lookup(self._last_gt, self._last_hyp, gt_ids)
        keep = allowed & had_match[:, None] & (last_hyp[:, None] == hyp_ids[None, :])  # <= 1 per row
        asking_gt, asked_hyp = torch.nonzero(keep, as_tuple=True)
        first_gt = torch.full((n_hyp,), n_gt, dtype=torch.int64).scatter_reduce(0, asked_hyp, asking_gt, reduce="amin")
        claimed = first_gt < n_gt
        kept_cols = torch.nonzero(claimed)[:, 0]
        kept = torch.stack((first_gt[kept_cols], kept_cols), dim=1)

        # 2. Hungarian on the rest.
        free_gt = torch.ones(n_gt, dtype=torch.bool)
        free_gt[kept[:, 0]] = False
        free_hyp = ~claimed
        rows, cols = torch.nonzero(free_gt)[:, 0], torch.nonzero(free_hyp)[:, 0]
        new = _most_pairs(iou[rows][:, cols], allowed[rows][:, cols])
        new = torch.stack((rows[new[:, 0]], cols[new[:, 1]]), dim=1)

        # 3. Switches, misses, false positives.
        new_switch = had_match[new[:, 0]] & (last_hyp[new[:, 0]] != hyp_ids[new[:, 1]])
        matches = torch.cat((kept, new))
        switches = torch.cat((torch.zeros(kept.shape[0], dtype=torch.bool), new_switch))
        order = matches[:, 0].argsort()
        matches, switches = matches[order], switches[order]
        matched_gt = torch.zeros(n_gt, dtype=torch.bool)
        matched_gt[matches[:, 0]] = True
        matched_hyp = torch.zeros(n_hyp, dtype=torch.bool)
        matched_hyp[matches[:, 1]] = True
        match_iou = iou[matches[:, 0], matches[:, 1]]

        self._last_gt, self._last_hyp = _store(self._last_gt, self._last_hyp, gt_ids[matches[:, 0]],
                                               hyp_ids[matches[:, 1]])
        self._gt_seen.append(gt_ids)
        self._gt_matched.append(matched_gt)
        self._hyp_seen.append(hyp_ids)
        self._iou_sum += float(match_iou.double().sum())
        self.num_frames += 1
        self.num_objects += n_gt
        self.num_predictions += n_hyp
        self.num_matches += matches.shape[0]
        self.num_switches += int(switches.sum())
        return FrameMatches(matches, switches, torch.nonzero(~matched_gt)[:, 0], torch.nonzero(~matched_hyp)[:, 0],
                            match_iou)

    def result(self) -> ClearMOT:
        """The scores of every frame so far."""
        misses = self.num_objects - self.num_matches
        false_positives = self.num_predictions - self.num_matches
        errors = misses + false_positives + self.num_switches
        mota = 1.0 - errors / self.num_objects if self.num_objects else float("nan")
        motp = self._iou_sum / self.num_matches if self.num_matches else float("nan")

        gt_seen = torch.cat(self._gt_seen) if self._gt_seen else torch.zeros(0, dtype=torch.int64)
        gt_matched = torch.cat(self._gt_matched) if self._gt_matched else torch.zeros(0, dtype=torch.bool)
        gt_tracks, track_of = torch.unique(gt_seen, return_inverse=True)
        frames = torch.bincount(track_of, minlength=gt_tracks.numel())
        tracked = torch.bincount(track_of, weights=gt_matched.double(), minlength=gt_tracks.numel())
        ratio = tracked / frames.clamp(min=1)
        mostly_tracked = int((ratio >= MOSTLY_TRACKED).sum())
        mostly_lost = int((ratio < MOSTLY_LOST).sum())
        hyp_seen = torch.cat(self._hyp_seen) if self._hyp_seen else torch.zeros(0, dtype=torch.int64)
        return ClearMOT(
            mota=mota, motp=motp, num_frames=self.num_frames, num_objects=self.num_objects,
            num_predictions=self.num_predictions, num_matches=self.num_matches, num_misses=misses,
            num_false_positives=false_positives, num_switches=self.num_switches,
            num_gt_tracks=gt_tracks.numel(), num_hyp_tracks=hyp_seen.unique().numel(),
            mostly_tracked=mostly_tracked, partially_tracked=gt_tracks.numel() - mostly_tracked - mostly_lost,
            mostly_lost=mostly_lost,
        )


def clear_mot(ground_truth: Sequence[tuple], hypotheses: Sequence[tuple],
              iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> ClearMOT:
    """CLEAR-MOT scores of a whole sequence.

    ground_truth, hypotheses: one ``(ids (N,) int, boxes (N, 4) xyxy)`` pair per frame, the
    same number of frames (an empty frame is ``(torch.zeros(0, dtype=torch.int64),
    torch.zeros(0, 4))``)  ->  `ClearMOT`.
    """
    if len(ground_truth) != len(hypotheses):
        raise ValueError(f"ground_truth and hypotheses must have one entry per frame, got {len(ground_truth)} "
                         f"and {len(hypotheses)} frames")
    accumulator = ClearMOTAccumulator(iou_threshold)
    for frame, (gt, hyp) in enumerate(zip(ground_truth, hypotheses)):
        for name, pair in (("ground_truth", gt), ("hypotheses", hyp)):
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"{name}[{frame}] must be an (ids, boxes) pair, got {type(pair).__name__}")
        accumulator.update(gt[0], gt[1], hyp[0], hyp[1])
    return accumulator.result()
