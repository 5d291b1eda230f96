"""course_lib.detection.pretrained: torchvision's detectors via `weights=`, metadata, offline stand-in, predict."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

import course_lib.weights as course_weights
from course_lib.data import CLASSES, ShapesDataset
from course_lib.detection.evaluate import match_detections
from course_lib.detection.pretrained import loading, offline_detectors
from course_lib.detection.pretrained import (
    DETECTORS,
    DetectorInfo,
    FixedSizeDetector,
    LoadedDetector,
    coco_categories,
    describe_categories,
    detector_info,
    format_table,
    load_detector,
    model_zoo,
    predict,
    register_fallback,
    resolve_detector_name,
    resolve_weights,
    shapes_ssd_detector,
    unused_category_ids,
    used_categories,
)
from course_lib.detection.ssd import load_shapes_ssd
from course_lib.weights import WeightsUnavailable, weights_file_name

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The seed's category list (lesson 6) has 'N/A' at these labels.
SEED_UNUSED_IDS = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
# The file the seed's `fasterrcnn_resnet50_fpn(pretrained=True)` downloaded.
SEED_FASTERRCNN_FILE = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty mirror folder, course weights/ folder and torch home in tmp_path; offline; no mirror set."""
    folders = {name: tmp_path / name for name in ("mirror", "course-weights", "torch")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(folders["torch"]))
    monkeypatch.setattr(course_weights, "COURSE_WEIGHTS_DIR", folders["course-weights"])
    monkeypatch.delenv("COURSE_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    return folders


@pytest.fixture(scope="module")
def shapes_detector() -> LoadedDetector:
    return shapes_ssd_detector("cpu")


# -- names, weights, metadata ---------------------------------------------------------------------


def test_short_and_builder_names_resolve():
    for short, builder in DETECTORS.items():
        assert resolve_detector_name(short) == builder
        assert resolve_detector_name(builder) == builder
        assert resolve_detector_name(short.upper()) == builder
    assert set(DETECTORS.values()) <= set(torchvision.models.list_models(module=torchvision.models.detection))


def test_unknown_name_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError) as info:
        resolve_detector_name("yolov8")
    message = str(info.value)
    assert "\n" not in message and "'yolov8'" in message
    assert all(name in message for name in [*DETECTORS, *DETECTORS.values(), "shapes_ssd"])
    with pytest.raises(TypeError, match="name"):
        resolve_detector_name(3)


@pytest.mark.parametrize("short", list(DETECTORS))
def test_metadata_comes_from_the_weights_without_building(short, monkeypatch):
    monkeypatch.setattr(loading, "get_model_builder", lambda name: pytest.fail("metadata must not build a model"))
    enum = get_model_weights(DETECTORS[short])
    meta = enum.DEFAULT.meta
    info = detector_info(short)
    assert info == detector_info(DETECTORS[short])
    assert info.name == DETECTORS[short] and info.weights == str(enum.DEFAULT)
    assert info.categories == tuple(meta["categories"]) and len(info.categories) == 91
    assert [i for i, n in enumerate(info.categories) if n == "N/A"] == SEED_UNUSED_IDS
    assert info.box_map == meta["_metrics"]["COCO-val2017"]["box_map"]
    assert info.num_params == meta["num_params"]
    assert not info.offline_fallback and "COCO" in info.box_map_source
    untrained = detector_info(short, None)
    assert untrained.weights is None and untrained.box_map is None
    assert untrained.categories == info.categories and untrained.num_params == info.num_params


def test_weights_accepted_in_every_form():
    enum = get_model_weights("retinanet_resnet50_fpn")
    member = enum.COCO_V1
    for form in ("DEFAULT", "COCO_V1", "RetinaNet_ResNet50_FPN_Weights.COCO_V1", member, enum.DEFAULT):
        assert resolve_weights("retinanet", form) is member
    assert resolve_weights("retinanet", None) is None
    with pytest.raises(TypeError, match="RetinaNet_ResNet50_FPN_Weights"):
        resolve_weights("retinanet", get_model_weights("fcos_resnet50_fpn").DEFAULT)
    with pytest.raises(ValueError, match="COCO_V1") as info:
        resolve_weights("retinanet", "IMAGENET1K_V1")
    assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="weights"):
        resolve_weights("retinanet", 1)


