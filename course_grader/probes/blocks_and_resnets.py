"""Exercise 1 (blocks and ResNets): the grader's own calls.

q1 ``conv_params`` and q4 ``conv_output_size`` / ``stage_output_shapes`` are functions; q2
``ResidualBlock`` and q3 ``BottleneckBlock`` are modules, built with the grader's arguments and
weights (the reference's layer names are the docstrings' names: conv1, bn1, ..., shortcut.0/1).
"""
from __future__ import annotations

import torch

from course_lib.models import BottleneckBlock, ResidualBlock, ResNet, conv_params
from course_lib.models.resnet import BOTTLENECK_EXPANSION, STAGE_NAMES, STEM_CHANNELS
from ..probe_types import Call, ModuleCall, module_call, random_input, random_int

#: Images per batch in the blocks' inputs: two, so that BatchNorm has batch statistics in train mode.
BATCH = 2
#: Blocks' channels and image sides stay small: the weights and outputs travel as JSON.
MAX_CHANNELS, MAX_SIDE = 6, 7
#: ``stage_output_shapes``'s default stage channels (ResNet18/34).
DEFAULT_STAGE_CHANNELS = (64, 128, 256, 512)


def conv_params_calls(question: str, generator: torch.Generator) -> list[Call]:
    calls = []
    for _ in range(6):
        kernel_size = int(torch.randint(1, 8, (1,), generator=generator))
        in_channels, out_channels = (int(c) for c in torch.randint(1, 2049, (2,), generator=generator))
        bias = bool(torch.randint(0, 2, (1,), generator=generator))
        args = (kernel_size, in_channels, out_channels, bias)
        calls.append(Call(question, "conv_params", args, conv_params(*args)))
    return calls


def conv_output_size_calls(question: str, generator: torch.Generator) -> list[Call]:
    calls = []
    while len(calls) < 6:
        size = int(torch.randint(1, 400, (1,), generator=generator))
        kernel_size = int(torch.randint(1, 8, (1,), generator=generator))
        stride = int(torch.randint(1, 4, (1,), generator=generator))
        padding = int(torch.randint(0, kernel_size // 2 + 1, (1,), generator=generator))
        if size + 2 * padding < kernel_size:
            continue
        # torch's own convolution says how long its output is (on the meta device: no computation).
        out = torch.nn.functional.conv1d(torch.empty(1, 1, size, device="meta"),
                                         torch.empty(1, 1, kernel_size, device="meta"), stride=stride, padding=padding)
        calls.append(Call(question, "conv_output_size", (size, kernel_size, stride, padding), int(out.shape[-1])))
    return calls


def stage_output_shapes_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random image sizes (odd ones and 1x1 included) with random stage channels, and the default channels once."""
    # Sizes depend on strides only: a one-block-per-stage, 1-channel ResNet on the meta device has them all.
    with torch.device("meta"):
        backbone = ResNet(ResidualBlock, (1, 1, 1, 1), (1, 1, 1, 1), num_classes=1).eval()

    def shapes(height: int, width: int, channels: tuple[int, ...]) -> dict[str, tuple[int, int, int]]:
        with torch.no_grad():
            outputs = backbone.stage_outputs(torch.empty(1, 3, height, width, device="meta"))
        return {name: (c, *outputs[name].shape[2:]) for name, c in zip(STAGE_NAMES, (STEM_CHANNELS, *channels))}

    sizes = [(1, 1), (2 * random_int(0, 100, generator) + 1, random_int(1, 300, generator))]
    sizes += [(random_int(1, 1000, generator), random_int(1, 1000, generator)) for _ in range(4)]
    calls = []
    for height, width in sizes:
        channels = tuple(random_int(1, 4096, generator) for _ in range(4))
        calls.append(Call(question, "stage_output_shapes", (height, width, channels), shapes(height, width, channels)))
    height, width = sizes[-1]
    calls.append(Call(question, "stage_output_shapes", (height, width), shapes(height, width, DEFAULT_STAGE_CHANNELS)))
    return calls


def _block_calls(question: str, name: str, block: type, cases: list[tuple],
                 generator: torch.Generator) -> list[ModuleCall]:
    """One module call per ``(in_channels, out_channels, downsample, height, width, modes)`` case."""
    calls = []
    for in_channels, out_channels, downsample, height, width, modes in cases:
        args = (in_channels, out_channels, downsample)
        x = random_input((BATCH, in_channels, height, width), generator)
        calls.append(module_call(question, name, args, block(*args), (x,), generator, modes=modes))
    return calls


def _two_different(low: int, high: int, generator: torch.Generator) -> tuple[int, int]:
    first = random_int(low, high, generator)
    second = low + (first - low + random_int(1, high - low, generator)) % (high - low + 1)
    return first, second


def _odd_side(generator: torch.Generator) -> int:
    return 2 * random_int(1, MAX_SIDE // 2, generator) + 1


def residual_block_calls(question: str, generator: torch.Generator) -> list[ModuleCall]:
    """Identity shortcut; projection with downsampling; projection for a change of channels only;
    downsampling a 1-pixel-high image. Eval mode everywhere, train mode (batch statistics) twice."""
    same = random_int(1, MAX_CHANNELS, generator)
    c_in, c_out = _two_different(1, MAX_CHANNELS, generator)
    d_in, d_out = _two_different(1, MAX_CHANNELS, generator)
    def side() -> int:
        return random_int(2, MAX_SIDE, generator)

    cases = [
        (same, same, False, _odd_side(generator), side(), ("eval", "train")),
        (d_in, d_out, True, _odd_side(generator), side(), ("eval", "train")),
        (c_in, c_out, False, side(), _odd_side(generator), ("eval",)),
        (same, same, True, 1, random_int(2, 3, generator), ("eval",)),
    ]
    return _block_calls(question, "ResidualBlock", ResidualBlock, cases, generator)


def bottleneck_block_calls(question: str, generator: torch.Generator) -> list[ModuleCall]:
    """Identity shortcut; widening without downsampling (stage 2's first block); downsampling with a
    change of channels; downsampling a 1-pixel-high image. out_channels is a multiple of 4."""
    def out_channels() -> int:
        return BOTTLENECK_EXPANSION * random_int(1, 2, generator)

    same, wide, down = out_channels(), out_channels(), out_channels()
    narrow = random_int(1, wide - 1, generator)
    def side() -> int:
        return random_int(2, MAX_SIDE, generator)

    cases = [
        (same, same, False, _odd_side(generator), side(), ("eval", "train")),
        (narrow, wide, False, side(), _odd_side(generator), ("eval",)),
        (random_int(1, 2 * MAX_CHANNELS, generator), down, True, _odd_side(generator), side(), ("eval", "train")),
        (same, same, True, 1, random_int(2, 3, generator), ("eval",)),
    ]
    return _block_calls(question, "BottleneckBlock", BottleneckBlock, cases, generator)


def calls(generator: torch.Generator) -> list[Call | ModuleCall]:
    return [
        *conv_params_calls("q1_tests", generator),
        *residual_block_calls("q2_tests", generator),
        *bottleneck_block_calls("q3_tests", generator),
        *conv_output_size_calls("q4_tests", generator),
        *stage_output_shapes_calls("q4_tests", generator),
    ]
