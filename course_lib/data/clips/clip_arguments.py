"""What both offline clips share: their seeded random streams (one per clip kind and seed, so the same
arguments draw the same clip) and the checks of their arguments.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

__all__: list[str] = []  # helpers of the clip modules only

_UINT8_MAX = 255


def _seeded(kind: str, seed: int) -> torch.Generator:
    """A generator for ``(kind, seed)``: each clip kind and seed gets its own stream."""
    _check_count(seed, "seed", 0)
    digest = hashlib.blake2b(f"{kind}/{seed}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_fps(fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)):
        raise TypeError(f"fps must be a number, got {type(fps).__name__}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return float(fps)