def test_model_zoo_table_lists_every_detector_from_metadata():
    zoo = model_zoo()
    assert [info.name for info in zoo] == list(DETECTORS.values())
    assert all(info.box_map is not None and info.num_params > 0 for info in zoo)
    table = format_table(zoo).splitlines()
    assert len(table) == 2 + len(zoo)
    for info, line in zip(zoo, table[2:]):
        assert line.startswith(info.name) and f"{info.box_map:.1f}" in line
        assert f"{info.num_params / 1e6:.1f}" in line
    assert format_table([]) == ""


def test_coco_categories_and_their_gaps():
    categories = coco_categories()
    assert categories == tuple(get_model_weights("fcos_resnet50_fpn").DEFAULT.meta["categories"])
    assert unused_category_ids(categories) == SEED_UNUSED_IDS
    used = used_categories(categories)
    assert len(used) == len(categories) - 1 - len(SEED_UNUSED_IDS) == 80  # COCO 2017's 80 classes
    assert 0 not in used and all(label not in used for label in SEED_UNUSED_IDS)
    assert used[1] == "person" and categories[0] == "__background__"
    text = describe_categories(categories)
    assert "91 labels" in text and "80 are object classes" in text and "12, 26, 29" in text
    assert used_categories(CLASSES) == {1: "circle", 2: "square", 3: "triangle"}
    assert unused_category_ids(CLASSES) == [] and "N/A" not in describe_categories(CLASSES)


# -- the real loading path: a file:// mirror of random weights ------------------------------------


def _mirror_random_weights(short: str, mirror) -> dict[str, torch.Tensor]:
    builder = torchvision.models.get_model_builder(DETECTORS[short])
    torch.manual_seed(0)
    state = builder(weights=None, weights_backbone=None).state_dict()
    torch.save(state, mirror / weights_file_name(get_model_weights(DETECTORS[short]).DEFAULT))
    return state


@pytest.mark.parametrize("short", ["ssdlite", "fasterrcnn"])
def test_loads_the_mirrors_file_through_torchvisions_weights_path(short, places, monkeypatch, capsys):
    state = _mirror_random_weights(short, places["mirror"])
    monkeypatch.setenv("COURSE_WEIGHTS_MIRROR", places["mirror"].as_uri())
    detector = load_detector(short, device="cpu")
    assert capsys.readouterr().out == ""
    weights = get_model_weights(DETECTORS[short]).DEFAULT
    assert short != "fasterrcnn" or weights_file_name(weights) == SEED_FASTERRCNN_FILE
    assert (places["torch"] / "hub" / "checkpoints" / weights_file_name(weights)).is_file()
    loaded = detector.model.state_dict()
    # Pretrained builds freeze BatchNorm (FrozenBatchNorm2d has no batch counter): every other tensor is ours.
    assert set(loaded) <= set(state)
    assert all(key.endswith("num_batches_tracked") for key in set(state) - set(loaded))
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert isinstance(detector.model, torchvision.models.detection.FasterRCNN if short.startswith("faster")
                      else torchvision.models.detection.ssd.SSD)
    assert not detector.model.training
    assert detector.info == detector_info(short) and not detector.info.offline_fallback
    assert sum(p.numel() for p in detector.model.parameters()) == detector.info.num_params


def test_random_weights_need_no_file(places, capsys):
    detector = load_detector("ssdlite", weights=None, device="cpu")
    assert capsys.readouterr().out == ""
    assert detector.info.weights is None and detector.info.box_map is None and not detector.info.offline_fallback
    assert detector.info.num_params == sum(p.numel() for p in detector.model.parameters())


def test_backbone_weights_go_through_the_course_mechanism_too(places):
    with pytest.raises(WeightsUnavailable, match="mobilenet_v3_large-"):
        load_detector("ssdlite", weights=None, weights_backbone="DEFAULT", device="cpu", fallback=None)


