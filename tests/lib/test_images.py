"""Bundled sample photographs: names, formats, offline loading, errors."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from course_lib.data import images as images_module
from course_lib.data import sample_image, sample_image_info, sample_image_names

LESSON_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def test_names_are_sorted_and_include_the_lesson_images():
    names = sample_image_names()
    assert list(names) == sorted(names)
    assert set(LESSON_IMAGES) <= set(names)
    assert "grace_hopper" in names  # from matplotlib's sample data


def test_every_offered_image_loads_offline(monkeypatch):
    """No network: a socket connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("sample_image tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    images_module._read_rgb_uint8.cache_clear()
    for name in sample_image_names():
        image = sample_image(name, max_size=64)
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
        assert max(image.shape[1:]) == 64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_float_tensor_uint8_and_numpy_agree():
    image = sample_image("chelsea")
    assert image.shape == (3, 300, 451) and image.dtype == torch.float32 and image.is_contiguous()
    pixels = sample_image("chelsea", as_uint8=True)
    assert pixels.shape == (3, 300, 451) and pixels.dtype == torch.uint8
    assert torch.equal(image, pixels.float() / 255)
    array = sample_image("chelsea", as_numpy=True)
    assert isinstance(array, np.ndarray) and array.shape == (300, 451, 3) and array.dtype == np.float32
    np.testing.assert_array_equal(array, image.permute(1, 2, 0).numpy())
    array_uint8 = sample_image("chelsea", as_uint8=True, as_numpy=True)
    assert array_uint8.dtype == np.uint8 and array_uint8.shape == (300, 451, 3)
    np.testing.assert_array_equal(array_uint8, pixels.permute(1, 2, 0).numpy())


def test_greyscale_images_have_three_equal_channels():
    camera = sample_image("camera", as_uint8=True)
    assert camera.shape == (3, 512, 512)
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])


def test_each_call_returns_a_fresh_copy():
    first = sample_image("coffee", as_uint8=True)
    first.zero_()
    assert sample_image("coffee", as_uint8=True).sum() > 0
    array = sample_image("coffee", as_numpy=True)
    array[:] = 0
    assert sample_image("coffee", as_numpy=True).sum() > 0


def test_max_size_keeps_the_aspect_ratio():
    image = sample_image("coffee", max_size=150)  # 400 x 600
    assert image.shape == (3, 100, 150)
    pixels = sample_image("coffee", max_size=150, as_uint8=True)
    assert pixels.shape == (3, 100, 150) and pixels.dtype == torch.uint8
    assert (pixels.float() / 255 - image).abs().max() <= 0.5 / 255 + 1e-6
    # Larger than the image: unchanged.
    assert torch.equal(sample_image("chelsea", max_size=1000), sample_image("chelsea"))


def test_info_describes_the_image():
    info = sample_image_info("astronaut")
    assert info.package == "scikit-image" and info.filename == "astronaut.png"
    assert "person" in info.description


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown sample image 'lena'.*astronaut.*coffee"):
        sample_image("lena")
    with pytest.raises(TypeError, match="name"):
        sample_image(3)
    with pytest.raises(ValueError, match="max_size"):
        sample_image("coffee", max_size=0)
    with pytest.raises(ValueError, match="name"):
        sample_image_info("lena")


def test_images_missing_from_the_installed_packages_are_not_offered(monkeypatch, tmp_path):
    """A package version without the files: the names disappear and loading says why."""
    monkeypatch.setattr(images_module, "_data_folder", lambda package: tmp_path)
    images_module._read_rgb_uint8.cache_clear()
    try:
        assert sample_image_names() == ()
        with pytest.raises(ValueError, match="not shipped with the installed scikit-image"):
            sample_image("astronaut")
    finally:
        images_module._read_rgb_uint8.cache_clear()
