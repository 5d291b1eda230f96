"""Feature extractors for the two-stage detector: anything that maps (B, 3, H, W) images to
(B, C, H / stride, W / stride) features with a known ``C`` and ``stride``."""
from __future__ import annotations

from torch import nn

from ..ssd import small_backbone
from .config import FasterRCNNConfig

__all__ = ["VGG16_LAYERS", "vgg16_backbone", "build_backbone"]

#: VGG16's convolutional part ("configuration D"): output channels of each 3x3 convolution + ReLU,
#: "M" for a 2x2 max-pool. The detector drops the fifth max-pool: 4 pools, stride 16.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_backbone(weights=None, *, progress: bool = False) -> nn.Sequential:
    """VGG16's ``features`` without the last max-pool: 13 convolutions and 4 max-pools, stride 16,
    512 channels. An 800 x 800 image gives a (1, 512, 50, 50) feature map.

    The layers are numbered like ``torchvision.models.vgg16().features`` (0 to 29), so its weights
    load as they are. ``weights``: a ``VGG16_Weights`` member (e.g. ``IMAGENET1K_V1``), fetched
    through `course_lib.weights.fetch_state_dict` (classroom mirror, local files, then the internet;
    `course_lib.weights.WeightsUnavailable` offline); None: torchvision's random initialisation.
    Only the convolutions are built, not VGG16's 120-million-parameter classifier.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(channels, item, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's VGG init
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        channels = item
    backbone = nn.Sequential(*layers)
    if weights is not None:
        from ...weights import fetch_state_dict

        state = fetch_state_dict(weights, progress=progress)
        backbone.load_state_dict({key[len("features."):]: value for key, value in state.items()
                                  if key.startswith("features.")})
    return backbone


def build_backbone(config: FasterRCNNConfig) -> nn.Module:
    """The backbone ``config.backbone`` names ("small" or "vgg16"; "custom" ones are passed in)."""
    if config.backbone == "small":
        return small_backbone(config.stage_channels, config.stage_depths)
    if config.backbone == "vgg16":
        return vgg16_backbone()
    raise ValueError("config.backbone is 'custom': pass the backbone module to the detector "
                     "(TwoStageDetector(config, backbone=...))")
