"""Pictures of network architecture, read from the modules themselves: a residual block, and ResNet stages.

Nothing here is typed in by hand. `trace_block` runs a block once on the meta device (shapes only, no
arithmetic, no change to the block's weights or BatchNorm statistics) and records every layer in the
order it runs; `resnet_stage_layout` reads blocks per stage, widths and strides from a ResNet's layers
(the course's ``stem``/``stage2``.. naming or torchvision's ``conv1``/``layer1``..). `draw_block` and
`draw_stage_layouts` draw what those return, so a figure always agrees with the code it shows.

Each drawing function draws on the Axes it is given (or on a new figure), returns the Axes and never
calls ``plt.show()``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from torch import nn
from torch.func import functional_call

from .canvas import TAB10

__all__ = [
    "SHORTCUT_NAMES",
    "MAX_BLOCK_GLYPHS",
    "LayerCall",
    "BlockTrace",
    "StageInfo",
    "trace_block",
    "resnet_stage_layout",
    "draw_block",
    "draw_stage_layouts",
]

#: Names under which a block keeps its shortcut's layers: the course's and torchvision's.
SHORTCUT_NAMES = ("shortcut", "downsample")
#: `draw_stage_layouts` draws at most this many block glyphs per stage (the label gives the count).
MAX_BLOCK_GLYPHS = 8
#: The course's ResNet stage names, and torchvision's for the same stages.
COURSE_STAGES = ("stage2", "stage3", "stage4", "stage5")
TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")

_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Hardswish)
_MAIN_COLOR, _SHORTCUT_COLOR, _SUM_COLOR = TAB10[0], TAB10[3], TAB10[2]
_BLOCK_COLORS = {"basic": TAB10[0], "bottleneck": TAB10[1], "stem": TAB10[7]}
# draw_block geometry (data units): box size, distance between rows, x of the shortcut's column.
_BOX_W, _BOX_H, _ROW, _SHORTCUT_X = 2.6, 0.62, 1.0, 2.55


@dataclass(frozen=True)
class LayerCall:
    """One layer of a block as it ran: its name in the block, a readable label and its output shape."""

    name: str
    kind: str  # "conv", "linear", "norm", "act", "pool", "identity" or "other"
    label: str
    out_shape: tuple[int, ...]  # without the batch dimension, e.g. (128, 28, 28)


@dataclass(frozen=True)
class BlockTrace:
    """A residual block, traced: the main path, the shortcut, what follows the sum, and the sizes."""

    input_shape: tuple[int, ...]
    main: tuple[LayerCall, ...]
    shortcut: tuple[LayerCall, ...]  # empty, or one "identity" call, when nothing reshapes the input
    after_sum: tuple[LayerCall, ...]
    output_shape: tuple[int, ...]
    parameters: int

    @property
    def projection(self) -> bool:
        """True when the shortcut has layers of its own (a 1x1 convolution that reshapes the input)."""
        return any(call.kind == "conv" for call in self.shortcut)


@dataclass(frozen=True)
class StageInfo:
    """One stage of a ResNet as built: what `draw_stage_layouts` draws and the lesson's tables list."""

    name: str  # "stem", "stage2" .. "stage5"
    block: str  # "stem", "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1)
    blocks: int  # blocks in the stage; 0 for the stem
    channels: int  # output channels
    inner_channels: int  # channels of the blocks' 3x3 convolution (the stem: its 7x7 conv's)
    groups: int  # groups of that convolution (32 in a ResNeXt)
    stride: int  # how much the stage shrinks height and width
    output_size: tuple[int, int]  # (H, W) of the stage's output
    layers: str  # kernels of one block's main path ("1x1-3x3-1x1"), or the stem's ("7x7 conv, 3x3 max pool")


# -- reading modules ------------------------------------------------------------------------------

def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _conv_label(conv: nn.Conv2d) -> str:
    kh, kw = conv.kernel_size
    label = f"{kh}x{kw} conv, {conv.in_channels} \u2192 {conv.out_channels}"
    if conv.groups > 1:
        label += ", depthwise" if conv.groups == conv.in_channels == conv.out_channels else f", {conv.groups} groups"
    if max(conv.stride) > 1:
        label += f", stride {conv.stride[0]}" if conv.stride[0] == conv.stride[1] else f", stride {conv.stride}"
    return label


