"""SSD: head layout, box codings, matching, the loss, inference, training, evaluation, shipped weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from course_lib.data import ShapesDataset
from course_lib.detection.anchors import grid_anchors
from course_lib.detection.boxes import box_iou, encode_boxes
from course_lib.detection.evaluate import (
    average_precision,
    match_detections,
    mean_average_precision,
    precision_recall_curve,
    recall_by_size,
)
from course_lib.detection.matching import match_anchors
from course_lib.detection.ssd import (
    SSD,
    SSD_BOX_WEIGHTS,
    SSDConfig,
    anchor_cell_sizes,
    flatten_conv,
    load_shapes_ssd,
    load_ssd,
    match_anchors_batched,
    pad_targets,
    postprocess,
    save_ssd,
    ssd_loss,
    ssd_targets,
    tanh_to_boxes,
)
from course_lib.detection.train import DetectionBatches, fit, flip_boxes

ONE_ANCHOR_GRID = SSDConfig(grids=(4,), zooms=(1.0,), ratios=((1.0, 1.0),))

# The original lesson's worked example (Pascal VOC): chair, dining table, sofa, printed there as
# normalised (y1, x1, y2, x2); converted once to (x1, y1, x2, y2).
LESSON_BOXES_YX = torch.tensor([[0.6786, 0.4866, 0.9911, 0.6250],
                                [0.7098, 0.0848, 0.9911, 0.5491],
                                [0.5134, 0.8304, 0.6696, 0.9063]])
LESSON_BOXES = LESSON_BOXES_YX[:, [1, 0, 3, 2]]
# Non-zero entries of the lesson's 3 x 16 overlap matrix: (object, anchor) -> IoU.
LESSON_IOUS = {(0, 9): 0.0091, (0, 10): 0.0922, (0, 13): 0.0315, (0, 14): 0.3985,
               (1, 8): 0.0356, (1, 9): 0.0549, (1, 10): 0.0103, (1, 12): 0.2598, (1, 13): 0.4538, (1, 14): 0.0653,
               (2, 11): 0.1897}


def _random_targets(generator, batch, image_size=64, max_objects=4, num_classes=3, allow_empty=True):
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0 if allow_empty else 1, max_objects + 1, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * image_size * 0.7
        wh = 4 + torch.rand(n, 2, generator=generator) * image_size * 0.4
        boxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], dim=1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


# --- the head ------------------------------------------------------------------------------------


def test_flatten_conv_lays_anchors_out_row_major_with_the_k_of_a_cell_together():
    k, depth, height, width = 3, 2, 2, 4
    r, c, a, d = torch.meshgrid(torch.arange(height), torch.arange(width), torch.arange(k), torch.arange(depth),
                                indexing="ij")
    code = 1000 * r + 100 * c + 10 * a + d  # (H, W, k, D)
    x = code.permute(2, 3, 0, 1).reshape(1, k * depth, height, width).float()  # channel = a * D + d
    flat = flatten_conv(x, k)
    assert flat.shape == (1, height * width * k, depth)
    anchor = torch.arange(height * width * k)
    cell, a_index = anchor // k, anchor % k
    expected = 1000 * (cell // width)[:, None] + 100 * (cell % width)[:, None] + 10 * a_index[:, None] + torch.arange(depth)
    assert torch.equal(flat[0], expected.float())
    with pytest.raises(ValueError, match="k=4"):
        flatten_conv(x, 4)


def test_four_by_four_grid_with_one_anchor_gives_16_outputs():
    model = SSD(ONE_ANCHOR_GRID).eval()
    class_logits, box_outputs = model(torch.rand(2, 3, 64, 64))
    assert class_logits.shape == (2, 16, 4) and box_outputs.shape == (2, 16, 4)
    assert torch.equal(model.anchors, grid_anchors((4,), (1.0,), ((1.0, 1.0),)))


def test_multi_scale_head_has_the_lessons_189_anchors():
    config = SSDConfig()
    assert config.num_anchors == 189 and config.anchors_per_cell == 9
    model = SSD(config).eval()
    with torch.no_grad():
        class_logits, box_outputs = model(torch.rand(3, 3, 64, 64))
    assert class_logits.shape == (3, 189, 4) and box_outputs.shape == (3, 189, 4)
    assert torch.equal(model.anchors, grid_anchors())
    # Untrained, every class starts near the prior probability 0.01.
    assert float(torch.sigmoid(class_logits).mean()) == pytest.approx(0.01, abs=0.01)


def test_image_size_must_fit_the_grids():
    with pytest.raises(ValueError, match="grids"):
        SSD(SSDConfig(image_size=128))
    model = SSD(SSDConfig(image_size=128, stage_channels=(16, 32, 64, 64), stage_depths=(1, 1, 2, 2))).eval()
    assert model(torch.rand(1, 3, 128, 128))[0].shape == (1, 189, 4)
    with pytest.raises(ValueError, match="images must be"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="box_coding"):
        SSDConfig(box_coding="sigmoid")


def test_custom_backbone_like_the_lessons_resnet34_on_224_pixels():
    trunk = torch.nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2])
    model = SSD(SSDConfig(num_classes=21, image_size=224), backbone=trunk, backbone_channels=512).eval()
    class_logits, box_outputs = model(torch.rand(1, 3, 224, 224))  # 7x7 -> 4x4, 2x2, 1x1
    assert class_logits.shape == (1, 189, 21) and box_outputs.shape == (1, 189, 4)


# --- activations to boxes -------------------------------------------------------------------------


def test_tanh_coding_moves_half_a_cell_and_scales_between_half_and_one_and_a_half():
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),))
    cells = anchor_cell_sizes((4,), 1)
    torch.testing.assert_close(tanh_to_boxes(torch.zeros(16, 4), anchors, cells), anchors)
    huge = torch.full((16, 4), 50.0)  # tanh -> 1
    boxes = tanh_to_boxes(huge, anchors, cells)
    centre_shift = (boxes[:, :2] + boxes[:, 2:]) / 2 - (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centre_shift, torch.full((16, 2), 0.125))  # half of a 1/4 cell
    torch.testing.assert_close(boxes[:, 2:] - boxes[:, :2], torch.full((16, 2), 0.375))  # 1.5 x 0.25
    small = tanh_to_boxes(-huge, anchors, cells)
    torch.testing.assert_close(small[:, 2:] - small[:, :2], torch.full((16, 2), 0.125))  # 0.5 x 0.25


def test_tanh_coding_agrees_with_the_lessons_formula():
    """The lesson's actn_to_bb in its (y, x) centre-size layout gives the same boxes."""
    generator = torch.Generator().manual_seed(0)
    anchors = grid_anchors()
    cells = anchor_cell_sizes((4, 2, 1), 9)
    activations = torch.randn(189, 4, generator=generator)
    centre_yx = torch.stack([(anchors[:, 1] + anchors[:, 3]) / 2, (anchors[:, 0] + anchors[:, 2]) / 2], 1)
    size_hw = torch.stack([anchors[:, 3] - anchors[:, 1], anchors[:, 2] - anchors[:, 0]], 1)
    actn_yx = activations[:, [1, 0, 3, 2]]
    t = torch.tanh(actn_yx)
    centres = t[:, :2] / 2 * cells[:, None] + centre_yx
    hw = (t[:, 2:] / 2 + 1) * size_hw
    corners_yx = torch.cat([centres - hw / 2, centres + hw / 2], dim=1)
    torch.testing.assert_close(tanh_to_boxes(activations, anchors, cells), corners_yx[:, [1, 0, 3, 2]])


