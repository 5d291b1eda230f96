"""Data for the lessons, all available offline.

- `ShapesDataset`: a synthetic detection dataset (circles, squares, triangles) drawn on the fly,
  with torchvision-style targets; `collate_detection` batches it in a DataLoader.
- `sample_image`: real photographs that ship inside scikit-image and matplotlib.
- `VOCDetectionDataset`: Pascal VOC, when a learner has it on disk (found by `find_voc_root`).
- `read_video` / `iter_frames` / `write_video` / `MP4Writer` / `GIFWriter` / `show_video`: video in and
  out through imageio-ffmpeg (torchvision 0.28+ no longer reads or writes video).
- `shapes_clip` / `photo_clip`: offline clips: moving shapes with ground-truth tracks, and camera
  moves over the sample photographs.
"""
from __future__ import annotations

from .images import SAMPLE_IMAGES, SampleImage, sample_image, sample_image_info, sample_image_names
from .voc import VOC_CLASSES, VOCDetectionDataset, find_voc_root
from .clips import FIRST_TRACK_ID, PhotoClip, ShapesClip, photo_clip, shapes_clip
from .video import (GIFWriter, MP4Writer, VideoFrames, VideoInfo, iter_batches, iter_frames, read_video, show_video,
                    video_info, video_writer, write_video)
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
    "read_video",
    "iter_frames",
    "iter_batches",
    "video_info",
    "VideoInfo",
    "VideoFrames",
    "MP4Writer",
    "GIFWriter",
    "video_writer",
    "write_video",
    "show_video",
    "shapes_clip",
    "photo_clip",
    "ShapesClip",
    "PhotoClip",
    "FIRST_TRACK_ID",
]
