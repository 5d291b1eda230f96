"""Interactive demos for the lessons (ipywidgets sliders driving matplotlib pictures).

Each demo is a class whose ``update(...)`` computes and draws one state, so it also works without a
browser (tests and static notebooks call ``update`` directly), and whose ``widget()`` wraps it in
sliders for JupyterLab or Colab.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .detection.yolo import BOX_CHANNELS, decode, foreground_scores
from .viz import class_color

__all__ = ["YoloDecodingDemo"]

#: Slider range for the box offsets t_x, t_y, t_w, t_h and the class logits.
OFFSET_RANGE = (-4.0, 4.0)
LOGIT_RANGE = (-6.0, 8.0)
SLIDER_STEP = 0.1
BACKGROUND_COLOR = (0.55, 0.55, 0.55)


class YoloDecodingDemo:
    """Move one anchor's ``t_x, t_y, t_w, t_h`` and class logits; see the decoded box and probabilities.

    The picture shows the image's output grid, the cell the prediction belongs to (shaded: the
    sigmoid keeps the box centre inside it), the anchor box where ``t = 0`` puts it (dashed) and the
    decoded box (solid), labelled with its best non-background class when that class's probability
    clears ``score_threshold``. A bar chart shows the softmax over the classes.

    Args:
        grid_size: cells per side of the output grid.
        stride: pixels per cell (the image is ``grid_size * stride`` pixels wide).
        anchor: (w, h) of the anchor in pixels.
        cell: (column, row) of the cell the anchor sits in.
        class_names: names of the classes, background included.
        background_index: index of the background class in ``class_names``.
        score_threshold: probability a class needs for the box to be shown.
    """

    def __init__(self, grid_size: int = 4, stride: int = 32, anchor: Sequence[float] = (40.0, 64.0),
                 cell: Sequence[int] = (1, 1), class_names: Sequence[str] = ("dog", "cat", "background"),
                 background_index: int = 2, score_threshold: float = 0.4) -> None:
        if not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
        column, row = (int(v) for v in cell)
        if not (0 <= column < grid_size and 0 <= row < grid_size):
            raise ValueError(f"cell must be a (column, row) inside the {grid_size}x{grid_size} grid, got {tuple(cell)}")
        if len(class_names) < 2 or not -len(class_names) <= background_index < len(class_names):
            raise ValueError(f"class_names needs >= 2 names and background_index inside them, got "
                             f"{len(class_names)} names and index {background_index}")
        self.grid_size, self.stride = grid_size, stride
        self.anchor = torch.tensor([list(map(float, anchor))])  # (1, 2) as (w, h)
        self.cell = (column, row)
        self.class_names = tuple(class_names)
        self.background_index = background_index % len(class_names)
        self.score_threshold = score_threshold
        self.figure: Figure | None = None
        self._output = None  # the ipywidgets.Output the sliders draw into

    @property
    def image_size(self) -> int:
        return self.grid_size * self.stride

    def decode(self, t_x: float = 0.0, t_y: float = 0.0, t_w: float = 0.0, t_h: float = 0.0,
               logits: Sequence[float] | None = None) -> dict:
        """Decode this anchor's values with `course_lib.detection.yolo.decode` on the whole grid.

        Returns ``box`` (cx, cy, w, h) in pixels, ``probs`` (C,), ``label`` and ``score`` (best
        non-background class) and ``shown`` (whether the score clears the threshold).
        """
        num_classes = len(self.class_names)
        logits = [0.0] * num_classes if logits is None else [float(v) for v in logits]
        if len(logits) != num_classes:
            raise ValueError(f"logits must have {num_classes} values (one per class), got {len(logits)}")
        output = torch.zeros(1, BOX_CHANNELS + num_classes, self.grid_size, self.grid_size)
        column, row = self.cell
        output[0, :, row, column] = torch.tensor([t_x, t_y, t_w, t_h, *logits])
        boxes, probs = decode(output, self.anchor, self.stride, num_classes)
        index = row * self.grid_size + column  # one anchor: prediction (row * W + column)
        score, label = foreground_scores(probs[0, index], self.background_index)
        return {"box": boxes[0, index], "probs": probs[0, index], "label": int(label), "score": float(score),
                "shown": float(score) > self.score_threshold}

    def draw(self, decoded: dict, fig: Figure | None = None) -> Figure:
        """Draw a `decode` result: the grid with anchor and box, and the class probabilities."""
        if fig is None:
            fig = plt.figure(figsize=(9.5, 4.2))
        fig.clear()
        grid_ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
        size, stride = self.image_size, self.stride
        column, row = self.cell

        grid_ax.set_xlim(-0.5 * stride, size + 0.5 * stride)
        grid_ax.set_ylim(size + 0.5 * stride, -0.5 * stride)
        grid_ax.set_aspect("equal")
        for k in range(self.grid_size + 1):
            grid_ax.axhline(k * stride, color="black", lw=0.6, alpha=0.4)
            grid_ax.axvline(k * stride, color="black", lw=0.6, alpha=0.4)
        grid_ax.add_patch(Rectangle((column * stride, row * stride), stride, stride, color="gold", alpha=0.35,
                                    label="where the centre can go"))
        anchor_w, anchor_h = self.anchor[0].tolist()
        centre_x, centre_y = (column + 0.5) * stride, (row + 0.5) * stride
        grid_ax.add_patch(Rectangle((centre_x - anchor_w / 2, centre_y - anchor_h / 2), anchor_w, anchor_h,
                                    fill=False, ls="--", lw=1.2, color="black", label="anchor (t = 0)"))
        cx, cy, w, h = (float(v) for v in decoded["box"])
        color = class_color(decoded["label"]) if decoded["shown"] else BACKGROUND_COLOR
        finite = all(abs(v) < float("inf") for v in (w, h))
        if finite:
            grid_ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, lw=2.5, color=color,
                                        label="decoded box"))
        grid_ax.plot([cx], [cy], "o", color=color, ms=5)
        name = self.class_names[decoded["label"]]
        verdict = f"{name} {decoded['score']:.2f}" if decoded["shown"] else f"not shown (best: {name} {decoded['score']:.2f})"
        grid_ax.set_title(f"centre ({cx:.1f}, {cy:.1f}), size {w:.1f} x {h:.1f}\n{verdict}", fontsize=10)
        grid_ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
        grid_ax.tick_params(labelsize=8)

        probs = decoded["probs"].tolist()
        colors = [BACKGROUND_COLOR if k == self.background_index else class_color(k) for k in range(len(probs))]
        bars = bar_ax.bar(range(len(probs)), probs, color=colors)
        for bar, p in zip(bars, probs):
            bar_ax.text(bar.get_x() + bar.get_width() / 2, p + 0.02, f"{p:.3f}", ha="center", fontsize=9)
        bar_ax.axhline(self.score_threshold, color="red", ls=":", lw=1.2, label=f"threshold {self.score_threshold}")
        bar_ax.set_xticks(range(len(probs)), self.class_names, fontsize=9)
        bar_ax.set_ylim(0, 1.1)
        bar_ax.set_ylabel("softmax probability")
        bar_ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        self.figure = fig
        return fig

    def update(self, t_x: float = 0.0, t_y: float = 0.0, t_w: float = 0.0, t_h: float = 0.0,
               logits: Sequence[float] | None = None) -> dict:
        """Decode and draw one state (what the sliders call); returns the `decode` result."""
        decoded = self.decode(t_x, t_y, t_w, t_h, logits)
        if self._output is None:
            self.draw(decoded, self.figure)
            return decoded
        from IPython.display import display

        with self._output:
            self._output.clear_output(wait=True)
            fig = self.draw(decoded)
            display(fig)
            plt.close(fig)  # shown once, in the output area
        return decoded

    def widget(self, t_x: float = 0.0, t_y: float = 0.0, t_w: float = 0.0, t_h: float = 0.0,
               logits: Sequence[float] | None = None):
        """Sliders for every value and the picture they drive (an ``ipywidgets.VBox``)."""
        import ipywidgets as widgets

        logits = [0.0] * len(self.class_names) if logits is None else list(logits)
        style = {"description_width": "90px"}
        layout = widgets.Layout(width="320px")

        def slider(description, value, limits):
            return widgets.FloatSlider(value=value, min=limits[0], max=limits[1], step=SLIDER_STEP,
                                       description=description, style=style, layout=layout,
                                       continuous_update=False)

        offsets = [slider(name, value, OFFSET_RANGE) for name, value in zip(("t_x", "t_y", "t_w", "t_h"),
                                                                           (t_x, t_y, t_w, t_h))]
        class_sliders = [slider(f"logit {name}", value, LOGIT_RANGE) for name, value in zip(self.class_names, logits)]
        self._output = widgets.Output()

        def redraw(_change=None):
            return self.update(*(s.value for s in offsets), logits=[s.value for s in class_sliders])

        for control in (*offsets, *class_sliders):
            control.observe(redraw, names="value")
        panel = widgets.VBox([
            widgets.HBox([widgets.VBox(offsets), widgets.VBox(class_sliders)]),
            self._output,
        ])
        panel.redraw = redraw  # lets code (and tests) trigger a redraw as a slider would
        panel.sliders = {"offsets": offsets, "logits": class_sliders}
        redraw()
        return panel


# -- lesson 6: a score threshold over a detector's output ---------------------------------------

#: Steps of `DetectionThresholdDemo`'s slider; dropped detections are drawn in this grey.
THRESHOLD_STEP = 0.05
DROPPED_COLOR = (0.78, 0.78, 0.78)
#: At most this many scores are plotted (the best ones): a detector may report hundreds.
MAX_PLOTTED_SCORES = 60


class DetectionThresholdDemo:
    """Move a score threshold and watch a detector's boxes appear and disappear.

    The detector runs once, beforehand: ``detections`` holds everything it reported (e.g.
    ``predict(detector, [image], score_threshold=0.0)[0]``), so moving the threshold only filters
    and redraws; nothing is detected again. The picture shows the image with the boxes whose score
    is at least the threshold, drawn into its pixels as the lesson's videos are
    (`course_lib.detection.annotate.draw_detections`), and next to it every score, best first, in
    its class's colour when kept and grey when dropped, with the threshold as a line.

    Args:
        image: (3, H, W) or (1, H, W), uint8 or float in [0, 1].
        detections: ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,), ``scores`` (N,); N may be 0.
        categories: class names by label (a list or a dict); without them labels print as numbers.
        threshold: the starting threshold, in [0, 1].
        title: a title above the image.
    """

    def __init__(self, image: torch.Tensor, detections: dict, categories: Sequence[str] | None = None,
                 threshold: float = 0.5, *, title: str | None = None) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (3, H, W) tensor, got {shape}")
        from collections.abc import Mapping

        if not isinstance(detections, Mapping) or not {"boxes", "labels", "scores"} <= set(detections):
            raise TypeError(f"detections must be a dict with 'boxes', 'labels' and 'scores', got "
                            f"{sorted(detections) if isinstance(detections, Mapping) else type(detections).__name__}")
        boxes = torch.as_tensor(detections["boxes"]).detach().cpu().float()
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"detections['boxes'] must be (N, 4) xyxy, got shape {tuple(boxes.shape)}")
        scores = torch.as_tensor(detections["scores"]).detach().cpu().float().reshape(-1)
        labels = torch.as_tensor(detections["labels"]).detach().cpu().reshape(-1)
        for name, value in (("scores", scores), ("labels", labels)):
            if value.shape[0] != boxes.shape[0]:
                raise ValueError(f"detections['{name}'] must have one entry per box ({boxes.shape[0]}), "
                                 f"got {value.shape[0]}")
        order = scores.argsort(descending=True, stable=True)  # best first: the plot's order
        self.detections = {"boxes": boxes[order], "labels": labels[order], "scores": scores[order]}
        self.image = image.detach().cpu()
        self.categories = categories
        self.threshold = _check_score_threshold(threshold)
        self.title = title
        self.figure: Figure | None = None
        self._output = None  # the ipywidgets.Output the slider draws into

    def keep(self, threshold: float) -> dict[str, torch.Tensor]:
        """The detections whose score is at least ``threshold`` (best first, on the CPU)."""
        kept = self.detections["scores"] >= _check_score_threshold(threshold)
        return {key: value[kept] for key, value in self.detections.items()}

    def draw(self, threshold: float, fig: Figure | None = None) -> Figure:
        """The image with the kept boxes, and every score against the threshold."""
        from matplotlib.ticker import MaxNLocator

        from .detection.annotate import class_rgb, draw_detections, label_text

        kept = self.keep(threshold)
        if fig is None:
            fig = plt.figure(figsize=(10.5, 4.2))
        fig.clear()
        height, width = self.image.shape[-2:]
        image_ax, score_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(width / height, 0.6), 1.0]})
        image_ax.imshow(draw_detections(self.image, kept, self.categories).permute(1, 2, 0).numpy())
        image_ax.set_axis_off()
        names = ", ".join(label_text(label, None, self.categories) for label in kept["labels"][:4].tolist())
        more = f", ... ({len(kept['labels']) - 4} more)" if len(kept["labels"]) > 4 else ""
        title = f"{self.title}\n" if self.title else ""
        image_ax.set_title(f"{title}score >= {threshold:.2f}: {len(kept['labels'])} boxes"
                           + (f" ({names}{more})" if names else ""), fontsize=9)

        scores, labels = self.detections["scores"][:MAX_PLOTTED_SCORES], self.detections["labels"][:MAX_PLOTTED_SCORES]
        colors = [tuple(c / 255 for c in class_rgb(int(label))) if float(score) >= threshold else DROPPED_COLOR
                  for score, label in zip(scores, labels)]
        score_ax.bar(range(1, len(scores) + 1), scores.numpy(), color=colors, width=0.85)
        score_ax.axhline(threshold, color="red", ls="--", lw=1.2, label=f"threshold {threshold:.2f}")
        score_ax.set(xlabel=f"detections, best first ({len(self.detections['scores'])} in all)", ylabel="score",
                     ylim=(0, 1.02), xlim=(0.3, max(len(scores), 1) + 0.7))
        score_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        score_ax.set_title("kept: in the class's colour; dropped: grey", fontsize=9)
        score_ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        self.figure = fig
        return fig

    def update(self, threshold: float) -> dict[str, torch.Tensor]:
        """Filter and draw at ``threshold`` (what the slider calls); returns the kept detections."""
        self.threshold = _check_score_threshold(threshold)
        if self._output is None:
            self.draw(self.threshold, self.figure)
            return self.keep(self.threshold)
        from IPython.display import display

        with self._output:
            self._output.clear_output(wait=True)
            fig = self.draw(self.threshold)
            display(fig)
            plt.close(fig)  # shown once, in the output area
        return self.keep(self.threshold)

    def widget(self, threshold: float | None = None):
        """A threshold slider and the picture it drives (an ``ipywidgets.VBox``)."""
        import ipywidgets as widgets

        start = self.threshold if threshold is None else _check_score_threshold(threshold)
        slider = widgets.FloatSlider(value=start, min=0.0, max=1.0, step=THRESHOLD_STEP, description="threshold",
                                     readout_format=".2f", continuous_update=False,
                                     layout=widgets.Layout(width="420px"))
        self._output = widgets.Output()

        def redraw(_change=None):
            return self.update(slider.value)

        slider.observe(redraw, names="value")
        panel = widgets.VBox([slider, self._output])
        panel.redraw = redraw  # lets code (and tests) trigger a redraw as the slider would
        panel.slider = slider
        # The first picture is written into the output area's state rather than displayed into it:
        # nothing is then routed through the widget while the cell runs, which headless runs
        # (nbclient, the course's tests) do not always survive with large images.
        self.threshold = start
        self._output.outputs = (self._picture_record(start),)
        return panel

    def _picture_record(self, threshold: float) -> dict:
        """The picture at ``threshold`` as a notebook output record (PNG), for an output area's state."""
        import base64
        import io

        fig = self.draw(threshold)
        png = io.BytesIO()
        fig.savefig(png, format="png", bbox_inches="tight")
        plt.close(fig)
        return {"output_type": "display_data", "metadata": {},
                "data": {"image/png": base64.b64encode(png.getvalue()).decode("ascii"),
                         "text/plain": f"<threshold {threshold:.2f}: {len(self.keep(threshold)['scores'])} boxes>"}}


