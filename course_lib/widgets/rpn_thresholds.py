"""Lesson 5's threshold demo: the RPN's positive and negative IoU thresholds and the proposals' NMS
threshold on sliders, with the labelled anchors, their IoU histogram and the surviving proposals.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .output_area import show_figure

__all__ = ["IOU_STEP", "RPNThresholdDemo"]

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
        from ..detection.boxes import box_iou

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
        from ..detection.suppression import nms

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
        from ..detection.matching import NEGATIVE, POSITIVE, label_anchors

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
        from ..viz import draw_boxes, draw_proposals

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
        show_figure(self._output, self.draw(state))
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