# -- offline: one line, then the course's shapes detector ----------------------------------------


def test_offline_prints_one_line_and_falls_back_to_the_shapes_ssd(places, capsys):
    detector = load_detector("retinanet", device="cpu")
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    file_name = weights_file_name(get_model_weights("retinanet_resnet50_fpn").DEFAULT)
    assert file_name in printed and "COURSE_WEIGHTS_MIRROR" in printed and "shapes_ssd" in printed
    info = detector.info
    assert info.offline_fallback and info.requested == "retinanet_resnet50_fpn" and info.name == "shapes_ssd"
    assert info.categories == CLASSES
    stored = load_shapes_ssd().metadata["metrics"]["map"]
    assert info.box_map == pytest.approx(100 * stored) and "shapes" in info.box_map_source
    assert info.num_params == sum(p.numel() for p in detector.model.parameters())
    assert "offline stand-in for retinanet_resnet50_fpn" in str(info)
    assert format_table([info]).splitlines()[2].rstrip().endswith("yes")

    # it detects: the shapes of held-out 128 x 128 images, at IoU >= 0.5 with the right class
    images, targets = ShapesDataset("test", 32, image_size=128, seed=0).to_tensors()
    detections = predict(detector, images, score_threshold=0.3)
    found = sum(int(match_detections(d, t, iou_threshold=0.5)[1].sum()) for d, t in zip(detections, targets))
    total = sum(len(t["labels"]) for t in targets)
    assert found >= 0.8 * total, (found, total)


def test_offline_without_fallback_raises_and_prints_nothing(places, capsys):
    with pytest.raises(WeightsUnavailable, match="fcos_resnet50_fpn_coco"):
        load_detector("fcos", device="cpu", fallback=None)
    assert capsys.readouterr().out == ""


def test_fallbacks_are_pluggable(places, monkeypatch, capsys, shapes_detector):
    monkeypatch.setattr(offline_detectors, "_FALLBACKS", dict(offline_detectors._FALLBACKS))  # the registry's home
    calls = []

    def factory(device):
        calls.append(device)
        return LoadedDetector(shapes_detector.model, DetectorInfo("toy", None, ("background", "toy"), None, "-", 1))

    register_fallback("toy", factory)
    detector = load_detector("ssd300", device="cpu", fallback="toy")
    assert calls == [torch.device("cpu")] and detector.info.name == "toy" and detector.info.offline_fallback
    assert "toy (toy)" in capsys.readouterr().out
    assert load_detector("toy", device="cpu").info.offline_fallback is False  # asked for by name
    register_fallback("by_path", "course_lib.detection.pretrained:shapes_ssd_detector")
    assert load_detector("fcos", device="cpu", fallback="by_path").info.name == "shapes_ssd"
    assert load_detector("fcos", device="cpu", fallback=factory).info.name == "toy"
    with pytest.raises(ValueError, match="shapes_ssd"):
        load_detector("fcos", device="cpu", fallback="nothing")
    with pytest.raises(ValueError, match="new detector name"):
        register_fallback("retinanet", factory)
    with pytest.raises(TypeError, match="module:function"):
        register_fallback("broken", "no_colon")


# -- the offline detector behaves like a torchvision detector ------------------------------------