def test_delta_coding_inverts_the_encoding_of_the_matched_boxes():
    model = SSD(SSDConfig())
    generator = torch.Generator().manual_seed(1)
    targets = torch.rand(2, 189, 2, generator=generator) * 0.5
    boxes = torch.cat([targets, targets + 0.1 + torch.rand(2, 189, 2, generator=generator) * 0.4], dim=-1)
    deltas = encode_boxes(boxes, model.anchors, weights=SSD_BOX_WEIGHTS)
    torch.testing.assert_close(model.decode(deltas), boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode(torch.zeros(1, 189, 4))[0], model.anchors)


# --- matching -----------------------------------------------------------------------------------------


def test_lesson_worked_example_iou_matrix_and_matches():
    anchors = grid_anchors((4,), (1.0,), ((1.0, 1.0),))
    ious = box_iou(LESSON_BOXES, anchors)
    expected = torch.zeros(3, 16)
    for (gt, anchor), value in LESSON_IOUS.items():
        expected[gt, anchor] = value
    torch.testing.assert_close(ious, expected, atol=2e-4, rtol=0)
    best_iou, best_anchor = ious.max(dim=1)
    assert best_anchor.tolist() == [14, 13, 11]
    torch.testing.assert_close(best_iou, torch.tensor([0.3985, 0.4538, 0.1897]), atol=2e-4, rtol=0)
    # VOC labels with the background at 0: chair 9, dining table 11, sofa 18.
    labels, boxes = ssd_targets(LESSON_BOXES, torch.tensor([9, 11, 18]), anchors)
    expected_labels = torch.zeros(16, dtype=torch.int64)
    expected_labels[[11, 13, 14]] = torch.tensor([18, 11, 9])
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(boxes[14], LESSON_BOXES[0])
    # A lower threshold (0.25) also gives anchor 12 (IoU 0.2598) to the dining table.
    labels_low, _ = ssd_targets(LESSON_BOXES, torch.tensor([9, 11, 18]), anchors, iou_threshold=0.25)
    assert labels_low[12] == 11 and int((labels_low > 0).sum()) == 4


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_batched_matching_equals_matching_each_image(seed, threshold):
    generator = torch.Generator().manual_seed(seed)
    anchors = grid_anchors()
    targets = _random_targets(generator, batch=7, image_size=1)
    targets[seed % 7] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    # Ties: two identical objects, and an object identical to an anchor.
    targets[(seed + 1) % 7] = {"boxes": torch.stack([anchors[5], anchors[5], anchors[40] * 0.9]),
                               "labels": torch.tensor([1, 2, 3])}
    # A box covering four 4x4-grid anchors equally (IoU 0.25 each: the best-anchor forcing ties), and
    # zero-area boxes (a line, a point), which overlap nothing.
    targets[(seed + 2) % 7] = {"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.7],
                                                      [0.6, 0.6, 0.6, 0.6]]), "labels": torch.tensor([1, 2, 3])}
    boxes, labels, valid = pad_targets(targets)
    batched = match_anchors_batched(boxes, valid, anchors, threshold)
    for i, target in enumerate(targets):
        assert torch.equal(batched[i], match_anchors(target["boxes"], anchors, threshold)), i


