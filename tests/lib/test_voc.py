"""Pascal VOC loading, on a tiny data set written in VOC's own layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_lib.data.voc import VOC_CLASSES, VOC_ROOT_ENV, VOCDetectionDataset, find_voc_root, parse_voc_target
from voc_layout import write_voc


@pytest.fixture()
def voc_root(tmp_path) -> Path:
    return write_voc(tmp_path / "pascal")


def test_class_list_has_background_first_and_twenty_classes():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    # The original lesson's worked example: chair, dining table and sofa (0-based there: 8, 10, 17).
    assert [VOC_CLASSES.index(c) for c in ("chair", "diningtable", "sofa")] == [9, 11, 18]


def test_find_voc_root(voc_root, tmp_path, monkeypatch):
    assert find_voc_root(voc_root) == voc_root
    assert find_voc_root(tmp_path / "nowhere") is None
    monkeypatch.setenv(VOC_ROOT_ENV, str(voc_root))
    assert find_voc_root() == voc_root
    assert find_voc_root(year="2012") is None


def test_native_size_targets_are_continuous_pixel_boxes(voc_root):
    data = VOCDetectionDataset(voc_root, image_set="trainval", image_size=None)
    assert len(data) == 3
    image, target = data[0]
    assert image.shape == (3, 100, 200) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # 1-based inclusive pixels -> continuous coordinates: only the minimum corner moves by one.
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20.0, 60.0, 80.0], [100.0, 0.0, 200.0, 100.0]]))
    assert target["labels"].tolist() == [VOC_CLASSES.index("chair"), VOC_CLASSES.index("sofa")]
    assert target["labels"].dtype == torch.int64
    assert target["orig_size"].tolist() == [100, 200]
    # The whole image as a box covers exactly the image.
    _, whole = data[1]
    torch.testing.assert_close(whole["boxes"], torch.tensor([[0.0, 0.0, 120.0, 160.0]]))


def test_difficult_objects_are_dropped_unless_kept(voc_root):
    kept = VOCDetectionDataset(voc_root, image_set="trainval", image_size=None, keep_difficult=True)
    _, target = kept[0]
    assert target["labels"].tolist() == [9, 18, 11]
    assert target["difficult"].tolist() == [False, False, True]


def test_resizing_scales_boxes_with_the_image(voc_root):
    data = VOCDetectionDataset(voc_root, image_set="trainval", image_size=64)
    image, target = data[0]
    assert image.shape == (3, 64, 64)
    sx, sy = 64 / 200, 64 / 100
    expected = torch.tensor([[10 * sx, 20 * sy, 60 * sx, 80 * sy], [100 * sx, 0.0, 64.0, 64.0]])
    torch.testing.assert_close(target["boxes"], expected)


def test_image_without_objects_has_empty_targets(voc_root):
    data = VOCDetectionDataset(voc_root, image_set="trainval", image_size=32)
    _, target = data[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_split_files_select_images(voc_root):
    assert len(VOCDetectionDataset(voc_root, image_set="train")) == 2


def test_batches_feed_the_ssd_loss(voc_root):
    from course_lib.data import collate_detection
    from course_lib.detection.ssd import SSD, SSDConfig

    data = VOCDetectionDataset(voc_root, image_set="trainval", image_size=64)
    images, targets = collate_detection([data[i] for i in range(len(data))])
    model = SSD(SSDConfig(num_classes=len(VOC_CLASSES), image_size=64, class_names=VOC_CLASSES))
    loss = model.loss(model(images), targets, classification="bce")
    assert torch.isfinite(loss.total) and loss.num_positive >= 3


def test_missing_data_set_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        VOCDetectionDataset(tmp_path / "empty")


def test_bad_arguments(voc_root):
    with pytest.raises(ValueError, match="image_size"):
        VOCDetectionDataset(voc_root, image_size=0)
    with pytest.raises(ValueError, match="annotation"):
        parse_voc_target({"object": []})
    bad = {"annotation": {"object": [{"name": "unicorn", "difficult": "0",
                                      "bndbox": {"xmin": "1", "ymin": "1", "xmax": "2", "ymax": "2"}}]}}
    with pytest.raises(ValueError, match="unicorn"):
        parse_voc_target(bad)
