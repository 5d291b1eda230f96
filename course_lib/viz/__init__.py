"""Pictures for the detection lessons: boxes on images, anchors on grids, matches, grids of images.

Every function draws with matplotlib on the Axes it is given (or on a new figure), returns the
Axes (or Figure) and never calls ``plt.show()``: a notebook shows the figure by itself.

Images may be tensors ``(3, H, W)`` / ``(1, H, W)`` / ``(H, W)`` (float in [0, 1] or uint8, any
device) or numpy arrays ``(H, W, 3)`` / ``(H, W)``. Boxes are ``(N, 4)`` as (x1, y1, x2, y2) in
pixels, where pixel ``j`` spans ``[j, j + 1)``: the image is drawn with exactly that extent, so a
box's edge sits on the pixel's edge.

One module per kind of picture: `canvas` (class colours, reading images and boxes), `box_drawings`
(detections, anchors, matches, proposals), `figures` (image grids, loss curves, block diagrams),
`instances` (masks, keypoints, the four vision tasks), `roi_pooling` (ROI pooling bins) and
`architecture` (residual blocks and ResNet stage layouts, read from the modules themselves).
Import from here (``from course_lib.viz import draw_boxes``) or from the module.
"""
from __future__ import annotations

from .canvas import (DARK_TEXT_LUMINANCE, EXTRA_SATURATION, EXTRA_VALUE, FIGURE_WIDTH_INCHES, GOLDEN_RATIO_CONJUGATE,
                     TAB10, Color, class_color, palette)
from .box_drawings import (PROPOSAL_CMAP, UNMATCHED_ALPHA, UNMATCHED_COLOR, draw_anchors, draw_boxes, draw_proposals,
                           show_matching)
from .figures import PIPELINE_BLOCK_HEIGHT, PIPELINE_BLOCK_WIDTH, PIPELINE_GAP, draw_pipeline, image_grid, plot_loss_curves
from .instances import COCO_KEYPOINT_NAMES, COCO_SKELETON, MASK_ALPHA, draw_keypoints, draw_masks, draw_vision_tasks
from .roi_pooling import ROI_BIN_METHODS, draw_roi_bins, roi_bins
from .architecture import (MAX_BLOCK_GLYPHS, SHORTCUT_NAMES, BlockTrace, LayerCall, StageInfo, draw_block,
                           draw_stage_layouts, resnet_stage_layout, trace_block)

__all__ = [
    "palette",
    "class_color",
    "draw_boxes",
    "draw_anchors",
    "show_matching",
    "image_grid",
    "plot_loss_curves",
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
    "draw_pipeline",
    "draw_masks",
    "draw_keypoints",
    "draw_vision_tasks",
    "draw_proposals",
    "roi_bins",
    "draw_roi_bins",
    "trace_block",
    "resnet_stage_layout",
    "draw_block",
    "draw_stage_layouts",
]