def test_batched_matching_uses_the_matching_modules_rule(monkeypatch):
    """The rule lives once: match_anchors_batched calls course_lib.detection.matching.match_iou_matrix."""
    import course_lib.detection.matching as matching
    import course_lib.detection.ssd as ssd_module

    calls = []

    def spy(ious, *args, **kwargs):
        calls.append(tuple(ious.shape))
        return matching.match_iou_matrix(ious, *args, **kwargs)

    monkeypatch.setattr(ssd_module, "match_iou_matrix", spy)
    boxes, _, valid = pad_targets(_random_targets(torch.Generator().manual_seed(0), 3, 1, allow_empty=False))
    match_anchors_batched(boxes, valid, grid_anchors())
    assert calls == [(3, boxes.shape[1], 189)]


def test_matching_with_no_objects_in_the_whole_batch():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    boxes, labels, valid = pad_targets([empty, empty])
    assert boxes.shape == (2, 0, 4)
    assert torch.equal(match_anchors_batched(boxes, valid, grid_anchors()), torch.full((2, 189), -1))


# --- the loss -----------------------------------------------------------------------------------------


def _outputs(batch=4, anchors=189, num_classes=4, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, anchors, num_classes, generator=generator) - 2
    boxes = torch.randn(batch, anchors, 4, generator=generator) * 0.5
    return logits.requires_grad_(requires_grad), boxes.requires_grad_(requires_grad)


