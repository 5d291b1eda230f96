"""A synthetic detection dataset: circles, squares and triangles on a textured background.

Nothing to download: every image is drawn on the fly, and item ``i`` is a pure function of
``(seed, split, i)``, so it comes out the same in any DataLoader worker and in any order.

Each item is ``(image, target)`` in torchvision's detection format::

    image:            (3, H, W) float32 in [0, 1]
    target["boxes"]:  (N, 4) float32, (x1, y1, x2, y2) in pixels
    target["labels"]: (N,) int64, 1..3 (0 is reserved for the background)
    target["masks"]:  (N, H, W) bool, the visible pixels of each object (only with ``return_masks=True``)

Boxes are tight: their edges are the outer edges of the outermost pixels of the object that are
visible in the image (pixel ``j`` spans ``[j, j + 1)``). Objects are drawn largest first, so a
smaller object lies on top of a larger one it overlaps; an object covered so much that less than
half of it shows is left out of both the picture and the targets.

    >>> train = ShapesDataset(split="train", num_images=2000, seed=0)
    >>> image, target = train[0]
    >>> loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate_detection)
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "CLASSES",
    "BACKGROUND",
    "NUM_CLASSES",
    "SPLITS",
    "ShapesDataset",
    "ShapesSample",
    "collate_detection",
]

#: Class names by label. Label 0 is the background, so object labels start at 1 (torchvision's convention).
CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")
BACKGROUND = 0
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
#: Number of classes including the background (what a classifier head predicts).
NUM_CLASSES = len(CLASSES)
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Object size range, as a fraction of the image's shorter side, when none is given in pixels.
DEFAULT_OBJECT_SIZE_FRACTION = (0.15, 0.5)
#: Smallest object side in pixels: a few pixels are needed for a circle to look like a circle.
MIN_OBJECT_SIZE = 4
MIN_IMAGE_SIZE = 16
MAX_OBJECTS_LIMIT = 32
#: Candidate placements sampled per wanted object; candidates that overlap too much are rejected.
CANDIDATES_PER_OBJECT = 6
MAX_LAYOUT_ATTEMPTS = 8
#: An object of which less than this fraction stays visible is not drawn (and has no target).
MIN_VISIBLE_FRACTION = 0.5

# Colours: objects are bright and saturated, the background darker and greyer, hues at random,
# so that the class can only be told from the shape.
OBJECT_SATURATION = (0.5, 1.0)
OBJECT_VALUE = (0.65, 1.0)
BACKGROUND_LEVEL = (0.05, 0.5)
#: The background's colour varies smoothly over a coarse grid of this many cells per side...
BACKGROUND_GRID = 4
#: ... with faint stripes of this amplitude and period range (pixels) on top.
STRIPE_AMPLITUDE = 0.06
STRIPE_PERIOD = (4.0, 16.0)


class ShapesSample(NamedTuple):
    """One rendered image with its objects, in drawing order (largest first)."""

    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    boxes: torch.Tensor  # (N, 4) float32 xyxy pixels
    labels: torch.Tensor  # (N,) int64 in 1..NUM_CLASSES - 1
    masks: torch.Tensor  # (N, H, W) bool, visible pixels


class _Layout(NamedTuple):
    """Where objects go, before drawing: continuous boxes the shapes are inscribed in."""

    boxes: torch.Tensor  # (N, 4)
    labels: torch.Tensor  # (N,)
    apex_up: torch.Tensor  # (N,) bool, the way a triangle points
    colors: torch.Tensor  # (N, 3)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch ops on one thread, then restore the setting.

    Drawing an image is many small tensor ops: intra-op threads cost more than they save here, and
    on a busy machine (a class autograding in parallel) they wait on each other for milliseconds.
    DataLoader workers already run single-threaded; this does the same in the main process.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return float(value[0]), float(value[1])
    raise TypeError(f"{name} must be a number or a pair of numbers, got {value!r}")


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _item_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed mixing (seed, split, index): neighbouring items and splits share no stream."""
    digest = hashlib.blake2b(f"shapes/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """hsv: (N, 3) in [0, 1] -> rgb: (N, 3) in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6.0 * h[:, None]) % 6.0  # (N, 3)
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


