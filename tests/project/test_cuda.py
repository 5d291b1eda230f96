"""What only a GPU can check: the lessons' detectors, the video path and grading on CUDA.

Every test here is marked ``cuda`` and runs only where ``torch.cuda.is_available()``; on a CPU-only
machine (CI) pytest lists them as skipped with that one reason. `benchmarks/gpu_machine.sh` runs them
on a GPU machine with no network, together with the video benchmark.

The CPU suite already runs every reference function on CUDA inputs where CUDA exists (the
``DEVICES`` parametrisations); this file adds the end-to-end paths: a detector trained and run on
the GPU agrees with the CPU, lesson 6's video path keeps its work on the GPU, and a class of the six
exercises' solutions graded by Dask workers that each own a GPU scores full marks.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
CUDA = torch.device("cuda")
#: Float results of the same network on two devices differ by rounding (cuDNN picks other algorithms).
BOX_ATOL = 1e-2


def _sandbox() -> str:
    """The strictest sandbox this machine offers: bubblewrap if it runs here, else resource limits only."""
    if shutil.which("bwrap") is None:
        return "rlimits"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "true"], capture_output=True)
    return "required" if probe.returncode == 0 else "rlimits"


def _same_detections(cpu: list[dict], gpu: list[dict], atol: float = BOX_ATOL) -> None:
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["boxes"].device.type in ("cuda", "cpu")
        keep = b["scores"].cpu() > 0.3  # borderline scores may cross a threshold on one device only
        keep_a = a["scores"].cpu() > 0.3
        assert int(keep.sum()) == int(keep_a.sum())
        torch.testing.assert_close(b["boxes"].cpu()[keep], a["boxes"].cpu()[keep_a], atol=atol, rtol=0)
        assert torch.equal(b["labels"].cpu()[keep], a["labels"].cpu()[keep_a])


def test_the_shapes_two_stage_detector_trains_and_detects_on_the_gpu():
    from course_lib.data import ShapesDataset
    from course_lib.detection.faster_rcnn import TwoStageDetector
    from course_lib.detection.faster_rcnn.train_shapes import load_shapes_faster_rcnn

    images, targets = ShapesDataset("val", num_images=16, image_size=64, seed=0).to_tensors()
    model = load_shapes_faster_rcnn(device="cpu").eval()
    on_cpu = model.detect(images)
    on_gpu = model.to(CUDA).detect(images.to(CUDA))
    assert all(d["boxes"].device.type == "cuda" for d in on_gpu)
    _same_detections(on_cpu, on_gpu)

    fresh = TwoStageDetector().to(CUDA).train()
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
    gpu_targets = [{k: v.to(CUDA) for k, v in t.items()} for t in targets[:8]]
    first = float(sum(fresh(images[:8].to(CUDA), gpu_targets).values()))
    for _ in range(20):
        loss = sum(fresh(images[:8].to(CUDA), gpu_targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < first


def test_lesson_6_video_path_runs_on_the_gpu_and_agrees_with_the_cpu(tmp_path):
    from course_lib.data import shapes_clip
    from course_lib.data.video import video_info
    from course_lib.detection.pretrained import load_detector, predict, shapes_ssd_detector
    from course_lib.detection.video_detection import detect_video

    clip = shapes_clip(num_frames=48)
    cpu = detect_video(clip, shapes_ssd_detector("cpu"), progress=False, score_threshold=0.3)
    gpu = detect_video(clip, shapes_ssd_detector(CUDA), tmp_path / "gpu.mp4", track=True, progress=False,
                       score_threshold=0.3)
    _same_detections(cpu.detections, gpu.detections)
    assert video_info(tmp_path / "gpu.mp4").num_frames == 48
    assert gpu.tracks is not None and len(gpu.tracks) == 48

    # A COCO detector (random weights: speed and device handling do not depend on them) on CUDA frames.
    ssdlite = load_detector("ssdlite", weights=None, device=CUDA)
    frames = clip.frames[:4].to(CUDA)
    found = predict(ssdlite, frames, score_threshold=0.0, batch_size=2)
    assert len(found) == 4 and all(d["boxes"].device.type == "cuda" for d in found)


def _class_of_solutions(submitted: Path) -> None:
    """nbgrader's layout: submitted/<student>/<assignment>/<assignment>.ipynb, one student per solution."""
    for source in SOLUTIONS:
        folder = submitted / "solution" / source.stem
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / source.name)
        (folder / "timestamp.txt").write_text("2026-12-01 09:00:00.000000 UTC\n")


def _course(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course_grader.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.grading
def test_course_doctor_reports_cuda_on_a_gpu_worker():
    pytest.importorskip("distributed", reason="grading on Dask needs distributed (pip install '.[cluster]')")
    result = _course("doctor", "--executor", "dask", "--gpus-per-task", "1", "--workers", "1",
                     "--sandbox", _sandbox(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "computes on cuda" in result.stdout, result.stdout


@pytest.mark.grading
def test_the_six_solutions_graded_on_one_gpu_score_full_marks(tmp_path):
    pytest.importorskip("distributed", reason="grading on Dask needs distributed (pip install '.[cluster]')")
    _class_of_solutions(tmp_path / "submitted")
    result = _course("grade", str(tmp_path / "submitted"), "--course-dir", str(tmp_path / "grading"),
                     "--executor", "dask", "--gpus-per-task", "1", "--workers", "1", "--sandbox", _sandbox(),
                     "--no-progress", timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(tmp_path / "grading" / "grades.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert sorted(row["assignment"] for row in rows) == [s.stem for s in SOLUTIONS]
    for row in rows:
        assert row["status"] == "graded", row
        assert float(row["total"]) == float(row["max"]) > 0, row