@pytest.mark.parametrize("coding", ["tanh", "deltas"])
def test_bce_loss_equals_the_per_image_recipe(coding):
    anchors, cells = grid_anchors(), anchor_cell_sizes((4, 2, 1), 9)
    targets = _random_targets(torch.Generator().manual_seed(3), batch=4, allow_empty=True)
    logits, box_out = _outputs()
    loss = ssd_loss(logits, box_out, targets, anchors, image_size=64, classification="bce", box_coding=coding,
                    cell_sizes=cells)
    loc, cls, positives = 0.0, 0.0, 0
    for i, t in enumerate(targets):  # the lesson's recipe: one image at a time
        labels, boxes = ssd_targets(t["boxes"] / 64, t["labels"], anchors)
        pos = labels > 0
        positives += int(pos.sum())
        one_hot = torch.eye(4)[labels][:, 1:]  # background column dropped
        cls += F.binary_cross_entropy_with_logits(logits[i, :, 1:], one_hot, reduction="sum")
        if coding == "tanh":
            loc += (tanh_to_boxes(box_out[i], anchors, cells)[pos] - boxes[pos]).abs().sum()
        else:
            wanted = encode_boxes(boxes[pos], anchors[pos], weights=SSD_BOX_WEIGHTS)
            loc += F.smooth_l1_loss(box_out[i][pos], wanted, beta=1 / 9, reduction="sum")
    assert loss.num_positive == positives > 0
    torch.testing.assert_close(loss.classification, cls / positives)
    torch.testing.assert_close(loss.localization, loc / positives)
    torch.testing.assert_close(loss.total, (loc + cls) / positives)


def test_focal_classification_is_torchvisions_sigmoid_focal_loss():
    anchors = grid_anchors()
    targets = _random_targets(torch.Generator().manual_seed(4), batch=3, allow_empty=False)
    logits, box_out = _outputs(batch=3)
    loss = ssd_loss(logits, box_out, targets, anchors, image_size=64, classification="focal")
    one_hot = torch.zeros(3, 189, 3)
    for i, t in enumerate(targets):
        labels, _ = ssd_targets(t["boxes"] / 64, t["labels"], anchors)
        one_hot[i] = torch.eye(4)[labels][:, 1:]
    expected = torchvision.ops.sigmoid_focal_loss(logits[..., 1:], one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(loss.classification, expected / loss.num_positive)


def test_loss_on_images_without_objects_is_classification_only():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    logits, box_out = _outputs(batch=2, requires_grad=True)
    for classification in ("bce", "focal"):
        loss = ssd_loss(logits, box_out, [empty, empty], grid_anchors(), image_size=64, classification=classification)
        assert loss.num_positive == 0 and float(loss.localization.detach()) == 0.0
        assert torch.isfinite(loss.total) and float(loss.classification.detach()) > 0
        loss.total.backward()
    assert torch.isfinite(logits.grad).all() and float(box_out.grad.abs().sum()) == 0.0


def test_perfect_offsets_have_zero_localization_loss():
    model = SSD(SSDConfig(box_coding="deltas"))
    targets = _random_targets(torch.Generator().manual_seed(5), batch=2, allow_empty=False)
    logits, _ = _outputs(batch=2)
    boxes, labels, valid = pad_targets(targets)
    matches = match_anchors_batched(boxes / 64, valid, model.anchors)
    matched = boxes.gather(1, matches.clamp(min=0)[..., None].expand(-1, -1, 4)) / 64
    outputs = encode_boxes(matched, model.anchors, weights=SSD_BOX_WEIGHTS)
    loss = model.loss((logits, outputs), targets)
    assert loss.num_positive > 0 and float(loss.localization) < 1e-4


def test_loss_rejects_bad_inputs():
    logits, box_out = _outputs(batch=2)
    targets = _random_targets(torch.Generator().manual_seed(6), batch=2)
    anchors = grid_anchors()
    with pytest.raises(ValueError, match="classification"):
        ssd_loss(logits, box_out, targets, anchors, image_size=64, classification="softmax")
    with pytest.raises(ValueError, match="one dict per image"):
        ssd_loss(logits, box_out, targets[:1], anchors, image_size=64)
    with pytest.raises(ValueError, match="anchors_norm"):
        ssd_loss(logits, box_out, targets, anchors[:10], image_size=64)
    with pytest.raises(ValueError, match="box_outputs"):
        ssd_loss(logits, box_out[..., :2], targets, anchors, image_size=64)
    with pytest.raises(ValueError, match="cell_sizes"):
        ssd_loss(logits, box_out, targets, anchors, image_size=64, box_coding="tanh")


# --- inference ------------------------------------------------------------------------------------------


def test_postprocess_thresholds_scores_and_suppresses_duplicates_per_class():
    anchors = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.5, 0.5]])
    probabilities = torch.tensor([[0.0, 0.9, 0.0, 0.0],  # circle
                                  [0.0, 0.8, 0.0, 0.0],  # the same circle again: suppressed
                                  [0.0, 0.0, 0.7, 0.0],  # a square elsewhere
                                  [0.0, 0.0, 0.0, 0.6]])  # a triangle on the circle: another class, kept
    logits = torch.logit(probabilities.clamp(1e-6, 1 - 1e-6))[None]
    detections = postprocess(logits, anchors[None], image_size=100, score_threshold=0.5, nms_threshold=0.45)
    (found,) = detections
    assert found["labels"].tolist() == [1, 2, 3]
    torch.testing.assert_close(found["scores"], torch.tensor([0.9, 0.7, 0.6]))
    torch.testing.assert_close(found["boxes"], anchors[[0, 2, 3]] * 100)
    none = postprocess(logits, anchors[None], image_size=100, score_threshold=0.95)
    assert none[0]["boxes"].shape == (0, 4) and none[0]["labels"].shape == (0,)