def _describe(module: nn.Module) -> tuple[str, str]:
    """(kind, label) of a leaf module."""
    if isinstance(module, nn.Conv2d):
        return "conv", _conv_label(module)
    if isinstance(module, nn.Linear):
        return "linear", f"Linear {module.in_features} \u2192 {module.out_features}"
    if isinstance(module, nn.BatchNorm2d):
        return "norm", "BatchNorm"
    if isinstance(module, _NORMS) or type(module).__name__.startswith("LayerNorm"):
        return "norm", type(module).__name__
    if isinstance(module, _ACTIVATIONS):
        return "act", type(module).__name__
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _pair(module.kernel_size), _pair(module.stride)
        return "pool", f"{k[0]}x{k[1]} {'max' if isinstance(module, nn.MaxPool2d) else 'avg'} pool, stride {s[0]}"
    if isinstance(module, nn.Identity):
        return "identity", "identity"
    return "other", type(module).__name__


def _on_shortcut(name: str) -> bool:
    return name.split(".")[0] in SHORTCUT_NAMES


def trace_block(block: nn.Module, input_shape: Sequence[int]) -> BlockTrace:
    """Run ``block`` once on a meta-device input of ``(1, *input_shape)`` and record its layers in order.

    The block keeps its weights and BatchNorm statistics: it runs with meta stand-ins for every
    parameter and buffer. Layers named ``shortcut``/``downsample`` (and what is inside them) form the
    shortcut; main-path layers that run after the shortcut (or, with no shortcut module, the
    activations after the last normalisation) come after the sum.

    input_shape: (C, H, W) without the batch dimension.
    """
    if not isinstance(block, nn.Module):
        raise TypeError(f"block must be an nn.Module, got {type(block).__name__}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape):
        raise ValueError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, m, tuple(out.shape[1:]))))
        for name, module in block.named_modules() if name and not list(module.children())
    ]
    stand_ins = {name: torch.empty_like(t, device="meta")
                 for name, t in [*block.named_parameters(), *block.named_buffers()]}
    dtype = next((p.dtype for p in block.parameters() if p.is_floating_point()), torch.get_default_dtype())
    try:
        with torch.no_grad():
            output = functional_call(block, stand_ins, (torch.empty(1, *input_shape, dtype=dtype, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    records = [LayerCall(name, *_describe(module), shape) for name, module, shape in calls]
    shortcut_at = [i for i, call in enumerate(records) if _on_shortcut(call.name)]
    main = [(i, call) for i, call in enumerate(records) if not _on_shortcut(call.name)]
    if shortcut_at:  # the sum needs the shortcut's result: what runs after it follows the sum
        split = sum(1 for i, _ in main if i < shortcut_at[-1])
    else:
        split = len(main)
        while split and main[split - 1][1].kind == "act":
            split -= 1
        if not any(call.kind == "norm" for _, call in main[:split]):
            split = len(main)
    return BlockTrace(
        input_shape=input_shape,
        main=tuple(call for _, call in main[:split]),
        shortcut=tuple(records[i] for i in shortcut_at),
        after_sum=tuple(call for _, call in main[split:]),
        output_shape=tuple(output.shape[1:]),
        parameters=sum(p.numel() for p in block.parameters()),
    )


def _output_side(size: int, layer: nn.Module, axis: int) -> int:
    """Height (axis 0) or width (axis 1) after a Conv2d or a pooling layer, by PyTorch's formula."""
    kernel, stride = _pair(layer.kernel_size)[axis], _pair(layer.stride)[axis]
    dilation = _pair(getattr(layer, "dilation", 1))[axis]
    padding = layer.padding
    if padding == "same":
        return size
    padding = 0 if padding == "valid" else _pair(padding)[axis]
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if getattr(layer, "ceil_mode", False):
        out = -(-span // stride) + 1
        return out - 1 if (out - 1) * stride >= size + padding else out  # the last window must start inside
    return span // stride + 1


def _spatial_layers(module: nn.Module) -> list[nn.Module]:
    """The main path's convolutions and poolings, in the order they were registered (the order they run)."""
    return [m for name, m in module.named_modules()
            if not _on_shortcut(name) and isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]


def _kernels(layers: Sequence[nn.Module], *, named: bool) -> str:
    """'1x1-3x3-1x1' for a block's convolutions; '7x7 conv, 3x3 max pool' (``named``) for a stem."""
    sizes = ["x".join(map(str, _pair(layer.kernel_size))) for layer in layers]
    if not named:
        return "-".join(sizes)
    kinds = ["conv" if isinstance(layer, nn.Conv2d) else "max pool" if isinstance(layer, nn.MaxPool2d) else "avg pool"
             for layer in layers]
    return ", ".join(f"{size} {kind}" for size, kind in zip(sizes, kinds))


def _resnet_parts(model: nn.Module) -> tuple[list[nn.Module], list[nn.Sequential]]:
    """(the stem's layers, the four stages) of a course or torchvision ResNet."""
    if all(hasattr(model, name) for name in ("stem", *COURSE_STAGES)):
        return [model.stem], [getattr(model, name) for name in COURSE_STAGES]
    if all(hasattr(model, name) for name in ("conv1", "maxpool", *TORCHVISION_STAGES)):
        return [model.conv1, model.maxpool], [getattr(model, name) for name in TORCHVISION_STAGES]
    raise TypeError(f"model must be a ResNet with stem, stage2..stage5 (the course's names) or conv1, maxpool, "
                    f"layer1..layer4 (torchvision's), got {type(model).__name__}")


def resnet_stage_layout(model: nn.Module, image_size: int | tuple[int, int] = 224) -> tuple[StageInfo, ...]:
    """The stem and the four stages of a ResNet, read from its layers, for an ``image_size`` input.

    Works on the course's `ResNet` (and any model with its part names) and on torchvision's ResNets,
    ResNeXts and Wide ResNets, on any device (the meta device included): only layer settings are read.
    """
    height, width = _pair(image_size)
    if min(height, width) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    stem_parts, stages = _resnet_parts(model)
    layers = [layer for part in stem_parts for layer in _spatial_layers(part)]
    stem_conv = next(layer for layer in layers if isinstance(layer, nn.Conv2d))
    size = (height, width)
    for layer in layers:
        size = (_output_side(size[0], layer, 0), _output_side(size[1], layer, 1))
    stride = math.prod(_pair(layer.stride)[0] for layer in layers)
    layout = [StageInfo("stem", "stem", 0, stem_conv.out_channels, stem_conv.out_channels, stem_conv.groups,
                        stride, size, _kernels(layers, named=True))]
    for name, stage in zip(COURSE_STAGES, stages):
        blocks = list(stage)
        convs = [[layer for layer in _spatial_layers(block) if isinstance(layer, nn.Conv2d)] for block in blocks]
        spatial = next(conv for conv in convs[0] if max(conv.kernel_size) > 1)
        stride = math.prod(conv.stride[0] for conv in convs[0])
        for block_convs in convs:
            for conv in block_convs:
                size = (_output_side(size[0], conv, 0), _output_side(size[1], conv, 1))
        kind = "bottleneck" if len(convs[0]) == 3 else "basic"
        layout.append(StageInfo(name, kind, len(blocks), convs[-1][-1].out_channels, spatial.out_channels,
                                spatial.groups, stride, size, _kernels(convs[0], named=False)))
    return tuple(layout)


# -- drawing --------------------------------------------------------------------------------------

def _shape_text(shape: Sequence[int]) -> str:
    return " \u00d7 ".join(str(n) for n in shape)


def _box(ax: Axes, x: float, y: float, text: str, color, gid: str, width: float = _BOX_W, fontsize: float = 9.0):
    patch = FancyBboxPatch((x - width / 2, y - _BOX_H / 2), width, _BOX_H, boxstyle="round,pad=0.02,rounding_size=0.1",
                           facecolor=_light(color), edgecolor=color, linewidth=1.4, zorder=2)
    patch.set_gid(gid)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, linespacing=1.2, zorder=3)


def _light(color, strength: float = 0.18) -> tuple[float, float, float]:
    """``color`` mixed into white: an opaque pale fill that hides the lines behind a box."""
    return tuple(1.0 - strength * (1.0 - c) for c in color[:3])  # type: ignore[return-value]


def _arrow(ax: Axes, start, end, color="black", label: str | None = None) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, linewidth=1.1, color=color,
                                 shrinkA=0, shrinkB=0))
    if label:
        ax.text(start[0] + 0.08, (start[1] + end[1]) / 2, label, ha="left", va="center", fontsize=7.5, color="0.35")


def _groups(calls: Sequence[LayerCall]) -> list[list[LayerCall]]:
    """Layers grouped as drawn: a convolution (or Linear) with the norms and activations that follow it."""
    groups: list[list[LayerCall]] = []
    for call in calls:
        if call.kind in ("conv", "linear", "pool") or not groups:
            groups.append([call])
        else:
            groups[-1].append(call)
    return groups


def _group_text(group: Sequence[LayerCall]) -> str:
    head, rest = group[0].label, " \u00b7 ".join(call.label for call in group[1:])
    return f"{head}\n{rest}" if rest else head


def draw_block(block: nn.Module | BlockTrace, input_shape: Sequence[int] | None = None, ax: Axes | None = None, *,
               title: str | None = None) -> Axes:
    """A residual block, top to bottom: its main path, the shortcut beside it, the sum, the output.

    ``block`` is a module (traced with `trace_block` on ``input_shape``, (C, H, W)) or a `BlockTrace`.
    Each box is one convolution with the norm and activation that follow it; the shape after it is
    written on the arrow. The shortcut is a plain line ("identity") or a box with its projection.
    """
    trace = block if isinstance(block, BlockTrace) else trace_block(block, input_shape if input_shape else ())
    groups = _groups(trace.main)
    rows = len(groups) + 3 + len(trace.after_sum)  # input, groups, sum, after-sum layers, output
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 0.8 * rows + 0.8))
    y = 0.0
    ax.text(0, y, f"input\n{_shape_text(trace.input_shape)}", ha="center", va="center", fontsize=9, fontweight="bold")
    shape = trace.input_shape
    for index, group in enumerate(groups):
        _arrow(ax, (0, y - 0.3 if index == 0 else y - _BOX_H / 2), (0, y - _ROW + _BOX_H / 2),
               label=_shape_text(shape) if index else None)
        y -= _ROW
        _box(ax, 0, y, _group_text(group), _MAIN_COLOR, gid=f"main:{index}")
        shape = group[-1].out_shape
    sum_y = y - _ROW
    _arrow(ax, (0, y - _BOX_H / 2), (0, sum_y + 0.18), label=_shape_text(shape))
    node = Circle((0, sum_y), 0.18, facecolor="white", edgecolor=_SUM_COLOR, linewidth=1.6)
    node.set_gid("sum")
    ax.add_patch(node)
    ax.text(0, sum_y, "+", ha="center", va="center", fontsize=13, color=_SUM_COLOR, fontweight="bold")
    # the shortcut: right from the input, down its own column, left into the sum
    ax.plot([0.75, _SHORTCUT_X, _SHORTCUT_X], [0, 0, sum_y], color=_SHORTCUT_COLOR, linewidth=1.4)
    _arrow(ax, (_SHORTCUT_X, sum_y), (0.18, sum_y), color=_SHORTCUT_COLOR)
    middle = (0 + sum_y) / 2
    if trace.projection:
        _box(ax, _SHORTCUT_X, middle, "shortcut\n" + "\n".join(c.label for c in trace.shortcut), _SHORTCUT_COLOR,
             gid="shortcut", width=2.0, fontsize=8)
    else:
        ax.text(_SHORTCUT_X + 0.08, middle, "shortcut:\nidentity", ha="left", va="center", fontsize=8,
                color=_SHORTCUT_COLOR)
    y = sum_y
    for index, call in enumerate(trace.after_sum):
        _arrow(ax, (0, y - 0.18 if index == 0 else y - _BOX_H / 2), (0, y - _ROW + _BOX_H / 2))
        y -= _ROW
        _box(ax, 0, y, call.label, _MAIN_COLOR, gid=f"after_sum:{index}", width=1.4)
    _arrow(ax, (0, y - (_BOX_H / 2 if trace.after_sum else 0.18)), (0, y - _ROW + 0.3))
    y -= _ROW
    ax.text(0, y, f"output\n{_shape_text(trace.output_shape)}", ha="center", va="center", fontsize=9,
            fontweight="bold")
    ax.set_xlim(-_BOX_W / 2 - 0.2, _SHORTCUT_X + 1.1)
    ax.set_ylim(y - 0.5, 0.5)
    ax.set_aspect("equal", anchor="N")  # round sum node; blocks drawn side by side share one scale
    ax.set_axis_off()
    heading = title if title is not None else type(block).__name__
    ax.set_title(f"{heading}\n{trace.parameters:,} parameters", fontsize=10)
    return ax