def _check_score_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


__all__.append("DetectionThresholdDemo")


# -- lesson 5: the RPN's IoU thresholds and the proposals' NMS threshold -------------------------

#: Steps of `RPNThresholdDemo`'s sliders.
IOU_STEP = 0.05
#: Bins of the histogram of every anchor's best IoU.
IOU_HISTOGRAM_BINS = 40
POSITIVE_COLOR, NEGATIVE_COLOR, IGNORED_COLOR = (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.6, 0.6, 0.6)


class RPNThresholdDemo:
    """Move the RPN's positive and negative IoU thresholds and the proposals' NMS threshold; watch
    the labelled anchors, the surviving proposals and their counts.

    Everything that does not depend on a slider is computed once, here: the IoU of every anchor
    with every object, and the proposals ranked by score (decoded, clipped, small ones dropped, the
    ``pre_nms_top_n`` best, as `course_lib.detection.faster_rcnn.region_proposals.filter_proposals`
    hands them to NMS). Moving an IoU slider relabels the anchors by comparing stored IoUs; moving
    the NMS slider reruns NMS once per new value (results are kept) and redraws.

    The picture: the positive anchors on the image with the objects; the histogram of every
    anchor's best IoU, coloured negative / ignored / positive by the thresholds; the best proposals
    left after NMS, coloured by score.

    Args:
        image: (3, H, W) float in [0, 1] or uint8: the image of the anchors and proposals.
        gt_boxes: (G, 4) xyxy pixels, the objects; ``gt_labels`` (G,) colours them.
        anchors: (A, 4) xyxy pixels: the anchors that are labelled (e.g. the 8,940 inside the image).
        proposals: (P, 4) xyxy pixels before NMS; ``proposal_scores`` (P,) their objectness.
        post_nms_top_n: proposals kept after NMS (2,000 while training).
        max_drawn: at most this many proposals are drawn (the best); the counts include all.
    """

    def __init__(self, image: torch.Tensor, gt_boxes: torch.Tensor, anchors: torch.Tensor,
                 proposals: torch.Tensor, proposal_scores: torch.Tensor, *, gt_labels: torch.Tensor | None = None,
                 class_names: Sequence[str] | None = None, post_nms_top_n: int = 2000,
                 positive_iou: float = 0.7, negative_iou: float = 0.3, nms_threshold: float = 0.7,
                 max_drawn: int = 150) -> None:
        from .detection.boxes import box_iou

        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (3, H, W) tensor, got {shape}")
        for name, boxes in (("gt_boxes", gt_boxes), ("anchors", anchors), ("proposals", proposals)):
            if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
                raise ValueError(f"{name} must be an (N, 4) xyxy tensor, got {shape}")
        if not isinstance(proposal_scores, torch.Tensor) or proposal_scores.shape != proposals.shape[:1]:
            shape = tuple(proposal_scores.shape) if isinstance(proposal_scores, torch.Tensor) else proposal_scores
            raise ValueError(f"proposal_scores must have shape ({proposals.shape[0]},), got {shape}")
        if gt_labels is not None and tuple(gt_labels.shape) != (gt_boxes.shape[0],):
            raise ValueError(f"gt_labels must have shape ({gt_boxes.shape[0]},), got {tuple(gt_labels.shape)}")
        if isinstance(post_nms_top_n, bool) or not isinstance(post_nms_top_n, int) or post_nms_top_n < 0:
            raise ValueError(f"post_nms_top_n must be an int >= 0, got {post_nms_top_n!r}")
        self.image = image.detach().cpu()
        self.gt_boxes = gt_boxes.detach().cpu().float()
        self.gt_labels = None if gt_labels is None else gt_labels.detach().cpu()
        self.class_names = class_names
        self.anchors = anchors.detach().cpu().float()
        order = proposal_scores.detach().cpu().argsort(descending=True, stable=True)  # best first
        self.proposals = proposals.detach().cpu().float()[order]
        self.proposal_scores = proposal_scores.detach().cpu().float()[order]
        self.post_nms_top_n = post_nms_top_n
        self.max_drawn = max_drawn
        self.ious = box_iou(self.gt_boxes, self.anchors)  # (G, A): the one expensive step, done once
        self.best_iou = self.ious.max(dim=0).values if len(self.gt_boxes) else torch.zeros(len(self.anchors))
        self._kept: dict[float, torch.Tensor] = {}
        self.thresholds = self._check(positive_iou, negative_iou, nms_threshold)
        self.figure: Figure | None = None
        self._output = None  # the ipywidgets.Output the sliders draw into

    @staticmethod
    def _check(positive_iou, negative_iou, nms_threshold) -> tuple[float, float, float]:
        for name, value in (("positive_iou", positive_iou), ("negative_iou", negative_iou),
                            ("nms_threshold", nms_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if negative_iou > positive_iou:
            raise ValueError(f"negative_iou ({negative_iou}) must not exceed positive_iou ({positive_iou})")
        return float(positive_iou), float(negative_iou), float(nms_threshold)

    def kept_proposals(self, nms_threshold: float) -> torch.Tensor:
        """Indices (best first) of the proposals NMS keeps at ``nms_threshold``, at most ``post_nms_top_n``."""
        from .detection.nms import nms

        key = round(float(nms_threshold), 6)
        if key not in self._kept:
            self._kept[key] = nms(self.proposals, self.proposal_scores, key)[:self.post_nms_top_n]
        return self._kept[key]

    def compute(self, positive_iou: float = 0.7, negative_iou: float = 0.3, nms_threshold: float = 0.7) -> dict:
        """Labels and counts for one setting of the sliders (nothing drawn).

        Returns ``labels`` (A,) (1 positive, 0 negative, -1 ignored, `label_anchors`' rules),
        ``positive``, ``negative``, ``ignored``, ``forced`` (positives below ``positive_iou``: some
        object's best anchors), ``proposals_before`` and ``proposals_after`` NMS, and ``kept``
        (indices into the proposals, best first).
        """
        from .detection.matching import NEGATIVE, POSITIVE, label_anchors

        positive_iou, negative_iou, nms_threshold = self._check(positive_iou, negative_iou, nms_threshold)
        labels = label_anchors(self.ious, positive_iou, negative_iou)
        positive = labels == POSITIVE
        kept = self.kept_proposals(nms_threshold)
        return {"labels": labels, "positive": int(positive.sum()), "negative": int((labels == NEGATIVE).sum()),
                "ignored": int((labels < 0).sum()), "forced": int((positive & (self.best_iou < positive_iou)).sum()),
                "proposals_before": len(self.proposals), "proposals_after": len(kept), "kept": kept,
                "thresholds": (positive_iou, negative_iou, nms_threshold)}

    def draw(self, state: dict, fig: Figure | None = None) -> Figure:
        """Draw a `compute` result: positive anchors, the IoU histogram, the proposals after NMS."""
        from .viz import draw_boxes, draw_proposals

        positive_iou, negative_iou, nms_threshold = state["thresholds"]
        if fig is None:
            fig = plt.figure(figsize=(14.5, 4.6))
        fig.clear()
        anchors_ax, histogram_ax, proposals_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.1, 1.15]})
        positive = state["labels"] == 1
        draw_boxes(self.image, self.anchors[positive], colors=POSITIVE_COLOR, linewidth=0.8, ax=anchors_ax)
        draw_boxes(None, self.gt_boxes, self.gt_labels, class_names=self.class_names, ax=anchors_ax, linewidth=2.5)
        anchors_ax.set_title(f"{state['positive']} positive anchors ({state['forced']} forced: an object's best)",
                             fontsize=9)

        bins = torch.linspace(0, 1, IOU_HISTOGRAM_BINS + 1)
        centres = (bins[:-1] + bins[1:]) / 2
        counts = torch.histc(self.best_iou, bins=IOU_HISTOGRAM_BINS, min=0.0, max=1.0)
        colors = [NEGATIVE_COLOR if c < negative_iou else POSITIVE_COLOR if c >= positive_iou else IGNORED_COLOR
                  for c in centres.tolist()]
        histogram_ax.bar(centres.numpy(), counts.numpy(), width=1 / IOU_HISTOGRAM_BINS, color=colors)
        histogram_ax.axvline(negative_iou, color=NEGATIVE_COLOR, ls="--", lw=1.2, label=f"negative below {negative_iou:.2f}")
        histogram_ax.axvline(positive_iou, color=POSITIVE_COLOR, ls="--", lw=1.2, label=f"positive from {positive_iou:.2f}")
        histogram_ax.set(yscale="log", xlim=(0, 1), ylim=(0.8, max(float(counts.max()), 1.0) * 3),
                         xlabel="an anchor's best IoU with an object", ylabel="anchors")
        histogram_ax.set_title(f"negative {state['negative']:,}, ignored {state['ignored']:,}, "
                               f"positive {state['positive']:,}", fontsize=9)
        histogram_ax.legend(fontsize=8, loc="upper right")

        kept = state["kept"][:self.max_drawn]
        draw_proposals(self.image, self.proposals[kept], self.proposal_scores[kept], ax=proposals_ax, linewidth=0.8)
        proposals_ax.set_title(f"NMS at {nms_threshold:.2f}: {state['proposals_before']:,} -> "
                               f"{state['proposals_after']:,} proposals (best {len(kept)} drawn)", fontsize=9)
        fig.tight_layout()
        self.figure = fig
        return fig

    def update(self, positive_iou: float = 0.7, negative_iou: float = 0.3, nms_threshold: float = 0.7) -> dict:
        """Compute and draw one setting (what the sliders call); returns the `compute` result."""
        state = self.compute(positive_iou, negative_iou, nms_threshold)
        self.thresholds = state["thresholds"]
        if self._output is None:
            self.draw(state, self.figure)
            return state
        # The picture replaces the output area's content through its `outputs` trait, not by capturing
        # display() in `with output:`: a headless runner (nbclient) answers captured output with
        # messages on the kernel's shell channel, which can hold up the cell until its timeout
        # (jupyter/nbclient#312). Both ways show the same in JupyterLab and Colab.
        fig = self.draw(state)
        self._output.outputs = ()
        self._output.append_display_data(fig)
        plt.close(fig)  # shown once, in the output area
        return state

    def widget(self, positive_iou: float | None = None, negative_iou: float | None = None,
               nms_threshold: float | None = None):
        """Three sliders and the picture they drive (an ``ipywidgets.VBox``). The negative threshold
        cannot pass the positive one: moving either past the other pushes the other along."""
        import ipywidgets as widgets

        start = [self.thresholds[i] if value is None else value
                 for i, value in enumerate((positive_iou, negative_iou, nms_threshold))]
        self._check(*start)
        layout, style = widgets.Layout(width="340px"), {"description_width": "110px"}
        sliders = [widgets.FloatSlider(value=value, min=0.0, max=1.0, step=IOU_STEP, description=name,
                                       readout_format=".2f", continuous_update=False, layout=layout, style=style)
                   for name, value in zip(("positive IoU", "negative IoU", "NMS IoU"), start)]
        positive, negative, nms_slider = sliders
        self._output = widgets.Output()

        def redraw(change=None):
            if negative.value > positive.value:  # keep negative <= positive: move the other slider
                if change is not None and change.get("owner") is negative:
                    positive.value = negative.value
                else:
                    negative.value = positive.value
                return None  # the slider just moved calls redraw again
            return self.update(positive.value, negative.value, nms_slider.value)

        for slider in sliders:
            slider.observe(redraw, names="value")
        panel = widgets.VBox([widgets.HBox(sliders), self._output])
        panel.redraw = redraw  # lets code (and tests) trigger a redraw as a slider would
        panel.sliders = {"positive_iou": positive, "negative_iou": negative, "nms_threshold": nms_slider}
        redraw()
        return panel


__all__.append("RPNThresholdDemo")
