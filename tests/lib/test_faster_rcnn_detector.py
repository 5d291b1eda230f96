"""TwoStageDetector: the whole Faster R-CNN against torchvision's FasterRCNN, the lesson's numbers, training."""
from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.ops import MultiScaleRoIAlign

from course_lib.data import ShapesDataset
from course_lib.detection.evaluate import predict
from course_lib.detection.faster_rcnn import (
    LOSS_NAMES,
    TORCHVISION_SETTINGS,
    FasterRCNNConfig,
    ProposalSettings,
    TwoStageDetector,
    load_faster_rcnn,
    save_faster_rcnn,
    state_dict_from_torchvision,
    vgg16_backbone,
)
from course_lib.detection.matching import IGNORE, POSITIVE
from course_lib.detection.train import DetectionBatches, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see tests/conftest.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Smaller proposal counts than the defaults keep the comparisons quick.
SMALL = FasterRCNNConfig(train_proposals=ProposalSettings(600, 150), test_proposals=ProposalSettings(300, 60),
                         roi_batch_size=48, rpn_batch_size=128)
# The lesson's image: two helmets, (y1, x1, y2, x2) in the source; ours (x1, y1, x2, y2).
LESSON_BOXES = torch.tensor([[160, 147, 260, 234], [139, 312, 200, 348]], dtype=torch.float32)[:, [1, 0, 3, 2]]


def shapes_batch(count: int, seed: int = 0, size: int = 64, empty: tuple[int, ...] = ()):
    images, targets = ShapesDataset("train", count, size, seed=seed).to_tensors()
    for i in empty:  # an image without objects
        targets[i] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    return images, targets


def seeded_model(config: FasterRCNNConfig | None = None, seed: int = 0, backbone=None) -> TwoStageDetector:
    with torch.random.fork_rng():  # reproducible initial weights, the global generator left as it was
        torch.manual_seed(seed)
        return TwoStageDetector(config, backbone=backbone)


def canonical(detection: dict[str, torch.Tensor]) -> torch.Tensor:
    """(D, 6) rows (score, label, box) sorted by score, equal scores by their other columns."""
    rows = torch.cat((detection["scores"][:, None].double(), detection["labels"][:, None].double(),
                      detection["boxes"].double()), dim=1)
    for column in reversed(range(1, 6)):  # stable sorts, least significant column first
        rows = rows[torch.sort(rows[:, column], stable=True).indices]
    return rows[torch.sort(rows[:, 0], descending=True, stable=True).indices]


def torchvision_twin(model: TwoStageDetector, image_size: tuple[int, int], seed: int) -> FasterRCNN:
    """torchvision's FasterRCNN with our backbone, one feature level, a transform that changes nothing;
    random weights (not tiny) copied into ``model``."""
    c = model.config
    backbone = copy.deepcopy(model.backbone)
    backbone.out_channels = c.backbone_channels
    tv = FasterRCNN(
        backbone, num_classes=None, min_size=min(image_size), max_size=max(image_size),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator((c.anchor_sizes,), (c.anchor_ratios,)),
        rpn_head=TorchvisionRPNHead(c.backbone_channels, c.anchors_per_location),
        rpn_pre_nms_top_n_train=c.train_proposals.pre_nms_top_n, rpn_post_nms_top_n_train=c.train_proposals.post_nms_top_n,
        rpn_pre_nms_top_n_test=c.test_proposals.pre_nms_top_n, rpn_post_nms_top_n_test=c.test_proposals.post_nms_top_n,
        rpn_nms_thresh=c.train_proposals.nms_threshold, rpn_fg_iou_thresh=c.rpn_positive_iou,
        rpn_bg_iou_thresh=c.rpn_negative_iou, rpn_batch_size_per_image=c.rpn_batch_size,
        rpn_positive_fraction=c.rpn_positive_fraction, rpn_score_thresh=c.train_proposals.score_threshold,
        box_roi_pool=MultiScaleRoIAlign(["0"], c.pooled_size, c.sampling_ratio),
        box_head=TwoMLPHead(c.backbone_channels * c.pooled_size ** 2, c.representation_size),
        box_predictor=FastRCNNPredictor(c.representation_size, c.num_classes),
        box_score_thresh=c.score_threshold, box_nms_thresh=c.nms_threshold,
        box_detections_per_img=c.detections_per_image, box_fg_iou_thresh=c.roi_foreground_iou,
        box_bg_iou_thresh=c.roi_background_iou[1], box_batch_size_per_image=c.roi_batch_size,
        box_positive_fraction=c.roi_positive_fraction)
    # In training its transform draws a random min size per image (one number from the global
    # generator, which would shift the samplers' draws): with a single size there is nothing to draw.
    tv.transform.torch_choice = lambda sizes: sizes[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights large enough that objectness and classes vary
        for name, p in tv.named_parameters():
            if name.startswith(("rpn.", "roi_heads.")):
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if "rpn" in name else 0.05))
    model.load_state_dict(state_dict_from_torchvision(tv.state_dict()))
    return tv


