"""Offline clips: moving shapes with ground-truth tracks (checked against the shapes SSD), and photo pans."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.data import CLASSES, sample_image
from course_lib.data.clips import (
    DEFAULT_PHOTOS,
    FIRST_TRACK_ID,
    PhotoClip,
    ShapesClip,
    photo_clip,
    shapes_clip,
)
from course_lib.data.video import read_video, video_info

TARGET_KEYS = {"boxes", "labels", "track_ids", "visibility"}


@pytest.fixture(scope="module")
def clip() -> ShapesClip:
    return shapes_clip()


def _extents(mask: torch.Tensor) -> list[float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# -- moving shapes -------------------------------------------------------------------------------

def test_shapes_clip_format(clip):
    frames, fps, targets, class_names = clip
    assert frames.shape == (96, 3, 64, 64) and frames.dtype == torch.uint8 and fps == 12.0
    assert class_names == CLASSES and len(targets) == 96
    for target in targets:
        n = len(target["labels"])
        assert set(target) == TARGET_KEYS
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].dtype == torch.int64 and target["track_ids"].dtype == torch.int64
        assert target["visibility"].shape == (n,) and target["visibility"].dtype == torch.float32
        assert ((target["labels"] >= 1) & (target["labels"] <= 3)).all()
        assert (target["boxes"][:, :2] >= 0).all() and (target["boxes"][:, 2:] <= 64).all()
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
        assert len(target["track_ids"].unique()) == n  # one box per object and frame
        assert ((target["visibility"] >= 0.5) & (target["visibility"] <= 1)).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_boxes_are_tight_around_the_visible_pixels_of_one_flat_colour(seed):
    """Without noise an object is one colour in every frame; its box is the extent of its visible pixels."""
    frames, _, targets, _ = shapes_clip(num_frames=40, noise_std=0.0, min_visibility=0.0, seed=seed,
                                        return_masks=True)
    colours: dict[int, torch.Tensor] = {}
    for frame, target in zip(frames, targets):
        masks = target["masks"]
        assert masks.shape == (len(target["labels"]), 64, 64) and masks.dtype == torch.bool
        assert (masks.sum(dim=0) <= 1).all()  # visible pixels are never shared
        for box, mask, track in zip(target["boxes"], masks, target["track_ids"].tolist()):
            assert box.tolist() == _extents(mask)
            colour = frame[:, mask].T.unique(dim=0)
            assert len(colour) == 1  # flat ...
            assert torch.equal(colours.setdefault(track, colour[0]), colour[0])  # ... and the same in every frame


def test_same_seed_same_clip_and_no_global_side_effects():
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a, b = shapes_clip(num_frames=30, seed=5), shapes_clip(num_frames=30, seed=5)
    assert torch.equal(a.frames, b.frames)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.targets, b.targets) for k in TARGET_KEYS)
    assert not torch.equal(a.frames, shapes_clip(num_frames=30, seed=6).frames)
    assert torch.equal(state, torch.random.get_rng_state()) and torch.get_num_threads() == threads
    single = shapes_clip(num_frames=1, image_size=32)
    assert single.frames.shape == (1, 3, 32, 32) and len(single.targets) == 1


def _tracks(targets) -> dict[int, list[tuple[int, torch.Tensor, float]]]:
    tracks: dict[int, list] = {}
    for t, target in enumerate(targets):
        for track, box, vis in zip(target["track_ids"].tolist(), target["boxes"], target["visibility"].tolist()):
            tracks.setdefault(track, []).append((t, box, vis))
    return tracks


def test_objects_enter_leave_and_occlude_each_other(clip):
    tracks = _tracks(clip.targets)
    ids = sorted(tracks)
    assert ids == list(range(FIRST_TRACK_ID, FIRST_TRACK_ID + len(ids))) and len(ids) == 5
    first = [tracks[i][0][0] for i in ids]
    assert first == sorted(first)  # ids are numbered by first appearance
    assert sum(f == 0 for f in first) == 3 and max(first) > 0  # three from the start, later ones enter
    assert any(tracks[i][-1][0] < 95 for i in ids)  # and leave before the end
    inside = [(vis, box) for track in tracks.values() for _, box, vis in track
              if (box[:2] > 0).all() and (box[2:] < 64).all()]
    assert any(vis < 0.95 for vis, _ in inside)  # partly hidden behind another object, in the frame
    label_of = {}
    for target in clip.targets:  # a track keeps its class
        for track, label in zip(target["track_ids"].tolist(), target["labels"].tolist()):
            assert label_of.setdefault(track, label) == label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bouncing_objects_move_at_constant_velocity_and_never_pass_through_each_other(seed):
    frames, _, targets, _ = shapes_clip(num_frames=60, num_objects=3, num_crossing=0, noise_std=0.0,
                                        min_visibility=0.0, seed=seed)
    tracks = _tracks(targets)
    assert len(tracks) == 3 and all(len(track) == 60 for track in tracks.values())
    assert min(vis for track in tracks.values() for _, _, vis in track) > 0.85  # they bounce off each other
    for track in tracks.values():
        centres = torch.stack([(box[:2] + box[2:]) / 2 for _, box, _ in track])
        steps = centres.diff(dim=0).abs()  # (59, 2): pixel-quantised, so +-1 px around the true speed
        assert steps.max() <= 1.5 + 1.0
        # Between bounces the speed along each axis is constant: most steps agree with the median.
        for axis in range(2):
            agree = ((steps[:, axis] - steps[:, axis].median()).abs() <= 1.0).float().mean()
            assert agree > 0.7, (seed, axis, steps[:, axis])


def test_min_visibility_and_a_still_scene():
    everything = shapes_clip(num_frames=30, min_visibility=0.0, seed=1)
    default = shapes_clip(num_frames=30, seed=1)
    assert torch.equal(everything.frames, default.frames)  # only the targets differ
    for all_objects, shown in zip(everything.targets, default.targets):
        keep = all_objects["visibility"] >= 0.5
        assert torch.equal(all_objects["track_ids"][keep], shown["track_ids"])
    still = shapes_clip(num_frames=5, speed=(0.0, 0.0), noise_std=0.0, num_crossing=1)
    assert all(torch.equal(f, still.frames[0]) for f in still.frames)  # crossing objects never come in
    assert all(len(t["labels"]) == 3 for t in still.targets)
    empty = shapes_clip(num_frames=3, num_objects=0, num_crossing=0)
    assert all(t["boxes"].shape == (0, 4) and t["track_ids"].shape == (0,) for t in empty.targets)


def test_the_course_shapes_ssd_detects_the_clip(clip):
    """Recall at IoU 0.5 (right class, score >= 0.3), what the SSD gets on its own validation images (~0.87)."""
    from course_lib.detection import load_shapes_ssd
    from course_lib.detection.evaluate import match_detections, recall_by_size

    model = load_shapes_ssd()
    recalls = []
    for seed in (0, 1, 2):
        frames, _, targets, _ = clip if seed == 0 else shapes_clip(seed=seed)
        detections = model.detect(frames.float() / 255, score_threshold=0.3)
        recalls.append(recall_by_size(detections, targets, score_threshold=0.3)["recall"])
        if seed == 0:
            per_frame = [float(match_detections(d, t)[1].float().mean()) for d, t in zip(detections, targets)
                         if len(t["labels"])]
            assert sum(per_frame) / len(per_frame) >= 0.8
            assert sum(p >= 0.5 for p in per_frame) >= 0.9 * len(per_frame)
    assert recalls[0] >= 0.8, recalls
    assert sum(recalls) / len(recalls) >= 0.8, recalls


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"num_frames": 0}, ValueError, "num_frames"), ({"fps": 0}, ValueError, "fps"), ({"fps": "12"}, TypeError, "fps"),
    ({"image_size": 8}, ValueError, "image_size"), ({"image_size": (64, 64)}, TypeError, "image_size"),
    ({"num_objects": -1}, ValueError, "num_objects"), ({"num_crossing": 1.5}, TypeError, "num_crossing"),
    ({"num_objects": 30, "num_crossing": 3}, ValueError, "at most 32"), ({"speed": (2, 1)}, ValueError, "speed"),
    ({"speed": 1}, ValueError, "speed"), ({"noise_std": -1}, ValueError, "noise_std"),
    ({"min_visibility": 1.5}, ValueError, "min_visibility"), ({"seed": -1}, ValueError, "seed"),
    ({"seed": "0"}, TypeError, "seed"),
])
def test_bad_shapes_clip_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        shapes_clip(**kwargs)


def test_shapes_clip_writes_mp4_and_gif(clip, tmp_path):
    mp4 = clip.write(tmp_path / "shapes.mp4")
    info = video_info(mp4)
    assert (info.num_frames, info.height, info.width, info.fps) == (96, 64, 64, 12.0)
    gif = clip.write(tmp_path / "boxes.gif", draw_boxes=True, step=2)
    frames, fps = read_video(gif)
    assert frames.shape == (48, 3, 64, 64) and fps == pytest.approx(100 / 17, abs=0.01)  # 6 fps: 17/100 s delays
    assert not torch.equal(frames[0], clip.frames[0])  # the boxes are drawn


# -- camera moves over photographs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def photos() -> PhotoClip:
    return photo_clip()


def test_photo_clip_format(photos):
    frames, fps, names, crops, cuts = photos
    assert frames.shape == (72, 3, 240, 320) and frames.dtype == torch.uint8 and fps == 12.0
    assert names == tuple(n for n in DEFAULT_PHOTOS for _ in range(18)) and cuts == (0, 18, 36, 54)
    assert crops.shape == (72, 4) and crops.dtype == torch.float32
    for name, crop in zip(names, crops):
        height, width = sample_image(name, as_uint8=True).shape[1:]
        assert crop[0] >= -1e-3 and crop[1] >= -1e-3 and crop[2] <= width + 1e-3 and crop[3] <= height + 1e-3
        assert (crop[2] - crop[0]) / (crop[3] - crop[1]) == pytest.approx(320 / 240, rel=1e-4)


def test_every_frame_shows_its_crop_of_its_photograph_antialiased(photos):
    """Each frame is its crop box of its photograph, resized like torch's antialiased resize (up to the
    sub-pixel position, which the reference rounds to whole pixels)."""
    errors = []
    for frame, name, crop in zip(photos.frames, photos.image_names, photos.crop_boxes):
        image = sample_image(name, as_uint8=True).float()
        x1, y1, x2, y2 = crop.round().int().tolist()
        reference = F.interpolate(image[None, :, y1:y2, x1:x2], size=(240, 320), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
        errors.append(float((frame.float() - reference).abs().mean()))
    assert max(errors) < 5.0 and sum(errors) / len(errors) < 3.0, errors
    # A zoom-in shot starts on the whole photograph (the largest 4:3 crop, centred).
    height, width = sample_image(photos.image_names[0], as_uint8=True).shape[1:]
    assert photos.crop_boxes[0].tolist() == pytest.approx([0, (height - width * 3 / 4) / 2, width,
                                                           (height + width * 3 / 4) / 2], abs=1e-3)


def test_the_camera_moves_smoothly_within_shots(photos):
    """Smoothstep easing: the crop moves least at the ends of a shot and most in the middle, without jumps."""
    for start in photos.cuts:
        step = (photos.crop_boxes[start + 1:start + 18] - photos.crop_boxes[start:start + 17]).abs().sum(dim=1)
        assert step[0] < step[8] / 4 and step[-1] < step[8] / 4
        assert (step[1:] - step[:-1]).abs().max() < step.max() / 3
        assert set(photos.image_names[start:start + 18]) == {photos.image_names[start]}
    # Between shots the picture changes completely: a cut.
    frames = photos.frames.float()
    for cut in photos.cuts[1:]:
        assert (frames[cut] - frames[cut - 1]).abs().mean() > (frames[cut + 1] - frames[cut]).abs().mean()


def test_photo_clip_options_and_determinism(tmp_path):
    one = photo_clip(["rocket"], size=(96, 128), seconds_per_image=1.0, fps=6, seed=3)
    assert one.frames.shape == (6, 3, 96, 128) and one.cuts == (0,)
    assert torch.equal(one.frames, photo_clip(["rocket"], size=(96, 128), seconds_per_image=1.0, fps=6, seed=3).frames)
    other = photo_clip(["rocket"], size=(96, 128), seconds_per_image=1.0, fps=6, seed=4)
    assert not torch.equal(one.crop_boxes, other.crop_boxes)
    path = one.write(tmp_path / "rocket.mp4")
    assert video_info(path).num_frames == 6
    for kwargs, error, words in [
        ({"names": []}, ValueError, "names"), ({"names": "rocket"}, ValueError, "names"),
        ({"names": ["nope"]}, ValueError, "nope"), ({"names": [3]}, TypeError, "name"),
        ({"size": (4, 4)}, ValueError, "size"), ({"size": 240}, ValueError, "size"), ({"fps": -1}, ValueError, "fps"),
        ({"zoom": (0.9, 0.5)}, ValueError, "zoom"), ({"zoom": (0.0, 0.5)}, ValueError, "zoom"),
        ({"seconds_per_image": 0}, ValueError, "seconds_per_image"), ({"seed": 1.5}, TypeError, "seed"),
    ]:
        with pytest.raises(error, match=words):
            photo_clip(**kwargs)
