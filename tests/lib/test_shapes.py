"""The synthetic shapes dataset: targets format, determinism, splits, tight boxes, loaders, errors."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch.utils.data import DataLoader

from course_lib.data import (
    BACKGROUND,
    CLASSES,
    NUM_CLASSES,
    ShapesDataset,
    collate_detection,
)


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def _same_item(a, b) -> bool:
    (image_a, target_a), (image_b, target_b) = a, b
    return (
        torch.equal(image_a, image_b)
        and torch.equal(target_a["boxes"], target_b["boxes"])
        and torch.equal(target_a["labels"], target_b["labels"])
    )


def test_classes_reserve_zero_for_background():
    assert CLASSES[BACKGROUND] == "background" and BACKGROUND == 0
    assert CLASSES[1:] == ("circle", "square", "triangle")
    assert NUM_CLASSES == len(CLASSES) == 4
    assert ShapesDataset("train", 1).class_names == CLASSES


def test_items_have_torchvision_detection_format():
    dataset = ShapesDataset("train", num_images=40, image_size=(96, 128), min_objects=1, max_objects=5)
    assert len(dataset) == 40
    counts = []
    for image, target in dataset:  # iteration stops at the IndexError after the last item
        assert image.shape == (3, 96, 128) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert set(target) == {"boxes", "labels"}
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4)
        assert ((labels >= 1) & (labels < NUM_CLASSES)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        counts.append(len(labels))
    assert min(counts) >= 1 and max(counts) <= 5
    assert len(set(counts)) >= 3  # the number of objects varies


def test_all_classes_appear_in_about_equal_numbers():
    labels = torch.cat([ShapesDataset("train", 100)[i][1]["labels"] for i in range(100)])
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    assert counts[BACKGROUND] == 0
    assert counts[1:].min() > 0.25 * len(labels)


def test_same_item_twice_and_across_dataset_objects():
    first = ShapesDataset("train", 20, seed=3)
    second = ShapesDataset("train", 500, seed=3)  # the length does not change an item
    for index in (0, 7, 19):
        assert _same_item(first[index], first[index])
        assert _same_item(first[index], second[index])
    # Order does not matter either: reading items backwards gives the same items.
    backwards = [first[i] for i in reversed(range(5))][::-1]
    assert all(_same_item(a, first[i]) for i, a in enumerate(backwards))
    assert _same_item(first[-1], first[19])


def test_generation_leaves_global_state_alone():
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    ShapesDataset("train", 3)[2]
    ShapesDataset("train", 3).box_sizes()
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads


def test_dataloader_workers_give_the_same_items():
    dataset = ShapesDataset("val", num_images=12, image_size=64, seed=5)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_detection)
    batches = list(loader)
    assert len(batches) == 3
    for b, (images, targets) in enumerate(batches):
        assert images.shape == (4, 3, 64, 64) and isinstance(targets, list) and len(targets) == 4
        for k, target in enumerate(targets):
            assert _same_item((images[k], target), dataset[4 * b + k])


def test_splits_and_seeds_are_disjoint():
    n = 200
    train = {_digest(ShapesDataset("train", n, image_size=32, object_size=(4, 16))[i][0]) for i in range(n)}
    val = {_digest(ShapesDataset("val", n, image_size=32, object_size=(4, 16))[i][0]) for i in range(n)}
    other_seed = {_digest(ShapesDataset("train", n, image_size=32, object_size=(4, 16), seed=1)[i][0])
                  for i in range(n)}
    assert len(train) == len(val) == len(other_seed) == n  # no repeated image within a split either
    assert not train & val
    assert not train & other_seed
    # Layouts differ too, not only the noise.
    assert not torch.equal(ShapesDataset("train", 1)[0][1]["boxes"], ShapesDataset("val", 1)[0][1]["boxes"])


def _mask_extents(mask: torch.Tensor) -> list[float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_boxes_are_tight_around_the_visible_masks():
    dataset = ShapesDataset("train", 60, max_objects=5, max_aspect_ratio=2.0, return_masks=True)
    for index in range(len(dataset)):
        _, target = dataset[index]
        masks = target["masks"]
        assert masks.dtype == torch.bool and masks.shape == (len(target["labels"]), 128, 128)
        assert (masks.sum(dim=0) <= 1).all()  # visible masks never overlap
        for box, mask in zip(target["boxes"], masks):
            assert mask.any()
            assert box.tolist() == _mask_extents(mask)


def test_box_edges_touch_pixels_of_the_object_colour():
    """Without noise every object is one flat colour: each box edge has a pixel of it, nothing outside."""
    dataset = ShapesDataset("val", 30, noise_std=0.0, return_masks=True, seed=2)
    for index in range(len(dataset)):
        image, target = dataset[index]
        for box, mask in zip(target["boxes"].long().tolist(), target["masks"]):
            colors = image[:, mask].T.unique(dim=0)
            assert len(colors) == 1  # a flat colour ...
            same = (image == colors[0][:, None, None]).all(dim=0) & mask
            x1, y1, x2, y2 = box
            assert same[y1:y2, x1].any() and same[y1:y2, x2 - 1].any()  # ... touching the four edges
            assert same[y1, x1:x2].any() and same[y2 - 1, x1:x2].any()
            assert same.sum() == same[y1:y2, x1:x2].sum()


def test_shapes_look_like_their_class():
    """Filled fraction of a lone object's box: square ~1, circle ~pi/4, triangle ~1/2."""
    dataset = ShapesDataset("train", 90, min_objects=1, max_objects=1, return_masks=True)
    expected = {1: torch.pi / 4, 2: 1.0, 3: 0.5}
    for index in range(len(dataset)):
        _, target = dataset[index]
        (x1, y1, x2, y2), label, mask = target["boxes"][0].tolist(), int(target["labels"][0]), target["masks"][0]
        fill = float(mask.sum()) / ((x2 - x1) * (y2 - y1))
        assert abs(fill - expected[label]) < 0.12, (index, label, fill)


