"""course_lib.detection.faster_rcnn.rpn and region_proposals against torchvision's RPN and the lesson's numbers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead

from course_lib.detection.anchors import inside_image, rpn_anchors
from course_lib.detection.boxes import box_iou, clip_boxes, encode_boxes
from course_lib.detection.faster_rcnn.region_proposals import (
    SEED_TEST_PROPOSALS,
    SEED_TRAIN_PROPOSALS,
    TORCHVISION_MIN_SIZE,
    ProposalSettings,
    decode_proposals,
    filter_proposals,
)
from course_lib.detection.faster_rcnn.rpn import (
    RPN_BATCH_SIZE,
    RPN_LAMBDA,
    RPNHead,
    objectness_logits,
    rpn_loss,
    rpn_targets,
    sample_anchors,
)
from course_lib.detection.matching import IGNORE, NEGATIVE, POSITIVE

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: see tests/conftest.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SEEDS = [0, 1, 2, 3]


# The lesson's image: two helmets, (y1, x1, y2, x2) in the source; ours (x1, y1, x2, y2).
LESSON_BOXES = torch.tensor([[160, 147, 260, 234], [139, 312, 200, 348]], dtype=torch.float32)[:, [1, 0, 3, 2]]


def random_gt(count: int, image_size: int, generator: torch.Generator, min_side: float = 8.0) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * image_size * 0.8
    wh = min_side + torch.rand(count, 2, generator=generator) * image_size * 0.4
    return torch.cat((xy, (xy + wh).clamp(max=image_size)), dim=1)


def matcher_labels(gt: torch.Tensor, anchors: torch.Tensor, pos: float = 0.7, neg: float = 0.3) -> torch.Tensor:
    """torchvision's RPN labels (RegionProposalNetwork.assign_targets_to_anchors) as 1 / 0 / -1."""
    matches = Matcher(pos, neg, allow_low_quality_matches=True)(box_iou(gt, anchors))
    labels = torch.full_like(matches, IGNORE)
    labels[matches >= 0] = POSITIVE
    labels[matches == Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
    return labels


# --------------------------------------------------------------------------- the head


@pytest.mark.parametrize("seed", SEEDS)
def test_rpn_head_equals_torchvision_with_copied_weights(seed):
    g = torch.Generator().manual_seed(seed)
    batch, channels, height, width, anchors = 1 + seed % 3, 8, 5 + seed, 7, 9
    torch.manual_seed(seed)
    theirs = TorchvisionRPNHead(channels, anchors)
    for p in theirs.parameters():  # non-trivial weights and biases
        p.data = torch.randn(p.shape, generator=g)
    ours = RPNHead(channels, anchors)
    ours.load_state_dict(theirs.state_dict())  # their "conv.0.0.*" names load into ours
    features = torch.randn(batch, channels, height, width, generator=g)
    logits, deltas = theirs([features])
    objectness, box_deltas = concat_box_prediction_layers(logits, deltas)
    out = ours(features)
    assert out.deltas.shape == (batch, height * width * anchors, 4)
    assert out.objectness.shape == (batch, height * width * anchors)
    assert torch.equal(out.deltas.reshape(-1, 4), box_deltas)
    assert torch.equal(out.objectness.reshape(-1, 1), objectness)
    # ... and ours load into theirs (torchvision upgrades the old "conv.weight" names).
    back = TorchvisionRPNHead(channels, anchors)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back([features])[0][0], logits[0])


def test_rpn_head_lesson_shapes_and_softmax_variant():
    head = RPNHead(512, 9, objectness="softmax")
    features = torch.randn(1, 512, 50, 50)
    with torch.no_grad():
        out = head(features)
        hidden = F.relu(head.conv(features))
        raw_deltas, raw_scores = head.bbox_pred(hidden), head.cls_logits(hidden)
    assert raw_deltas.shape == (1, 36, 50, 50) and raw_scores.shape == (1, 18, 50, 50)
    assert out.deltas.shape == (1, 22_500, 4) and out.objectness.shape == (1, 22_500, 2)
    # The lesson's reshapes, literally.
    assert torch.equal(out.deltas, raw_deltas.permute(0, 2, 3, 1).contiguous().view(1, -1, 4))
    assert torch.equal(out.objectness, raw_scores.permute(0, 2, 3, 1).contiguous().view(1, -1, 2))
    object_score = raw_scores.permute(0, 2, 3, 1).contiguous().view(1, 50, 50, 9, 2)[..., 1].reshape(1, -1)
    assert torch.equal(out.objectness[..., 1], object_score)
    # Two-way scores -> one logit whose sigmoid is the softmax probability of "object".
    torch.testing.assert_close(torch.sigmoid(objectness_logits(out.objectness)), out.objectness.softmax(-1)[..., 1])
    # Initialisation of the source and torchvision: N(0, 0.01), zero bias.
    assert abs(float(head.conv.weight.detach().std()) - 0.01) < 1e-3 and not head.conv.bias.detach().any()


