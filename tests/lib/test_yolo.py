"""course_lib.detection.yolo: the lesson's worked numbers, a naive reference, torchvision's ops, edge cases."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import get_device
from course_lib.detection.yolo import (
    SingleStageDetector,
    build_targets,
    decode,
    detect,
    flatten_output,
    foreground_scores,
    grid_priors,
    head_channels,
    output_grid_size,
    postprocess,
    softmax_with_infinities,
    yolo_loss,
)

DEVICE = get_device()
DOG, CAT, BACKGROUND_LAST = 0, 1, 2  # the exam's class order: dog, cat, background


def strided_backbone(channels: int = 8, stages: int = 5) -> nn.Sequential:
    """Five stride-2 convolutions: a stride-32 feature map, like the lesson's backbone."""
    layers, width = [], 3
    for _ in range(stages):
        layers += [nn.Conv2d(width, channels, 3, stride=2, padding=1), nn.ReLU()]
        width = channels
    return nn.Sequential(*layers)


def naive_decode(output, anchors, stride, num_classes):
    """The lesson's formulas written out one prediction at a time (the obvious, slow way)."""
    batch, _, height, width = output.shape
    num_anchors = anchors.shape[0]
    boxes = torch.zeros(batch, height * width * num_anchors, 4, dtype=output.dtype)
    probs = torch.zeros(batch, height * width * num_anchors, num_classes, dtype=output.dtype)
    per_anchor = 4 + num_classes
    for b in range(batch):
        for cy in range(height):
            for cx in range(width):
                for a in range(num_anchors):
                    t = output[b, a * per_anchor:(a + 1) * per_anchor, cy, cx].cpu()
                    i = (cy * width + cx) * num_anchors + a
                    boxes[b, i, 0] = (cx + torch.sigmoid(t[0])) * stride
                    boxes[b, i, 1] = (cy + torch.sigmoid(t[1])) * stride
                    boxes[b, i, 2] = anchors[a, 0] * torch.exp(t[2])
                    boxes[b, i, 3] = anchors[a, 1] * torch.exp(t[3])
                    probs[b, i] = torch.softmax(t[4:], dim=0)
    return boxes, probs


# -- the exam exercises ----------------------------------------------------------------------------

def test_exam_1_grid_and_channels_for_dog_and_cat_with_two_anchors():
    assert output_grid_size(320) == (10, 10)
    # dog, cat and background: 2 * (4 + 3) = 14 (the source's worked answer says 24, a slip in 2 * 7)
    assert head_channels(num_anchors=2, num_classes=3) == 14
    model = SingleStageDetector(strided_backbone(), num_anchors=2, num_classes=3)
    assert model(torch.zeros(1, 3, 320, 320)).shape == (1, 14, 10, 10)


def test_exam_2_decodes_one_anchor_on_a_32_pixel_image():
    output = torch.tensor([0.0, math.inf, 0.0, 1.0, 7.0, -2.0, 4.0]).view(1, 7, 1, 1)
    anchors = torch.tensor([[5.0, 10.0]])  # (w, h)
    boxes, probs = decode(output, anchors, stride=32, num_classes=3)
    assert boxes.shape == (1, 1, 4) and probs.shape == (1, 1, 3)
    cx, cy, w, h = boxes[0, 0].tolist()
    assert (cx, cy, w) == (16.0, 32.0, 5.0)
    assert h == pytest.approx(27.18, abs=5e-3) and h == pytest.approx(10 * math.e)
    p_dog, p_cat, p_background = probs[0, 0].tolist()
    assert round(p_dog, 2) == 0.95 and round(p_cat, 2) == 0.00 and round(p_background, 3) == 0.047
    assert p_dog == pytest.approx(math.exp(7) / (math.exp(7) + math.exp(-2) + math.exp(4)))

    (result,) = postprocess(boxes, probs, score_threshold=0.4, background_index=BACKGROUND_LAST)
    assert result["labels"].tolist() == [DOG]
    assert result["scores"].tolist() == pytest.approx([p_dog])
    assert result["boxes"][0].tolist() == pytest.approx([13.5, 32 - 5 * math.e, 18.5, 32 + 5 * math.e])


