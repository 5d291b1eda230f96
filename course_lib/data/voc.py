"""Pascal VOC detection data, for learners who have it on disk.

The lesson's SSD trains offline on the synthetic shapes; Pascal VOC 2007 (the data set of the
original SSD lesson) is used when a learner has it. Loading goes through torchvision's own
`torchvision.datasets.VOCDetection`, which reads the standard layout::

    ROOT/VOCdevkit/VOC2007/JPEGImages/000012.jpg
    ROOT/VOCdevkit/VOC2007/Annotations/000012.xml
    ROOT/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt

and returns each annotation as a nested dict of strings. `VOCDetectionDataset` turns that into the
course's target format (the one `course_lib.data.ShapesDataset` uses): ``boxes`` (N, 4) float
(x1, y1, x2, y2) in pixels of the returned image, ``labels`` (N,) int64 with 0 kept for the
background, so the same SSD code trains on either.

VOC writes 1-based, inclusive pixel indices (``xmin=1`` is the first pixel column). In the
continuous coordinates torchvision and this course use, the box that covers pixel columns
``xmin..xmax`` runs from ``xmin - 1`` to ``xmax``: we subtract one from the minimum corner only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = [
    "VOC_CLASSES",
    "VOC_ROOT_ENV",
    "find_voc_root",
    "parse_voc_target",
    "VOCDetectionDataset",
]

#: Class names; index 0 is the background, 1..20 the VOC classes in their usual (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_CLASS_INDEX = {name: index for index, name in enumerate(VOC_CLASSES)}

#: Environment variable naming the folder that holds ``VOCdevkit/`` (default: the course's data/ folder).
VOC_ROOT_ENV = "COURSE_VOC_ROOT"
_COURSE_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def _year_dir(root: Path, year: str) -> Path:
    return root / "VOCdevkit" / f"VOC{year}"


def find_voc_root(root: str | os.PathLike | None = None, year: str = "2007") -> Path | None:
    """The folder holding ``VOCdevkit/VOC<year>/``, or None when VOC is not on this machine.

    Looks at ``root`` if given, else at ``$COURSE_VOC_ROOT``, else at the course's ``data/`` folder.
    """
    candidates = [Path(root)] if root is not None else []
    if root is None and os.environ.get(VOC_ROOT_ENV):
        candidates.append(Path(os.environ[VOC_ROOT_ENV]))
    if root is None:
        candidates.append(_COURSE_DATA_DIR)
    for candidate in candidates:
        if (_year_dir(candidate, year) / "Annotations").is_dir():
            return candidate
    return None


def parse_voc_target(annotation: dict[str, Any], keep_difficult: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's parsed VOC XML -> ``boxes`` (N, 4) float xyxy pixels, ``labels`` (N,), ``difficult`` (N,).

    Objects marked ``difficult`` are dropped unless ``keep_difficult`` (VOC's own evaluation ignores them).
    """
    if "annotation" not in annotation:
        raise ValueError(f"annotation must be torchvision's parsed VOC XML with an 'annotation' key, "
                         f"got keys {sorted(annotation)}")
    objects = annotation["annotation"].get("object", [])
    if isinstance(objects, dict):  # tolerate a single object not wrapped in a list
        objects = [objects]
    boxes, labels, difficult = [], [], []
    for obj in objects:  # one XML record per object: parsing, not tensor maths
        name = obj["name"].strip()
        if name not in _CLASS_INDEX:
            raise ValueError(f"unknown VOC class {name!r}; expected one of {VOC_CLASSES[1:]}")
        is_difficult = str(obj.get("difficult", "0")).strip() == "1"
        if is_difficult and not keep_difficult:
            continue
        bndbox = obj["bndbox"]
        # 1-based inclusive pixel indices -> continuous coordinates (see the module docstring).
        boxes.append([float(bndbox["xmin"]) - 1, float(bndbox["ymin"]) - 1,
                      float(bndbox["xmax"]), float(bndbox["ymax"])])
        labels.append(_CLASS_INDEX[name])
        difficult.append(is_difficult)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


class VOCDetectionDataset(Dataset):
    """Pascal VOC as ``(image (3, S, S) float in [0, 1], target)`` pairs, images squashed to S x S.

    Like the original lesson, images are resized to a square without cropping (objects at the
    border are kept; aspect ratios change) and the boxes are scaled with them. ``image_size=None``
    keeps each image's own size. ``download=True`` is passed to torchvision, which fetches the
    archive from the VOC mirror (about 900 MB for 2007 trainval) when the machine has internet.
    """

    def __init__(self, root: str | os.PathLike | None = None, year: str = "2007", image_set: str = "trainval",
                 image_size: int | None = 224, keep_difficult: bool = False, download: bool = False):
        from torchvision.datasets import VOCDetection

        if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        found = find_voc_root(root, year)
        if found is None and not download:
            where = root if root is not None else os.environ.get(VOC_ROOT_ENV) or _COURSE_DATA_DIR
            raise FileNotFoundError(
                f"Pascal VOC {year} not found: expected {Path(where) / 'VOCdevkit' / f'VOC{year}'} "
                f"(pass root=..., set {VOC_ROOT_ENV}, or use download=True)")
        self.root = found if found is not None else Path(root if root is not None else _COURSE_DATA_DIR)
        self.voc = VOCDetection(str(self.root), year=year, image_set=image_set, download=download)
        self.image_size = image_size
        self.keep_difficult = keep_difficult
        self.class_names = VOC_CLASSES

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.functional import pil_to_tensor, resize

        pil_image, annotation = self.voc[index]
        target = parse_voc_target(annotation, keep_difficult=self.keep_difficult)
        image = pil_to_tensor(pil_image)  # (3, H, W) uint8
        height, width = image.shape[-2:]
        target["orig_size"] = torch.tensor([height, width])
        if self.image_size is not None:
            size = self.image_size
            image = resize(image, [size, size], antialias=True)
            scale = torch.tensor([size / width, size / height, size / width, size / height])
            target["boxes"] = target["boxes"] * scale
        target["image_id"] = torch.tensor(index)
        return image.float() / 255.0, target