def test_fixed_size_detector_matches_the_ssd_and_rescales(shapes_detector):
    wrapper = shapes_detector.model
    assert isinstance(wrapper, FixedSizeDetector) and wrapper.image_size == 64
    ssd = wrapper.detector
    threshold = wrapper.score_threshold
    images, _ = ShapesDataset("test", 3, image_size=64, seed=1).to_tensors()
    for got, expected in zip(wrapper(list(images)), ssd.detect(images, score_threshold=threshold)):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(got[key], expected[key])
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")  # 128 x 128
    small = torch.nn.functional.interpolate(big, size=(64, 64), mode="bilinear", antialias=True)
    for got, expected in zip(wrapper(big), ssd.detect(small, score_threshold=threshold)):
        assert torch.allclose(got["boxes"], 2 * expected["boxes"]) and torch.equal(got["labels"], expected["labels"])
    wide = torch.rand(3, 40, 100, generator=torch.Generator().manual_seed(0))
    square = torch.nn.functional.pad(wide, (0, 0, 0, 60))[None]  # padded below to 100 x 100
    expected = ssd.detect(torch.nn.functional.interpolate(square, size=(64, 64), mode="bilinear", antialias=True),
                          score_threshold=threshold)[0]
    got = wrapper([wide])[0]
    limits = torch.tensor([100.0, 40.0, 100.0, 40.0])
    assert torch.allclose(got["boxes"], torch.minimum(expected["boxes"] * 100 / 64, limits))
    with pytest.raises(TypeError, match="float"):
        wrapper([(wide * 255).to(torch.uint8)])
    with pytest.raises(NotImplementedError):
        wrapper([wide], targets=[{}])
    assert wrapper([]) == []


# -- predict ---------------------------------------------------------------------------------------


class EchoDetector(nn.Module):
    """Five detections per image whose boxes encode the image's mean and size, scores 0.1 ... 0.9."""

    def __init__(self, fail_on_call: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls: list[list[tuple]] = []
        self.fail_on_call = fail_on_call

    def forward(self, images):
        self.calls.append([(tuple(i.shape), i.dtype, float(i.min()), float(i.max())) for i in images])
        if len(self.calls) == self.fail_on_call:
            raise ValueError("boom\nsecond line")
        out = []
        for image in images:
            value = image.mean() + self.weight
            corner = torch.stack([value, value, value + image.shape[-1], value + image.shape[-2]])
            out.append({"boxes": corner.repeat(5, 1), "labels": torch.arange(5, device=image.device),
                        "scores": torch.linspace(0.1, 0.9, 5, device=image.device)})
        return out


def _frames(n=7, height=12, width=16, device="cpu", seed=0):
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed)).to(device)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == {"boxes", "labels", "scores"}
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_batches_give_the_same_detections_as_one_by_one():
    frames = _frames()
    model = EchoDetector()
    batched = predict(model, frames, score_threshold=0.0, batch_size=3)
    assert [len(call) for call in model.calls] == [3, 3, 1]
    _assert_same(batched, [predict(model, frame[None], score_threshold=0.0)[0] for frame in frames])
    _assert_same(batched, predict(model, list(frames), score_threshold=0.0, batch_size=100))
    means = torch.stack([d["boxes"][0, 0] for d in batched])
    assert torch.allclose(means, frames.float().div(255).mean(dim=(1, 2, 3)))  # order kept


def test_batches_with_the_real_offline_detector(shapes_detector):
    images, _ = ShapesDataset("test", 5, image_size=96, seed=2).to_tensors()
    batched = predict(shapes_detector, images, score_threshold=0.2, batch_size=2)
    single = [predict(shapes_detector, image[None], score_threshold=0.2)[0] for image in images]
    for x, y in zip(batched, single):
        assert torch.equal(x["labels"], y["labels"]) and torch.allclose(x["boxes"], y["boxes"], atol=1e-4)
        assert torch.allclose(x["scores"], y["scores"], atol=1e-5)


def test_uint8_frames_become_floats_in_unit_range():
    frames = _frames()
    model = EchoDetector()
    from_uint8 = predict(model, frames, score_threshold=0.0)
    assert all(dtype == torch.float32 and 0.0 <= low and high <= 1.0 for call in model.calls
               for _, dtype, low, high in call)
    _assert_same(from_uint8, predict(model, frames.float() / 255, score_threshold=0.0))


