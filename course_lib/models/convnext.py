"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), written to be read.

A ConvNeXt is a ResNet modernised step by step towards a vision Transformer's design:

    stem        conv 4x4 stride 4 ("patchify") + LayerNorm                      (B, 3, H, W) -> (B, C1, H/4, W/4)
    stage i     depth_i ConvNeXt blocks at constant shape                       (B, Ci, h, w) -> (B, Ci, h, w)
    downsample  LayerNorm + conv 2x2 stride 2, between stages                   (B, Ci, h, w) -> (B, Ci+1, h/2, w/2)
    head        global average pool + LayerNorm + Linear                        (B, C4, h, w) -> (B, num_classes)

and a ConvNeXt block is

    x -> depthwise conv 7x7 -> LayerNorm -> Linear C->4C -> GELU -> Linear 4C->C -> * layer scale
      -> stochastic depth -> + x

The Linear layers act on every pixel separately (they are 1x1 convolutions on a channels-last tensor).
Module names follow the paper's official code (``dwconv``, ``pwconv1``...), and
`ConvNeXt.convert_torchvision_state_dict` maps torchvision's weights onto them.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "LayerNorm2d",
    "drop_path",
    "StochasticDepth",
    "ConvNeXtBlock",
    "ConvNeXt",
    "convnext_tiny",
    "CONVNEXT_TINY_DEPTHS",
    "CONVNEXT_TINY_DIMS",
]

#: ConvNeXt-T's blocks per stage (Swin-T's 1:1:3:1 compute ratio) and channels per stage.
CONVNEXT_TINY_DEPTHS = (3, 3, 9, 3)
CONVNEXT_TINY_DIMS = (96, 192, 384, 768)
#: torchvision trains ConvNeXt-T with stochastic depth 0.1 (the paper's setting for T).
CONVNEXT_TINY_DROP_PATH_RATE = 0.1

LAYER_NORM_EPS = 1e-6
DEPTHWISE_KERNEL_SIZE = 7
#: Hidden width of the block's MLP relative to its input (the "inverted bottleneck").
MLP_EXPANSION = 4
STEM_PATCH_SIZE = 4
DOWNSAMPLE_FACTOR = 2
INIT_STD = 0.02


