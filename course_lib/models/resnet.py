"""ResNet18/34/50 built from the block vocabulary of lesson 1.

A ResNet is a stem, four stages of residual blocks and a classifier:

    image (3, H, W) -> stem (64, H/4, W/4) -> stage2 -> stage3 -> stage4 -> stage5 (C, H/32, W/32)
                    -> classifier (num_classes,)

The stem halves height and width twice (a strided 7x7 convolution, then a max pool) and the first
block of stages 3, 4 and 5 halves them once more each: five halvings, 2**5 = 32.
ResNet18 and ResNet34 differ only in how many `ResidualBlock`s each stage holds; ResNet50 swaps them
for `BottleneckBlock`s with four times as many output channels.

The layer shapes match torchvision's `resnet18/34/50` exactly (same parameter counts), so
`course_lib.models.load_torchvision_weights` can load its ImageNet weights into these models.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

__all__ = [
    "ResidualBlock",
    "BottleneckBlock",
    "ResNet",
    "make_stem",
    "make_classifier",
    "resnet18",
    "resnet34",
    "resnet50",
    "conv_params",
    "STAGE_NAMES",
]

#: Channels produced by the stem of every ResNet in this lesson.
STEM_CHANNELS = 64
#: A bottleneck's 3x3 convolution works on out_channels / BOTTLENECK_EXPANSION channels.
BOTTLENECK_EXPANSION = 4
#: Names of the model's parts, in the order an image flows through them.
STAGE_NAMES = ("stem", "stage2", "stage3", "stage4", "stage5")
IMAGENET_CLASSES = 1000


def _check_channels(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_feature_map(name: str, x, channels: int) -> None:
    """Raise a one-line error unless ``x`` is a (N, channels, H, W) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(x.shape)}")


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 convolution + BatchNorm that makes the shortcut match the block's output shape."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResidualBlock(nn.Module):
    """The basic block of ResNet18/34: two 3x3 convolutions and a skip connection.

    ``x: (N, in_channels, H, W) -> (N, out_channels, H', W')`` with ``H' = ceil(H / 2)`` when
    ``downsample`` is true (the first convolution uses stride 2) and ``H' = H`` otherwise.

    The shortcut is the identity when input and output shapes agree; otherwise (downsampling, or a
    change of channels) it is a 1x1 convolution with the same stride, followed by BatchNorm.
    Convolutions have no bias: the BatchNorm right after each one adds its own shift.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        _check_channels("in_channels", in_channels)
        _check_channels("out_channels", out_channels)
        if not isinstance(downsample, bool):
            raise TypeError(f"downsample must be a bool, got {type(downsample).__name__}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.downsample = downsample
        stride = 2 if downsample else 1

        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = downsample or in_channels != out_channels
        self.shortcut = _projection(in_channels, out_channels, stride) if needs_projection else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map("x", x, self.in_channels)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The block learns a correction to its (possibly projected) input.
        return self.relu(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """The block of ResNet50: 1x1 reduce, 3x3, 1x1 expand, and a skip connection.

    ``x: (N, in_channels, H, W) -> (N, out_channels, H', W')``. The 3x3 convolution works on
    ``out_channels // 4`` channels, which is what makes the block cheap; it also carries the stride
    when ``downsample`` is true (ResNet "v1.5", like torchvision), so ``H' = ceil(H / 2)``.

    The shortcut is a 1x1 convolution + BatchNorm whenever the shape changes: when downsampling, and
    also in the first block of stage 2, which keeps 56x56 but goes from 64 to 256 channels.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        _check_channels("in_channels", in_channels)
        _check_channels("out_channels", out_channels)
        if out_channels % BOTTLENECK_EXPANSION:
            raise ValueError(f"out_channels must be a multiple of {BOTTLENECK_EXPANSION}, got {out_channels}")
        if not isinstance(downsample, bool):
            raise TypeError(f"downsample must be a bool, got {type(downsample).__name__}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.downsample = downsample
        stride = 2 if downsample else 1
        width = out_channels // BOTTLENECK_EXPANSION

        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = downsample or in_channels != out_channels
        self.shortcut = _projection(in_channels, out_channels, stride) if needs_projection else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map("x", x, self.in_channels)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def make_stem(out_channels: int = STEM_CHANNELS, in_channels: int = 3) -> nn.Sequential:
    """A new ResNet stem: 7x7 conv stride 2, BatchNorm, ReLU, 3x3 max pool stride 2 (H -> H/4).

    Every call builds new layers: models never share a stem (and so never train the same weights).
    """
    _check_channels("out_channels", out_channels)
    _check_channels("in_channels", in_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def make_classifier(in_channels: int, num_classes: int = IMAGENET_CLASSES) -> nn.Sequential:
    """Global average pooling, flatten, one Linear layer: ``(N, C, H, W) -> (N, num_classes)`` for any H, W."""
    _check_channels("in_channels", in_channels)
    _check_channels("num_classes", num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))


class ResNet(nn.Module):
    """A ResNet in the stage vocabulary: ``stem``, ``stage2`` ... ``stage5``, ``classifier``.

    Args:
        block: `ResidualBlock` (ResNet18/34) or `BottleneckBlock` (ResNet50).
        blocks_per_stage: how many blocks stages 2-5 hold, e.g. ``(2, 2, 2, 2)`` for ResNet18.
        stage_channels: output channels of stages 2-5, e.g. ``(64, 128, 256, 512)``.
        num_classes: outputs of the classifier.
        generator: if given, the weights are drawn from it and the global random state is left
            untouched; otherwise they come from torch's global generator like any ``nn.Module``.

    ``forward(images: (N, 3, H, W)) -> logits: (N, num_classes)``; any H, W >= 32 works thanks to the
    adaptive average pooling in the classifier.
    """

    def __init__(
        self,
        block: type[ResidualBlock] | type[BottleneckBlock],
        blocks_per_stage: Sequence[int],
        stage_channels: Sequence[int],
        num_classes: int = IMAGENET_CLASSES,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if block not in (ResidualBlock, BottleneckBlock):
            raise TypeError(f"block must be ResidualBlock or BottleneckBlock, got {block!r}")
        if len(blocks_per_stage) != 4 or len(stage_channels) != 4:
            raise ValueError(
                "blocks_per_stage and stage_channels must each have 4 entries (stages 2-5), got "
                f"{len(blocks_per_stage)} and {len(stage_channels)}"
            )
        for count in blocks_per_stage:
            _check_channels("blocks_per_stage entries", count)
        _check_channels("num_classes", num_classes)
        self.block = block
        self.blocks_per_stage = tuple(blocks_per_stage)
        self.stage_channels = tuple(stage_channels)

        # With an explicit generator, layer construction must not consume the global random state.
        rng_guard = torch.random.fork_rng(devices=[]) if generator is not None else nullcontext()
        with rng_guard:
            self.stem = make_stem(STEM_CHANNELS)
            in_channels = STEM_CHANNELS
            for index, (count, out_channels) in enumerate(zip(blocks_per_stage, stage_channels)):
                # Stage 2 keeps the stem's resolution (the max pool already halved it).
                first_downsamples = index > 0
                blocks = [block(in_channels, out_channels, downsample=first_downsamples)]
                blocks += [block(out_channels, out_channels) for _ in range(count - 1)]
                setattr(self, STAGE_NAMES[index + 1], nn.Sequential(*blocks))
                in_channels = out_channels
            self.classifier = make_classifier(in_channels, num_classes)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torchvision's initialisation: He (fan-out) normal for convolutions, BatchNorm at (1, 0)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
            elif isinstance(module, nn.Linear):
                # PyTorch's default Linear initialisation, drawn from ``generator``.
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def stage_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """Feature maps after each part: ``{"stem": (N, 64, H/4, W/4), ..., "stage5": (N, C, H/32, W/32)}``."""
        _check_feature_map("images", images, self.stem[0].in_channels)
        outputs = {}
        x = images
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs

    def forward_features(self, images: Tensor) -> Tensor:
        """The last feature map (what a detector uses as its backbone output): ``(N, C, H/32, W/32)``."""
        return self.stage_outputs(images)["stage5"]

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.forward_features(images))

    # torchvision names -> ours, applied in order to each key of a torchvision ResNet state dict.
    _TORCHVISION_KEY_RULES = (
        (re.compile(r"^conv1\."), "stem.0."),
        (re.compile(r"^bn1\."), "stem.1."),
        (re.compile(r"^layer(\d)\."), lambda m: f"stage{int(m.group(1)) + 1}."),
        (re.compile(r"\.downsample\."), ".shortcut."),
        (re.compile(r"^fc\."), "classifier.2."),
    )

    def convert_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename the keys of a torchvision ``resnet18/34/50`` state dict to this model's names.

        Keys that no rule knows are kept as they are, so that loading reports them as unexpected.
        """
        converted = {}
        for key, value in state_dict.items():
            for pattern, replacement in self._TORCHVISION_KEY_RULES:
                key = pattern.sub(replacement, key)
            converted[key] = value
        return converted


def resnet18(num_classes: int = IMAGENET_CLASSES, *, generator: torch.Generator | None = None) -> ResNet:
    """ResNet18: 2, 2, 2, 2 residual blocks; 11,689,512 parameters with 1000 classes."""
    return ResNet(ResidualBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, generator=generator)


def resnet34(num_classes: int = IMAGENET_CLASSES, *, generator: torch.Generator | None = None) -> ResNet:
    """ResNet34: 3, 4, 6, 3 residual blocks; 21,797,672 parameters with 1000 classes."""
    return ResNet(ResidualBlock, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, generator=generator)


def resnet50(num_classes: int = IMAGENET_CLASSES, *, generator: torch.Generator | None = None) -> ResNet:
    """ResNet50: 3, 4, 6, 3 bottleneck blocks; 25,557,032 parameters with 1000 classes."""
    return ResNet(BottleneckBlock, (3, 4, 6, 3), (256, 512, 1024, 2048), num_classes, generator=generator)


def conv_params(
    kernel_size: int | tuple[int, int],
    in_channels: int,
    out_channels: int,
    bias: bool = True,
    *,
    groups: int = 1,
) -> int:
    """Parameters of a ``nn.Conv2d``: ``(kh * kw * in_channels / groups + bias) * out_channels``.

    >>> conv_params(3, 256, 512)              # one weight per filter tap, plus a bias per filter
    1180160
    >>> conv_params(3, 256, 512, bias=False)  # what ResNet really has: BatchNorm supplies the shift
    1179648
    """
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool):
        kernel_size = (kernel_size, kernel_size)
    if (
        not isinstance(kernel_size, tuple)
        or len(kernel_size) != 2
        or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in kernel_size)
    ):
        raise ValueError(f"kernel_size must be a positive int or a pair of them, got {kernel_size!r}")
    _check_channels("in_channels", in_channels)
    _check_channels("out_channels", out_channels)
    _check_channels("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    kernel_h, kernel_w = kernel_size
    return (kernel_h * kernel_w * (in_channels // groups) + int(bias)) * out_channels
