"""The course's models: ResNets (lesson 1) and ConvNeXt (lesson 2), built in the lessons' vocabulary."""
from .resnet import (
    BottleneckBlock,
    ResidualBlock,
    ResNet,
    conv_params,
    make_classifier,
    make_stem,
    resnet18,
    resnet34,
    resnet50,
)
from .weights import load_torchvision_weights, state_dict_mismatches
from .convnext import ConvNeXt, ConvNeXtBlock, LayerNorm2d, convnext_tiny