def test_rpn_head_bad_input():
    with pytest.raises(ValueError, match="objectness must be one of"):
        RPNHead(8, 9, objectness="logits")
    with pytest.raises(ValueError, match=r"features must have shape \(B, 8, H, W\)"):
        RPNHead(8, 9)(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match="num_anchors"):
        RPNHead(8, 0)
    with pytest.raises(ValueError, match=r"objectness must have shape \(B, A\)"):
        objectness_logits(torch.zeros(3))


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("seed", SEEDS)
def test_rpn_labels_equal_torchvision_matcher(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = rpn_anchors((10, 12), 16, scales=(2.0, 4.0, 8.0), convention="torchvision")
    gt = random_gt(1 + seed, 180, g)
    targets = rpn_targets(anchors, gt)
    assert torch.equal(targets.labels, matcher_labels(gt, anchors))
    # Box targets: torchvision's encoding of the matched (highest-IoU) ground truth, on positives.
    matched = Matcher(0.7, 0.3, allow_low_quality_matches=True)(box_iou(gt, anchors))
    expected = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt[matched.clamp(min=0)], anchors)
    positive = targets.labels == POSITIVE
    assert torch.equal(targets.matched_gt[positive], matched[positive])
    assert (targets.matched_gt[~positive] == -1).all() and (targets.box_targets[~positive] == 0).all()
    torch.testing.assert_close(targets.box_targets[positive], expected[positive])


def test_rpn_labels_ties_equal_torchvision():
    # Anchors on a grid and objects placed so that several anchors tie for an object's best IoU.
    anchors = rpn_anchors((6, 6), 8, ratios=(1.0,), scales=(2.0,), convention="torchvision")
    gt = torch.tensor([[0.0, 0.0, 8.0, 8.0],  # four anchors tie at IoU 0.25 (forced positives)
                       [32.0, 20.0, 40.0, 28.0],  # two tie at 0.25
                       [12.0, 32.0, 28.0, 48.0],  # two tie at 0.6 (between the thresholds)
                       [28.0, 4.0, 36.0, 12.0]])  # one best anchor
    ious = box_iou(gt, anchors)
    best = ious == ious.max(dim=1, keepdim=True).values
    assert best.sum(dim=1).tolist() == [4, 2, 2, 1]
    assert torch.equal(rpn_targets(anchors, gt).labels, matcher_labels(gt, anchors))