def test_detect_keeps_boxes_inside_the_image_and_limits_their_number():
    model = SSD(SSDConfig())
    torch.nn.init.constant_(model.outputs[0].classes.bias, 3.0)  # everything looks like an object
    detections = model.detect(torch.rand(2, 3, 64, 64), score_threshold=0.5, max_detections=7)
    assert model.training  # the mode is restored
    for d in detections:
        assert d["boxes"].shape[0] <= 7 and set(d["labels"].tolist()) <= {1, 2, 3}
        assert float(d["boxes"].min()) >= 0 and float(d["boxes"].max()) <= 64
        assert bool((d["scores"][:-1] >= d["scores"][1:]).all())


# --- training ----------------------------------------------------------------------------------------------


def test_flips_move_boxes_with_the_pixels():
    boxes = torch.tensor([[2.0, 5.0, 10.0, 20.0]])
    torch.testing.assert_close(flip_boxes(boxes, 32), torch.tensor([[22.0, 5.0, 30.0, 20.0]]))
    torch.testing.assert_close(flip_boxes(boxes, 32, horizontal=False), torch.tensor([[2.0, 12.0, 10.0, 27.0]]))
    torch.testing.assert_close(flip_boxes(flip_boxes(boxes, 32), 32), boxes)
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 5:20, 2:10] = 1.0  # a bright rectangle exactly inside the box
    batches = DetectionBatches(image.repeat(8, 1, 1, 1), [{"boxes": boxes, "labels": torch.tensor([1])}] * 8,
                               batch_size=8, generator=torch.Generator().manual_seed(0), hflip=True, vflip=True)
    images, targets = next(iter(batches))
    for img, target in zip(images, targets):
        x1, y1, x2, y2 = target["boxes"][0].long().tolist()
        assert float(img[:, y1:y2, x1:x2].mean()) == 1.0 and float(img.sum()) == 3 * 15 * 8


def test_fit_learns_a_few_images_and_records_history():
    torch.manual_seed(0)
    data = ShapesDataset("train", num_images=16, image_size=64, seed=3)
    images, targets = data.to_tensors()
    model = SSD(SSDConfig(stage_channels=(8, 16, 32), head_channels=32))  # small: a quick test
    batches = DetectionBatches(images, targets, batch_size=16, generator=torch.Generator().manual_seed(0))
    history = fit(model, batches, lambda m, x, y: m.loss(m(x), y), steps=20, lr=1e-2, progress=False, log_every=5,
                  channels_last=True)
    assert history.steps == [5, 10, 15, 20] and len(history.loss) == 4 == len(history.lr)
    assert set(history.parts) == {"localization", "classification"}
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert not model.training and history.seconds > 0
    assert model.backbone[0][0].weight.is_contiguous()  # back to the default memory format
    with pytest.raises(ValueError, match="steps"):
        fit(model, batches, lambda m, x, y: m.loss(m(x), y), steps=0)


# --- evaluation --------------------------------------------------------------------------------------------


def _noisy_detections(targets, generator, num_classes=3):
    detections = []
    for t in targets:
        n = t["boxes"].shape[0]
        jitter = torch.randn(n, 4, generator=generator) * 3
        found = torch.rand(n, generator=generator) < 0.8
        fp = int(torch.randint(0, 3, (1,), generator=generator))
        fp_xy = torch.rand(fp, 2, generator=generator) * 40
        fp_boxes = torch.cat([fp_xy, fp_xy + 5 + torch.rand(fp, 2, generator=generator) * 20], dim=1)
        boxes = torch.cat([(t["boxes"] + jitter)[found], fp_boxes])
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], dim=1)
        labels = torch.cat([t["labels"][found], torch.randint(1, num_classes + 1, (fp,), generator=generator)])
        scores = torch.rand(boxes.shape[0], generator=generator)
        detections.append({"boxes": boxes, "scores": scores, "labels": labels})
    return detections