def test_object_size_and_aspect_ratio_parameters():
    lone = ShapesDataset("train", 60, min_objects=1, max_objects=1, object_size=(20, 30))
    sizes = lone.box_sizes()
    assert sizes.shape == (60, 2)
    assert sizes.max() <= 31 and sizes.max(dim=1).values.min() >= 19
    assert ((sizes[:, 0] - sizes[:, 1]).abs() <= 2).all()  # max_aspect_ratio=1: square boxes

    stretched = ShapesDataset("train", 60, max_aspect_ratio=3.0).box_sizes()
    ratios = stretched[:, 0] / stretched[:, 1]
    assert ratios.max() > 1.8 and ratios.min() < 1 / 1.8


def test_box_sizes_match_the_items():
    dataset = ShapesDataset("val", 25, seed=4)
    boxes = torch.cat([dataset[i][1]["boxes"] for i in range(len(dataset))])
    assert torch.equal(dataset.box_sizes(), boxes[:, 2:] - boxes[:, :2])
    assert torch.equal(dataset.box_sizes([3, 4]), torch.cat([dataset[i][1]["boxes"] for i in (3, 4)])[:, 2:]
                       - torch.cat([dataset[i][1]["boxes"] for i in (3, 4)])[:, :2])
    assert dataset.box_sizes([]).shape == (0, 2)


def test_images_without_objects_and_collate():
    dataset = ShapesDataset("train", 30, min_objects=0, max_objects=1)
    counts = [len(dataset[i][1]["labels"]) for i in range(len(dataset))]
    assert 0 in counts and 1 in counts
    empty = counts.index(0)
    image, target = dataset[empty]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, targets = collate_detection([dataset[empty], dataset[counts.index(1)]])
    assert images.shape == (2, 3, 128, 128)
    assert [len(t["labels"]) for t in targets] == [0, 1]


def test_collate_keeps_images_of_different_sizes_as_a_list():
    small, large = ShapesDataset("train", 1, image_size=32)[0], ShapesDataset("train", 1, image_size=64)[0]
    images, targets = collate_detection([small, large])
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 32, 32), (3, 64, 64)]
    with pytest.raises(ValueError, match="batch"):
        collate_detection([])


def test_to_tensors():
    dataset = ShapesDataset("val", 6, image_size=48)
    images, targets = dataset.to_tensors()
    assert images.shape == (6, 3, 48, 48) and len(targets) == 6
    assert _same_item((images[5], targets[5]), dataset[5])
    empty_images, empty_targets = ShapesDataset("val", 0, image_size=48).to_tensors()
    assert empty_images.shape == (0, 3, 48, 48) and empty_targets == []


def test_sample_gives_masks_even_without_return_masks():
    dataset = ShapesDataset("train", 3)
    sample = dataset.sample(1)
    image, target = dataset[1]
    assert torch.equal(sample.image, image) and torch.equal(sample.boxes, target["boxes"])
    assert sample.masks.shape[0] == len(target["labels"]) and "masks" not in target


def test_index_out_of_range():
    dataset = ShapesDataset("train", 3)
    with pytest.raises(IndexError, match="index 3"):
        dataset[3]
    with pytest.raises(IndexError):
        dataset[-4]
    assert _same_item(dataset[torch.tensor(2)], dataset[2])
    with pytest.raises(TypeError, match="index"):
        dataset[1.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"split": "validation"}, ValueError, "split"),
        ({"num_images": -1}, ValueError, "num_images"),
        ({"num_images": 2.5}, TypeError, "num_images"),
        ({"image_size": 8}, ValueError, "image_size"),
        ({"image_size": (64, 64, 3)}, TypeError, "image_size"),
        ({"min_objects": -1}, ValueError, "min_objects"),
        ({"min_objects": 3, "max_objects": 2}, ValueError, "max_objects"),
        ({"max_objects": 0}, ValueError, "max_objects"),
        ({"max_objects": 1000}, ValueError, "max_objects"),
        ({"object_size": (2, 10)}, ValueError, "object_size"),
        ({"object_size": (40, 20)}, ValueError, "object_size"),
        ({"object_size": (20, 500)}, ValueError, "object_size"),
        ({"object_size": "big"}, TypeError, "object_size"),
        ({"max_aspect_ratio": 0.5}, ValueError, "max_aspect_ratio"),
        ({"max_overlap": 1.5}, ValueError, "max_overlap"),
        ({"noise_std": -0.1}, ValueError, "noise_std"),
        ({"seed": -3}, ValueError, "seed"),
        ({"seed": "zero"}, TypeError, "seed"),
    ],
)
def test_bad_parameters_are_named_in_the_error(kwargs, error, names):
    with pytest.raises(error, match=names):
        ShapesDataset(**kwargs)


def test_no_overlap_setting_keeps_boxes_apart():
    dataset = ShapesDataset("train", 40, max_objects=4, max_overlap=0.0)
    for index in range(len(dataset)):
        boxes = dataset[index][1]["boxes"]
        top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
        bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
        assert (intersection.fill_diagonal_(0) == 0).all()


def test_crowded_images_overlap_sometimes():
    dataset = ShapesDataset("train", 40, min_objects=3, max_objects=4, max_overlap=0.3)
    overlapping = 0
    for index in range(len(dataset)):
        boxes = dataset[index][1]["boxes"]
        top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
        bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        overlapping += int(((bottom_right - top_left).clamp(min=0).prod(-1).fill_diagonal_(0) > 0).any())
    assert overlapping >= 8