# --------------------------------------------------------------------------- against torchvision


@pytest.mark.parametrize(("seed", "batch", "config", "size"), [
    (0, 1, SMALL, (64, 64)),
    (1, 3, SMALL, (64, 64)),
    (2, 2, SMALL.replace(anchor_ratios=(1.0,), rpn_negative_iou=0.4), (64, 64)),
    (3, 2, SMALL.replace(**{**TORCHVISION_SETTINGS, "representation_size": 64}), (96, 128)),
])
def test_detections_equal_torchvision_faster_rcnn(seed, batch, config, size):
    model = seeded_model(config, seed).eval()
    tv = torchvision_twin(model, size, seed).eval()
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours, theirs = model(images), tv(list(images))
    assert len(ours) == batch and sum(len(d["boxes"]) for d in ours) > batch  # detections to compare
    for got, expected in zip(ours, theirs):
        assert set(got) == {"boxes", "labels", "scores"}
        assert torch.equal(got["scores"], expected["scores"])
        # The same detections; in the same order except among exactly equal scores: with more than
        # 1,000 candidate boxes torchvision's NMS goes class by class and re-sorts with an unstable sort.
        assert torch.equal(canonical(got), canonical(expected))
        if len(got["scores"]) == len(torch.unique(got["scores"])):
            assert all(torch.equal(got[key], expected[key]) for key in ("boxes", "labels"))


@pytest.mark.parametrize(("seed", "batch", "empty", "config", "size"), [
    (0, 2, (), SMALL, (64, 64)),
    (1, 3, (1,), SMALL, (64, 64)),  # an image without objects
    (2, 2, (), SMALL.replace(**{**TORCHVISION_SETTINGS, "representation_size": 64, "roi_batch_size": 100}), (96, 128)),
])
def test_training_losses_and_gradients_equal_torchvision_faster_rcnn(seed, batch, empty, config, size):
    model = seeded_model(config, seed).train()
    tv = torchvision_twin(model, size, seed).train()
    images, targets = shapes_batch(batch, seed, empty=empty)
    if size != (64, 64):
        images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
        scale = torch.tensor([size[1] / 64, size[0] / 64] * 2)
        targets = [{"boxes": t["boxes"] * scale, "labels": t["labels"]} for t in targets]
    torch.manual_seed(seed)  # torchvision's samplers draw from the global generator ...
    expected = tv(list(images), copy.deepcopy(targets))
    ours = model(images, targets, generator=torch.Generator().manual_seed(seed))  # ... ours from this one
    assert set(ours) == set(LOSS_NAMES) == set(expected)
    for name in LOSS_NAMES:
        torch.testing.assert_close(ours[name], expected[name], msg=name)
    sum(ours.values()).backward()
    sum(expected.values()).backward()
    theirs = state_dict_from_torchvision({k: p.grad for k, p in tv.named_parameters()})
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], msg=name)


# --------------------------------------------------------------------------- the lesson's numbers


def test_vgg16_backbone_gives_a_50x50_map_for_an_800_pixel_image(monkeypatch):
    with torch.device("meta"):  # the architecture only: no memory, no arithmetic
        backbone = vgg16_backbone()
        features = backbone(torch.empty(1, 3, 800, 800))
        theirs = torchvision.models.vgg16(weights=None).features[:-1]  # without the last max-pool
    assert features.shape == (1, 512, 50, 50)
    assert sum(isinstance(m, nn.Conv2d) for m in backbone) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in backbone) == 4  # stride 2^4 = 16
    assert [type(m) for m in backbone] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in backbone.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    # torchvision's weights (here: a stand-in state dict with their names) load as they are.
    small = {f"features.{k}": torch.randn(v.shape) for k, v in backbone.state_dict().items()}
    small["classifier.0.weight"] = torch.zeros(1)
    monkeypatch.setattr("course_lib.weights.fetch_state_dict", lambda weights, progress=False: small)
    loaded = vgg16_backbone(weights="IMAGENET1K_V1")
    assert all(torch.equal(v, small[f"features.{k}"]) for k, v in loaded.state_dict().items())


