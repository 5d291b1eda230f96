"""course_lib.detection.faster_rcnn.roi_heads against torchvision's RoIHeads and the lesson's numbers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from course_lib.detection.boxes import box_iou
from course_lib.detection.faster_rcnn.roi_heads import (
    ROI_BOX_WEIGHTS,
    SEED_REPRESENTATION_SIZE,
    SEED_ROI_BATCH_SIZE,
    DetectionHead,
    fast_rcnn_loss,
    pool_rois,
    postprocess_detections,
    sample_rois,
)
from course_lib.detection.matching import IGNORE

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see tests/conftest.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SEEDS = [0, 1, 2, 3]


def torchvision_roi_heads(batch_size: int = 128, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                          detections: int = 100) -> RoIHeads:
    return RoIHeads(MultiScaleRoIAlign(["0"], 7, 2), TwoMLPHead(8 * 49, 16), FastRCNNPredictor(16, 4),
                    0.5, 0.5, batch_size, 0.25, None, score_thresh, nms_thresh, detections)


def random_image_boxes(seed: int, num_gt: int, num_proposals: int, size: float = 200.0):
    """Objects, and proposals around them (some foreground) and elsewhere (background)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gt, 2, generator=g) * size * 0.7
    gt = torch.cat((xy, xy + 10 + torch.rand(num_gt, 2, generator=g) * size * 0.3), dim=1)
    labels = torch.randint(1, 4, (num_gt,), generator=g)
    near = gt[torch.randint(max(num_gt, 1), (num_proposals // 2,), generator=g) % max(num_gt, 1)] if num_gt else \
        torch.zeros(0, 4)
    if num_gt:
        size_of = (near[:, 2:] - near[:, :2]).repeat(1, 2)
        near = near + size_of * 0.4 * (torch.rand(near.shape, generator=g) - 0.5)
    xy = torch.rand(num_proposals - near.shape[0], 2, generator=g) * size * 0.8
    far = torch.cat((xy, xy + 2 + torch.rand(xy.shape, generator=g) * size * 0.3), dim=1)
    proposals = torch.cat((near, far))
    proposals = torch.cat((proposals[:, :2], torch.maximum(proposals[:, 2:], proposals[:, :2] + 1)), dim=1)
    return proposals, gt, labels


# --------------------------------------------------------------------------- ROI sampling


@pytest.mark.parametrize("seed", SEEDS)
def test_sample_rois_equals_torchvision_select_training_samples(seed):
    images = [random_image_boxes(seed * 10 + i, num_gt, 150) for i, num_gt in enumerate((3, 0, 1 + seed))]
    proposals = [p for p, _, _ in images]
    targets = [{"boxes": gt, "labels": labels} for _, gt, labels in images]
    heads = torchvision_roi_heads(batch_size=64)
    torch.manual_seed(seed)  # torchvision's sampler draws from the global generator
    boxes, matched, labels, regression = heads.select_training_samples(list(proposals), targets)
    assert int((torch.cat(labels) > 0).sum()) > 0 and int((torch.cat(labels) == 0).sum()) > 0
    generator = torch.Generator().manual_seed(seed)  # the same draws, image after image
    for i, (p, t) in enumerate(zip(proposals, targets)):
        ours = sample_rois(p, t["boxes"], t["labels"], batch_size=64, generator=generator)
        assert torch.equal(ours.boxes, boxes[i]) and torch.equal(ours.labels, labels[i])
        foreground = ours.labels > 0
        assert torch.equal(ours.matched_gt[foreground], matched[i][foreground])
        assert (ours.matched_gt[~foreground] == -1).all() and (ours.box_targets[~foreground] == 0).all()
        torch.testing.assert_close(ours.box_targets[foreground], regression[i][foreground])


def test_lesson_roi_sample_has_128_rois_at_most_32_positive():
    proposals, gt, labels = random_image_boxes(0, 2, 2_000, size=800.0)  # the 2,000 training proposals
    sample = sample_rois(proposals, gt, labels, generator=torch.Generator().manual_seed(0))
    assert SEED_ROI_BATCH_SIZE == 128
    assert sample.boxes.shape == (128, 4) and sample.box_targets.shape == (128, 4)
    num_foreground = int((sample.labels > 0).sum())
    assert num_foreground == 32  # plenty of foreground: exactly a quarter
    ious = box_iou(gt, sample.boxes).max(dim=0).values
    assert (ious[sample.labels > 0] >= 0.5).all() and (ious[sample.labels == 0] < 0.5).all()
    # the ground truths joined the candidates: both objects can be sampled as exact boxes
    with_gt = sample_rois(gt, gt, labels, generator=torch.Generator().manual_seed(0))
    assert with_gt.boxes.shape == (4, 4) and (with_gt.labels > 0).all()
    torch.testing.assert_close(with_gt.box_targets, torch.zeros(4, 4))


def test_sample_rois_background_range_and_edge_cases():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 9.0],  # IoU 0.9: foreground
                              [0.0, 0.0, 10.0, 3.0],  # 0.3: background
                              [0.0, 9.5, 10.0, 20.0],  # ~0.03: background, or ignored from 0.1
                              [50.0, 50.0, 60.0, 60.0]])  # 0: background, or ignored from 0.1
    labels = torch.tensor([2])
    seed = sample_rois(proposals, gt, labels, add_gt=False, generator=torch.Generator().manual_seed(0))
    assert seed.labels.tolist() == [2, 0, 0, 0]
    fast_rcnn = sample_rois(proposals, gt, labels, background_iou=(0.1, 0.5), add_gt=False,
                            generator=torch.Generator().manual_seed(0))
    assert fast_rcnn.labels.tolist() == [2, 0]  # Fast R-CNN's [0.1, 0.5): the others ignored
    # no object: all background, nothing to regress
    empty = sample_rois(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                        generator=torch.Generator().manual_seed(0))
    assert empty.labels.tolist() == [0, 0, 0, 0] and (empty.matched_gt == -1).all()
    assert (empty.box_targets == 0).all()
    # no proposals: only the ground truths
    only_gt = sample_rois(torch.zeros(0, 4), gt, labels, generator=torch.Generator().manual_seed(0))
    assert only_gt.labels.tolist() == [2] and only_gt.boxes.tolist() == gt.tolist()
    nothing = sample_rois(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert nothing.boxes.shape == (0, 4) and nothing.labels.shape == (0,)
    with pytest.raises(ValueError, match="background_iou"):
        sample_rois(proposals, gt, labels, background_iou=(0.5, 0.3))
    with pytest.raises(ValueError, match=r"gt_labels must have shape \(1,\)"):
        sample_rois(proposals, gt, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="gt_labels must be an integer tensor"):
        sample_rois(proposals, gt, torch.tensor([1.0]))


def test_sample_rois_is_seeded_and_leaves_the_global_rng_alone():
    proposals, gt, labels = random_image_boxes(1, 3, 500)
    state = torch.get_rng_state()
    a = sample_rois(proposals, gt, labels, generator=torch.Generator().manual_seed(4))
    b = sample_rois(proposals, gt, labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("seed", SEEDS)
def test_pool_rois_equals_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    stride, batch = (4, 8, 16, 16)[seed], 1 + seed % 3
    features = torch.randn(batch, 5, 12, 10, generator=g)
    image_size = (12 * stride, 10 * stride)
    boxes = [random_image_boxes(seed + i, 0, 6 + i, size=10.0 * stride)[0] for i in range(batch)]
    expected = MultiScaleRoIAlign(["0"], 7, 2)({"0": features}, boxes, [image_size] * batch)
    assert torch.equal(pool_rois(features, boxes, 1 / stride), expected)
    rois = torch.cat([torch.cat((torch.full((len(b), 1), float(i)), b), dim=1) for i, b in enumerate(boxes)])
    assert torch.equal(pool_rois(features, boxes, 1 / stride, method="roi_pool", output_size=5),
                       torchvision.ops.roi_pool(features, rois, 5, 1 / stride))


def test_lesson_pooled_features_and_head_sizes():
    features = torch.randn(1, 512, 50, 50)  # VGG16 on an 800 x 800 image
    rois = random_image_boxes(0, 0, 128, size=800.0)[0]
    pooled = pool_rois(features, [rois], 1 / 16, method="roi_pool")
    assert pooled.shape == (128, 512, 7, 7)
    assert pooled.flatten(1).shape == (128, 25_088)  # 7 x 7 x 512 inputs to the head
    with torch.device("meta"):  # the seed's 25,088 -> 4,096 -> 4,096 head: 120 M parameters, no memory
        head = DetectionHead(512, num_classes=2, representation_size=SEED_REPRESENTATION_SIZE)
        class_logits, box_regression = head(pooled.to("meta"))
    assert head.fc6.in_features == 25_088
    assert class_logits.shape == (128, 2) and box_regression.shape == (128, 8)  # the lesson's printout


# --------------------------------------------------------------------------- the head and its loss


@pytest.mark.parametrize("seed", SEEDS)
def test_detection_head_equals_torchvision_two_mlp_head_and_predictor(seed):
    g = torch.Generator().manual_seed(seed)
    channels, classes, hidden = 6, 2 + seed, 32
    torch.manual_seed(seed)
    box_head, predictor = TwoMLPHead(channels * 49, hidden), FastRCNNPredictor(hidden, classes)
    ours = DetectionHead(channels, classes, representation_size=hidden)
    ours.load_state_dict({**box_head.state_dict(), **predictor.state_dict()})  # same names
    pooled = torch.randn(20, channels, 7, 7, generator=g)
    class_logits, box_regression = ours(pooled)
    expected = predictor(box_head(pooled))
    assert torch.equal(class_logits, expected[0]) and torch.equal(box_regression, expected[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_fast_rcnn_loss_equals_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    counts, classes = (30, 0, 17)[: 1 + seed % 3], 4
    total = sum(counts)
    class_logits = torch.randn(total, classes, generator=g)
    box_regression = torch.randn(total, classes * 4, generator=g)
    labels = [torch.randint(0, classes, (n,), generator=g) for n in counts]
    targets = [torch.randn(n, 4, generator=g) for n in counts]
    expected = fastrcnn_loss(class_logits, box_regression, labels, targets)
    ours = fast_rcnn_loss(class_logits, box_regression, labels, targets)
    torch.testing.assert_close(ours[0], expected[0])
    torch.testing.assert_close(ours[1], expected[1])
    concatenated = fast_rcnn_loss(class_logits, box_regression, torch.cat(labels), torch.cat(targets))
    torch.testing.assert_close(concatenated[1], expected[1])


def test_fast_rcnn_loss_edge_cases():
    class_logits = torch.randn(0, 3, requires_grad=True)
    classifier, box = fast_rcnn_loss(class_logits, torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64),
                                     torch.zeros(0, 4))
    assert float(classifier.detach()) == 0.0 and float(box.detach()) == 0.0  # no NaN from an empty mean
    (classifier + box).backward()
    background = fast_rcnn_loss(torch.randn(5, 3), torch.randn(5, 12), torch.zeros(5, dtype=torch.int64),
                                torch.randn(5, 4))
    assert float(background[1]) == 0.0 and float(background[0]) > 0
    with pytest.raises(ValueError, match=r"box_regression \(R, K \* 4\)"):
        fast_rcnn_loss(torch.randn(5, 3), torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"labels must be \(5,\)"):
        fast_rcnn_loss(torch.randn(5, 3), torch.randn(5, 12), torch.zeros(4, dtype=torch.int64), torch.randn(5, 4))


# --------------------------------------------------------------------------- detections


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("score_thresh", "nms_thresh", "detections", "count"), [
    (0.05, 0.5, 100, 60),
    (0.2, 0.3, 10, 80),
    (0.0, 0.7, 300, 400),  # more than 1,000 candidate boxes: torchvision's class-by-class NMS
])
def test_postprocess_detections_equals_torchvision(seed, score_thresh, nms_thresh, detections, count):
    g = torch.Generator().manual_seed(seed)
    batch, classes = 1 + seed % 3, 4
    sizes = [(150 + 10 * i, 200 - 20 * i) for i in range(batch)]
    proposals = [random_image_boxes(seed * 7 + i, 0, count, size=200.0)[0] for i in range(batch)]
    class_logits = torch.randn(batch * count, classes, generator=g) * 2
    box_regression = torch.randn(batch * count, classes * 4, generator=g)
    heads = torchvision_roi_heads(score_thresh=score_thresh, nms_thresh=nms_thresh, detections=detections)
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, sizes)
    ours = postprocess_detections(class_logits, box_regression, proposals, sizes, score_threshold=score_thresh,
                                  nms_threshold=nms_thresh, detections_per_image=detections)
    assert len(ours) == batch
    for got, b, s, lab in zip(ours, boxes, scores, labels):
        assert torch.equal(got["boxes"], b) and torch.equal(got["scores"], s) and torch.equal(got["labels"], lab)
    assert ROI_BOX_WEIGHTS == heads.box_coder.weights


def test_postprocess_detections_edge_cases():
    nothing = postprocess_detections(torch.zeros(0, 3), torch.zeros(0, 12), [torch.zeros(0, 4)] * 2, (50, 50))
    assert [d["boxes"].shape for d in nothing] == [(0, 4), (0, 4)]
    assert [d["labels"].dtype for d in nothing] == [torch.int64, torch.int64]
    confident_background = torch.tensor([[10.0, 0.0, 0.0]])
    none = postprocess_detections(confident_background, torch.zeros(1, 12), [torch.tensor([[0.0, 0, 9, 9]])], (9, 9))
    assert none[0]["scores"].numel() == 0
    with pytest.raises(ValueError, match=r"class_logits must have shape \(3, K\)"):
        postprocess_detections(torch.zeros(2, 3), torch.zeros(2, 12), [torch.zeros(3, 4)], (50, 50))
    with pytest.raises(ValueError, match=r"box_regression must have shape \(2, 12\)"):
        postprocess_detections(torch.zeros(2, 3), torch.zeros(2, 8), [torch.zeros(2, 4)], (50, 50))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_heads_keep_the_device(device):
    proposals, gt, labels = (t.to(device) for t in random_image_boxes(0, 2, 50))
    sample = sample_rois(proposals, gt, labels, batch_size=16, generator=torch.Generator().manual_seed(0))
    features = torch.randn(1, 4, 25, 25, device=device)
    pooled = pool_rois(features, [sample.boxes], 1 / 8)
    head = DetectionHead(4, 4, representation_size=8).to(device)
    class_logits, box_regression = head(pooled)
    loss = fast_rcnn_loss(class_logits, box_regression, sample.labels, sample.box_targets)
    detections = postprocess_detections(class_logits, box_regression, [sample.boxes], (200, 200))
    for t in (*sample, pooled, loss[0], loss[1], detections[0]["boxes"], detections[0]["labels"]):
        assert t.device.type == torch.device(device).type
    assert int((sample.labels != IGNORE).sum()) == 16


def test_roi_heads_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        pool_rois(torch.zeros(1, 2, 5, 5), [torch.zeros(1, 4)], 1.0, method="max")
    with pytest.raises(ValueError, match="boxes must be a list of 1"):
        pool_rois(torch.zeros(1, 2, 5, 5), torch.zeros(1, 4), 1.0)
    with pytest.raises(ValueError, match="num_classes counts the background"):
        DetectionHead(4, 1)
    with pytest.raises(ValueError, match="pooled must have shape"):
        DetectionHead(4, 3)(torch.zeros(2, 5, 7, 7))
