"""course_lib.viz.architecture: stage layouts and block traces read from real models, and their drawings."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: E402

from course_lib import count_params  # noqa: E402
from course_lib.models import resnet as course  # noqa: E402
from course_lib.models.convnext import ConvNeXtBlock  # noqa: E402
from course_lib.viz.architecture import (  # noqa: E402
    MAX_BLOCK_GLYPHS,
    BlockTrace,
    StageInfo,
    draw_block,
    draw_stage_layouts,
    resnet_stage_layout,
    trace_block,
)

NETWORKS = {  # name: (course builder, torchvision builder, blocks per stage, stage widths, block kind)
    "ResNet18": (course.resnet18, torchvision.models.resnet18, [2, 2, 2, 2], [64, 128, 256, 512], "basic"),
    "ResNet34": (course.resnet34, torchvision.models.resnet34, [3, 4, 6, 3], [64, 128, 256, 512], "basic"),
    "ResNet50": (course.resnet50, torchvision.models.resnet50, [3, 4, 6, 3], [256, 512, 1024, 2048], "bottleneck"),
}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def meta(build, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build(**kwargs)


def torchvision_stage_shapes(model: nn.Module, size) -> list[tuple[int, int, int]]:
    """(C, H, W) after the stem (max pool) and after layer1..layer4, from a real (meta) forward pass."""
    shapes = []
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape[1:])))
             for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")]
    height, width = (size, size) if isinstance(size, int) else size
    model(torch.empty(1, 3, height, width, device="meta"))
    for hook in hooks:
        hook.remove()
    return shapes


# -- stage layouts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETWORKS)
def test_layout_is_the_models_own_configuration(name):
    build_course, build_torchvision, blocks, widths, kind = NETWORKS[name]
    ours, theirs = meta(build_course), meta(build_torchvision)
    layout = resnet_stage_layout(ours)
    assert [stage.name for stage in layout] == ["stem", "stage2", "stage3", "stage4", "stage5"]
    # blocks counted in the modules themselves, in both implementations
    assert [s.blocks for s in layout[1:]] == [len(getattr(ours, f"stage{i}")) for i in range(2, 6)] == blocks
    assert [len(getattr(theirs, f"layer{i}")) for i in range(1, 5)] == blocks
    assert [s.channels for s in layout] == [64, *widths]
    assert [s.stride for s in layout] == [4, 1, 2, 2, 2]
    assert {s.block for s in layout[1:]} == {kind}
    inner = [w // 4 for w in widths] if kind == "bottleneck" else widths
    assert [s.inner_channels for s in layout[1:]] == inner and {s.groups for s in layout} == {1}
    assert layout[1].layers == ("1x1-3x3-1x1" if kind == "bottleneck" else "3x3-3x3")
    assert layout[0].layers == "7x7 conv, 3x3 max pool"
    assert resnet_stage_layout(theirs) == layout


@pytest.mark.parametrize("size", [224, 225, 97, 33, (160, 96)])
@pytest.mark.parametrize("name", NETWORKS)
def test_output_sizes_are_what_a_forward_pass_gives(name, size):
    build_course, build_torchvision, *_ = NETWORKS[name]
    ours = meta(build_course)
    layout = resnet_stage_layout(ours, size)
    height, width = (size, size) if isinstance(size, int) else size
    shapes = [tuple(t.shape[1:]) for t in ours.stage_outputs(torch.empty(1, 3, height, width, device="meta")).values()]
    assert [(s.channels, *s.output_size) for s in layout] == shapes
    assert shapes == torchvision_stage_shapes(meta(build_torchvision), size)


def test_the_224_numbers_of_the_lesson():
    layout = resnet_stage_layout(meta(course.resnet18))
    assert [s.output_size for s in layout] == [(56, 56), (56, 56), (28, 28), (14, 14), (7, 7)]


def test_the_rest_of_the_family():
    """What lesson 1 says about ResNet-101/152, ResNeXt and Wide ResNet, read from torchvision's models."""
    family = {name: resnet_stage_layout(meta(getattr(torchvision.models, name)))
              for name in ("resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")}
    assert [s.blocks for s in family["resnet101"][1:]] == [3, 4, 23, 3]
    assert [s.blocks for s in family["resnet152"][1:]] == [3, 8, 36, 3]
    for name in family:
        assert {s.block for s in family[name][1:]} == {"bottleneck"}
        assert [s.channels for s in family[name][1:]] == [256, 512, 1024, 2048]
    assert [(s.inner_channels, s.groups) for s in family["resnext50_32x4d"][1:]] == [(128, 32), (256, 32), (512, 32),
                                                                                      (1024, 32)]
    assert [(s.inner_channels, s.groups) for s in family["wide_resnet50_2"][1:]] == [(128, 1), (256, 1), (512, 1),
                                                                                      (1024, 1)]


