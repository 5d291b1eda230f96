"""Interactive demos for the lessons (ipywidgets sliders driving matplotlib pictures).

Each demo is a class whose ``update(...)`` computes and draws one state, so it also works without a
browser (tests and static notebooks call ``update`` directly), and whose ``widget()`` wraps it in
sliders for JupyterLab or Colab.

One module per demo: `yolo_decoding` (lesson 3), `rpn_thresholds` (lesson 5) and
`detection_threshold` (lesson 6); `output_area` puts their pictures into the sliders' output area.
"""
from __future__ import annotations

from .detection_threshold import DROPPED_COLOR, MAX_PLOTTED_SCORES, THRESHOLD_STEP, DetectionThresholdDemo
from .rpn_thresholds import (IGNORED_COLOR, IOU_HISTOGRAM_BINS, IOU_STEP, NEGATIVE_COLOR, POSITIVE_COLOR,
                             RPNThresholdDemo)
from .yolo_decoding import BACKGROUND_COLOR, LOGIT_RANGE, OFFSET_RANGE, SLIDER_STEP, YoloDecodingDemo

__all__ = ["YoloDecodingDemo", "DetectionThresholdDemo", "RPNThresholdDemo"]
