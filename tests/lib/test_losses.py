"""course_lib.detection.losses against torchvision's focal loss and torch's smooth L1."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.detection.losses import REDUCTIONS, focal_loss, smooth_l1_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def logits_and_targets(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)
    targets = (torch.rand(shape, generator=g) < 0.1).to(dtype)  # mostly background, like anchors
    return logits, targets


@SETTINGS
@given(rows=st.integers(0, 50), classes=st.integers(1, 21), seed=st.integers(0, 2**16),
       alpha=st.sampled_from([0.25, 0.5, 0.9, -1.0]), gamma=st.sampled_from([0.0, 0.5, 2.0, 5.0]),
       reduction=st.sampled_from(REDUCTIONS), double=st.booleans())
def test_focal_loss_equals_torchvision(rows, classes, seed, alpha, gamma, reduction, double):
    dtype = torch.float64 if double else torch.float32
    logits, targets = logits_and_targets((rows, classes), seed, dtype)
    got = focal_loss(logits, targets, alpha, gamma, reduction)
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_focal_loss_gradients_equal_torchvision():
    logits, targets = logits_and_targets((30, 5), 0, torch.float64)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    focal_loss(a, targets).backward()
    torchvision.ops.sigmoid_focal_loss(b, targets, reduction="sum").backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_focal_loss_alpha_weights_positives_by_alpha():
    # One confident-wrong positive and one confident-wrong negative, same difficulty.
    logits = torch.tensor([-2.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    loss = focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    base = focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="none")
    torch.testing.assert_close(loss / base, torch.tensor([0.25, 0.75]))  # 0.25 positives, 0.75 negatives


def test_focal_loss_worked_numbers_and_special_cases():
    # p = 0.9 on a positive: -0.25 * 0.1**2 * log(0.9)
    logit = torch.tensor([math.log(9.0)])
    torch.testing.assert_close(focal_loss(logit, torch.ones(1)), torch.tensor(-0.25 * 0.01 * math.log(0.9)))
    # gamma = 0 and no alpha: plain binary cross-entropy
    logits, targets = logits_and_targets((10, 4), 1)
    torch.testing.assert_close(focal_loss(logits, targets, alpha=-1, gamma=0.0),
                               F.binary_cross_entropy_with_logits(logits, targets, reduction="sum"))
    # easy examples are down-weighted far more than hard ones
    easy = focal_loss(torch.tensor([5.0]), torch.ones(1), alpha=-1)
    hard = focal_loss(torch.tensor([-5.0]), torch.ones(1), alpha=-1)
    assert easy < 1e-4 * F.binary_cross_entropy_with_logits(torch.tensor([5.0]), torch.ones(1))
    assert hard > 0.9 * F.binary_cross_entropy_with_logits(torch.tensor([-5.0]), torch.ones(1))


def test_focal_loss_is_stable_for_large_logits():
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0])
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = focal_loss(logits, targets, reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss[:2], torch.zeros(2))
    torch.testing.assert_close(loss[2:], torch.tensor([0.75 * 100.0, 0.25 * 100.0]))


@SETTINGS
@given(n=st.integers(0, 60), seed=st.integers(0, 2**16), beta=st.sampled_from([0.0, 1 / 9, 0.5, 1.0, 3.0]),
       reduction=st.sampled_from(REDUCTIONS), double=st.booleans())
def test_smooth_l1_equals_torch(n, seed, beta, reduction, double):
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    prediction = torch.randn(n, 4, generator=g, dtype=torch.float64).to(dtype) * 2
    target = torch.randn(n, 4, generator=g, dtype=torch.float64).to(dtype)
    got = smooth_l1_loss(prediction, target, beta, reduction)
    torch.testing.assert_close(got, F.smooth_l1_loss(prediction, target, beta=beta, reduction=reduction),
                               equal_nan=True)


@pytest.mark.parametrize("beta", [0.0, 1 / 9, 1.0])
def test_smooth_l1_gradients_equal_torch(beta):
    g = torch.Generator().manual_seed(0)
    prediction = torch.randn(20, 4, generator=g, dtype=torch.float64)
    target = torch.randn(20, 4, generator=g, dtype=torch.float64)
    a, b = prediction.clone().requires_grad_(), prediction.clone().requires_grad_()
    smooth_l1_loss(a, target, beta, "sum").backward()
    F.smooth_l1_loss(b, target, beta=beta, reduction="sum").backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad)


def test_smooth_l1_worked_numbers():
    diff = torch.tensor([0.0, 0.5, 1.0, 3.0])
    # quadratic below beta = 1 (0.5 d^2), linear above (d - 0.5)
    torch.testing.assert_close(smooth_l1_loss(diff, torch.zeros(4), 1.0, "none"), torch.tensor([0.0, 0.125, 0.5, 2.5]))


@pytest.mark.parametrize("device", DEVICES)
def test_losses_stay_on_device(device):
    logits, targets = logits_and_targets((8, 3), 2)
    assert focal_loss(logits.to(device), targets.to(device)).device.type == torch.device(device).type
    assert smooth_l1_loss(logits.to(device), targets.to(device)).device.type == torch.device(device).type


def test_losses_bad_input():
    logits, targets = logits_and_targets((8, 3), 3)
    with pytest.raises(ValueError, match=r"targets must have the shape of logits \(8, 3\), got \(8, 2\)"):
        focal_loss(logits, targets[:, :2])
    with pytest.raises(ValueError, match="reduction must be one of"):
        focal_loss(logits, targets, reduction="average")
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, targets, gamma=-1.0)
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        focal_loss(targets.long(), targets)
    with pytest.raises(ValueError, match="one device"):
        focal_loss(logits, targets.to("meta"))
    with pytest.raises(ValueError, match="target must have the shape of input"):
        smooth_l1_loss(logits, targets.T)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(logits, targets, beta=-1.0)