def test_caution_example_background_most_likely_but_dog_is_shown():
    logits = torch.tensor([0.1, -2.0, 0.2])
    probs = torch.softmax(logits, 0)
    assert int(probs.argmax()) == BACKGROUND_LAST
    score, label = foreground_scores(probs, background_index=BACKGROUND_LAST)
    assert int(label) == DOG and round(float(score), 2) == 0.45
    output = torch.cat([torch.zeros(4), logits]).view(1, 7, 1, 1)
    boxes, probs = decode(output, torch.tensor([[5.0, 10.0]]), 32, 3)
    (shown,) = postprocess(boxes, probs, score_threshold=0.4, background_index=BACKGROUND_LAST)
    assert shown["labels"].tolist() == [DOG]
    (hidden,) = postprocess(boxes, probs, score_threshold=0.5, background_index=BACKGROUND_LAST)
    assert len(hidden["labels"]) == 0


# -- grid arithmetic and the head ----------------------------------------------------------------

def test_grid_size_rounds_up_and_takes_rectangles():
    assert output_grid_size((224, 224)) == (7, 7)
    assert output_grid_size((100, 64), stride=32) == (4, 2)
    assert output_grid_size(128, stride=16) == (8, 8)
    assert head_channels(8, 91) == 760  # the seed's nuScenes anchors with COCO's 91 classes


def test_detector_reads_feature_channels_and_rejects_bad_arguments():
    backbone = strided_backbone(channels=12)
    model = SingleStageDetector(backbone, num_anchors=3, num_classes=4)
    assert model.head.in_channels == 12 and model.head.out_channels == 24
    assert model.head.kernel_size == (1, 1)
    with pytest.raises(TypeError, match="num_anchors"):
        SingleStageDetector(backbone, num_anchors=2.0, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        SingleStageDetector(backbone, num_anchors=2, num_classes=0)
    with pytest.raises(ValueError, match="feature_channels"):
        SingleStageDetector(nn.Identity(), num_anchors=2, num_classes=3)
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(3, 64, 64))


def test_grid_priors_order_is_row_major_with_anchors_innermost():
    anchors = torch.tensor([[10.0, 20.0], [30.0, 15.0]])
    priors = grid_priors((2, 3), anchors)
    assert priors.shape == (2 * 3 * 2, 4)
    for cy in range(2):
        for cx in range(3):
            for a in range(2):
                assert priors[(cy * 3 + cx) * 2 + a].tolist() == [cx, cy, *anchors[a].tolist()]


def test_flatten_output_follows_the_documented_channel_layout():
    num_anchors, num_classes, height, width = 3, 2, 2, 4
    output = torch.randn(2, num_anchors * (4 + num_classes), height, width)
    rows = flatten_output(output, num_anchors, num_classes)
    assert rows.shape == (2, height * width * num_anchors, 4 + num_classes)
    a, cy, cx = 2, 1, 3
    channels = slice(a * (4 + num_classes), (a + 1) * (4 + num_classes))
    assert torch.equal(rows[1, (cy * width + cx) * num_anchors + a], output[1, channels, cy, cx])


# -- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, batch, num_anchors, num_classes, height, width, stride", [
    (0, 1, 1, 2, 1, 1, 32), (1, 2, 3, 4, 4, 4, 32), (2, 3, 2, 5, 3, 7, 16), (3, 1, 5, 21, 5, 2, 8.5),
])
def test_decode_matches_the_formulas_one_prediction_at_a_time(seed, batch, num_anchors, num_classes,
                                                              height, width, stride):
    generator = torch.Generator().manual_seed(seed)
    output = 2 * torch.randn(batch, num_anchors * (4 + num_classes), height, width, generator=generator)
    anchors = 5 + 60 * torch.rand(num_anchors, 2, generator=generator)
    boxes, probs = decode(output.to(DEVICE), anchors.to(DEVICE), stride, num_classes)
    assert boxes.device.type == DEVICE.type and probs.device.type == DEVICE.type
    want_boxes, want_probs = naive_decode(output, anchors, stride, num_classes)
    torch.testing.assert_close(boxes.cpu(), want_boxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(probs.cpu(), want_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1).cpu(), torch.ones(batch, height * width * num_anchors))


