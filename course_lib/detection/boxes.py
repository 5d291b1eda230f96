"""Boxes: areas, overlaps (IoU), formats, clipping and the Faster R-CNN box encoding.

Boxes are ``(x1, y1, x2, y2)`` in pixels (the "xyxy" format) unless a name says otherwise:
``x`` grows to the right, ``y`` grows downwards, and a box covers ``x1 <= x <= x2``,
``y1 <= y <= y2`` in continuous coordinates (no ``+ 1`` as in old pixel-inclusive code).
Every function keeps its inputs' device and floating dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BOX_FORMATS",
    "MAX_LOG_SCALE",
    "box_area",
    "box_iou",
    "box_convert",
    "clip_boxes",
    "encode_boxes",
    "decode_boxes",
]

#: The box formats `box_convert` knows: corners, corner + size, centre + size.
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

#: Largest log-scale change `decode_boxes` lets through before ``exp``: a box may grow at most
#: 1000/16 = 62.5 times its anchor (torchvision's ``bbox_xform_clip``), so a wild regression
#: output cannot overflow to ``inf``.
MAX_LOG_SCALE = math.log(1000.0 / 16)


# --------------------------------------------------------------------------- input checks
# Shared by the other detection modules: one clear sentence per kind of mistake.


def _check_tensor(value, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_boxes(boxes, name: str = "boxes", *, batched: bool = False) -> Tensor:
    """``boxes`` must be a tensor of shape (N, 4) (or (..., 4) when ``batched``)."""
    _check_tensor(boxes, name)
    if batched:
        if boxes.dim() < 1 or boxes.shape[-1] != 4:
            raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    elif boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    return boxes


def _check_corners(boxes: Tensor, name: str = "boxes") -> None:
    """Corner boxes must satisfy x1 <= x2 and y1 <= y2 (NaNs are let through)."""
    bad = int((boxes[..., 2:] < boxes[..., :2]).any(dim=-1).sum()) if boxes.numel() else 0
    if bad:
        raise ValueError(
            f"{name} must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; {bad} of "
            f"{boxes.shape[0] if boxes.dim() else 0} rows are not (another box format?)"
        )


def _check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"inputs must be on one device, got {listing}")


def _as_float(tensor: Tensor) -> Tensor:
    """Integer and boolean coordinates become float32; floating tensors keep their dtype."""
    return tensor if tensor.is_floating_point() else tensor.float()


# --------------------------------------------------------------------------- areas and IoU


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    boxes: (..., 4) xyxy  ->  (...). A degenerate box (x2 == x1 or y2 == y1) has area 0.
    """
    _check_boxes(boxes, batched=True)
    boxes = _as_float(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every box in ``boxes1`` with every box in ``boxes2``.

    boxes1: (N, 4) xyxy, boxes2: (M, 4) xyxy  ->  (N, M) in [0, 1].
    Two boxes with zero union (both degenerate) have IoU 0, never NaN.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    _check_same_device(boxes1=boxes1, boxes2=boxes2)
    _check_corners(boxes1, "boxes1")
    _check_corners(boxes2, "boxes2")
    boxes1, boxes2 = _as_float(boxes1), _as_float(boxes2)
    if boxes1.dtype != boxes2.dtype:
        dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)

    x1a, y1a, x2a, y2a = (c[:, None] for c in boxes1.unbind(-1))  # (N, 1) each
    x1b, y1b, x2b, y2b = (c[None, :] for c in boxes2.unbind(-1))  # (1, M) each
    # Width x height of the overlap (0 when the boxes do not touch). In-place operations on
    # the (N, M) intermediates halve the memory traffic; autograd still works through them.
    inter = torch.minimum(x2a, x2b).sub_(torch.maximum(x1a, x1b)).clamp_(min=0)
    inter = inter.mul_(torch.minimum(y2a, y2b).sub_(torch.maximum(y1a, y1b)).clamp_(min=0))
    union = (box_area(boxes1)[:, None] + box_area(boxes2)[None, :]).sub_(inter)
    # union == 0 only when inter == 0 too: 0 / tiny = 0 instead of 0 / 0 = NaN.
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