@functools.lru_cache(maxsize=8)
def _upsampling_matrix(size: int) -> torch.Tensor:
    """(size, BACKGROUND_GRID) weights of bilinear upsampling along one axis (align_corners=False)."""
    identity = torch.eye(BACKGROUND_GRID).unsqueeze(0)  # (1, G, G): G signals of length G
    return F.interpolate(identity, size=size, mode="linear", align_corners=False)[0].T.contiguous()


def _overlap_fraction(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: (K, 4) -> (K, K) intersection area over the smaller box's area."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return intersection / torch.minimum(area[:, None], area[None, :])


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """masks: (N, H, W) bool, each non-empty -> (N, 4) outer edges of the outermost True pixels."""
    height, width = masks.shape[-2:]
    columns = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    # argmax returns the first maximum: the first True from the left (or, flipped, from the right).
    x1 = columns.int().argmax(dim=1)
    x2 = width - columns.flip(1).int().argmax(dim=1)
    y1 = rows.int().argmax(dim=1)
    y2 = height - rows.flip(1).int().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def _shape_masks(layout: _Layout, height: int, width: int) -> torch.Tensor:
    """Each object's full mask, as if alone in the image: (N, H, W) bool; pixels sampled at their centres."""
    x1, y1, x2, y2 = layout.boxes[:, :, None, None].unbind(1)  # each (N, 1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    # Coordinates normalised to the object's box: u, v in [-1, 1] inside it.
    u = (xs - (x1 + x2) / 2) / ((x2 - x1) / 2)  # (N, 1, W)
    v = (ys - (y1 + y2) / 2) / ((y2 - y1) / 2)  # (N, H, 1)
    circle = u.square() + v.square() <= 1.0
    square = (u.abs() <= 1.0) & (v.abs() <= 1.0)
    # Isosceles triangle: its width grows linearly from the apex (depth 0) to the base (depth 1).
    direction = torch.where(layout.apex_up, 1.0, -1.0).view(-1, 1, 1)
    depth = (1.0 + direction * v) / 2.0
    triangle = (depth >= 0.0) & (depth <= 1.0) & (u.abs() <= depth)
    label = layout.labels.view(-1, 1, 1)
    return torch.where(label == CIRCLE, circle, torch.where(label == SQUARE, square, triangle))


def _visible_masks(masks: torch.Tensor) -> torch.Tensor:
    """masks: (N, H, W) in drawing order -> the pixels where each object is the top one."""
    if masks.shape[0] == 0:
        return masks
    order = torch.arange(1, masks.shape[0] + 1, dtype=torch.uint8).view(-1, 1, 1)  # N <= MAX_OBJECTS_LIMIT
    top = (masks.to(torch.uint8) * order).amax(dim=0)  # (H, W): 1-based index of the top object, 0 = background
    return top.unsqueeze(0) == order


class ShapesDataset(torch.utils.data.Dataset):
    """Images of circles, squares and triangles with their boxes and labels (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split draws from its own random streams.
        num_images: length of the dataset.
        image_size: ``S`` for S x S images, or ``(H, W)``.
        min_objects, max_objects: objects per image, drawn uniformly in this range. ``min_objects``
            is met whenever that many objects fit without overlapping more than ``max_overlap``.
        object_size: ``(smallest, largest)`` side of an object's box in pixels; by default
            15% to 50% of the image's shorter side.
        max_aspect_ratio: ``1`` gives round circles and true squares; above 1, objects are
            stretched by up to this width:height ratio (either way), so circles become ellipses,
            squares rectangles.
        max_overlap: the largest fraction of the smaller of two objects' boxes that the other
            one may cover (0: objects never touch).
        noise_std: standard deviation of the Gaussian pixel noise added to the whole image.
        seed: picks the dataset; ``(seed, split, index)`` determines each item.
        return_masks: also return ``target["masks"]``.
    """

    class_names: tuple[str, ...] = CLASSES

    def __init__(
        self,
        split: str = "train",
        num_images: int = 1000,
        image_size: int | tuple[int, int] = 128,
        *,
        min_objects: int = 1,
        max_objects: int = 4,
        object_size: tuple[float, float] | None = None,
        max_aspect_ratio: float = 1.0,
        max_overlap: float = 0.3,
        noise_std: float = 0.03,
        seed: int = 0,
        return_masks: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.num_images = _check_int(num_images, "num_images", 0)
        self.seed = _check_int(seed, "seed", 0)

        if isinstance(image_size, int) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        if not (isinstance(image_size, Sequence) and len(image_size) == 2):
            raise TypeError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
        height = _check_int(image_size[0], "image_size[0] (height)", MIN_IMAGE_SIZE)
        width = _check_int(image_size[1], "image_size[1] (width)", MIN_IMAGE_SIZE)
        self.image_size = (height, width)

        self.min_objects = _check_int(min_objects, "min_objects", 0, MAX_OBJECTS_LIMIT)
        self.max_objects = _check_int(max_objects, "max_objects", max(min_objects, 1), MAX_OBJECTS_LIMIT)

        shorter = min(height, width)
        if object_size is None:
            object_size = tuple(f * shorter for f in DEFAULT_OBJECT_SIZE_FRACTION)
        smallest, largest = _pair(object_size, "object_size")
        if not MIN_OBJECT_SIZE <= smallest <= largest <= shorter:
            raise ValueError(
                f"object_size must satisfy {MIN_OBJECT_SIZE} <= smallest <= largest <= {shorter} "
                f"(the image's shorter side), got {object_size!r}"
            )
        self.object_size = (smallest, largest)

        if not (isinstance(max_aspect_ratio, (int, float)) and max_aspect_ratio >= 1.0):
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")
        if not (isinstance(max_overlap, (int, float)) and 0.0 <= max_overlap <= 1.0):
            raise ValueError(f"max_overlap must be a number in [0, 1], got {max_overlap!r}")
        if not (isinstance(noise_std, (int, float)) and noise_std >= 0.0):
            raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
        self.max_aspect_ratio = float(max_aspect_ratio)
        self.max_overlap = float(max_overlap)
        self.noise_std = float(noise_std)
        self.return_masks = bool(return_masks)

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(split={self.split!r}, num_images={self.num_images}, image_size={self.image_size}, "
            f"objects={self.min_objects}..{self.max_objects}, object_size={self.object_size}, seed={self.seed})"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.sample(index)
        target = {"boxes": sample.boxes, "labels": sample.labels}
        if self.return_masks:
            target["masks"] = sample.masks
        return sample.image, target

    def sample(self, index: int) -> ShapesSample:
        """Item ``index`` with its visible masks (whatever ``return_masks`` says)."""
        generator = self._generator(index)
        with _single_threaded():
            layout, masks = self._objects(generator)
            return ShapesSample(self._draw(layout, masks, generator), self._boxes(masks), layout.labels, masks)

    def box_sizes(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """Widths and heights of all ground-truth boxes, (M, 2) float32: the input of k-means anchors.

        Cheaper than reading the items: only the objects' masks are drawn, no colours or noise.
        """
        indices = range(len(self)) if indices is None else indices
        sizes = []
        with _single_threaded():
            for index in indices:
                _, masks = self._objects(self._generator(index))
                boxes = self._boxes(masks)
                sizes.append(boxes[:, 2:] - boxes[:, :2])
        return torch.cat(sizes) if sizes else torch.zeros(0, 2)

    def to_tensors(self) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """The whole dataset in memory: images (num_images, 3, H, W) and a list of targets.

        Handy for training small models many epochs on few images without drawing them again.
        """
        if len(self) == 0:
            return torch.zeros(0, 3, *self.image_size), []
        images, targets = zip(*(self[i] for i in range(len(self))))
        return torch.stack(images), list(targets)

    # -- drawing ------------------------------------------------------------------------------

    def _generator(self, index: int) -> torch.Generator:
        try:
            index = operator.index(index)  # also numpy and 0-d tensor integers from samplers
        except TypeError:
            raise TypeError(f"index must be an integer, got {type(index).__name__}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        return torch.Generator().manual_seed(_item_seed(self.seed, self.split, index))

    def _layout(self, generator: torch.Generator) -> _Layout:
        """Random boxes, classes and colours, largest object first."""
        height, width = self.image_size
        wanted = int(torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=generator))
        if wanted == 0:
            return _Layout(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                           torch.zeros(0, dtype=torch.bool), torch.zeros(0, 3))
        low, high = self.object_size
        for _attempt in range(MAX_LAYOUT_ATTEMPTS):
            count = CANDIDATES_PER_OBJECT * wanted
            side, aspect, x, y = torch.rand(4, count, generator=generator)
            side = low + (high - low) * side
            log_aspect = (2.0 * aspect - 1.0) * math.log(self.max_aspect_ratio)
            box_w = (side * torch.exp(log_aspect / 2)).clamp(max=width)
            box_h = (side * torch.exp(-log_aspect / 2)).clamp(max=height)
            x1, y1 = x * (width - box_w), y * (height - box_h)
            boxes = torch.stack([x1, y1, x1 + box_w, y1 + box_h], dim=1)
            # Keep a candidate unless it overlaps an earlier one too much (earlier ones, kept or not:
            # a little stricter than greedy selection, and free of a loop over candidates).
            too_close = (_overlap_fraction(boxes) > self.max_overlap).triu(diagonal=1)
            keep = (~too_close.any(dim=0)).nonzero().squeeze(1)[:wanted]
            if keep.numel() >= self.min_objects:
                break
        boxes = boxes[keep]
        boxes = boxes[(boxes[:, 2:] - boxes[:, :2]).prod(1).argsort(descending=True)]
        n = boxes.shape[0]
        label, direction, hue, saturation, value = torch.rand(5, n, generator=generator)
        labels = 1 + (label * (NUM_CLASSES - 1)).long().clamp(max=NUM_CLASSES - 2)
        apex_up = direction < 0.5
        hsv = torch.stack([
            hue,
            OBJECT_SATURATION[0] + (OBJECT_SATURATION[1] - OBJECT_SATURATION[0]) * saturation,
            OBJECT_VALUE[0] + (OBJECT_VALUE[1] - OBJECT_VALUE[0]) * value,
        ], dim=1)
        return _Layout(boxes, labels, apex_up, _hsv_to_rgb(hsv))

    def _objects(self, generator: torch.Generator) -> tuple[_Layout, torch.Tensor]:
        """The layout of the objects that stay visible enough, and their visible masks (N, H, W)."""
        layout = self._layout(generator)
        masks = _shape_masks(layout, *self.image_size)
        visible = _visible_masks(masks)
        full_area = masks.sum(dim=(1, 2))
        shown = (visible.sum(dim=(1, 2)) >= MIN_VISIBLE_FRACTION * full_area) & (full_area > 0)
        if not bool(shown.all()):  # hiding an object only uncovers the others
            layout = _Layout(*(field[shown] for field in layout))
            visible = _visible_masks(masks[shown])
        return layout, visible

    @staticmethod
    def _boxes(masks: torch.Tensor) -> torch.Tensor:
        return _tight_boxes(masks) if masks.shape[0] else torch.zeros(0, 4)

    def _background(self, generator: torch.Generator) -> torch.Tensor:
        """(3, H, W): a smooth colour field, faint stripes at a random angle and period."""
        height, width = self.image_size
        low, high = BACKGROUND_LEVEL
        coarse = low + (high - low) * torch.rand(3, BACKGROUND_GRID, BACKGROUND_GRID, generator=generator)
        # Bilinear upsampling as two small matrix products (much cheaper than F.interpolate here).
        field = _upsampling_matrix(height) @ coarse @ _upsampling_matrix(width).T  # (3, H, W)
        angle, period, phase = torch.rand(3, generator=generator).tolist()
        angle *= math.pi
        period = STRIPE_PERIOD[0] + period * (STRIPE_PERIOD[1] - STRIPE_PERIOD[0])
        ys = torch.arange(height, dtype=torch.float32).view(height, 1)
        xs = torch.arange(width, dtype=torch.float32).view(1, width)
        along = xs * (math.cos(angle) / period) + ys * (math.sin(angle) / period) + phase
        return field + STRIPE_AMPLITUDE * torch.sin(2 * math.pi * along)

    def _draw(self, layout: _Layout, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        image = self._background(generator)
        if masks.shape[0]:
            # masks are the visible ones: at most one is True per pixel.
            painted = torch.einsum("nhw,nc->chw", masks.float(), layout.colors)
            image = torch.where(masks.any(dim=0), painted, image)
        if self.noise_std > 0:
            image += torch.empty_like(image).normal_(0.0, self.noise_std, generator=generator)
        return image.clamp_(0.0, 1.0)


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """DataLoader ``collate_fn`` for detection: images stacked (B, 3, H, W), targets kept as a list.

    Images of different sizes come back as a list (what torchvision's detection models take).
    """
    if len(batch) == 0:
        raise ValueError("batch must hold at least one (image, target) pair, got an empty batch")
    images, targets = zip(*batch)
    same_size = all(image.shape == images[0].shape for image in images)
    return (torch.stack(images) if same_size else list(images)), list(targets)
