"""course_lib.models.convnext: parameter counts, shapes, LayerNorm2d, the block, stochastic depth,
torchvision equivalence and input errors."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.convnext import CNBlock
from torchvision.models.convnext import LayerNorm2d as TorchvisionLayerNorm2d

from course_lib import count_params
from course_lib.models import load_torchvision_weights
from course_lib.models.convnext import (
    ConvNeXt,
    ConvNeXtBlock,
    LayerNorm2d,
    StochasticDepth,
    convnext_tiny,
    drop_path,
)

TORCHVISION_CONVNEXT_TINY_PARAMS = 28_589_128


def _small_convnext(**kwargs) -> ConvNeXt:
    return ConvNeXt(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), num_classes=10, **kwargs)


def _randomise_(module: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter random values of order 1, so that no branch hides behind a tiny layer scale."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator)
            param.copy_(0.1 * values if name.endswith("weight") and param.dim() > 1 else 1 + 0.3 * values)


# --- parameter counts and shapes -------------------------------------------------------------

def test_convnext_tiny_has_torchvision_parameter_count():
    ours = convnext_tiny()
    assert count_params(ours) == TORCHVISION_CONVNEXT_TINY_PARAMS
    assert count_params(torchvision.models.convnext_tiny()) == TORCHVISION_CONVNEXT_TINY_PARAMS


def test_convnext_tiny_structure():
    model = convnext_tiny()
    assert model.depths == (3, 3, 9, 3) and model.dims == (96, 192, 384, 768)
    assert [len(stage) for stage in model.stages] == [3, 3, 9, 3]
    stem_conv = model.stem.conv
    assert (stem_conv.kernel_size, stem_conv.stride, stem_conv.out_channels) == ((4, 4), (4, 4), 96)
    assert isinstance(model.stem.norm, LayerNorm2d)
    assert len(model.downsamples) == 3
    for down, (dim_in, dim_out) in zip(model.downsamples, [(96, 192), (192, 384), (384, 768)]):
        assert isinstance(down.norm, LayerNorm2d) and down.norm.channels == dim_in
        assert (down.conv.kernel_size, down.conv.stride) == ((2, 2), (2, 2))
        assert (down.conv.in_channels, down.conv.out_channels) == (dim_in, dim_out)
    assert isinstance(model.head.norm, nn.LayerNorm) and model.head.fc.out_features == 1000


def test_generator_makes_initialisation_reproducible_without_global_side_effects():
    state = torch.get_rng_state()
    a = _small_convnext(generator=torch.Generator().manual_seed(5))
    b = _small_convnext(generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    weight = a.stages[2][0].pwconv1.weight
    assert 0.018 < weight.std().item() < 0.022  # torchvision's initialisation: std 0.02
    assert torch.equal(a.stages[0][0].pwconv1.bias, torch.zeros(32))


def test_stochastic_depth_rates_grow_linearly_like_torchvision():
    ours = convnext_tiny(drop_path_rate=0.1)
    tv = torchvision.models.convnext_tiny(stochastic_depth_prob=0.1)
    our_rates = [block.drop_path.p for stage in ours.stages for block in stage]
    tv_rates = [m.p for m in tv.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert len(our_rates) == 18
    assert our_rates[0] == 0.0 and our_rates[-1] == pytest.approx(0.1)
    assert our_rates == pytest.approx(tv_rates)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (70, 45)])
def test_output_and_feature_shapes(size):
    model = _small_convnext().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    # stem /4, then three downsamplings /2 (floor at each step)
    h, w = size[0] // 4 // 2 // 2 // 2, size[1] // 4 // 2 // 2 // 2
    assert features.shape == (2, 32, h, w)
    assert logits.shape == (2, 10)


def test_convnext_tiny_forward_batch_of_one():
    model = convnext_tiny().eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


# --- LayerNorm2d ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 96, 4, 4), (3, 1, 2, 2)])
def test_layernorm2d_matches_layer_norm_on_channels_last(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3 + 1
    norm = LayerNorm2d(shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=g))
        norm.bias.copy_(torch.randn(shape[1], generator=g))
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (shape[1],), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)

    reference = TorchvisionLayerNorm2d(shape[1], eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), reference(x))


def test_layernorm2d_normalises_each_pixel_over_channels():
    x = torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(0)) * 4 - 2
    y = LayerNorm2d(16)(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 5, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(2, 5, 5), atol=1e-4, rtol=0)
    assert count_params(LayerNorm2d(16)) == 32


# --- the block --------------------------------------------------------------------------------

def test_block_layers_in_paper_order():
    block = ConvNeXtBlock(96)
    names = [name for name, _ in block.named_children()]
    assert names == ["dwconv", "norm", "pwconv1", "act", "pwconv2", "drop_path"]
    assert block.dwconv.groups == 96 and block.dwconv.kernel_size == (7, 7) and block.dwconv.padding == (3, 3)
    assert (block.pwconv1.in_features, block.pwconv1.out_features) == (96, 384)
    assert (block.pwconv2.in_features, block.pwconv2.out_features) == (384, 96)
    assert isinstance(block.act, nn.GELU) and isinstance(block.norm, nn.LayerNorm)
    assert block.layer_scale.shape == (96,) and torch.all(block.layer_scale == 1e-6)


@pytest.mark.parametrize("channels", [8, 96, 768])
def test_block_parameter_count(channels):
    # depthwise (49 + 1) C, LayerNorm 2C, Linear 4C^2 + 4C, Linear 4C^2 + C, layer scale C
    assert count_params(ConvNeXtBlock(channels)) == 8 * channels**2 + 58 * channels
    assert count_params(ConvNeXtBlock(channels, layer_scale=None)) == 8 * channels**2 + 57 * channels


def test_block_starts_close_to_identity_and_keeps_shape():
    block = ConvNeXtBlock(16).eval()
    x = torch.randn(2, 16, 9, 11)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def test_block_matches_torchvision_cnblock():
    g = torch.Generator().manual_seed(3)
    ours = ConvNeXtBlock(24).eval()
    _randomise_(ours, g)
    theirs = CNBlock(24, layer_scale=1e-6, stochastic_depth_prob=0.0).eval()
    mapping = {"dwconv": "block.0", "norm": "block.2", "pwconv1": "block.3", "pwconv2": "block.5"}
    state = {}
    for key, value in ours.state_dict().items():
        layer, _, leaf = key.partition(".")
        state[f"{mapping[layer]}.{leaf}" if layer in mapping else key] = value
    state["layer_scale"] = state["layer_scale"].reshape(24, 1, 1)
    theirs.load_state_dict(state)
    x = torch.randn(3, 24, 10, 10, generator=g)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


# --- stochastic depth -------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_drop_path_statistics(p):
    n = 20_000
    x = torch.ones(n, 3, 2, 2)
    y = drop_path(x, p, training=True, generator=torch.Generator().manual_seed(0))
    per_sample = y.reshape(n, -1)
    dropped = (per_sample == 0).all(dim=1)
    kept = ~dropped
    # every sample is either dropped whole or kept whole and rescaled by 1 / (1 - p)
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / (1 - p)))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    # the rescaling keeps the expected value: mean of y is 1 up to sampling noise
    assert abs(y.mean().item() - 1.0) < 5 * sigma / (1 - p)


def test_drop_path_identity_and_extremes():
    x = torch.randn(8, 4, 3, 3)
    g = torch.Generator().manual_seed(1)
    assert drop_path(x, 0.5, training=False, generator=g) is x
    assert drop_path(x, 0.0, training=True, generator=g) is x
    torch.testing.assert_close(drop_path(x, 1.0, training=True, generator=g), torch.zeros_like(x))


def test_drop_path_is_reproducible_and_leaves_global_rng_alone():
    x = torch.randn(64, 5)
    state = torch.get_rng_state()
    a = drop_path(x, 0.5, generator=torch.Generator().manual_seed(7))
    b = drop_path(x, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b)


def test_stochastic_depth_module_train_and_eval():
    module = StochasticDepth(0.5)
    x = torch.ones(1000, 3)
    module.eval()
    assert module(x) is x
    module.train()
    y = module(x, generator=torch.Generator().manual_seed(0))
    assert set(y[:, 0].unique().tolist()) == {0.0, 2.0}
    assert torch.equal(y[:, 0:1].expand_as(y), y)


def test_block_with_branch_always_dropped_is_identity_in_training():
    block = ConvNeXtBlock(8, layer_scale=1.0, drop_path=1.0).train()
    x = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    block.eval()  # evaluation keeps every branch
    assert not torch.allclose(block(x), x)


def test_training_step_runs_with_stochastic_depth():
    model = _small_convnext(drop_path_rate=0.5).train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- torchvision weights ----------------------------------------------------------------------

def test_torchvision_convnext_tiny_weights_give_same_logits():
    g = torch.Generator().manual_seed(0)
    theirs = torchvision.models.convnext_tiny().eval()
    _randomise_(theirs, g)
    ours = convnext_tiny().eval()
    assert load_torchvision_weights(ours, theirs.state_dict()) is ours
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1  # the comparison is not between two near-zero outputs
    assert (got - expected).abs().max().item() < 1e-4


def test_weights_of_another_architecture_are_refused():
    small = _small_convnext()
    with pytest.raises(ValueError, match="wrong shape"):
        load_torchvision_weights(small, torchvision.models.convnext_tiny().state_dict())
    with pytest.raises(ValueError, match="not part of a torchvision ConvNeXt"):
        load_torchvision_weights(small, torchvision.models.resnet18().state_dict())


def test_convert_rejects_unknown_keys():
    model = _small_convnext()
    with pytest.raises(ValueError, match="features.0.5.weight"):
        model.convert_torchvision_state_dict({"features.0.5.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="fc.weight"):
        model.convert_torchvision_state_dict({"fc.weight": torch.zeros(1)})


# --- bad input --------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    block = ConvNeXtBlock(8)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\).*\(2, 4, 5, 5\)"):
        block(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        LayerNorm2d(8)(torch.randn(8, 5, 5))
    with pytest.raises(TypeError, match="floating-point"):
        LayerNorm2d(8)(torch.ones(1, 8, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 32x32"):
        _small_convnext()(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _small_convnext()(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="equal length"):
        ConvNeXt(depths=(1, 1), dims=(8, 16, 32))
    with pytest.raises(ValueError, match="p must be a probability"):
        drop_path(torch.ones(2, 2), 1.5)
    with pytest.raises(ValueError, match="p must be a probability"):
        StochasticDepth(-0.1)
    with pytest.raises(TypeError, match="channels must be an int"):
        ConvNeXtBlock(8.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        drop_path([1.0, 2.0], 0.5)
