"""Measuring a detector: COCO-style mAP, a precision-recall curve built by hand, recall by object size.

Detections and targets are lists of per-image dicts in torchvision's format: ``boxes`` (N, 4) xyxy
pixels, ``labels`` (N,), and ``scores`` (N,) for detections.

How AP is computed (COCO's way, what `mean_average_precision` gets from torchmetrics/pycocotools):
for one class, take every detection of every image, best score first; a detection is a true
positive when it overlaps (IoU >= threshold) a ground-truth object of its class that no better
detection has claimed yet. Walking down the list gives precision and recall after each detection;
AP is the area under that curve, with precision first made non-increasing and read at 101 recall
levels 0, 0.01, ..., 1. mAP@0.5 averages AP over classes; mAP@[.5:.95] also over the IoU thresholds
0.5, 0.55, ..., 0.95.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .boxes import box_iou

__all__ = [
    "predict",
    "mean_average_precision",
    "match_detections",
    "precision_recall_curve",
    "average_precision",
    "recall_by_size",
    "RECALL_LEVELS",
]

#: COCO reads the precision-recall curve at these 101 recall levels.
RECALL_LEVELS = torch.linspace(0, 1, 101)
#: Score threshold for mAP: keep low-confidence detections, they only add points at high recall.
EVAL_SCORE_THRESHOLD = 0.05


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 128, **detect_options) -> list[dict[str, torch.Tensor]]:
    """Run ``model.detect`` over images (N, 3, H, W) in batches; detections come back on the CPU."""
    device = next(model.parameters()).device
    detect_options.setdefault("score_threshold", EVAL_SCORE_THRESHOLD)
    detections = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)
        detections += [{k: v.cpu() for k, v in d.items()} for d in model.detect(batch, **detect_options)]
    return detections


def mean_average_precision(detections: Sequence[dict[str, torch.Tensor]],
                           targets: Sequence[dict[str, torch.Tensor]], class_metrics: bool = False) -> dict[str, float]:
    """COCO metrics from torchmetrics' ``MeanAveragePrecision`` (pycocotools backend).

    Returns floats: ``map`` (mAP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100`` (recall with at
    most 100 detections per image), and with ``class_metrics`` a ``map_per_class`` list.
    """
    from torchmetrics.detection import MeanAveragePrecision

    if len(detections) != len(targets):
        raise ValueError(f"detections and targets must have one entry per image, got {len(detections)} "
                         f"and {len(targets)}")
    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools", class_metrics=class_metrics)
    metric.update([{k: d[k].cpu() for k in ("boxes", "scores", "labels")} for d in detections],
                  [{k: t[k].cpu() for k in ("boxes", "labels")} for t in targets])
    result = metric.compute()
    out = {k: float(result[k]) for k in ("map", "map_50", "map_75", "mar_100")}
    if class_metrics:
        out["map_per_class"] = [float(v) for v in result["map_per_class"].flatten()]
    return out


def match_detections(detection: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy COCO matching in one image.

    Returns ``true_positive`` (D,) bool, per detection, and ``found`` (N,) bool, per object.
    Detections are visited best score first (a stable sort: ties keep their order); each claims the
    unclaimed object of its class it overlaps most, if that IoU reaches ``iou_threshold``. The
    claiming is inherently sequential, so the loop runs over detections; the IoUs are one matrix.
    """
    boxes, scores, labels = detection["boxes"], detection["scores"], detection["labels"]
    gt_boxes, gt_labels = target["boxes"].to(boxes), target["labels"].to(labels.device)
    true_positive = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    found = torch.zeros(gt_boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return true_positive, found
    ious = box_iou(boxes, gt_boxes)  # (D, N)
    ious = torch.where(labels[:, None] == gt_labels[None, :], ious, torch.full_like(ious, -1.0))
    for d in torch.sort(scores, descending=True, stable=True).indices.tolist():
        candidates = torch.where(found, torch.full_like(ious[d], -1.0), ious[d])
        best_iou, best = candidates.max(dim=0)
        if best_iou >= iou_threshold:
            found[best] = True
            true_positive[d] = True
    return true_positive, found


def precision_recall_curve(detections: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                           label: int, iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision and recall after each detection of class ``label``, best score first, over all images.

    Returns ``precision`` (D,), ``recall`` (D,), ``scores`` (D,) (sorted, descending).
    """
    hits, scores = [], []
    num_objects = 0
    for detection, target in zip(detections, targets, strict=True):
        mine = detection["labels"] == label
        own = {k: detection[k][mine] for k in ("boxes", "scores", "labels")}
        gt_mine = target["labels"] == label
        true_positive, _ = match_detections(own, {"boxes": target["boxes"][gt_mine],
                                                  "labels": target["labels"][gt_mine]}, iou_threshold)
        hits.append(true_positive.cpu())
        scores.append(own["scores"].cpu())
        num_objects += int(gt_mine.sum())
    hits_all, scores_all = torch.cat(hits), torch.cat(scores)
    order = torch.sort(scores_all, descending=True, stable=True).indices
    true_positives = hits_all[order].cumsum(0).float()
    ranks = torch.arange(1, len(order) + 1, dtype=torch.float32)
    precision = true_positives / ranks
    recall = true_positives / max(num_objects, 1)
    return precision, recall, scores_all[order]


def average_precision(precision: torch.Tensor, recall: torch.Tensor) -> float:
    """COCO's 101-point interpolated AP of a precision-recall curve (recall non-decreasing)."""
    if precision.numel() == 0:
        return 0.0
    # Precision envelope: at each point, the best precision reachable at this recall or beyond.
    envelope = precision.flip(0).cummax(0).values.flip(0)
    index = torch.searchsorted(recall.contiguous(), RECALL_LEVELS.to(recall), side="left")
    reachable = index < len(recall)
    sampled = torch.where(reachable, envelope[index.clamp(max=len(recall) - 1)], torch.zeros_like(RECALL_LEVELS))
    return float(sampled.mean())


def recall_by_size(detections: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                   edges: Sequence[float] = (0.0, 16.0, 32.0, float("inf")), score_threshold: float = 0.3,
                   iou_threshold: float = 0.5) -> dict[str, float]:
    """Fraction of objects found (a same-class detection above ``score_threshold`` with IoU >= threshold).

    Objects are binned by size, sqrt(box area) in pixels, at ``edges``; keys read like
    ``"recall[0,16)"``. With 64-pixel images and a 4x4 grid, 16 px is one grid cell.
    """
    sizes, founds = [], []
    for detection, target in zip(detections, targets, strict=True):
        confident = detection["scores"] >= score_threshold
        kept = {k: detection[k][confident] for k in ("boxes", "scores", "labels")}
        _, found = match_detections(kept, target, iou_threshold)
        wh = (target["boxes"][:, 2:] - target["boxes"][:, :2]).clamp(min=0)
        sizes.append(wh.prod(1).sqrt().cpu())
        founds.append(found.cpu())
    size, found = torch.cat(sizes), torch.cat(founds)
    result = {}
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (size >= low) & (size < high)
        key = f"recall[{low:g},{high:g})"
        result[key] = float(found[in_bin].float().mean()) if in_bin.any() else float("nan")
    result["recall"] = float(found.float().mean()) if found.numel() else float("nan")
    return result