@pytest.mark.parametrize("seed", [0, 1])
def test_hand_made_average_precision_equals_pycocotools(seed):
    generator = torch.Generator().manual_seed(seed)
    targets = _random_targets(generator, batch=40, allow_empty=True)
    detections = _noisy_detections(targets, generator)
    metrics = mean_average_precision(detections, targets, class_metrics=True)
    by_hand = []
    for label in (1, 2, 3):
        precision, recall, scores = precision_recall_curve(detections, targets, label, iou_threshold=0.5)
        assert bool((scores[:-1] >= scores[1:]).all()) and bool((recall[:-1] <= recall[1:]).all())
        by_hand.append(average_precision(precision, recall))
    assert sum(by_hand) / 3 == pytest.approx(metrics["map_50"], abs=1e-6)
    assert 0.2 < metrics["map_50"] < 0.95 and metrics["map"] < metrics["map_50"]


def test_perfect_detections_score_one():
    targets = _random_targets(torch.Generator().manual_seed(7), batch=10, allow_empty=False)
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]
    metrics = mean_average_precision(perfect, targets)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_50"] == pytest.approx(1.0)
    assert recall_by_size(perfect, targets)["recall"] == 1.0


def test_match_detections_is_greedy_by_score_and_class_aware():
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([1, 2])}
    detection = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
                 "scores": torch.tensor([0.5, 0.9, 0.8]), "labels": torch.tensor([1, 1, 1])}
    true_positive, found = match_detections(detection, target)
    # The better-scoring near-duplicate claims the circle; the exact box comes too late; wrong class misses.
    assert true_positive.tolist() == [False, True, False] and found.tolist() == [True, False]


def test_recall_by_size_bins_objects_by_their_side():
    target = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([1, 1])}
    detection = {"boxes": torch.tensor([[0.0, 20.0, 40.0, 60.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])}
    result = recall_by_size([detection], [target], edges=(0, 16, math.inf))
    assert result == {"recall[0,16)": 0.0, "recall[16,inf)": 1.0, "recall": 0.5}


# --- saving, loading, the shipped detector -----------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = SSD(SSDConfig(box_coding="tanh", class_names=("background", "a", "b", "c"))).eval()
    save_ssd(model, tmp_path / "ssd.pt", metrics={"map_50": 0.5})
    loaded = load_ssd(tmp_path / "ssd.pt")
    assert loaded.config == model.config and loaded.metadata == {"metrics": {"map_50": 0.5}}
    x = torch.rand(2, 3, 64, 64)
    for a, b in zip(model(x), loaded(x)):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="train_shapes_ssd"):
        load_shapes_ssd(path=tmp_path / "missing.pt")


def test_shipped_shapes_detector_finds_the_shapes():
    model = load_shapes_ssd()
    assert not model.training and model.config.class_names == ShapesDataset.class_names
    size = model.config.image_size
    images, targets = ShapesDataset("test", num_images=120, image_size=size, seed=0).to_tensors()
    detections = model.detect(images, score_threshold=0.05)
    metrics = mean_average_precision(detections, targets)
    assert metrics["map_50"] >= 0.85, metrics


def test_training_command_saves_a_loadable_detector_with_its_recipe(tmp_path, capsys):
    from course_lib.detection.train_shapes_ssd import main

    threads = torch.get_num_threads()
    out = tmp_path / "tiny.pt"
    try:
        main(["--steps", "3", "--train-images", "16", "--val-images", "8", "--threads", "1", "--quiet",
              "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "| focal, deltas, 3 steps |" in printed and f"saved {out}" in printed
    model = load_shapes_ssd(path=out)
    assert model.metadata["recipe"]["steps"] == 3 and model.metadata["command"].endswith(f"--out {out}")
    assert set(model.metadata["metrics"]) >= {"map", "map_50", "recall[0,16)", "train_seconds"}
    assert len(model.metadata["loss_history"]["loss"]) == 1