def _check_feature_map(x: Tensor, channels: int, name: str = "x") -> None:
    """Raise a one-line error unless ``x`` is a (B, channels, H, W) floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a channels-first feature map.

    Every pixel's C values are normalised to mean 0 and variance 1 (then scaled by ``weight`` and
    shifted by ``bias``, one per channel), exactly like ``nn.LayerNorm(C)`` applied to the
    channels-last tensor ``x.permute(0, 2, 3, 1)``. Unlike BatchNorm it does not look at other
    images of the batch or at other pixels, so it behaves the same in training and evaluation.

    x: (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.channels = _check_positive_int(channels, "channels")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): layer_norm normalises the last dimension
        x = F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


def drop_path(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic depth: drop the whole residual branch of each sample with probability ``p``.

    In training, every sample of the batch is kept with probability ``1 - p`` and then divided by
    ``1 - p``, so that the expected output equals ``x``; a dropped sample becomes all zeros (its
    block then passes only the shortcut). In evaluation (``training=False``) or with ``p == 0`` it is
    the identity, and ``p == 1`` drops every sample.

    x: (B, ...) -> (B, ...), on x's device. ``generator`` (on any device) makes the draw reproducible.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    if not training or p == 0.0:
        return x
    keep_prob = 1.0 - p
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, broadcast over the rest
    sample_device = generator.device if generator is not None else x.device
    uniform = torch.rand(mask_shape, generator=generator, device=sample_device).to(x.device)
    keep = (uniform < keep_prob).to(x.dtype)
    if keep_prob > 0.0:
        keep = keep / keep_prob
    return x * keep


class StochasticDepth(nn.Module):
    """`drop_path` as a module: per-sample branch dropping in training, the identity in evaluation.

    x: (B, ...) -> (B, ...)
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return drop_path(x, self.p, self.training, generator=generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: a spatial depthwise conv, then a per-pixel MLP, on a residual branch.

    x: (B, C, H, W) -> (B, C, H, W)

    ``layer_scale`` is the initial value of a learned per-channel factor on the branch (1e-6: the
    block starts out as nearly the identity); ``None`` or 0 leaves it out. ``drop_path`` is the
    probability that stochastic depth drops the branch of a sample in training.
    """

    def __init__(self, channels: int, layer_scale: float | None = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        channels = _check_positive_int(channels, "channels")
        self.channels = channels
        hidden = MLP_EXPANSION * channels
        # groups=channels: each filter sees one channel only (49 weights + 1 bias instead of 49 * C + 1).
        self.dwconv = nn.Conv2d(channels, channels, DEPTHWISE_KERNEL_SIZE, padding=DEPTHWISE_KERNEL_SIZE // 2,
                                groups=channels)
        self.norm = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, channels)
        if layer_scale is not None and layer_scale > 0:
            self.layer_scale = nn.Parameter(torch.full((channels,), float(layer_scale)))
        else:
            self.register_parameter("layer_scale", None)
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels)
        branch = self.dwconv(x)
        branch = branch.permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm and Linear act on the last dim
        branch = self.pwconv2(self.act(self.pwconv1(self.norm(branch))))
        if self.layer_scale is not None:
            branch = branch * self.layer_scale
        branch = branch.permute(0, 3, 1, 2)  # back to (B, C, H, W)
        return x + self.drop_path(branch)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ConvNeXt(nn.Module):
    """A ConvNeXt classifier: patchify stem, stages of `ConvNeXtBlock`, downsampling layers, head.

    depths: blocks per stage, e.g. (3, 3, 9, 3); dims: channels per stage, e.g. (96, 192, 384, 768).
    ``drop_path_rate`` is the stochastic depth of the last block; it grows linearly from 0 over the
    blocks (deeper blocks are dropped more often). With a ``generator`` the initial weights are drawn
    from it (torchvision's truncated normal, std 0.02) and the global random state is left untouched.

    x: (B, 3, H, W) with H, W >= 32 -> logits (B, num_classes)
    """

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        layer_scale: float | None = 1e-6,
        in_channels: int = 3,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        depths = tuple(_check_positive_int(d, "depths[i]") for d in depths)
        dims = tuple(_check_positive_int(d, "dims[i]") for d in dims)
        if len(depths) == 0 or len(depths) != len(dims):
            raise ValueError(f"depths and dims must be non-empty and of equal length, got {depths} and {dims}")
        if isinstance(drop_path_rate, bool) or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.depths, self.dims = depths, dims
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        num_classes = _check_positive_int(num_classes, "num_classes")

        # With an explicit generator, building the layers must not consume the global random state.
        rng_guard = torch.random.fork_rng(devices=[]) if generator is not None else nullcontext()
        with rng_guard:
            self._build(depths, dims, num_classes, drop_path_rate, layer_scale, in_channels)
        self.reset_parameters(generator)

    def _build(self, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int, drop_path_rate: float,
               layer_scale: float | None, in_channels: int) -> None:
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, dims[0], STEM_PATCH_SIZE, stride=STEM_PATCH_SIZE),
            norm=LayerNorm2d(dims[0]),
        ))
        # Linear schedule 0 -> drop_path_rate over all blocks, as in the paper and torchvision.
        total_blocks = sum(depths)
        rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        self.stages = nn.ModuleList()
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            first = sum(depths[:stage])
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(dim, layer_scale=layer_scale, drop_path=rates[first + i]) for i in range(depth)
            ]))
        self.downsamples = nn.ModuleList([
            nn.Sequential(OrderedDict(
                norm=LayerNorm2d(dim_in),
                conv=nn.Conv2d(dim_in, dim_out, DOWNSAMPLE_FACTOR, stride=DOWNSAMPLE_FACTOR),
            ))
            for dim_in, dim_out in zip(dims[:-1], dims[1:])
        ])
        self.head = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            norm=nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS),
            fc=nn.Linear(dims[-1], num_classes),
        ))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torchvision's initialisation of convs and Linear layers: truncated normal weights (std 0.02),
        zero biases. Norms and layer scales keep the values they were built with."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=INIT_STD, generator=generator)
                nn.init.zeros_(module.bias)

    @property
    def min_input_size(self) -> int:
        """Smallest height and width with one pixel left at the end: 4 * 2 * 2 * 2 = 32 for four stages."""
        return STEM_PATCH_SIZE * DOWNSAMPLE_FACTOR ** (len(self.dims) - 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map: (B, 3, H, W) -> (B, dims[-1], H / 32, W / 32) (for 4 stages)."""
        _check_feature_map(x, self.in_channels)
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"x must be at least {self.min_input_size}x{self.min_input_size} pixels, "
                             f"got shape {tuple(x.shape)}")
        x = self.stem(x)
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self.downsamples[stage - 1](x)
            x = blocks(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    # torchvision's ConvNeXt keeps everything in one `features` Sequential: [stem, stage 0,
    # downsample 0, stage 1, ...]; inside a block, `block` is [dwconv, permute, norm, pwconv1, GELU,
    # pwconv2, permute]; `classifier` is [norm, flatten, fc].
    _TV_BLOCK_LAYERS = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}
    _TV_STEM = {"0": "conv", "1": "norm"}
    _TV_DOWNSAMPLE = {"0": "norm", "1": "conv"}
    _TV_CLASSIFIER = {"0": "norm", "2": "fc"}

    def convert_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename (and reshape) a torchvision ConvNeXt state dict into this model's names.

        Raises ValueError naming the first key it does not recognise.
        """
        converted: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            new_key, new_value = self._convert_torchvision_key(key, value)
            converted[new_key] = new_value
        return converted

    def _convert_torchvision_key(self, key: str, value: Tensor) -> tuple[str, Tensor]:
        unknown = ValueError(f"state_dict key {key!r} is not part of a torchvision ConvNeXt")
        if m := re.fullmatch(r"features\.0\.(\d+)\.(weight|bias)", key):
            if m[1] not in self._TV_STEM:
                raise unknown
            return f"stem.{self._TV_STEM[m[1]]}.{m[2]}", value
        if (m := re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)) and int(m[1]) > 0:
            index, sub, rest = int(m[1]), m[2], m[3]
            stage, is_downsample = divmod(index - 1, 2)
            if is_downsample:  # features[2 + 2i] is the downsampling after stage i
                leaf = re.fullmatch(r"(weight|bias)", rest)
                if not leaf or sub not in self._TV_DOWNSAMPLE:
                    raise unknown
                return f"downsamples.{stage}.{self._TV_DOWNSAMPLE[sub]}.{rest}", value
            prefix = f"stages.{stage}.{sub}"
            if rest == "layer_scale":  # torchvision: (C, 1, 1) on channels-first; ours: (C,) on channels-last
                return f"{prefix}.layer_scale", value.reshape(-1)
            leaf = re.fullmatch(r"block\.(\d+)\.(weight|bias)", rest)
            if not leaf or leaf[1] not in self._TV_BLOCK_LAYERS:
                raise unknown
            return f"{prefix}.{self._TV_BLOCK_LAYERS[leaf[1]]}.{leaf[2]}", value
        if m := re.fullmatch(r"classifier\.(\d+)\.(weight|bias)", key):
            if m[1] not in self._TV_CLASSIFIER:
                raise unknown
            return f"head.{self._TV_CLASSIFIER[m[1]]}.{m[2]}", value
        raise unknown


def convnext_tiny(num_classes: int = 1000, drop_path_rate: float = CONVNEXT_TINY_DROP_PATH_RATE,
                  layer_scale: float | None = 1e-6, *, generator: torch.Generator | None = None) -> ConvNeXt:
    """ConvNeXt-T: depths (3, 3, 9, 3), dims (96, 192, 384, 768); 28,589,128 parameters with 1000 classes."""
    return ConvNeXt(CONVNEXT_TINY_DEPTHS, CONVNEXT_TINY_DIMS, num_classes=num_classes,
                    drop_path_rate=drop_path_rate, layer_scale=layer_scale, generator=generator)