def _stage_text(stage: StageInfo) -> str:
    size = f"{stage.output_size[0]}\u00d7{stage.output_size[1]}"
    if stage.block == "stem":
        return f"{stage.layers}\n{stage.channels} channels\nstride {stage.stride} \u2192 {size}"
    inner = ""
    if stage.inner_channels != stage.channels or stage.groups > 1:  # say what the 3x3 conv works on
        inner = f" (3x3 on {stage.inner_channels}" + (f", {stage.groups} groups)" if stage.groups > 1 else ")")
    return f"{stage.blocks} \u00d7 {stage.block}\n{stage.channels} channels{inner}\nstride {stage.stride} \u2192 {size}"


def draw_stage_layouts(layouts: Mapping[str, Sequence[StageInfo]], ax: Axes | None = None, *,
                       title: str | None = None) -> Axes:
    """Networks as rows of stages: one glyph per block, with channels, stride and output size.

    ``layouts`` maps a network's name to its stages (`resnet_stage_layout`), e.g.
    ``{"ResNet18": resnet_stage_layout(resnet18()), ...}``. Each block glyph's gid is
    ``"<network>/<stage>/<index>"``; stages with more than `MAX_BLOCK_GLYPHS` blocks show that many.
    """
    if not layouts or not all(len(stages) > 0 for stages in layouts.values()):
        raise ValueError("layouts must map at least one network name to a non-empty sequence of StageInfo")
    columns = max(len(stages) for stages in layouts.values())
    cell_w, cell_h, glyph_w, glyph_gap, glyph_h = 2.5, 1.9, 0.2, 0.07, 0.5
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 2.3 * columns, 0.5 + 1.55 * len(layouts)))
    for row, (network, stages) in enumerate(layouts.items()):
        y = -row * cell_h
        ax.text(-0.25, y, network, ha="right", va="center", fontsize=11, fontweight="bold")
        for column, stage in enumerate(stages):
            x = column * cell_w
            color = _BLOCK_COLORS.get(stage.block, TAB10[4])
            shown = 1 if stage.block == "stem" else min(stage.blocks, MAX_BLOCK_GLYPHS)
            widths = (glyph_w * 3,) if stage.block == "stem" else (glyph_w,) * shown
            total = sum(widths) + glyph_gap * (shown - 1)
            left = x + (cell_w - total) / 2
            for index, w in enumerate(widths):
                glyph = FancyBboxPatch((left, y + 0.2), w, glyph_h, boxstyle="round,pad=0.0,rounding_size=0.04",
                                       facecolor=(*color, 0.35), edgecolor=color, linewidth=1.2)
                glyph.set_gid(f"{network}/{stage.name}/{index}")
                ax.add_patch(glyph)
                left += w + glyph_gap
            if stage.blocks > shown:
                ax.text(left, y + 0.2 + glyph_h / 2, "\u2026", ha="left", va="center", fontsize=10)
            ax.text(x + cell_w / 2, y + 0.1, _stage_text(stage), ha="center", va="top", fontsize=8, linespacing=1.15)
            if row == 0:
                ax.text(x + cell_w / 2, y + 0.95, stage.name, ha="center", va="bottom", fontsize=10, fontweight="bold")
    kinds = dict.fromkeys(stage.block for stages in layouts.values() for stage in stages if stage.block != "stem")
    ax.legend(handles=[Patch(facecolor=(*_BLOCK_COLORS.get(kind, TAB10[4]), 0.35), edgecolor=_BLOCK_COLORS.get(kind, TAB10[4]),
                             label=f"one {kind} block") for kind in kinds],
              loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=len(kinds), frameon=False, fontsize=9)
    ax.set_xlim(-1.6, columns * cell_w)
    ax.set_ylim(-(len(layouts) - 1) * cell_h - 1.0, 1.35)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax
