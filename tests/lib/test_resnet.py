"""course_lib.models.resnet and load_torchvision_weights, against torchvision and lesson 1's numbers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from course_lib import count_params
from course_lib.models import (
    BottleneckBlock,
    ResidualBlock,
    ResNet,
    conv_params,
    load_torchvision_weights,
    make_stem,
    resnet18,
    resnet34,
    resnet50,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BUILDERS = {
    "resnet18": (resnet18, torchvision.models.resnet18, 11_689_512),
    "resnet34": (resnet34, torchvision.models.resnet34, 21_797_672),
    "resnet50": (resnet50, torchvision.models.resnet50, 25_557_032),
}


def randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so equivalence tests bite."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
    return model


def conv_weight_count(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------- parameter counts and shapes


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameter_counts_equal_torchvision(name):
    ours, theirs, expected = BUILDERS[name]
    assert count_params(ours()) == expected
    assert count_params(theirs()) == expected
    assert count_params(ours(num_classes=10)) == count_params(theirs(num_classes=10))


STAGE_CHANNELS = {"resnet18": (64, 64, 128, 256, 512), "resnet50": (64, 256, 512, 1024, 2048)}


@pytest.mark.parametrize("name", list(STAGE_CHANNELS))
@pytest.mark.parametrize("size", [224, 200])
def test_output_and_stage_shapes(name, size):
    with torch.device("meta"):  # shapes only (real forward passes are checked against torchvision below)
        model = BUILDERS[name][0]().eval()
        images = torch.zeros(2, 3, size, size)
        stages = model.stage_outputs(images)
        logits = model(images)
    assert list(stages) == ["stem", "stage2", "stage3", "stage4", "stage5"]
    sides, side = [], size
    for _ in range(5):  # each halving rounds up (stride 2 with "same" padding)
        side = (side + 1) // 2
        sides.append(side)
    # the stem halves twice; stage 2 keeps its resolution; stages 3-5 halve once each
    stage_sides = [sides[1], sides[1], sides[2], sides[3], sides[4]]
    expected = [(2, c, s, s) for c, s in zip(STAGE_CHANNELS[name], stage_sides)]
    assert [tuple(t.shape) for t in stages.values()] == expected
    assert tuple(logits.shape) == (2, 1000)
    assert tuple(model.forward_features(images).shape) == expected[-1]


def test_forward_features_is_the_last_stage():
    model = resnet18().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        torch.testing.assert_close(features, model.stage_outputs(images)["stage5"])
        torch.testing.assert_close(model(images), model.classifier(features))


def test_224_gives_7x7_because_of_five_halvings():
    model = resnet18().eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, 224, 224))
    assert tuple(features.shape) == (1, 512, 224 // 2**5, 224 // 2**5) == (1, 512, 7, 7)


def test_classifier_accepts_any_resolution():
    model = resnet18(num_classes=7).eval()
    with torch.no_grad():
        for size in (64, 97, 320):
            assert tuple(model(torch.randn(1, 3, size, size)).shape) == (1, 7)


# ---------------------------------------------------------------- blocks


def test_residual_block_shapes_and_shortcut():
    x = torch.randn(1, 64, 56, 56)
    same = ResidualBlock(64, 64)
    down = ResidualBlock(64, 128, downsample=True)
    assert isinstance(same.shortcut, nn.Identity)
    assert tuple(same(x).shape) == (1, 64, 56, 56)
    assert tuple(down(x).shape) == (1, 128, 28, 28)
    assert down.conv1.stride == (2, 2) and down.conv2.stride == (1, 1)
    assert down.shortcut[0].kernel_size == (1, 1) and down.shortcut[0].stride == (2, 2)
    assert all(m.bias is None for m in down.modules() if isinstance(m, nn.Conv2d))
    # a change of channels alone still needs a projection
    assert tuple(ResidualBlock(64, 32)(x).shape) == (1, 32, 56, 56)


def test_blocks_do_not_print(capsys):
    ResidualBlock(64, 128, downsample=True)(torch.randn(1, 64, 8, 8))
    BottleneckBlock(64, 256)(torch.randn(1, 64, 8, 8))
    assert capsys.readouterr().out == ""


def test_bottleneck_shapes_stride_on_3x3():
    x = torch.randn(1, 64, 56, 56)
    first = BottleneckBlock(64, 256)  # stage 2's first block: more channels, same resolution
    assert tuple(first(x).shape) == (1, 256, 56, 56)
    assert first.shortcut[0].stride == (1, 1) and first.shortcut[0].out_channels == 256
    down = BottleneckBlock(256, 512, downsample=True)
    assert tuple(down(torch.randn(1, 256, 56, 56)).shape) == (1, 512, 28, 28)
    assert down.conv1.stride == (1, 1) and down.conv2.stride == (2, 2)
    assert down.conv2.in_channels == down.conv2.out_channels == 128
    assert isinstance(BottleneckBlock(256, 256).shortcut, nn.Identity)


def _torchvision_block_into_ours(ours: nn.Module, theirs: nn.Module) -> None:
    state = {k.replace("downsample.", "shortcut."): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind, in_channels, out_channels, downsample",
    [
        ("basic", 64, 64, False),
        ("basic", 64, 128, True),
        ("bottleneck", 64, 256, False),
        ("bottleneck", 256, 512, True),
        ("bottleneck", 512, 512, False),
    ],
)
def test_blocks_equal_torchvision_blocks(device, kind, in_channels, out_channels, downsample):
    torch.manual_seed(0)
    stride = 2 if downsample else 1
    projection = None
    if downsample or in_channels != out_channels:
        projection = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    if kind == "basic":
        ours = ResidualBlock(in_channels, out_channels, downsample)
        theirs = BasicBlock(in_channels, out_channels, stride, projection)
    else:
        ours = BottleneckBlock(in_channels, out_channels, downsample)
        theirs = Bottleneck(in_channels, out_channels // 4, stride, projection)
    randomise_batchnorm(theirs, seed=1)
    _torchvision_block_into_ours(ours, theirs)
    assert count_params(ours) == count_params(theirs)
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    x = torch.randn(2, in_channels, 15, 15, device=device)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=1e-5)
    assert out.device == x.device


# ---------------------------------------------------------------- stems, determinism


def test_every_model_gets_its_own_stem():
    models = [resnet18(), resnet18(), resnet34(), resnet50()]
    stems = [m.stem for m in models]
    assert len({id(s) for s in stems}) == len(stems)
    pointers = [m.stem[0].weight.data_ptr() for m in models]
    assert len(set(pointers)) == len(pointers)
    assert make_stem() is not make_stem()


def test_generator_makes_weights_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a = resnet18(generator=torch.Generator().manual_seed(3))
    b = resnet18(generator=torch.Generator().manual_seed(3))
    c = resnet18(generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)
    assert not torch.equal(a.classifier[2].weight, c.classifier[2].weight)


# ---------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize("name", list(BUILDERS))
def test_load_torchvision_weights_gives_same_logits(name):
    ours_fn, theirs_fn, _ = BUILDERS[name]
    torch.manual_seed(11)
    theirs = randomise_batchnorm(theirs_fn(), seed=12).eval()
    ours = ours_fn(generator=torch.Generator().manual_seed(13))
    assert load_torchvision_weights(ours, theirs.state_dict()) is ours
    ours.eval()
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        difference = (ours(images) - theirs(images)).abs().max().item()
    assert difference < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_load_torchvision_weights_onto_model_device(device):
    ours = resnet18().to(device)
    theirs = torchvision.models.resnet18()
    load_torchvision_weights(ours, theirs.state_dict())
    assert ours.stem[0].weight.device.type == device
    assert torch.equal(ours.stem[0].weight.cpu(), theirs.conv1.weight)
    assert torch.equal(ours.stage5[0].shortcut[1].running_var.cpu(), theirs.layer4[0].downsample[1].running_var)
    assert torch.equal(ours.classifier[2].bias.cpu(), theirs.fc.bias)


def test_mismatched_architecture_is_a_clear_error():
    with pytest.raises(ValueError) as info:
        load_torchvision_weights(resnet50(), torchvision.models.resnet18().state_dict())
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit ResNet" in message
    assert "missing (stage2.0.conv3.weight" in message
    assert "wrong shape (stage2.0.conv1.weight: got (64, 64, 3, 3), expected (64, 64, 1, 1)" in message


def test_wrong_classes_and_unexpected_keys_are_named():
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 unexpected \(extra.weight\)") as info:
        load_torchvision_weights(resnet18(), state)
    assert "classifier.2.weight: got (10, 512), expected (1000, 512)" in str(info.value)


def test_load_rejects_models_without_conversion():
    with pytest.raises(TypeError, match="convert_torchvision_state_dict"):
        load_torchvision_weights(nn.Linear(2, 2), {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
    with pytest.raises(TypeError, match="state_dict"):
        load_torchvision_weights(resnet18(), [1, 2])


# ---------------------------------------------------------------- parameter arithmetic of the lesson


def test_conv_params_reproduces_the_lesson_arithmetic():
    # ResNet34, stage 5, counted with a bias per filter
    assert conv_params(3, 256, 512) == 1_180_160
    assert conv_params(3, 512, 512) == 2_359_808
    assert conv_params(1, 256, 512) == 131_584
    first = conv_params(3, 256, 512) + conv_params(3, 512, 512) + conv_params(1, 256, 512)
    other = 2 * conv_params(3, 512, 512)
    assert (first, other, first + 2 * other) == (3_671_552, 4_719_616, 13_110_784)
    # ResNet50, stage 5
    first = conv_params(1, 1024, 512) + conv_params(3, 512, 512) + conv_params(1, 512, 2048) + conv_params(1, 1024, 2048)
    other = conv_params(1, 2048, 512) + conv_params(3, 512, 512) + conv_params(1, 512, 2048)
    assert (conv_params(1, 1024, 512), conv_params(1, 512, 2048), conv_params(1, 1024, 2048)) == (
        524_800, 1_050_624, 2_099_200)
    assert (first, other, first + 2 * other) == (6_034_432, 4_459_520, 14_953_472)


def test_bias_free_counts_are_the_real_models():
    assert conv_params(3, 256, 512, bias=False) == 1_179_648
    stage5_34 = conv_params(3, 256, 512, False) + conv_params(1, 256, 512, False) + 5 * conv_params(3, 512, 512, False)
    assert stage5_34 == conv_weight_count(resnet34().stage5) == 13_107_200
    assert conv_weight_count(resnet50().stage5) == 14_942_208
    # the counterfactual: ResNet34-style blocks widened to 2048 channels in stage 5
    with torch.device("meta"):
        wide = nn.Sequential(ResidualBlock(1024, 2048, True), ResidualBlock(2048, 2048), ResidualBlock(2048, 2048))
    assert conv_weight_count(wide) == 209_715_200


@pytest.mark.parametrize(
    "kernel_size, in_channels, out_channels, bias, groups",
    [(3, 3, 8, True, 1), ((1, 5), 4, 6, False, 2), (7, 96, 96, True, 96), (4, 3, 96, True, 1)],
)
def test_conv_params_matches_nn_conv2d(kernel_size, in_channels, out_channels, bias, groups):
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias, groups=groups)
    assert conv_params(kernel_size, in_channels, out_channels, bias, groups=groups) == count_params(conv)


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((0, 3, 8), {}, ValueError),
        (("3", 3, 8), {}, ValueError),
        ((3, -1, 8), {}, ValueError),
        ((3, 3, 8.0), {}, TypeError),
        ((3, 6, 8), {"groups": 4}, ValueError),
        ((3, 3, 8, "yes"), {}, TypeError),
    ],
)
def test_conv_params_bad_input(args, kwargs, error):
    with pytest.raises(error):
        conv_params(*args, **kwargs)


# ---------------------------------------------------------------- bad input


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="in_channels"):
        ResidualBlock(64.0, 64)
    with pytest.raises(ValueError, match="out_channels"):
        ResidualBlock(64, 0)
    with pytest.raises(TypeError, match="downsample"):
        ResidualBlock(64, 64, downsample="yes")
    with pytest.raises(ValueError, match="multiple of 4"):
        BottleneckBlock(64, 90)
    with pytest.raises(TypeError, match="block"):
        ResNet(nn.Conv2d, (2, 2, 2, 2), (64, 128, 256, 512))
    with pytest.raises(ValueError, match="4 entries"):
        ResNet(ResidualBlock, (2, 2, 2), (64, 128, 256))


def test_bad_forward_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 64, H, W\), got \(1, 32, 8, 8\)"):
        ResidualBlock(64, 64)(torch.zeros(1, 32, 8, 8))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, H, W\), got \(3, 64, 64\)"):
        resnet18()(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        resnet18()([[0.0]])
