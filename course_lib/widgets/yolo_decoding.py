"""Lesson 3's decoding demo: one anchor's offsets and class logits on sliders, the decoded box and the
softmax drawn as they move (`course_lib.detection.yolo.decode` does the decoding).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..detection.yolo import BOX_CHANNELS, decode, foreground_scores
from ..viz import class_color
from .output_area import show_figure

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
        show_figure(self._output, self.draw(decoded))
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