def test_threshold_keeps_scores_at_least_the_threshold():
    frames = _frames(n=2)
    raw = EchoDetector()([f.float() / 255 for f in frames])
    for threshold in (0.0, 0.3, 0.5, 0.9, 1.0):
        got = predict(EchoDetector(), frames, score_threshold=threshold)
        for d, r in zip(got, raw):
            keep = r["scores"] >= threshold
            assert torch.equal(d["scores"], r["scores"][keep]) and torch.equal(d["boxes"], r["boxes"][keep])
    for bad in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="score_threshold"):
            predict(EchoDetector(), frames, score_threshold=bad)


def test_no_frames_and_no_detections():
    model = EchoDetector()
    assert predict(model, []) == [] and predict(model, torch.zeros(0, 3, 8, 8, dtype=torch.uint8)) == []
    assert model.calls == []
    (empty,) = predict(model, _frames(n=1), score_threshold=0.95)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["scores"].shape == (0,)


def test_lists_of_different_sizes_and_loaded_detectors(shapes_detector):
    frames = [torch.rand(3, 50, 70), torch.rand(3, 64, 64), torch.rand(3, 90, 40)]
    model = EchoDetector()
    predict(model, frames, batch_size=2)
    assert [shape for call in model.calls for shape, *_ in call] == [(3, 50, 70), (3, 64, 64), (3, 90, 40)]
    out = predict(shapes_detector, frames, score_threshold=0.0)
    for frame, d in zip(frames, out):
        height, width = frame.shape[-2:]
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, 2] <= width).all() and (d["boxes"][:, 3] <= height).all()


@pytest.mark.parametrize("frames, error, words", [
    (torch.zeros(3, 8, 8, dtype=torch.uint8), ValueError, "(N, 3, H, W)"),
    (torch.zeros(2, 1, 8, 8), ValueError, "(2, 1, 8, 8)"),
    ([torch.zeros(8, 8)], ValueError, "frames[0]"),
    ([torch.zeros(3, 8, 8), torch.zeros(3, 0, 8)], ValueError, "frames[1]"),
    ([torch.zeros(3, 8, 8, dtype=torch.int32)], TypeError, "int32"),
    ([torch.zeros(3, 8, 8), "frame"], TypeError, "frames[1]"),
    ("frames", TypeError, "str"),
    ([torch.zeros(3, 8, 8), torch.zeros(3, 8, 8, device="meta")], ValueError, "one device"),
])
def test_wrong_frames_are_one_line_errors(frames, error, words):
    with pytest.raises(error) as info:
        predict(EchoDetector(), frames)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_other_wrong_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        predict(EchoDetector(), _frames(), batch_size=0)
    with pytest.raises(TypeError, match="nn.Module"):
        predict(lambda x: x, _frames())
    with pytest.raises(ValueError, match="model is on meta but frames are on cpu"):
        predict(EchoDetector().to("meta"), _frames())


def test_errors_inside_the_model_surface_with_the_frames_that_failed():
    model = EchoDetector(fail_on_call=2)
    with pytest.raises(RuntimeError) as info:
        predict(model, _frames(n=5), batch_size=2)
    message = str(info.value)
    assert "EchoDetector failed on frames 2..3 of 5" in message and "ValueError: boom second line" in message
    assert "\n" not in message and isinstance(info.value.__cause__, ValueError)
    assert model.training  # its mode is restored even after an error


@pytest.mark.parametrize("device", DEVICES)
def test_results_stay_on_the_frames_device_and_the_mode_is_restored(device):
    model = EchoDetector().to(device).train()
    out = predict(model, _frames(device=device), score_threshold=0.0)
    assert all(v.device.type == device for d in out for v in d.values())
    assert model.training and all(not d["boxes"].requires_grad for d in out)


def test_a_torchvision_detector_runs_on_uint8_frames(places):
    torch.manual_seed(0)
    detector = load_detector("ssdlite", weights=None, device="cpu")
    frames = _frames(n=3, height=120, width=160)
    out = predict(detector, frames, score_threshold=0.0, batch_size=2)
    assert len(out) == 3 and not detector.model.training
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["labels"]) == len(d["scores"]) > 0
        assert d["boxes"][:, 2].max() <= 160 and d["boxes"][:, 3].max() <= 120
        assert d["labels"].max() < len(detector.categories)
