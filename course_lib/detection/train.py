"""Training a detector: shuffled in-memory batches with flips, a one-cycle schedule, progress, loss history.

The loop is plain PyTorch (what fastai's ``learn.fit`` did for the original lesson)::

    batches = DetectionBatches(images, targets, batch_size=64, generator=torch.Generator().manual_seed(0))
    history = fit(model, batches, lambda m, x, y: m.loss(m(x), y), steps=1000, lr=3e-3)
    history.plot()
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["DetectionBatches", "flip_boxes", "TrainHistory", "fit"]

#: Default AdamW weight decay; small, the models are small.
WEIGHT_DECAY = 1e-4
#: Fraction of the steps the one-cycle schedule spends warming the learning rate up.
WARMUP_FRACTION = 0.15


def flip_boxes(boxes: torch.Tensor, image_size: int, horizontal: bool = True) -> torch.Tensor:
    """boxes: (N, 4) xyxy pixels -> the same objects in the image flipped left-right (or top-bottom)."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {tuple(boxes.shape)}")
    x1, y1, x2, y2 = boxes.unbind(-1)
    if horizontal:
        return torch.stack([image_size - x2, y1, image_size - x1, y2], dim=-1)
    return torch.stack([x1, image_size - y2, x2, image_size - y1], dim=-1)


class DetectionBatches:
    """Endless mini-batches from a detection set held in memory, reshuffled every epoch.

    images: (N, 3, H, W); targets: N dicts with ``boxes`` (xyxy pixels) and ``labels``. With
    ``hflip``/``vflip`` each image is flipped with probability 1/2 (boxes with it): the shapes look
    the same upside down, so both are fair there; for photos use ``hflip`` only.
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], batch_size: int,
                 generator: torch.Generator | None = None, hflip: bool = True, vflip: bool = False):
        if images.ndim != 4 or images.shape[0] != len(targets):
            raise ValueError(f"images must be (N, 3, H, W) with one target each, got {tuple(images.shape)} "
                             f"and {len(targets)} targets")
        if images.shape[-1] != images.shape[-2] and (hflip or vflip):
            raise ValueError(f"flips here expect square images, got {tuple(images.shape[-2:])}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.images, self.targets = images, list(targets)
        self.batch_size = batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.flips = [axis for axis, on in (("h", hflip), ("v", vflip)) if on]

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.targets) // self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
        order = torch.randperm(len(self.targets), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            targets = [dict(self.targets[i]) for i in index.tolist()]
            size = images.shape[-1]
            for axis in self.flips:
                flip = torch.rand(len(index), generator=self.generator) < 0.5
                dim = -1 if axis == "h" else -2
                images = torch.where(flip[:, None, None, None], images.flip(dim), images)
                for target, flipped in zip(targets, flip.tolist()):  # per image: N boxes each
                    if flipped:
                        target["boxes"] = flip_boxes(target["boxes"], size, horizontal=axis == "h")
            yield images, targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
        while True:
            yield from self.epoch()


@dataclass
class TrainHistory:
    """What `fit` recorded: the loss (and its parts) per logged step, the learning rate, wall time."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def plot(self, ax=None, title: str | None = None):
        """Loss curves (total and parts) on a log scale; returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(self.steps, self.loss, label="total", lw=2)
        for name, values in self.parts.items():
            ax.plot(self.steps, values, label=name, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title or f"training loss ({self.seconds:.0f} s)")
        ax.legend()
        return ax


def _split_loss(value: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss function's result -> (total to backpropagate, named float parts)."""
    if isinstance(value, torch.Tensor):
        return value, {}
    fields = value._asdict() if hasattr(value, "_asdict") else dict(value)
    total = fields.pop("total")
    parts = {k: float(v.detach()) for k, v in fields.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
    return total, parts


def fit(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]],
    loss_fn: Callable[[nn.Module, torch.Tensor, list[dict[str, torch.Tensor]]], Any],
    *,
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = WEIGHT_DECAY,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_every: int = 10,
    description: str = "training",
    channels_last: bool = False,
) -> TrainHistory:
    """Train ``model`` for ``steps`` AdamW steps with a one-cycle learning rate peaking at ``lr``.

    ``batches`` yields ``(images, targets)`` (an endless `DetectionBatches`, or a DataLoader, which
    is restarted when it runs out). ``loss_fn(model, images, targets)`` returns a scalar tensor or
    a record with a ``total`` field (`course_lib.detection.ssd.SSDLoss`); its other scalar fields are
    logged as parts. Images and targets are moved to ``device`` (default: the model's).
    ``channels_last`` stores images and convolution weights pixel by pixel (NHWC), which CPU
    convolutions run faster on (about 15-20 % for the lesson's SSD); the results are the same.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=WARMUP_FRACTION)
    history = TrainHistory()
    window: list[float] = []
    window_parts: dict[str, list[float]] = {}

    def endless() -> Iterator:
        while True:
            yielded = False
            for batch in batches:
                yielded = True
                yield batch
            if not yielded:
                raise ValueError("batches yielded nothing")

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=description, disable=not progress, leave=True)
    start = time.perf_counter()
    for step, (images, targets) in zip(range(1, steps + 1), endless()):
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        total, parts = _split_loss(loss_fn(model, images, targets))
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {float(total)} at step {step}; try a smaller lr (now {lr})")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
        window.append(float(total.detach()))
        for name, value in parts.items():
            window_parts.setdefault(name, []).append(value)
        if step % log_every == 0 or step == steps:
            history.steps.append(step)
            history.loss.append(sum(window) / len(window))
            for name, values in window_parts.items():
                history.parts.setdefault(name, []).append(sum(values) / len(values))
            history.lr.append(schedule.get_last_lr()[0])
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
            window, window_parts = [], {}
        bar.update(1)
    bar.close()
    history.seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format).eval()
    return history
