"""Training the two-stage detector on the shapes: the recipe, the shipped weights, the command."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from course_lib.data import ShapesDataset
from course_lib.detection.evaluate import mean_average_precision
from course_lib.detection.faster_rcnn.config import FasterRCNNConfig
from course_lib.detection.faster_rcnn.detector import LOSS_NAMES, TwoStageDetector
from course_lib.detection.faster_rcnn.train_shapes import (
    QUICK_RECIPE,
    SHAPES_FASTER_RCNN_PATH,
    ShapesFasterRCNNRecipe,
    evaluate_faster_rcnn,
    load_shapes_faster_rcnn,
    main,
    save_shapes_faster_rcnn,
    shapes_faster_rcnn_detector,
    train_shapes_faster_rcnn,
)
from course_lib.detection.train import TrainHistory
from course_lib.detection.train_shapes_ssd import ShapesRecipe, evaluate_ssd

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see tests/conftest.py

#: A tiny run through the same code: a few steps on a few images.
TINY = replace(QUICK_RECIPE, train_images=24, val_images=6, steps=3, batch_size=4)
#: The shipped file's quality, checked on the first images of the held-out split.
SHIPPED_MAP_50 = 0.90
SUBSET_IMAGES = 150
#: "A few MB at most".
MAX_FILE_BYTES = 4 * 2 ** 20


@pytest.fixture(scope="module")
def shipped() -> TwoStageDetector:
    return load_shapes_faster_rcnn()


def _same_detections(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b)
                                    for k in ("boxes", "labels", "scores"))


# --------------------------------------------------------------------------- the recipe


def test_recipes_build_the_same_detector_and_round_trip():
    full, quick = ShapesFasterRCNNRecipe(), QUICK_RECIPE
    assert quick.model_config() == full.model_config()  # the quick run trains the shipped architecture
    assert quick.steps < full.steps and quick.train_images < full.train_images
    config = full.model_config()
    assert isinstance(config, FasterRCNNConfig) and config.class_names == ShapesDataset.class_names
    assert config.stride == 2 ** len(full.stage_channels) and config.backbone_channels == full.stage_channels[-1]
    assert config.seed == full.seed and replace(full, seed=5).model_config().seed == 5
    # the held-out split is lesson 4's: same count, size and seed as the SSD's recipe
    ssd = ShapesRecipe()
    assert (full.val_images, full.image_size, full.seed) == (ssd.val_images, ssd.image_size, ssd.seed) == (500, 64, 0)
    stored = dataclasses.asdict(full)
    assert ShapesFasterRCNNRecipe.from_dict(stored) == full
    assert ShapesFasterRCNNRecipe.from_dict({k: list(v) if isinstance(v, tuple) else v
                                             for k, v in stored.items()}) == full  # lists, as a file may hold
    with pytest.raises(ValueError, match="unknown ShapesFasterRCNNRecipe fields: \\['colour'\\]"):
        ShapesFasterRCNNRecipe.from_dict({**stored, "colour": 1})


def test_quick_recipe_trains_and_the_loss_drops():
    rng_state = torch.get_rng_state()
    model, history, metrics = train_shapes_faster_rcnn(QUICK_RECIPE, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_state)  # initial weights from a forked generator
    assert not model.training and isinstance(history, TrainHistory)
    assert history.steps[-1] == QUICK_RECIPE.steps and set(history.parts) == set(LOSS_NAMES)
    assert history.loss[-1] < 0.75 * history.loss[0], history.loss
    objectness = history.parts["loss_objectness"]
    assert objectness[-1] < 0.5 * objectness[0], objectness  # the RPN learns first
    for key in ("map", "map_50", "map_75", "recall[0,16)", "recall", "any_recall[0,16)", "train_seconds",
                "train_cpu_seconds", "eval_seconds", "data_seconds", "load_before", "load_after"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["map"] <= metrics["map_50"] <= 1.0
    assert metrics["recall"] <= metrics["any_recall"]  # a score threshold only removes detections


def test_same_seed_same_training_and_data_can_be_passed_in():
    data = (*ShapesDataset("train", TINY.train_images, TINY.image_size, seed=TINY.seed).to_tensors(),
            *ShapesDataset("val", TINY.val_images, TINY.image_size, seed=TINY.seed).to_tensors())
    a, history_a, _ = train_shapes_faster_rcnn(TINY, progress=False)
    b, history_b, _ = train_shapes_faster_rcnn(TINY, progress=False, data=data)
    assert history_a.loss == history_b.loss and history_a.parts == history_b.parts
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    _, history_c, _ = train_shapes_faster_rcnn(replace(TINY, seed=1), progress=False)
    assert history_c.loss != history_a.loss


def test_evaluation_is_lesson_4s_and_a_perfect_detector_scores_1(shipped):
    images, targets = ShapesDataset("val", 12, 64, seed=0).to_tensors()
    # the same helpers and thresholds as the SSD's: equal numbers for the same detections
    ours, lesson_4s = evaluate_faster_rcnn(shipped, images, targets), evaluate_ssd(shipped, images, targets)
    assert ours.keys() == lesson_4s.keys()
    assert all(ours[k] == lesson_4s[k] or math.isnan(ours[k]) and math.isnan(lesson_4s[k]) for k in ours)

    class Oracle(torch.nn.Module):  # detects the ground truth
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # `predict` asks the parameters for the device

        def detect(self, batch, **options):
            assert len(batch) == len(targets)  # one batch
            return [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]

    metrics = evaluate_faster_rcnn(Oracle(), images, targets)
    assert metrics["map_50"] == metrics["map"] == metrics["recall"] == metrics["any_recall"] == 1.0


# --------------------------------------------------------------------------- the file


def test_save_and_load_round_trip_gives_identical_detections(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = TwoStageDetector(TINY.model_config()).eval()
    history = TrainHistory(steps=[1], loss=[2.0], parts={name: [0.5] for name in LOSS_NAMES}, lr=[1e-3])
    path = tmp_path / "frcnn.pt"
    save_shapes_faster_rcnn(model, path, TINY, history, {"map_50": 0.25}, command="made by hand")
    loaded = load_shapes_faster_rcnn(path=path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.metadata == {"recipe": dataclasses.asdict(TINY), "metrics": {"map_50": 0.25},
                               "loss_history": {"steps": [1], "loss": [2.0], "lr": [1e-3],
                                                "parts": {name: [0.5] for name in LOSS_NAMES}},
                               "command": "made by hand"}
    images, _ = ShapesDataset("val", 4, 64, seed=0).to_tensors()
    assert _same_detections(model.detect(images, score_threshold=0.0), loaded.detect(images, score_threshold=0.0))
    with pytest.raises(FileNotFoundError, match="course_lib.detection.faster_rcnn.train_shapes --out"):
        load_shapes_faster_rcnn(path=tmp_path / "missing.pt")


def test_shipped_file_loads_reproduces_its_config_and_finds_the_shapes(shipped):
    assert SHAPES_FASTER_RCNN_PATH.stat().st_size < MAX_FILE_BYTES
    assert not shipped.training
    assert all(v.dtype in (torch.float32, torch.int64) for v in shipped.state_dict().values())
    recipe = ShapesFasterRCNNRecipe.from_dict(shipped.metadata["recipe"])
    assert recipe.model_config() == shipped.config
    assert recipe == ShapesFasterRCNNRecipe()  # the shipped file is the default recipe's
    assert shipped.metadata["command"].startswith("python -m course_lib.detection.faster_rcnn.train_shapes")
    history = shipped.metadata["loss_history"]
    assert history["steps"][-1] == recipe.steps and history["loss"][-1] < 0.5 * history["loss"][0]
    assert shipped.metadata["metrics"]["map_50"] >= SHIPPED_MAP_50
    images, targets = ShapesDataset("val", SUBSET_IMAGES, recipe.image_size, seed=recipe.seed).to_tensors()
    detections = shipped.detect(images, score_threshold=0.05)
    metrics = mean_average_precision(detections, targets)
    assert metrics["map_50"] >= SHIPPED_MAP_50, metrics


def test_shipped_detector_as_the_offline_fallback(shipped, monkeypatch):
    from course_lib.detection import pretrained
    from course_lib.detection.pretrained import offline_detectors

    # registration stays in this test: the registry lives in offline_detectors
    monkeypatch.setattr(offline_detectors, "_FALLBACKS", dict(offline_detectors._FALLBACKS))
    pretrained.register_fallback("shapes_faster_rcnn",
                                 "course_lib.detection.faster_rcnn.train_shapes:shapes_faster_rcnn_detector")
    loaded = pretrained.load_detector("shapes_faster_rcnn", device="cpu")
    assert loaded.info.name == "shapes_faster_rcnn" and loaded.info.categories == shipped.config.class_names
    assert loaded.info.num_params == sum(p.numel() for p in shipped.parameters())
    assert loaded.info.box_map == pytest.approx(100 * shipped.metadata["metrics"]["map"])
    direct = shapes_faster_rcnn_detector("cpu")
    assert direct.info == loaded.info
    # any image size: a 96 x 128 picture is padded to a square and detected at 64 px
    images, targets = ShapesDataset("val", 2, 64, seed=0).to_tensors()
    big = torch.nn.functional.interpolate(images, scale_factor=2.0, mode="nearest")
    wide = torch.cat((big, torch.zeros(2, 3, 128, 0)), dim=-1)[:, :, :96, :]  # (2, 3, 96, 128)
    for image, found in zip(wide, loaded.model(list(wide))):
        assert found["boxes"].shape[1] == 4 and found["labels"].shape == found["scores"].shape
        assert bool((found["boxes"][:, 2] <= 128).all()) and bool((found["boxes"][:, 3] <= 96).all())
    exact = loaded.model(list(images))  # 64 px images: the same detections as the detector's own
    assert _same_detections(exact, shipped.detect(images, score_threshold=pretrained.FALLBACK_SCORE_THRESHOLD))


# --------------------------------------------------------------------------- the command


def test_command_trains_and_saves_a_loadable_detector(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "tiny.pt"
    try:
        main(["--quick", "--steps", "2", "--batch-size", "4", "--train-images", "8", "--val-images", "4",
              "--threads", "1", "--quiet", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "| Faster R-CNN, 2 steps of 4 |" in printed and f"saved {out}" in printed
    model = load_shapes_faster_rcnn(path=out)
    recipe = ShapesFasterRCNNRecipe.from_dict(model.metadata["recipe"])
    assert recipe == replace(QUICK_RECIPE, steps=2, batch_size=4, train_images=8, val_images=4)
    assert recipe.model_config() == model.config
    assert model.metadata["command"] == (f"python -m course_lib.detection.faster_rcnn.train_shapes --quick --steps 2 "
                                         f"--batch-size 4 --train-images 8 --val-images 4 --threads 1 --quiet "
                                         f"--out {out}")
    assert set(model.metadata["metrics"]) >= {"map", "map_50", "recall[0,16)", "train_seconds", "train_cpu_seconds"}
    assert model.metadata["loss_history"]["steps"] == [2] and set(model.metadata["loss_history"]["parts"]) == set(
        LOSS_NAMES)