def test_seed_walkthrough_numbers():
    """The lesson's 800 x 800 walkthrough with every setting of its source (VGG16's stride and
    channels from a cheap stand-in backbone, a narrow head)."""
    config = FasterRCNNConfig.seed_vgg16(backbone="custom", representation_size=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        stand_in = nn.Conv2d(3, 512, kernel_size=16, stride=16)  # (1, 512, 50, 50) like VGG16's features
        model = TwoStageDetector(config, backbone=stand_in)
        nn.init.normal_(stand_in.weight, std=0.1)  # features that vary from cell to cell
    image = torch.rand(1, 3, 800, 800, generator=torch.Generator().manual_seed(0))
    target = [{"boxes": LESSON_BOXES, "labels": torch.tensor([1, 1])}]
    with torch.no_grad():
        train = model.stages(image, target, training=True)
        test = model.stages(image, training=False)
    assert train.features.shape == (1, 512, 50, 50)
    assert train.anchors.shape == (22_500, 4) and train.rpn.objectness.shape == (1, 22_500, 2)
    assert int((train.rpn_targets[0].labels != IGNORE).sum()) <= 8_940  # only anchors inside the image
    sampled = train.rpn_sampled_labels
    assert int((sampled != IGNORE).sum()) == 256 and int((sampled == POSITIVE).sum()) <= 128
    # 12,000 best boxes -> NMS 0.7 -> 2,000 (training); 6,000 -> 300 (testing). (How many survive NMS
    # depends on the weights: with these, more than 2,000.)
    assert train.proposals[0].shape == (2_000, 4) and test.proposals[0].shape == (300, 4)
    rois = train.rois[0]
    assert rois.boxes.shape == (128, 4) and int((rois.labels > 0).sum()) <= 32
    assert train.pooled.shape == (128, 512, 7, 7) and model.detection_head.fc6.in_features == 25_088
    assert train.class_logits.shape == (128, 2) and train.box_regression.shape == (128, 8)
    assert all(math.isfinite(float(v)) for v in train.losses.values())
    assert test.detections is not None and test.losses is None


# --------------------------------------------------------------------------- using it


def test_config_presets_and_round_trip():
    seed = FasterRCNNConfig.seed_vgg16()
    assert (seed.backbone, seed.stride, seed.backbone_channels, seed.num_classes) == ("vgg16", 16, 512, 2)
    assert seed.anchor_sizes == (128.0, 256.0, 512.0) and seed.anchors_per_location == 9
    assert (seed.train_proposals.pre_nms_top_n, seed.train_proposals.post_nms_top_n) == (12_000, 2_000)
    assert (seed.test_proposals.pre_nms_top_n, seed.test_proposals.post_nms_top_n) == (6_000, 300)
    assert (seed.rpn_batch_size, seed.rpn_positive_fraction, seed.roi_batch_size, seed.roi_positive_fraction) == (
        256, 0.5, 128, 0.25)
    assert (seed.objectness, seed.rpn_loss, seed.pooling, seed.anchor_convention) == (
        "softmax", "seed", "roi_pool", "seed")
    assert seed.train_proposals.min_size == 16 and seed.train_proposals.order == "seed"
    torchvision_like = FasterRCNNConfig().replace(**TORCHVISION_SETTINGS)
    assert torchvision_like.roi_batch_size == 512 and torchvision_like.representation_size == 1024
    for config in (FasterRCNNConfig(), seed, torchvision_like):
        assert FasterRCNNConfig.from_dict(config.to_dict()) == config


def test_stages_show_every_step_without_touching_batchnorm():
    model = seeded_model(SMALL).eval()
    images, targets = shapes_batch(2)
    running_mean = model.backbone[0][1].running_mean.clone()
    stages = model.stages(images, targets, training=True)  # training targets of an eval-mode model
    assert torch.equal(model.backbone[0][1].running_mean, running_mean)
    a = SMALL.anchors_per_location * 16 * 16
    assert stages.features.shape == (2, 64, 16, 16) and stages.anchors.shape == (a, 4)
    assert stages.rpn.deltas.shape == (2, a, 4) and stages.rpn.objectness.shape == (2, a)
    assert [len(p) for p in stages.proposals] == [len(s) for s in stages.proposal_scores]
    assert all(len(p) <= 150 for p in stages.proposals)
    assert [len(r.boxes) for r in stages.rois] == [48, 48] and stages.roi_boxes[0] is stages.rois[0].boxes
    assert stages.pooled.shape == (96, 64, 7, 7) and stages.class_logits.shape == (96, 4)
    assert set(stages.losses) == set(LOSS_NAMES) and stages.detections is None
    evaluation = model.stages(images)
    assert evaluation.rois is None and evaluation.losses is None and len(evaluation.detections) == 2
    assert all(len(p) <= 60 for p in evaluation.roi_boxes)


def test_default_config_suits_the_shapes_data():
    config = FasterRCNNConfig()
    assert config.num_classes == 4 and config.class_names == ("background", "circle", "square", "triangle")
    assert config.stride == 4 and min(config.anchor_sizes) == 8 and max(config.anchor_sizes) == 48
    model = seeded_model()
    images, targets = shapes_batch(2)
    stages = model.stages(images, targets, training=True)
    assert stages.anchors.shape == (16 * 16 * 18, 4)  # 4,608 anchors
    # every object has positive anchors, and the ROI samples hold every object
    for t, rpn, rois in zip(targets, stages.rpn_targets, stages.rois):
        assert set(rpn.matched_gt[rpn.labels == POSITIVE].tolist()) == set(range(len(t["boxes"])))
        assert set(rois.matched_gt[rois.labels > 0].tolist()) == set(range(len(t["boxes"])))


def total_and_parts(model, images, targets):
    losses = model(images, targets)
    return {"total": sum(losses.values()), **losses}


def test_training_makes_the_loss_drop():
    images, targets = shapes_batch(16, seed=3)
    model = seeded_model(FasterRCNNConfig(seed=0))
    batches = DetectionBatches(images, targets, batch_size=4, generator=torch.Generator().manual_seed(0))
    start = time.process_time()
    history = fit(model, batches, total_and_parts, steps=60, lr=3e-3, progress=False, log_every=5)
    seconds = time.process_time() - start
    assert history.loss[-1] < 0.6 * history.loss[0], history.loss  # 2.0 -> about 1.0
    objectness = history.parts["loss_objectness"]
    assert objectness[-1] < 0.3 * objectness[0], objectness  # the RPN learns fastest
    assert seconds < 20, f"{seconds:.1f} s of CPU time"
    detections = predict(model, images[:4], batch_size=2)  # evaluate.predict calls model.detect
    assert len(detections) == 4 and all(d["boxes"].device.type == "cpu" for d in detections)
    assert not model.training


def test_save_and_load_round_trip(tmp_path):
    model = seeded_model(SMALL.replace(seed=3)).eval()
    images, _ = shapes_batch(2)
    save_faster_rcnn(model, tmp_path / "frcnn.pt", map_50=0.5)
    loaded = load_faster_rcnn(tmp_path / "frcnn.pt")
    assert loaded.config == model.config and loaded.metadata == {"map_50": 0.5} and not loaded.training
    for a, b in zip(model.detect(images), loaded.detect(images)):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "scores"))
    # a custom backbone travels as weights; the module is passed back in
    custom = FasterRCNNConfig(backbone="custom", stage_channels=(), stage_depths=(), backbone_channels=8, stride=4)
    model = TwoStageDetector(custom, backbone=nn.Conv2d(3, 8, 4, stride=4))
    save_faster_rcnn(model, tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="pass the backbone module"):
        load_faster_rcnn(tmp_path / "custom.pt")
    loaded = load_faster_rcnn(tmp_path / "custom.pt", backbone=nn.Conv2d(3, 8, 4, stride=4))
    assert torch.equal(loaded.backbone.weight, model.backbone.weight)
    with pytest.raises(FileNotFoundError):
        load_faster_rcnn(tmp_path / "missing.pt")


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    images, targets = shapes_batch(2)
    model = seeded_model(SMALL).eval()  # eval: the BatchNorm statistics stay put between passes
    state = torch.get_rng_state()
    a = model.stages(images, targets, training=True)
    model.reseed(SMALL.seed)
    b = model.stages(images, targets, training=True)
    c = model.stages(images, targets, training=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.rpn_sampled_labels, b.rpn_sampled_labels)
    assert not torch.equal(b.rpn_sampled_labels, c.rpn_sampled_labels)  # the generator moves on
    d = model.stages(images, targets, training=True, generator=torch.Generator().manual_seed(SMALL.seed))
    assert torch.equal(a.rois[1].boxes, d.rois[1].boxes)
    assert torch.equal(copy.deepcopy(model).stages(images, targets, training=True).rpn_sampled_labels,
                       model.stages(images, targets, training=True).rpn_sampled_labels)