def test_decode_normalises_over_classes_not_over_anchors():
    """The seed's softmax over dim=1 (anchors) is a mistake: each prediction's classes sum to 1."""
    output = torch.randn(1, 3 * (4 + 4), 2, 2)
    _, probs = decode(output, torch.ones(3, 2), 32, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 12))
    per_anchor = output.view(1, 3, 8, 2, 2)
    wrong = torch.softmax(per_anchor[:, :, 4:], dim=1)  # over anchors
    assert not torch.allclose(wrong.sum(2), torch.ones(1, 3, 2, 2))


def test_sigmoid_keeps_every_centre_inside_its_own_cell():
    generator = torch.Generator().manual_seed(4)
    height, width, num_anchors, stride = 3, 5, 2, 32
    output = 20 * torch.randn(2, num_anchors * 7, height, width, generator=generator)
    boxes, _ = decode(output, torch.tensor([[4.0, 4.0], [9.0, 3.0]]), stride, 3)
    cells = grid_priors((height, width), torch.ones(num_anchors, 2))[:, :2]
    assert bool((boxes[..., :2] >= cells * stride).all()) and bool((boxes[..., :2] <= (cells + 1) * stride).all())
    assert bool((boxes[..., 2:] >= 0).all())


def test_infinite_outputs_decode_to_their_limits_without_nan():
    t = torch.tensor([
        [math.inf, -math.inf, -math.inf, math.inf, math.inf, 0.0, 1.0],
        [-math.inf, math.inf, 0.0, 0.0, -math.inf, -math.inf, -math.inf],
        [0.0, 0.0, 0.0, 0.0, math.inf, math.inf, -math.inf],
    ])  # three anchors in one 1x1 cell
    output = t.reshape(1, 21, 1, 1)
    anchors = torch.tensor([[5.0, 10.0], [6.0, 6.0], [8.0, 4.0]])
    boxes, probs = decode(output, anchors, 32, 3)
    assert not torch.isnan(boxes).any() and not torch.isnan(probs).any()
    assert boxes[0, 0].tolist() == [32.0, 0.0, 0.0, math.inf]
    assert boxes[0, 1].tolist() == [0.0, 32.0, 6.0, 6.0]
    assert probs[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert probs[0, 1].tolist() == pytest.approx([1 / 3] * 3)  # all -inf: no class preferred
    assert probs[0, 2].tolist() == [0.5, 0.5, 0.0]
    (result,) = postprocess(boxes, probs, background_index=2, image_size=(32, 32))
    assert torch.isfinite(result["boxes"]).all()


def test_softmax_with_infinities_agrees_with_torch_on_finite_logits():
    generator = torch.Generator().manual_seed(5)
    logits = 10 * torch.randn(6, 7, 5, generator=generator)
    for dim in (0, 1, -1):
        torch.testing.assert_close(softmax_with_infinities(logits, dim), torch.softmax(logits, dim))
    assert softmax_with_infinities(torch.zeros(0, 3)).shape == (0, 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([-math.inf, -50.0, -1.0, 0.0, 2.5, 80.0, math.inf]), min_size=1, max_size=6))
def test_softmax_with_infinities_is_a_distribution(values):
    probs = softmax_with_infinities(torch.tensor(values, dtype=torch.float64))
    assert not torch.isnan(probs).any()
    assert float(probs.sum()) == pytest.approx(1.0)
    if math.inf in values:
        assert all((p > 0) == (v == math.inf) for p, v in zip(probs.tolist(), values))


def test_decode_keeps_dtype_and_rejects_bad_inputs():
    output = torch.zeros(1, 2 * 6, 3, 3, dtype=torch.float64)
    boxes, probs = decode(output, torch.ones(2, 2), 16, 2)
    assert boxes.dtype == probs.dtype == torch.float64
    with pytest.raises(ValueError, match=r"output must have shape \(B, 12, H, W\)"):
        decode(torch.zeros(1, 11, 3, 3), torch.ones(2, 2), 16, 2)
    with pytest.raises(ValueError, match="anchors"):
        decode(output, torch.ones(2, 3), 16, 2)
    with pytest.raises(ValueError, match="anchors"):
        decode(output, torch.tensor([[1.0, 1.0], [0.0, 2.0]]), 16, 2)
    with pytest.raises(ValueError, match="stride"):
        decode(output, torch.ones(2, 2), 0, 2)
    with pytest.raises(TypeError, match="output"):
        decode(output.numpy(), torch.ones(2, 2), 16, 2)


