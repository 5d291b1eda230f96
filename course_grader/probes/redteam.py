"""The red-team assignment of the grader's own tests (box areas, conv parameters)."""
from __future__ import annotations

import torch
from torchvision.ops import box_area

from ..probe_types import Call
from .blocks_and_resnets import conv_params_calls


def box_area_calls(question: str, generator: torch.Generator) -> list[Call]:
    calls = []
    for count in (1, 5, 9):
        corners = torch.rand(count, 2, 2, generator=generator).sort(dim=1).values * 100
        boxes = corners.transpose(1, 2).reshape(count, 4)[:, [0, 2, 1, 3]].contiguous()
        calls.append(Call(question, "box_area", (boxes,), box_area(boxes)))
    return calls


def calls(generator: torch.Generator) -> list[Call]:
    return [*box_area_calls("q1_tests", generator), *conv_params_calls("q2_tests", generator)]
