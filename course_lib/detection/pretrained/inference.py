"""Running a detector over a clip's frames: `predict` takes a tensor or a list of frames (uint8 or
float), runs them in batches in inference mode, and keeps the detections above a score threshold.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .records import LoadedDetector

__all__ = ["predict"]

#: The longest error text `predict` repeats in its own message (the original error is chained).
ERROR_TEXT_LIMIT = 300


# -- inference ------------------------------------------------------------------------------------


def _frame_list(frames) -> list[torch.Tensor]:
    """frames: (N, 3, H, W) tensor or a sequence of (3, H, W) tensors -> list of (3, H, W), checked."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W) or a list of (3, H, W) tensors, got a tensor of shape "
                             f"{tuple(frames.shape)}")
        images = list(frames)
    elif isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        images = list(frames)
    else:
        raise TypeError(f"frames must be a tensor (N, 3, H, W) or a list of (3, H, W) tensors, "
                        f"got {type(frames).__name__}")
    for k, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"frames[{k}] must be a tensor, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"frames[{k}] must be (3, H, W) with H, W >= 1, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"frames[{k}] must be uint8 (0..255) or float (0..1), got {image.dtype}")
        if image.device != images[0].device:
            raise ValueError(f"frames must all be on one device, got {images[0].device} and {image.device} "
                             f"(frames[{k}])")
    return images


def predict(
    model: nn.Module | LoadedDetector,
    frames,
    score_threshold: float = 0.5,
    batch_size: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """Detections for each frame: ``boxes`` (D, 4) xyxy pixels, ``labels`` (D,), ``scores`` (D,) >= threshold.

    Args:
        model: a torchvision detector (or a `LoadedDetector`); it must already be on the frames'
            device: predict never moves it (a model on another device is a ValueError).
        frames: (N, 3, H, W) tensor or a list of (3, H, W) tensors (sizes may differ in a list),
            uint8 (0..255, converted to float in [0, 1]) or float in [0, 1].
        score_threshold: keep detections whose score is at least this.
        batch_size: frames per forward pass.

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored).
    Results are on the frames' device. An error inside the model is raised again as a
    RuntimeError saying which frames failed (the original error is its ``__cause__``).
    """
    net = model.model if isinstance(model, LoadedDetector) else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a LoadedDetector, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(score_threshold, (int, float)) or not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    images = _frame_list(frames)
    if not images:
        return []
    device = images[0].device
    parameter = next(net.parameters(), None)
    if parameter is not None and parameter.device != device:
        raise ValueError(f"model is on {parameter.device} but frames are on {device}: move one of them first "
                         f"(model.to(device) once, or frames.to(device))")
    results: list[dict[str, torch.Tensor]] = []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [image.float() / 255.0 if image.dtype == torch.uint8 else image
                         for image in images[start:start + batch_size]]
                where = f"frames {start}..{start + len(batch) - 1} of {len(images)}"
                try:
                    detections = net(batch)
                except Exception as error:  # say which frames and which model; keep the original as cause
                    text = " ".join(str(error).split())[:ERROR_TEXT_LIMIT]
                    raise RuntimeError(f"{type(net).__name__} failed on {where}: {type(error).__name__}: "
                                       f"{text}") from error
                if not isinstance(detections, (list, tuple)) or len(detections) != len(batch):
                    raise RuntimeError(f"{type(net).__name__} returned {type(detections).__name__} for {where}, "
                                       f"expected a list of {len(batch)} dicts")
                for found in detections:
                    keep = found["scores"] >= score_threshold
                    results.append({key: found[key][keep] for key in ("boxes", "labels", "scores")})
    finally:
        net.train(was_training)
    return results