# -- postprocessing --------------------------------------------------------------------------------

def test_postprocess_keeps_the_same_boxes_as_torchvision_batched_nms():
    generator = torch.Generator().manual_seed(6)
    for trial in range(5):
        num_predictions, num_classes = 200, 4
        xy = 100 * torch.rand(2, num_predictions, 2, generator=generator)
        wh = 5 + 40 * torch.rand(2, num_predictions, 2, generator=generator)
        logits = 3 * torch.randn(2, num_predictions, num_classes, generator=generator)
        probs = torch.softmax(logits, -1)
        results = postprocess(torch.cat([xy, wh], -1).to(DEVICE), probs.to(DEVICE), score_threshold=0.3,
                              iou_threshold=0.45, background_index=0, max_detections=None)
        for image, result in enumerate(results):
            assert result["boxes"].device.type == DEVICE.type
            scores, labels = probs[image, :, 1:].max(-1)
            labels = labels + 1
            boxes = torchvision.ops.box_convert(torch.cat([xy, wh], -1)[image], "cxcywh", "xyxy")
            keep = scores > 0.3
            kept = torchvision.ops.batched_nms(boxes[keep], scores[keep], labels[keep], 0.45)
            torch.testing.assert_close(result["boxes"].cpu(), boxes[keep][kept])
            torch.testing.assert_close(result["scores"].cpu(), scores[keep][kept])
            assert torch.equal(result["labels"].cpu(), labels[keep][kept])
            assert bool((result["labels"] != 0).all())


def test_postprocess_suppresses_within_a_class_only_and_caps_detections():
    boxes = torch.tensor([[[50.0, 50, 20, 20], [51, 50, 20, 20], [50, 51, 20, 20], [10, 10, 8, 8]]])
    probs = torch.tensor([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [0.4, 0.6, 0.0]]])
    (result,) = postprocess(boxes, probs, score_threshold=0.5, iou_threshold=0.5)
    assert result["labels"].tolist() == [1, 2, 1] and result["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    (capped,) = postprocess(boxes, probs, score_threshold=0.5, max_detections=2)
    assert capped["scores"].tolist() == pytest.approx([0.9, 0.7])
    (clipped,) = postprocess(boxes, probs, score_threshold=0.5, image_size=(55, 58))
    assert clipped["boxes"][0].tolist() == [40.0, 40.0, 58.0, 55.0]
    (nothing,) = postprocess(boxes, probs, score_threshold=0.95)
    assert nothing["boxes"].shape == (0, 4) and nothing["scores"].shape == (0,) and nothing["labels"].shape == (0,)
    assert nothing["labels"].dtype == torch.int64


def test_postprocess_handles_empty_predictions_and_no_background_class():
    results = postprocess(torch.zeros(2, 0, 4), torch.zeros(2, 0, 3))
    assert len(results) == 2 and all(r["boxes"].shape == (0, 4) for r in results)
    scores, labels = foreground_scores(torch.tensor([[0.7, 0.2, 0.1]]), background_index=None)
    assert labels.tolist() == [0] and scores.tolist() == pytest.approx([0.7])
    with pytest.raises(ValueError, match="background_index"):
        foreground_scores(torch.rand(4, 3), background_index=3)
    with pytest.raises(ValueError, match="class_probs"):
        postprocess(torch.zeros(1, 5, 4), torch.zeros(1, 4, 3))


# -- training targets and loss ---------------------------------------------------------------------

def test_targets_pick_the_centre_cell_and_the_best_shaped_anchor_and_decode_back():
    anchors = torch.tensor([[10.0, 30.0], [30.0, 10.0], [40.0, 40.0]])
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 36.0, 14.0], [74.0, 35.0, 86.0, 85.0]]), "labels": torch.tensor([2, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    wanted = build_targets(targets, anchors, grid_size=(4, 4), stride=32)
    assert wanted["labels"].shape == (2, 48) and wanted["offsets"].shape == (2, 48, 4)
    # box 0: centre (20, 9) -> cell (0, 0), a wide box -> anchor 1; box 1: centre (80, 60) -> cell (2, 1), tall
    assert wanted["responsible"][0].nonzero().flatten().tolist() == [1, (1 * 4 + 2) * 3 + 0]
    assert wanted["labels"][0, 1] == 2 and wanted["labels"][0, 18] == 1
    assert int(wanted["labels"][0].count_nonzero()) == 2 and not wanted["responsible"][1].any()
    assert wanted["objects"][0, 1] == 0 and wanted["objects"][0, 18] == 1
    assert int((wanted["objects"] >= 0).sum()) == 2

    # Offsets that the head would need: logit of the in-cell position, then the log size ratio.
    goal = wanted["offsets"].clone()
    goal[..., :2] = torch.logit(goal[..., :2])
    rows = torch.zeros(2, 48, 4 + 3)  # (B, H * W * A, 4 + C) in the documented order
    rows[..., :4] = torch.where(wanted["responsible"][..., None], goal, torch.zeros_like(goal))
    output = rows.reshape(2, 4, 4, 3, 7).permute(0, 3, 4, 1, 2).reshape(2, 21, 4, 4)
    assert torch.equal(flatten_output(output, 3, 3), rows)
    boxes, _ = decode(output, anchors, 32, 3)
    decoded = torchvision.ops.box_convert(boxes[0, [1, 18]], "cxcywh", "xyxy")
    torch.testing.assert_close(decoded, targets[0]["boxes"])


def test_targets_resolve_collisions_to_the_object_listed_last():
    anchors = torch.tensor([[20.0, 20.0]])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [2.0, 2.0, 22.0, 22.0]])  # same cell, same anchor
    wanted = build_targets([{"boxes": boxes, "labels": torch.tensor([1, 3])}], anchors, (2, 2), 16)
    assert wanted["responsible"].sum() == 1 and wanted["labels"][0, 0] == 3 and wanted["objects"][0, 0] == 1
    two_images = build_targets([{"boxes": boxes[:1], "labels": torch.tensor([1])},
                                {"boxes": boxes, "labels": torch.tensor([2, 3])}], anchors, (2, 2), 16)
    assert two_images["objects"][:, 0].tolist() == [0, 1]  # indices within each image's own target
    with pytest.raises(ValueError, match=r"targets\[0\]"):
        build_targets([{"boxes": boxes, "labels": torch.tensor([1])}], anchors, (2, 2), 16)