def test_layout_of_a_real_model_reads_settings_only():
    model = course.resnet18(generator=torch.Generator().manual_seed(0))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert resnet_stage_layout(model) == resnet_stage_layout(meta(course.resnet18))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_layout_errors():
    with pytest.raises(TypeError, match="model must be a ResNet"):
        resnet_stage_layout(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image_size"):
        resnet_stage_layout(meta(course.resnet18), 0)


# -- block traces ----------------------------------------------------------------------------------

def test_trace_of_a_downsampling_basic_block():
    block = course.ResidualBlock(64, 128, downsample=True)
    trace = trace_block(block, (64, 56, 56))
    assert [c.label for c in trace.main] == ["3x3 conv, 64 \u2192 128, stride 2", "BatchNorm", "ReLU",
                                             "3x3 conv, 128 \u2192 128", "BatchNorm"]
    assert [c.label for c in trace.shortcut] == ["1x1 conv, 64 \u2192 128, stride 2", "BatchNorm"]
    assert [c.label for c in trace.after_sum] == ["ReLU"] and trace.projection
    assert trace.main[0].out_shape == (128, 28, 28) and trace.output_shape == (128, 28, 28)
    assert trace.parameters == count_params(block) == 230_144


def test_identity_shortcuts():
    trace = trace_block(course.ResidualBlock(64, 64), (64, 56, 56))
    assert [c.kind for c in trace.shortcut] == ["identity"] and not trace.projection
    trace = trace_block(BasicBlock(64, 64), (64, 56, 56))  # torchvision: no shortcut module at all
    assert trace.shortcut == () and not trace.projection
    assert [c.name for c in trace.main] == ["conv1", "bn1", "relu", "conv2", "bn2"]
    assert [c.name for c in trace.after_sum] == ["relu"]


@pytest.mark.parametrize("in_channels, out_channels, downsample", [(64, 256, False), (256, 256, False), (256, 512, True),
                                                                  (1024, 2048, True)])
def test_course_and_torchvision_bottlenecks_trace_alike(in_channels, out_channels, downsample):
    stride = 2 if downsample else 1
    projection = None
    if downsample or in_channels != out_channels:
        projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    with torch.device("meta"):
        ours = course.BottleneckBlock(in_channels, out_channels, downsample=downsample)
        theirs = Bottleneck(in_channels, out_channels // 4, stride=stride, downsample=projection)
    a, b = trace_block(ours, (in_channels, 14, 14)), trace_block(theirs, (in_channels, 14, 14))
    assert [c.label for c in a.main] == [c.label for c in b.main]
    assert [c.label for c in a.after_sum] == [c.label for c in b.after_sum] == ["ReLU"]
    assert a.projection == b.projection == (projection is not None)
    if projection is not None:
        assert [c.label for c in a.shortcut] == [c.label for c in b.shortcut]
    assert a.output_shape == b.output_shape == (out_channels, 7 if downsample else 14, 7 if downsample else 14)
    assert a.parameters == b.parameters


@pytest.mark.parametrize("shape", [(64, 56, 56), (64, 9, 7), (64, 1, 1)])
def test_trace_shapes_equal_a_real_forward_pass(shape):
    block = course.ResidualBlock(64, 128, downsample=True).eval()
    with torch.no_grad():
        real = block(torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)))
    assert trace_block(block, shape).output_shape == tuple(real.shape[1:])


def test_tracing_leaves_the_block_untouched():
    block = course.BottleneckBlock(64, 256).train()
    before = {key: value.clone() for key, value in block.state_dict().items()}
    trace_block(block, (64, 8, 8))
    after = block.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # BatchNorm statistics included
    assert block.training and not block._forward_hooks
    assert all(not m._forward_hooks for m in block.modules())


def test_trace_other_dtypes_and_blocks():
    trace = trace_block(course.ResidualBlock(8, 8).double(), (8, 5, 5))
    assert trace.output_shape == (8, 5, 5)
    trace = trace_block(ConvNeXtBlock(96), (96, 56, 56))  # no shortcut module: nothing is guessed after the sum
    assert [c.label for c in trace.main][:3] == ["7x7 conv, 96 \u2192 96, depthwise", "LayerNorm", "Linear 96 \u2192 384"]
    assert trace.main[2].out_shape == (56, 56, 384)  # channels last inside the block
    assert trace.after_sum == ()


