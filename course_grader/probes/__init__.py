"""The grader's own checks, per assignment: which student functions it calls, on what, expecting what.

Each module here covers one exercise and exposes ``calls(generator) -> list[Call]``: fresh inputs
drawn from ``generator`` (seeded per grading run) and the reference's answers, computed in the
grader's process (see `course_grader.verdicts`); `calls_for` gives an assignment's calls for one seed.
"""
from __future__ import annotations

from collections.abc import Callable

from ..probe_types import Call, ModuleCall

from . import blocks_and_resnets, redteam
from . import convnext
from . import ssd, yolo_decoding
from . import video_tracking
from . import faster_rcnn

#: Assignment name -> function giving its calls from a torch.Generator.
PROBES: dict[str, Callable] = {
    "01_blocks_and_resnets": blocks_and_resnets.calls,
    "02_convnext": convnext.calls,
    "redteam": redteam.calls,
    "03_anchors_and_yolo_decoding": yolo_decoding.calls,
    "04_ssd_matching_and_focal_loss": ssd.calls,
    "05_faster_rcnn_step_by_step": faster_rcnn.calls,
    "06_pretrained_detectors_on_video": video_tracking.calls,
}


def calls_for(assignment: str, seed: int) -> list[Call | ModuleCall]:
    """The grader's calls for ``assignment`` (none for assignments without probes)."""
    import torch

    make = PROBES.get(assignment)
    if make is None:
        return []
    # The probes' tensors are tiny: one thread computes them fastest, most of all on busy cores.
    # Building reference modules draws initial weights: the global random state is put back after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return make(torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(threads)
