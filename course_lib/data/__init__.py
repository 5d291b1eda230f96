"""Data for the lessons, all available offline.

- `ShapesDataset`: a synthetic detection dataset (circles, squares, triangles) drawn on the fly,
  with torchvision-style targets; `collate_detection` batches it in a DataLoader.
- `sample_image`: real photographs that ship inside scikit-image and matplotlib.
- `VOCDetectionDataset`: Pascal VOC, when a learner has it on disk (found by `find_voc_root`).
"""
from __future__ import annotations

from .images import SAMPLE_IMAGES, SampleImage, sample_image, sample_image_info, sample_image_names
from .voc import VOC_CLASSES, VOCDetectionDataset, find_voc_root
from .shapes import BACKGROUND, CLASSES, NUM_CLASSES, SPLITS, ShapesDataset, ShapesSample, collate_detection

__all__ = [
    "BACKGROUND",
    "CLASSES",
    "NUM_CLASSES",
    "SPLITS",
    "ShapesDataset",
    "ShapesSample",
    "collate_detection",
    "SAMPLE_IMAGES",
    "SampleImage",
    "sample_image",
    "sample_image_info",
    "sample_image_names",
    "VOC_CLASSES",
    "VOCDetectionDataset",
    "find_voc_root",
]