def test_trace_errors():
    with pytest.raises(TypeError, match="block must be an nn.Module"):
        trace_block("block", (3, 4, 4))
    for shape in [(64, 56), (64, 0, 56), (64.0, 56, 56), (True, 5, 5)]:
        with pytest.raises(ValueError, match="input_shape"):
            trace_block(course.ResidualBlock(64, 64), shape)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 64, H, W\)"):
        trace_block(course.ResidualBlock(64, 64), (32, 8, 8))


# -- drawings --------------------------------------------------------------------------------------

TIMES = " \u00d7 "


def texts(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts) + "\n" + ax.get_title()


def gids(ax) -> list[str]:
    return [p.get_gid() for p in ax.patches if p.get_gid()]


def renders(ax) -> bool:
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png")
    return buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("block, shape", [
    (course.ResidualBlock(64, 64), (64, 56, 56)),
    (course.ResidualBlock(64, 128, downsample=True), (64, 56, 56)),
    (course.BottleneckBlock(256, 256), (256, 56, 56)),
    (Bottleneck(256, 128, stride=2, downsample=nn.Sequential(nn.Conv2d(256, 512, 1, 2), nn.BatchNorm2d(512))),
     (256, 56, 56)),
])
def test_drawn_block_shows_what_the_block_does(block, shape):
    trace = trace_block(block, shape)
    ax = draw_block(block, shape, title="a block")
    drawn = texts(ax)
    for call in (*trace.main, *trace.after_sum):
        assert call.label in drawn
    convs = [c for c in trace.main if c.kind == "conv"]
    assert sorted(g for g in gids(ax) if g.startswith("main:")) == [f"main:{i}" for i in range(len(convs))]
    assert "sum" in gids(ax)
    if trace.projection:
        assert "shortcut" in gids(ax) and all(c.label in drawn for c in trace.shortcut)
    else:
        assert "shortcut" not in gids(ax) and "identity" in drawn
    assert "input\n" + TIMES.join(map(str, shape)) in drawn
    assert "output\n" + TIMES.join(map(str, trace.output_shape)) in drawn
    assert f"{count_params(block):,} parameters" in drawn and "a block" in drawn
    assert renders(ax)


def test_draw_block_from_a_trace_on_given_axes():
    _, ax = plt.subplots()
    trace = trace_block(course.BottleneckBlock(256, 256), (256, 56, 56))
    assert draw_block(trace, ax=ax) is ax
    assert "70,400 parameters" in ax.get_title()  # the lesson's number for this block
    with pytest.raises(ValueError, match="input_shape"):
        draw_block(course.BottleneckBlock(256, 256))


def test_drawn_layouts_carry_the_layout_numbers():
    layouts = {name: resnet_stage_layout(meta(spec[0])) for name, spec in NETWORKS.items()}
    layouts["ResNet152"] = resnet_stage_layout(meta(torchvision.models.resnet152))
    ax = draw_stage_layouts(layouts, title="ResNets")
    drawn, drawn_gids = texts(ax), gids(ax)
    for network, layout in layouts.items():
        assert network in drawn
        for stage in layout[1:]:
            glyphs = [g for g in drawn_gids if g.startswith(f"{network}/{stage.name}/")]
            assert len(glyphs) == min(stage.blocks, MAX_BLOCK_GLYPHS)
            assert f"{stage.blocks} \u00d7 {stage.block}\n{stage.channels} channels" in drawn
            assert f"stride {stage.stride} \u2192 {stage.output_size[0]}\u00d7{stage.output_size[1]}" in drawn
        assert f"{network}/stem/0" in drawn_gids
    assert "\u2026" in drawn  # ResNet152's 8 and 36 blocks are drawn as MAX_BLOCK_GLYPHS and an ellipsis
    assert "3x3 on 128" in drawn and "ResNets" in drawn
    assert renders(ax)


def test_draw_layouts_errors():
    with pytest.raises(ValueError, match="layouts"):
        draw_stage_layouts({})
    with pytest.raises(ValueError, match="layouts"):
        draw_stage_layouts({"empty": ()})
    stage = StageInfo("stage2", "basic", 2, 64, 64, 1, 1, (56, 56), "3x3-3x3")
    assert draw_stage_layouts({"one stage": [stage]}) is not None


def test_block_trace_is_frozen():
    trace = trace_block(course.ResidualBlock(4, 4), (4, 4, 4))
    assert isinstance(trace, BlockTrace)
    with pytest.raises(AttributeError):
        trace.parameters = 0
