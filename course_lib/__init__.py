"""Reference implementations for the course "From CNN blocks to object detectors".

The lesson notebooks build each piece step by step and then check it against the version here;
later lessons import these versions directly.
"""
from __future__ import annotations

import os
import random

import torch
from torch import nn

__all__ = ["get_device", "seed_everything", "count_params"]
__version__ = "0.1.0"


def get_device(prefer: str | None = None) -> torch.device:
    """The device lessons run on: CUDA if available, then Apple's MPS, else the CPU.

    ``prefer`` (or the ``COURSE_DEVICE`` environment variable) forces one, e.g. ``"cpu"``.
    """
    choice = prefer or os.environ.get("COURSE_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy (if installed) and torch, on CPU and CUDA, for reproducible lessons.

    Returns a ``torch.Generator`` seeded with the same value, for code that prefers an explicit one.
    Library code never calls this: it takes a ``generator`` argument instead.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for torch
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    params = module.parameters()
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)
