"""Loading torchvision's pretrained weights into the course's own models.

Our models name their parts after the lesson (``stem``, ``stage2``, ``classifier``) while torchvision
uses ``conv1``, ``layer1``, ``fc``; the tensors themselves are identical. Each course model class
knows how to rename a torchvision state dict:

    class MyModel(nn.Module):
        def convert_torchvision_state_dict(self, state_dict: dict) -> dict:  # our key names
            ...

and `load_torchvision_weights` uses that method, checks the result against the model and loads it
strictly. Where the weights come from (a mirror, a local folder, the network) is
`course_lib.weights`' business.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["load_torchvision_weights", "state_dict_mismatches"]

#: How many offending keys an error message names per kind of problem.
KEYS_SHOWN = 3


def state_dict_mismatches(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """What keeps ``state_dict`` (already in the model's key names) from loading strictly into ``model``.

    Returns ``{"missing": [...], "unexpected": [...], "wrong shape": ["key: got (..), expected (..)", ...]}``;
    all lists empty means it fits.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: got {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and tuple(value.shape) != tuple(expected[key].shape)
    ]
    return {"missing": missing, "unexpected": unexpected, "wrong shape": wrong_shape}


def _describe(problems: dict[str, list[str]]) -> str:
    parts = []
    for kind, keys in problems.items():
        if keys:
            shown = ", ".join(keys[:KEYS_SHOWN]) + (", ..." if len(keys) > KEYS_SHOWN else "")
            parts.append(f"{len(keys)} {kind} ({shown})")
    return "; ".join(parts)


def load_torchvision_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load a torchvision state dict into a course model, strictly; returns ``model``.

    ``model`` must implement ``convert_torchvision_state_dict(state_dict) -> dict`` (every course model
    that mirrors a torchvision one does). The tensors are copied onto the model's own device.
    Raises ValueError naming the first few missing / unexpected / wrongly shaped keys when the weights
    belong to another architecture (e.g. resnet18 weights into a resnet50).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    convert = getattr(model, "convert_torchvision_state_dict", None)
    if convert is None:
        raise TypeError(
            f"{type(model).__name__} has no convert_torchvision_state_dict method, so torchvision weights "
            "cannot be mapped onto it"
        )
    converted = convert(dict(state_dict))
    problems = state_dict_mismatches(model, converted)
    if any(problems.values()):
        raise ValueError(
            f"state_dict does not fit {type(model).__name__} (weights of another architecture?): {_describe(problems)}"
        )
    model.load_state_dict(converted, strict=True)
    return model