def test_edge_cases():
    images, targets = shapes_batch(2, empty=(0, 1))
    model = seeded_model(SMALL)
    losses = model(images, targets)  # no object in any image: background only
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    assert float(losses["loss_box_reg"].detach()) == 0
    # all anchors cross the border of a 16-pixel image (they are 8 to 48 px, centred on the grid)
    outside = seeded_model(SMALL.replace(rpn_ignore_outside=True, anchor_scales=(8.0, 12.0)))
    tiny = torch.rand(1, 3, 16, 16)
    losses = outside(tiny, [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([1])}])
    assert float(losses["loss_objectness"].detach()) == 0 and float(losses["loss_rpn_box_reg"].detach()) == 0
    assert float(losses["loss_classifier"].detach()) > 0  # the head still learns from the ground truth
    # nothing survives the proposal filter: no detections
    no_proposals = seeded_model(SMALL.replace(test_proposals=ProposalSettings(100, 10, min_size=1e3))).eval()
    detections = no_proposals(list(images))  # a list of images works too
    assert [d["boxes"].shape for d in detections] == [(0, 4), (0, 4)]


def test_bad_input_gives_one_line_errors():
    model = TwoStageDetector(SMALL)
    images, targets = shapes_batch(2)
    cases = [
        (lambda: model(images), ValueError, "targets are needed in training"),
        (lambda: model(images[0], targets), ValueError, r"images must be a \(B, 3, H, W\) tensor"),
        (lambda: model(images[:, :1], targets), ValueError, r"images must be a \(B, 3, H, W\) tensor"),
        (lambda: model((images * 255).byte(), targets), TypeError, "images must be floating point"),
        (lambda: model(images, targets[:1]), ValueError, "targets must be a list of 2 dicts"),
        (lambda: model(images, [{"boxes": torch.zeros(1, 4)}] * 2), ValueError, "must be a dict with 'boxes'"),
        (lambda: model(images, [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([4])}] * 2),
         ValueError, r"labels'\] must lie in 1..3"),
        (lambda: model(images, [{"boxes": torch.tensor([[5.0, 0, 0, 5]]), "labels": torch.tensor([1])}] * 2),
         ValueError, "x1 < x2"),
        (lambda: model(images, [{"boxes": torch.tensor([[5.0, 0, 5, 5]]), "labels": torch.tensor([1])}] * 2),
         ValueError, "positive width and height"),
        (lambda: TwoStageDetector(SMALL, backbone=nn.Conv2d(3, 8, 4, stride=4))(images, targets), ValueError,
         "the backbone gave"),
        (lambda: FasterRCNNConfig(stride=8), ValueError, "the small backbone gives 64 channels at stride 4"),
        (lambda: FasterRCNNConfig(num_classes=1, class_names=()), ValueError, "num_classes counts the background"),
        (lambda: FasterRCNNConfig(pooling="max"), ValueError, "pooling must be one of"),
        (lambda: FasterRCNNConfig.from_dict({"colour": 1}), ValueError, "unknown FasterRCNNConfig fields"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_detector_runs_on_the_device(device):
    model = seeded_model(SMALL).to(device)
    images, targets = shapes_batch(2)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    assert all(v.device.type == torch.device(device).type for v in losses.values())
    sum(losses.values()).backward()
    detections = model.detect(images)
    assert all(d["boxes"].device.type == torch.device(device).type for d in detections)