def test_seed_labelling_order_is_wrong_on_a_crafted_case():
    """Erratum 001-2: positives first, then `label[max_iou < 0.3] = 0`, loses a forced positive."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [100.0, 100.0, 200.0, 200.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [24.0, 0.0, 44.0, 10.0]])  # object 1's best IoU: 6/24 = 0.25
    ious = box_iou(gt, anchors)
    max_iou = ious.max(dim=0).values
    seed = torch.full((3,), IGNORE)
    seed[ious.argmax(dim=1)] = POSITIVE  # the source: forced positives ...
    seed[max_iou >= 0.7] = POSITIVE
    seed[max_iou < 0.3] = NEGATIVE  # ... then negatives, overwriting anchor 1
    ours = rpn_targets(anchors, gt).labels
    assert ours.tolist() == [POSITIVE, POSITIVE, NEGATIVE] == matcher_labels(gt, anchors).tolist()
    assert seed.tolist() == [POSITIVE, NEGATIVE, NEGATIVE]


def test_rpn_targets_ignore_outside_the_seeds_rule():
    anchors = rpn_anchors(50, 16)
    targets = rpn_targets(anchors, LESSON_BOXES, ignore_outside=(800, 800))
    inside = inside_image(anchors, 800, 800)
    assert int(inside.sum()) == 8_940
    assert (targets.labels[~inside] == IGNORE).all()
    # Inside, the labels are those of matching the 8,940 inside anchors alone.
    assert torch.equal(targets.labels[inside], matcher_labels(LESSON_BOXES, anchors[inside]))
    assert int((targets.labels == POSITIVE).sum()) > 0
    everyone = rpn_targets(anchors, LESSON_BOXES)
    assert int((everyone.labels != IGNORE).sum()) > int((targets.labels != IGNORE).sum())


def test_rpn_targets_edge_cases():
    anchors = rpn_anchors(4, 16, convention="torchvision")
    # no ground truth: all negative, nothing to regress
    empty = rpn_targets(anchors, torch.zeros(0, 4))
    assert (empty.labels == NEGATIVE).all() and (empty.matched_gt == -1).all() and (empty.box_targets == 0).all()
    # all anchors outside a tiny image: all ignored
    outside = rpn_targets(anchors, torch.tensor([[1.0, 1.0, 3.0, 3.0]]), ignore_outside=(4, 4))
    assert (outside.labels == IGNORE).all() and (outside.box_targets == 0).all()
    # no anchors at all
    none = rpn_targets(torch.zeros(0, 4), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert none.labels.shape == (0,) and none.box_targets.shape == (0, 4)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \(N, 4\)"):
        rpn_targets(anchors, torch.zeros(3))
    with pytest.raises(ValueError, match="ignore_outside"):
        rpn_targets(anchors, torch.zeros(0, 4), ignore_outside=800)


def test_lesson_sample_has_256_anchors_at_most_128_positive():
    anchors = rpn_anchors(50, 16)
    targets = rpn_targets(anchors, LESSON_BOXES, ignore_outside=(800, 800))
    sampled = sample_anchors(targets.labels, generator=torch.Generator().manual_seed(0))
    assert int((sampled != IGNORE).sum()) == RPN_BATCH_SIZE == 256
    assert 0 < int((sampled == POSITIVE).sum()) <= 128
    # Many positives (a big object): exactly 128 of each.
    big = rpn_targets(anchors, torch.tensor([[0.0, 0.0, 800.0, 800.0], [100.0, 100.0, 700.0, 400.0]]))
    many = big.labels.clone()
    many[torch.arange(0, 22_500, 7)] = POSITIVE  # more positives than 128
    sampled = sample_anchors(many, generator=torch.Generator().manual_seed(0))
    assert int((sampled == POSITIVE).sum()) == 128 and int((sampled == NEGATIVE).sum()) == 128
    # A batch of images: one row each, drawn one after the other.
    batch = sample_anchors(torch.stack((targets.labels, many)), generator=torch.Generator().manual_seed(0))
    assert batch.shape == (2, 22_500) and (batch != IGNORE).sum(1).tolist() == [256, 256]


# --------------------------------------------------------------------------- the loss


def random_rpn_batch(seed: int, batch: int = 2, num_anchors: int = 300):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 2, (batch, num_anchors), generator=g)
    objectness = torch.randn(batch, num_anchors, generator=g) * 2
    deltas = torch.randn(batch, num_anchors, 4, generator=g)
    targets = torch.randn(batch, num_anchors, 4, generator=g) * 0.3
    return objectness, deltas, labels, targets


@pytest.mark.parametrize("seed", SEEDS)
def test_rpn_loss_equals_torchvision_compute_loss(seed):
    objectness, deltas, labels, targets = random_rpn_batch(seed)
    rpn = RegionProposalNetwork(AnchorGenerator(), TorchvisionRPNHead(1, 1), 0.7, 0.3, 256, 0.5,
                                {"training": 1, "testing": 1}, {"training": 1, "testing": 1}, 0.7)
    sampled = sample_anchors(labels, 64, 0.5, generator=torch.Generator().manual_seed(seed))
    # torchvision draws its own sample: give it ours (masks per image, as its sampler returns).
    rpn.fg_bg_sampler = lambda _: ([(row == POSITIVE).to(torch.uint8) for row in sampled],
                                   [(row == NEGATIVE).to(torch.uint8) for row in sampled])
    expected = rpn.compute_loss(objectness.reshape(-1, 1), deltas.reshape(-1, 4),
                                list(labels.float()), list(targets))
    ours = rpn_loss(objectness, deltas, sampled, targets)
    torch.testing.assert_close(ours.objectness, expected[0])
    torch.testing.assert_close(ours.box, expected[1])
    # The two-way form of the same logits (s0 = 0, s1 = logit) gives the same loss.
    two_way = torch.stack((torch.zeros_like(objectness), objectness), dim=-1)
    torch.testing.assert_close(rpn_loss(two_way, deltas, sampled, targets).objectness, expected[0])


def test_rpn_loss_seed_normalisation_by_hand():
    # Four anchors, two-way scores (0, 0): cross-entropy ln 2 for each sampled anchor.
    objectness = torch.zeros(1, 4, 2)
    labels = torch.tensor([[POSITIVE, NEGATIVE, IGNORE, POSITIVE]])
    targets = torch.zeros(1, 4, 4)
    deltas = torch.tensor([[[0.5, 0, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9], [2.0, 0, 0, -1.5]]])
    loss = rpn_loss(objectness, deltas, labels, targets, normalization="seed")
    # smooth L1 (beta 1) on positives only: 0.5 * 0.5^2 + (2 - 0.5) + (1.5 - 0.5) = 2.625, N_reg = 2
    torch.testing.assert_close(loss.objectness, torch.tensor(math.log(2)))
    torch.testing.assert_close(loss.box, torch.tensor(RPN_LAMBDA * 2.625 / 2))
    torch.testing.assert_close(loss.total, torch.tensor(math.log(2) + 13.125))


def test_rpn_loss_reproduces_the_lessons_printout():
    """The source prints 0.6896 (classification), 0.1542 (smooth L1 sum over 4 positives), 1.0751."""
    target_ce = 0.6896
    s = -math.log(math.exp(target_ce) - 1)  # cross-entropy of scores (0, s) for label 1 is target_ce
    labels = torch.tensor([[POSITIVE] * 4 + [NEGATIVE] * 252 + [IGNORE] * 100])
    scores = torch.where((labels == POSITIVE)[..., None], torch.tensor([0.0, s]), torch.tensor([s, 0.0]))
    deltas = torch.zeros(1, 356, 4)
    deltas[0, 0, 0] = math.sqrt(2 * 0.1542)  # 0.5 d^2 = 0.1542, the other positives exact
    loss = rpn_loss(scores, deltas, labels, torch.zeros(1, 356, 4), normalization="seed")
    assert round(float(loss.objectness), 4) == 0.6896
    assert round(float(loss.box / RPN_LAMBDA * 4), 4) == 0.1542
    assert round(float(loss.total), 4) == 1.0751  # 0.6896 + 10 * 0.1542 / 4


def test_rpn_loss_edge_cases():
    objectness, deltas, labels, targets = random_rpn_batch(0)
    # nothing sampled: zeros that still backpropagate
    objectness.requires_grad_(True)
    loss = rpn_loss(objectness, deltas, torch.full_like(labels, IGNORE), targets)
    assert float(loss.total.detach()) == 0.0
    loss.total.backward()
    assert objectness.grad is not None and float(objectness.grad.abs().sum()) == 0.0
    # no positive: the box term is 0 in both normalisations (the seed's N_reg counts at least 1)
    negatives = torch.where(labels == POSITIVE, torch.full_like(labels, NEGATIVE), labels)
    for normalization in ("torchvision", "seed"):
        loss = rpn_loss(objectness, deltas, negatives, targets, normalization=normalization)
        assert float(loss.box.detach()) == 0.0 and math.isfinite(float(loss.objectness.detach()))
    with pytest.raises(ValueError, match="normalization must be one of"):
        rpn_loss(objectness, deltas, labels, targets, normalization="paper")
    with pytest.raises(ValueError, match="deltas and box_targets must have shape"):
        rpn_loss(objectness, deltas[..., :3], labels, targets)
    with pytest.raises(ValueError, match="objectness must have the shape of labels"):
        rpn_loss(objectness[:, :10], deltas, labels, targets)


# --------------------------------------------------------------------------- proposals


def torchvision_filter(boxes, logits, image_sizes, settings: ProposalSettings):
    rpn = RegionProposalNetwork(AnchorGenerator(), TorchvisionRPNHead(1, 1), 0.7, 0.3, 256, 0.5,
                                {"training": 0, "testing": settings.pre_nms_top_n},
                                {"training": 0, "testing": settings.post_nms_top_n},
                                settings.nms_threshold, score_thresh=settings.score_threshold).eval()
    rpn.min_size = settings.min_size
    return rpn.filter_proposals(boxes, logits.reshape(-1, 1), image_sizes, [boxes.shape[1]])


def random_proposals(seed: int, batch: int, feature_size=(12, 15), stride=16):
    g = torch.Generator().manual_seed(seed)
    anchors = rpn_anchors(feature_size, stride, scales=(1.0, 4.0, 10.0), convention="torchvision")
    deltas = torch.randn(batch, anchors.shape[0], 4, generator=g) * torch.tensor([0.3, 0.3, 1.0, 1.0])
    logits = torch.randn(batch, anchors.shape[0], generator=g) * 3
    return decode_proposals(deltas, anchors), logits


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("settings", [
    ProposalSettings(300, 50),
    ProposalSettings(2_000, 1_000, nms_threshold=0.5),
    ProposalSettings(100, 1_000, nms_threshold=0.9, min_size=16.0),
    ProposalSettings(5_000, 200, min_size=TORCHVISION_MIN_SIZE, score_threshold=0.6),
    ProposalSettings(0, 10),
])
def test_filter_proposals_equals_torchvision(seed, settings):
    batch = 1 + seed % 3
    boxes, logits = random_proposals(seed, batch)
    height, width = 12 * 16 - 5 * seed, 15 * 16  # boxes reach past the image on every side
    sizes = [(height, width)] * batch
    expected_boxes, expected_scores = torchvision_filter(boxes, logits, sizes, settings)
    ours = filter_proposals(boxes, logits, (height, width), **vars(settings))
    assert len(ours.boxes) == batch
    for got_b, got_s, exp_b, exp_s in zip(ours.boxes, ours.scores, expected_boxes, expected_scores):
        assert torch.equal(got_b, exp_b) and torch.equal(got_s, exp_s)
    # Per-image sizes as a list give the same.
    listed = filter_proposals(boxes, logits, sizes, **vars(settings))
    assert all(torch.equal(a, b) for a, b in zip(listed.boxes, ours.boxes))


def test_filter_proposals_per_image_sizes_equal_torchvision():
    boxes, logits = random_proposals(7, 3)
    sizes = [(192, 240), (100, 180), (150, 60)]
    settings = ProposalSettings(400, 80)
    expected_boxes, _ = torchvision_filter(boxes, logits, sizes, settings)
    ours = filter_proposals(boxes, logits, sizes, **vars(settings))
    assert all(torch.equal(a, b) for a, b in zip(ours.boxes, expected_boxes))
    for kept, (height, width) in zip(ours.boxes, sizes):
        assert float(kept[:, 2].max()) <= width and float(kept[:, 3].max()) <= height


def test_seed_order_removes_small_boxes_before_the_top_n():
    boxes, logits = random_proposals(3, 1)
    boxes[0, :: 2, 2:] = boxes[0, ::2, :2] + 4.0  # half the boxes 4 px wide: below min_size 16
    clipped = clip_boxes(boxes[0], (192, 240))
    small = ((clipped[:, 2:] - clipped[:, :2]) < 16).any(dim=1)  # after clipping to the image
    settings = dict(pre_nms_top_n=200, post_nms_top_n=10_000, nms_threshold=1.0, min_size=16.0)  # NMS keeps all
    torchvision_order = filter_proposals(boxes, logits, (192, 240), **settings, order="torchvision")
    seed_order = filter_proposals(boxes, logits, (192, 240), **settings, order="seed")
    top_200 = logits[0].topk(200).indices
    assert len(torchvision_order.boxes[0]) == int((~small[top_200]).sum()) < 200  # small ones took places
    assert len(seed_order.boxes[0]) == 200  # the 200 best of the large enough boxes
    # When no box is too small the two orders agree.
    same = dict(settings, min_size=0.0)
    a = filter_proposals(*random_proposals(4, 2), (192, 240), **same, order="torchvision")
    b = filter_proposals(*random_proposals(4, 2), (192, 240), **same, order="seed")
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))


def test_lesson_proposal_counts_on_an_800_pixel_image():
    """Random head outputs on VGG16's 50 x 50 map: 22,500 boxes -> 12,000 -> NMS -> 2,000 (training),
    6,000 -> 300 (testing), the lesson's numbers."""
    g = torch.Generator().manual_seed(0)
    head = RPNHead(512, 9, objectness="softmax")
    with torch.no_grad():
        out = head(torch.randn(1, 512, 50, 50, generator=g))
    boxes = decode_proposals(out.deltas, rpn_anchors(50, 16))
    assert boxes.shape == (1, 22_500, 4)
    for settings, pre, post in ((SEED_TRAIN_PROPOSALS, 12_000, 2_000), (SEED_TEST_PROPOSALS, 6_000, 300)):
        no_nms = filter_proposals(boxes, out.objectness, (800, 800),
                                  **dict(vars(settings), nms_threshold=1.0, post_nms_top_n=30_000))
        assert len(no_nms.boxes[0]) == pre  # what reaches NMS
        kept = filter_proposals(boxes, out.objectness, (800, 800), **vars(settings))
        assert kept.boxes[0].shape == (post, 4) and kept.scores[0].shape == (post,)
        assert bool((kept.scores[0][:-1] >= kept.scores[0][1:]).all())  # best first
        assert float(box_iou(kept.boxes[0], kept.boxes[0]).fill_diagonal_(0).max()) <= 0.7


