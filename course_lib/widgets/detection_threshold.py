"""Lesson 6's threshold demo: a score threshold on a slider over a detector's output computed once,
its boxes drawn into the image and every score plotted against the threshold.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .output_area import show_figure

__all__ = ["THRESHOLD_STEP", "DROPPED_COLOR", "MAX_PLOTTED_SCORES", "DetectionThresholdDemo"]

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

        from ..detection.annotate import class_rgb, draw_detections, label_text

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
        show_figure(self._output, self.draw(self.threshold), self._caption(self.threshold))
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
        self.threshold = start
        show_figure(self._output, self.draw(start), self._caption(start))  # the first picture
        return panel

    def _caption(self, threshold: float) -> str:
        """The picture's text form (what a notebook without images shows)."""
        return f"<threshold {threshold:.2f}: {len(self.keep(threshold)['scores'])} boxes>"


def _check_score_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)