def test_training_reduces_the_loss_and_finds_the_objects(one_thread):
    generator = torch.Generator().manual_seed(8)
    anchors = torch.tensor([[6.0, 6.0], [12.0, 8.0]])
    images = torch.rand(4, 3, 32, 32, generator=generator)
    targets = []
    for _ in range(4):
        xy = 2 + 18 * torch.rand(2, 2, generator=generator)
        wh = 4 + 8 * torch.rand(2, 2, generator=generator)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 3, (2,), generator=generator)})
    torch.manual_seed(0)
    model = SingleStageDetector(strided_backbone(channels=16, stages=3), num_anchors=2, num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = yolo_loss(model(images), targets, anchors, stride=8, num_classes=3)
        assert set(loss) == {"box", "class", "total"} and torch.isfinite(loss["total"])
        optimizer.zero_grad()
        loss["total"].backward()
        optimizer.step()
        losses.append(loss["total"].item())
    assert losses[-1] < 0.5 * losses[0]
    # Detections of the trained model land on the objects it was trained on.
    (result, *_) = detect(model, images, anchors, 8, score_threshold=0.5)
    assert len(result["boxes"]) >= 1
    ious = torchvision.ops.box_iou(result["boxes"][:2], targets[0]["boxes"]).max(dim=1).values
    assert float(ious.max()) > 0.5


def test_loss_runs_on_the_device_of_its_inputs():
    anchors = torch.tensor([[8.0, 8.0]], device=DEVICE)
    output = torch.zeros(1, 1 * (4 + 2), 2, 2, device=DEVICE, requires_grad=True)
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 10.0, 12.0]], device=DEVICE), "labels": torch.tensor([1], device=DEVICE)}]
    loss = yolo_loss(output, targets, anchors, 8, 2)
    assert loss["total"].device.type == DEVICE.type
    loss["total"].backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()
    # With no objects at all, only the background term remains.
    empty = [{"boxes": torch.zeros(0, 4, device=DEVICE), "labels": torch.zeros(0, dtype=torch.int64, device=DEVICE)}]
    assert yolo_loss(output, empty, anchors, 8, 2)["box"].item() == 0.0