def test_filter_proposals_can_leave_nothing():
    boxes, logits = random_proposals(0, 2)
    empty = filter_proposals(boxes, logits, (192, 240), pre_nms_top_n=100, post_nms_top_n=10, min_size=1e4)
    assert [b.shape for b in empty.boxes] == [(0, 4), (0, 4)] and [s.shape for s in empty.scores] == [(0,), (0,)]
    none = filter_proposals(boxes[:, :0], logits[:, :0], (192, 240), pre_nms_top_n=100, post_nms_top_n=10)
    assert [b.shape for b in none.boxes] == [(0, 4), (0, 4)]


def test_filter_proposals_bad_input():
    boxes, logits = random_proposals(0, 2)
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, A, 4\)"):
        filter_proposals(boxes[0], logits, (10, 10), pre_nms_top_n=5, post_nms_top_n=5)
    with pytest.raises(ValueError, match="objectness must have shape"):
        filter_proposals(boxes, logits[:, :5], (10, 10), pre_nms_top_n=5, post_nms_top_n=5)
    with pytest.raises(ValueError, match="image_size must be"):
        filter_proposals(boxes, logits, (10, 10, 3), pre_nms_top_n=5, post_nms_top_n=5)
    with pytest.raises(ValueError, match="order must be one of"):
        filter_proposals(boxes, logits, (10, 10), pre_nms_top_n=5, post_nms_top_n=5, order="paper")
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        filter_proposals(boxes, logits, (10, 10), pre_nms_top_n=-1, post_nms_top_n=5)
    with pytest.raises(ValueError, match="order must be one of"):
        ProposalSettings(10, 5, order="fast")
    with pytest.raises(ValueError, match=r"deltas must have shape \(B, 4, 4\)"):
        decode_proposals(torch.zeros(1, 5, 4), torch.zeros(4, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_rpn_pieces_keep_the_device(device):
    anchors = rpn_anchors(6, 16, device=device)
    head = RPNHead(4, 9).to(device)
    out = head(torch.randn(2, 4, 6, 6, device=device))
    gt = torch.tensor([[10.0, 10.0, 60.0, 50.0]], device=device)
    targets = rpn_targets(anchors, gt, ignore_outside=(96, 96))
    sampled = sample_anchors(torch.stack([targets.labels] * 2), 32, generator=torch.Generator().manual_seed(0))
    loss = rpn_loss(out.objectness, out.deltas, sampled, torch.stack([targets.box_targets] * 2))
    proposals = filter_proposals(decode_proposals(out.deltas, anchors), out.objectness, (96, 96),
                                 pre_nms_top_n=100, post_nms_top_n=20)
    for t in (targets.labels, targets.box_targets, sampled, loss.total, proposals.boxes[0], proposals.scores[1]):
        assert t.device.type == torch.device(device).type
    assert torch.equal(targets.box_targets[targets.labels == POSITIVE],
                       encode_boxes(gt[targets.matched_gt[targets.labels == POSITIVE]],
                                    anchors[targets.labels == POSITIVE]))
