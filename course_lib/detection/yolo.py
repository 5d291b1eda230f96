"""A single-stage (YOLO-style) detector: one 1x1 convolution on a backbone's last feature map.

The head predicts, for every cell of the backbone's output grid and every anchor shape, four box
offsets and one logit per score of the class softmax. ``num_classes`` counts every score of that
softmax, background included: with the lessons' notation (C object classes) it is ``C + 1``. In this
module ``C`` stands for ``num_classes``::

    images (B, 3, H_img, W_img) -> backbone (B, F, H, W) -> 1x1 conv (B, A * (4 + C), H, W)

Channel layout of the head output: anchor ``a`` owns channels ``a * (4 + C)`` to
``(a + 1) * (4 + C) - 1``; within them come ``t_x, t_y, t_w, t_h`` and then the ``C`` class logits.

Decoding (YOLOv2) turns the offsets of the anchor ``(p_w, p_h)`` in cell ``(c_x, c_y)`` into pixels::

    x = (c_x + sigmoid(t_x)) * stride      y = (c_y + sigmoid(t_y)) * stride
    w = p_w * exp(t_w)                     h = p_h * exp(t_h)
    p(class) = softmax over the C class logits

The sigmoid keeps a box's centre inside its own cell; ``exp`` keeps sizes positive and gives the
anchor's own size when ``t = 0``. Decoded predictions are flattened cell by cell in row-major order
with the anchors innermost (like torchvision's RetinaNet head and the SSD lesson): prediction
``i = (c_y * W + c_x) * A + a``. Anchors are ``(w, h)`` in pixels.

`postprocess` keeps a box when its best non-background class clears the score threshold (even if
background is the most likely class), then runs NMS per class. For training, `build_targets` makes
one prediction responsible for each object (the cell holding its centre, the best-shaped anchor)
and `yolo_loss` compares the head's output with those targets.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import wh_iou
from .boxes import box_convert, clip_boxes
from .suppression import batched_nms

__all__ = [
    "BOX_CHANNELS",
    "DEFAULT_STRIDE",
    "SingleStageDetector",
    "output_grid_size",
    "head_channels",
    "grid_priors",
    "flatten_output",
    "decode",
    "softmax_with_infinities",
    "foreground_scores",
    "postprocess",
    "detect",
    "build_targets",
    "yolo_loss",
]

#: Box offsets predicted per anchor: t_x, t_y, t_w, t_h.
BOX_CHANNELS = 4
#: A backbone with five stride-2 stages shrinks height and width by 2**5 = 32.
DEFAULT_STRIDE = 32


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_anchors(anchors) -> None:
    _check_tensor("anchors", anchors)
    if anchors.dim() != 2 or anchors.shape[1] != 2 or anchors.shape[0] == 0:
        raise ValueError(f"anchors must have shape (A, 2) with A >= 1 as (w, h) pixels, got {tuple(anchors.shape)}")
    if not bool((anchors > 0).all()):
        raise ValueError("anchors must have positive widths and heights")


def _check_stride(stride) -> None:
    if isinstance(stride, bool) or not isinstance(stride, (int, float)):
        raise TypeError(f"stride must be a number (pixels per grid cell), got {type(stride).__name__}")
    if not stride > 0:
        raise ValueError(f"stride must be positive, got {stride}")


def _check_head_output(output, num_anchors: int, num_classes: int) -> None:
    _check_tensor("output", output)
    channels = head_channels(num_anchors, num_classes)
    if output.dim() != 4 or output.shape[1] != channels:
        raise ValueError(
            f"output must have shape (B, {channels}, H, W) for {num_anchors} anchors and {num_classes} classes "
            f"(A * (4 + C) channels), got {tuple(output.shape)}"
        )


def _check_background_index(background_index, num_classes: int) -> None:
    if background_index is None:
        return
    if isinstance(background_index, bool) or not isinstance(background_index, int):
        raise TypeError(f"background_index must be an int or None, got {type(background_index).__name__}")
    if not -num_classes <= background_index < num_classes:
        raise ValueError(f"background_index must index one of the {num_classes} classes, got {background_index}")


# ----------------------------------------------------------------------------------------------
# Grid arithmetic and the head
# ----------------------------------------------------------------------------------------------
def output_grid_size(image_size: int | Sequence[int], stride: int = DEFAULT_STRIDE) -> tuple[int, int]:
    """(H, W) of the output grid for an image of ``image_size`` (an int for square images, or (h, w)).

    A 320 x 320 image with stride 32 gives a 10 x 10 grid. Sizes that are not multiples of the
    stride are rounded up, as stride-2 convolutions with padding do (e.g. 100 -> 4 with stride 32).
    """
    _check_positive_int("stride", stride)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (not isinstance(image_size, Sequence) or len(image_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)):
        raise ValueError(f"image_size must be a positive int or an (h, w) pair of them, got {image_size!r}")
    return tuple(-(-int(s) // stride) for s in image_size)  # ceil division


def head_channels(num_anchors: int, num_classes: int) -> int:
    """Channels of the head output: every anchor predicts 4 box offsets and ``num_classes`` logits.

    ``num_classes`` counts every softmax score, background included (the lessons' C + 1): dog and cat
    with 2 anchors -> 2 * (4 + 2 + 1) = 14.
    """
    _check_positive_int("num_anchors", num_anchors)
    _check_positive_int("num_classes", num_classes)
    return num_anchors * (BOX_CHANNELS + num_classes)


def _feature_channels(backbone: nn.Module) -> int:
    """Channels of a backbone's output: its ``out_channels`` attribute, else its last convolution's."""
    channels = getattr(backbone, "out_channels", None)
    if isinstance(channels, int):
        return channels
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("cannot tell the backbone's output channels: pass feature_channels=")
    return convs[-1].out_channels


class SingleStageDetector(nn.Module):
    """A backbone followed by one 1x1 convolution with ``num_anchors * (4 + num_classes)`` channels.

    Args:
        backbone: maps images (B, 3, H_img, W_img) to features (B, F, H, W).
        num_anchors: anchor shapes per grid cell (A).
        num_classes: scores of the class softmax, *including* the background (the lessons' C + 1).
        feature_channels: F; read from ``backbone.out_channels`` or its last ``nn.Conv2d`` when omitted.

    ``forward(images)`` returns the raw head output (B, A * (4 + C), H, W); `decode` turns it into boxes.
    """

    def __init__(self, backbone: nn.Module, num_anchors: int, num_classes: int,
                 feature_channels: int | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        channels = head_channels(num_anchors, num_classes)
        if feature_channels is None:
            feature_channels = _feature_channels(backbone)
        _check_positive_int("feature_channels", feature_channels)
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = nn.Conv2d(feature_channels, channels, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        _check_tensor("images", images)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.head(self.backbone(images))


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def grid_priors(grid_size: tuple[int, int], anchors: Tensor) -> Tensor:
    """Cell position and anchor size of every prediction, in the decoded order.

    Args:
        grid_size: (H, W) of the output grid.
        anchors: (A, 2) anchor (w, h) in pixels.
    Returns:
        (H * W * A, 4) rows ``(c_x, c_y, p_w, p_h)``: the cell's column and row index and the
        anchor's size, on ``anchors``' device and dtype. Row ``(c_y * W + c_x) * A + a``.
    """
    _check_anchors(anchors)
    height, width = grid_size
    _check_positive_int("grid height", height)
    _check_positive_int("grid width", width)
    rows = torch.arange(height, device=anchors.device, dtype=anchors.dtype)
    cols = torch.arange(width, device=anchors.device, dtype=anchors.dtype)
    cell_y, cell_x = torch.meshgrid(rows, cols, indexing="ij")  # (H, W) each
    num_anchors = anchors.shape[0]
    cells = torch.stack([cell_x, cell_y], dim=-1)[:, :, None, :].expand(height, width, num_anchors, 2)
    sizes = anchors[None, None, :, :].expand(height, width, num_anchors, 2)
    return torch.cat([cells, sizes], dim=-1).reshape(height * width * num_anchors, 4)


def flatten_output(output: Tensor, num_anchors: int, num_classes: int) -> Tensor:
    """(B, A * (4 + C), H, W) head output -> (B, H * W * A, 4 + C) rows ``t_x, t_y, t_w, t_h, logits``."""
    _check_head_output(output, num_anchors, num_classes)
    batch, _, height, width = output.shape
    per_anchor = output.reshape(batch, num_anchors, BOX_CHANNELS + num_classes, height, width)
    return per_anchor.permute(0, 3, 4, 1, 2).reshape(batch, height * width * num_anchors, BOX_CHANNELS + num_classes)


def softmax_with_infinities(logits: Tensor, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` that also takes its limit for infinite logits.

    ``torch.softmax`` returns NaN when a logit is ``+inf`` (it computes inf - inf); the limit is all
    probability on the ``+inf`` entries (shared equally). ``-inf`` logits get probability 0, and a row
    that is ``-inf`` everywhere is treated like equal logits: uniform.
    """
    _check_tensor("logits", logits)
    if logits.numel() == 0:
        return torch.softmax(logits, dim=dim)
    is_pos_inf = logits == math.inf
    has_pos_inf = is_pos_inf.any(dim=dim, keepdim=True)
    all_neg_inf = (logits == -math.inf).all(dim=dim, keepdim=True)
    finite = torch.where(has_pos_inf | all_neg_inf, torch.zeros_like(logits), logits)
    probs = torch.softmax(finite, dim=dim)
    share = is_pos_inf.to(logits.dtype) / is_pos_inf.sum(dim=dim, keepdim=True).clamp(min=1).to(logits.dtype)
    return torch.where(has_pos_inf, share, probs)


def decode(output: Tensor, anchors: Tensor, stride: float, num_classes: int) -> tuple[Tensor, Tensor]:
    """Turn a head output into boxes in pixels and class probabilities.

    Args:
        output: (B, A * (4 + C), H, W) raw head output (layout in the module docstring).
        anchors: (A, 2) anchor (w, h) in pixels.
        stride: pixels per grid cell (input size / grid size, 32 for five stride-2 stages).
        num_classes: scores of the class softmax, background included (the lessons' C + 1).
    Returns:
        boxes_cxcywh: (B, H * W * A, 4) ``(cx, cy, w, h)`` in pixels,
        class_probs: (B, H * W * A, C), a softmax over the *class* axis (each row sums to 1).
    Infinite offsets decode to their limits: ``t_x = +inf`` puts the centre on the cell's right edge,
    ``t_w = -inf`` gives width 0, an infinite class logit takes all the probability.
    """
    _check_anchors(anchors)
    _check_positive_int("num_classes", num_classes)
    _check_head_output(output, anchors.shape[0], num_classes)
    _check_stride(stride)
    height, width = output.shape[-2:]
    rows = flatten_output(output, anchors.shape[0], num_classes)                # (B, N, 4 + C)
    priors = grid_priors((height, width), anchors.to(output.device, output.dtype))  # (N, 4)
    offsets, logits = rows[..., :BOX_CHANNELS], rows[..., BOX_CHANNELS:]
    centres = (priors[:, :2] + torch.sigmoid(offsets[..., :2])) * stride
    sizes = priors[:, 2:] * torch.exp(offsets[..., 2:])
    return torch.cat([centres, sizes], dim=-1), softmax_with_infinities(logits, dim=-1)


# ----------------------------------------------------------------------------------------------
# From probabilities to detections
# ----------------------------------------------------------------------------------------------
def foreground_scores(class_probs: Tensor, background_index: int | None = 0) -> tuple[Tensor, Tensor]:
    """Best non-background class of every prediction and its probability.

    The probabilities come from a softmax over *all* classes, background included; the background
    class then takes no further part. A box whose most likely class is background is still shown
    with its best other class when that class clears the score threshold: for logits
    (dog, cat, background) = (0.1, -2, 0.2), background is the most likely class, yet p(dog) = 0.45
    passes a threshold of 0.4.

    Args:
        class_probs: (..., C) probabilities.
        background_index: index of the background class in the C axis (None: there is none).
    Returns:
        scores (...,) and labels (...,) (int64, indices into the C axis, never the background's).
    """
    _check_tensor("class_probs", class_probs)
    if class_probs.dim() == 0:
        raise ValueError("class_probs must have shape (..., C), got a scalar")
    num_classes = class_probs.shape[-1]
    if background_index is not None and num_classes < 2:
        raise ValueError(f"class_probs needs a background and at least one other class, got C = {num_classes}")
    _check_background_index(background_index, num_classes)
    if background_index is None:
        return class_probs.max(dim=-1)
    background = torch.zeros(num_classes, dtype=torch.bool, device=class_probs.device)
    background[background_index] = True
    masked = class_probs.masked_fill(background, -math.inf)
    return masked.max(dim=-1)


def postprocess(
    boxes_cxcywh: Tensor,
    class_probs: Tensor,
    score_threshold: float = 0.4,
    iou_threshold: float = 0.5,
    background_index: int | None = 0,
    image_size: tuple[int, int] | None = None,
    max_detections: int | None = 100,
) -> list[dict[str, Tensor]]:
    """Decoded predictions -> detections per image: threshold, per-class NMS, xyxy boxes.

    Args:
        boxes_cxcywh: (B, N, 4) decoded boxes (`decode`'s first output).
        class_probs: (B, N, C) decoded class probabilities.
        score_threshold: keep a prediction whose best non-background probability is above this.
        iou_threshold: boxes of the same class overlapping more than this are suppressed.
        background_index: the background class's index in C (see `foreground_scores`); None if none.
        image_size: (h, w); when given, boxes are clipped to the image.
        max_detections: keep at most this many per image (highest scores first); None keeps all.
    Returns:
        One dict per image with ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,) and ``labels`` (K,)
        (int64 indices into the class axis), sorted by decreasing score.
    """
    _check_tensor("boxes_cxcywh", boxes_cxcywh)
    _check_tensor("class_probs", class_probs)
    if boxes_cxcywh.dim() != 3 or boxes_cxcywh.shape[-1] != 4:
        raise ValueError(f"boxes_cxcywh must have shape (B, N, 4), got {tuple(boxes_cxcywh.shape)}")
    if class_probs.dim() != 3 or class_probs.shape[:2] != boxes_cxcywh.shape[:2]:
        raise ValueError(
            f"class_probs must have shape (B, N, C) = ({boxes_cxcywh.shape[0]}, {boxes_cxcywh.shape[1]}, C), "
            f"got {tuple(class_probs.shape)}"
        )
    if max_detections is not None:
        _check_positive_int("max_detections", max_detections)
    scores, labels = foreground_scores(class_probs, background_index)  # (B, N) each
    boxes = box_convert(boxes_cxcywh, "cxcywh", "xyxy")
    if image_size is not None:
        boxes = clip_boxes(boxes, image_size)
    results = []
    for image_boxes, image_scores, image_labels in zip(boxes, scores, labels):  # one image at a time
        keep = image_scores > score_threshold
        image_boxes, image_scores, image_labels = image_boxes[keep], image_scores[keep], image_labels[keep]
        kept = batched_nms(image_boxes, image_scores, image_labels, iou_threshold)
        if max_detections is not None:
            kept = kept[:max_detections]
        results.append({"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": image_labels[kept]})
    return results


@torch.no_grad()
def detect(model: nn.Module, images: Tensor, anchors: Tensor, stride: float, **postprocess_kwargs) -> list[dict]:
    """Run ``model`` (a `SingleStageDetector`) in eval mode, decode and postprocess its output.

    Boxes are clipped to the images' size; other keyword arguments go to `postprocess`.
    """
    was_training = model.training
    model.eval()
    try:
        output = model(images)
    finally:
        model.train(was_training)
    boxes, probs = decode(output, anchors, stride, model.num_classes)
    postprocess_kwargs.setdefault("image_size", tuple(images.shape[-2:]))
    return postprocess(boxes, probs, **postprocess_kwargs)


# ----------------------------------------------------------------------------------------------
# Training targets and loss
# ----------------------------------------------------------------------------------------------
def build_targets(
    targets: Sequence[dict[str, Tensor]],
    anchors: Tensor,
    grid_size: tuple[int, int],
    stride: float,
    background_index: int = 0,
) -> dict[str, Tensor]:
    """Training targets for every prediction of a batch, in the decoded order.

    Each object is the responsibility of one prediction: the cell that contains its centre and the
    anchor whose shape overlaps it best (`course_lib.detection.anchors.wh_iou`: boxes sharing a
    centre). All other predictions are background. When two objects of one image pick the same cell
    and anchor, the one listed last is kept (one box per cell and anchor is all this head can predict).

    Args:
        targets: per image, ``boxes`` (M, 4) xyxy pixels and ``labels`` (M,) class indices.
        anchors: (A, 2) anchor (w, h) in pixels.
        grid_size: (H, W) of the head output; stride: pixels per cell.
        background_index: the label of predictions that no object is assigned to.
    Returns:
        ``labels`` (B, N) int64 class of every prediction (``background_index`` where no object),
        ``responsible`` (B, N) bool, ``objects`` (B, N) int64 the index of the object in its image's
        target (-1 where none), and ``offsets`` (B, N, 4) the targets of responsible predictions:
        ``(x / stride - c_x, y / stride - c_y, log(w / p_w), log(h / p_h))`` (0 elsewhere),
        with N = H * W * A.
    """
    _check_anchors(anchors)
    _check_stride(stride)
    if isinstance(targets, dict) or not isinstance(targets, Sequence) or len(targets) == 0:
        raise TypeError("targets must be a non-empty list of dicts with 'boxes' (M, 4) and 'labels' (M,)")
    height, width = grid_size
    num_anchors = anchors.shape[0]
    num_predictions = height * width * num_anchors
    device, dtype = anchors.device, anchors.dtype
    boxes, labels, images, first_object = [], [], [], [0]
    for index, target in enumerate(targets):  # gathers the batch's objects into one list
        image_boxes, image_labels = target["boxes"], target["labels"]
        if image_boxes.dim() != 2 or image_boxes.shape[-1] != 4 or image_labels.shape != image_boxes.shape[:1]:
            raise ValueError(
                f"targets[{index}] must hold boxes (M, 4) and labels (M,), got {tuple(image_boxes.shape)} "
                f"and {tuple(image_labels.shape)}"
            )
        boxes.append(image_boxes.to(device, dtype))
        labels.append(image_labels.to(device, torch.int64))
        images.append(torch.full((image_boxes.shape[0],), index, device=device, dtype=torch.int64))
        first_object.append(first_object[-1] + image_boxes.shape[0])
    boxes, labels, images = torch.cat(boxes), torch.cat(labels), torch.cat(images)
    first_object = torch.tensor(first_object[:-1], device=device)
    batch = len(targets)

    centres_sizes = box_convert(boxes, "xyxy", "cxcywh")                       # (M, 4)
    cells = (centres_sizes[:, :2] / stride).floor().long()
    cells[:, 0] = cells[:, 0].clamp(0, width - 1)
    cells[:, 1] = cells[:, 1].clamp(0, height - 1)
    best_anchor = wh_iou(centres_sizes[:, 2:], anchors).argmax(dim=1)          # (M,)
    slot = images * num_predictions + (cells[:, 1] * width + cells[:, 0]) * num_anchors + best_anchor

    # The last object listed wins a contested slot: scatter each slot's largest object index.
    object_index = torch.arange(boxes.shape[0], device=device)
    winner = torch.full((batch * num_predictions,), -1, device=device, dtype=torch.int64)
    winner = winner.scatter_reduce(0, slot, object_index, reduce="amax", include_self=True)
    responsible = winner >= 0
    chosen = winner[responsible]

    out_labels = torch.full((batch * num_predictions,), background_index, device=device, dtype=torch.int64)
    out_labels[responsible] = labels[chosen]
    objects = torch.full((batch * num_predictions,), -1, device=device, dtype=torch.int64)
    objects[responsible] = chosen - first_object[images[chosen]]
    offsets = torch.zeros(batch * num_predictions, 4, device=device, dtype=dtype)
    chosen_anchor = anchors[best_anchor[chosen]]
    offsets[responsible] = torch.cat([
        centres_sizes[chosen, :2] / stride - cells[chosen].to(dtype),
        torch.log(centres_sizes[chosen, 2:].clamp(min=torch.finfo(dtype).tiny) / chosen_anchor),
    ], dim=-1)
    return {
        "labels": out_labels.reshape(batch, num_predictions),
        "responsible": responsible.reshape(batch, num_predictions),
        "objects": objects.reshape(batch, num_predictions),
        "offsets": offsets.reshape(batch, num_predictions, 4),
    }


def yolo_loss(
    output: Tensor,
    targets: Sequence[dict[str, Tensor]],
    anchors: Tensor,
    stride: float,
    num_classes: int,
    background_index: int = 0,
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """A simple YOLO-style loss for a `SingleStageDetector`'s output.

    * centre: binary cross-entropy between ``sigmoid(t_x), sigmoid(t_y)`` and the centre's position
      inside its cell (a number in [0, 1]), at responsible predictions only;
    * size: smooth L1 between ``t_w, t_h`` and ``log(w / p_w), log(h / p_h)``, responsible only;
    * class: cross-entropy over all C classes (the softmax `decode` uses), averaged separately over
      responsible predictions and over background ones and summed, so that the many background
      cells do not drown the few objects.

    Returns ``{"box": ..., "class": ..., "total": class + box_weight * box}`` (scalars).
    """
    _check_anchors(anchors)
    _check_head_output(output, anchors.shape[0], num_classes)
    height, width = output.shape[-2:]
    rows = flatten_output(output, anchors.shape[0], num_classes)          # (B, N, 4 + C)
    wanted = build_targets(targets, anchors.to(output.device, output.dtype), (height, width), stride,
                           background_index)
    if rows.shape[0] != wanted["labels"].shape[0]:
        raise ValueError(f"targets must hold one dict per image: {rows.shape[0]} images, {len(targets)} targets")
    responsible = wanted["responsible"]
    class_loss_each = F.cross_entropy(rows[..., BOX_CHANNELS:].transpose(1, 2), wanted["labels"], reduction="none")
    num_objects = responsible.sum().clamp(min=1)
    num_background = (~responsible).sum().clamp(min=1)
    class_loss = (class_loss_each[responsible].sum() / num_objects
                  + class_loss_each[~responsible].sum() / num_background)
    offsets, goal = rows[..., :BOX_CHANNELS][responsible], wanted["offsets"][responsible]
    centre_loss = F.binary_cross_entropy_with_logits(offsets[:, :2], goal[:, :2], reduction="sum")
    size_loss = F.smooth_l1_loss(offsets[:, 2:], goal[:, 2:], beta=1.0 / 9, reduction="sum")
    box_loss = (centre_loss + size_loss) / num_objects
    return {"box": box_loss, "class": class_loss, "total": class_loss + box_weight * box_loss}