# --------------------------------------------------------------------------- formats


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between the formats of `BOX_FORMATS`.

    - ``"xyxy"``: corners (x1, y1, x2, y2)
    - ``"xywh"``: top-left corner and size (x1, y1, w, h), as in COCO annotations
    - ``"cxcywh"``: centre and size (cx, cy, w, h), as in SSD and YOLO outputs

    boxes: (..., 4)  ->  (..., 4).
    """
    _check_boxes(boxes, batched=True)
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")
    boxes = _as_float(boxes)
    if in_fmt == out_fmt:
        return boxes.clone()

    # Go through corners: two small conversions instead of six.
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def clip_boxes(boxes: Tensor, size: Sequence[int] | Sequence[float]) -> Tensor:
    """Clip boxes to an image of ``size = (height, width)`` (torchvision's order).

    boxes: (..., 4) xyxy  ->  (..., 4), every x in [0, width] and every y in [0, height].
    A box entirely outside the image becomes a degenerate box on its border.
    """
    _check_boxes(boxes, batched=True)
    if not isinstance(size, (Sequence, torch.Size)) or len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    height, width = (float(s) for s in size)
    if not (height >= 0 and width >= 0):
        raise ValueError(f"size must be (height, width) with both >= 0, got {tuple(size)}")
    boxes = _as_float(boxes)
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


# --------------------------------------------------------------------------- encoding


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    if not isinstance(weights, Sequence) or len(weights) != 4:
        raise ValueError(f"weights must be four numbers (wx, wy, ww, wh), got {weights!r}")
    wx, wy, ww, wh = (float(w) for w in weights)
    if min(wx, wy, ww, wh) <= 0:
        raise ValueError(f"weights must be positive, got {tuple(weights)}")
    return wx, wy, ww, wh


def _centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def encode_boxes(gt: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets that turn each anchor into its ground-truth box (Faster R-CNN).

    ``dx = wx * (cx - cx_a) / w_a``, ``dy = wy * (cy - cy_a) / h_a``,
    ``dw = ww * log(w / w_a)``, ``dh = wh * log(h / h_a)``: offsets are measured in anchor
    widths/heights and sizes as log-ratios, so the targets do not depend on the box's scale.
    ``weights`` follow torchvision's ``BoxCoder`` (its ROI heads use (10, 10, 5, 5)).

    gt: (..., 4) xyxy, anchors: (..., 4) xyxy (broadcastable, positive sizes)  ->  (..., 4).
    """
    _check_boxes(gt, "gt", batched=True)
    _check_boxes(anchors, "anchors", batched=True)
    _check_same_device(gt=gt, anchors=anchors)
    wx, wy, ww, wh = _check_weights(weights)
    gt, anchors = _as_float(gt), _as_float(anchors)
    gt_cx, gt_cy, gt_w, gt_h = _centres_and_sizes(gt)
    a_cx, a_cy, a_w, a_h = _centres_and_sizes(anchors)
    dx = wx * (gt_cx - a_cx) / a_w
    dy = wy * (gt_cy - a_cy) / a_h
    dw = ww * torch.log(gt_w / a_w)
    dh = wh * torch.log(gt_h / a_h)
    return torch.stack((dx, dy, dw, dh), dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 max_log_scale: float = MAX_LOG_SCALE) -> Tensor:
    """Apply regression outputs ``(dx, dy, dw, dh)`` to anchors: the inverse of `encode_boxes`.

    ``dw`` and ``dh`` are clamped at ``max_log_scale`` before ``exp`` (see `MAX_LOG_SCALE`).

    deltas: (..., 4), anchors: (..., 4) xyxy (broadcastable, e.g. deltas (N, C, 4) with
    anchors (N, 1, 4) for per-class outputs)  ->  boxes (..., 4) xyxy.
    """
    _check_boxes(deltas, "deltas", batched=True)
    _check_boxes(anchors, "anchors", batched=True)
    _check_same_device(deltas=deltas, anchors=anchors)
    wx, wy, ww, wh = _check_weights(weights)
    deltas, anchors = _as_float(deltas), _as_float(anchors)
    a_cx, a_cy, a_w, a_h = _centres_and_sizes(anchors.to(deltas.dtype))
    dx, dy, dw, dh = deltas.unbind(-1)
    dw = (dw / ww).clamp(max=max_log_scale)
    dh = (dh / wh).clamp(max=max_log_scale)
    cx = (dx / wx) * a_w + a_cx
    cy = (dy / wy) * a_h + a_cy
    half_w = 0.5 * (torch.exp(dw) * a_w)
    half_h = 0.5 * (torch.exp(dh) * a_h)
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
