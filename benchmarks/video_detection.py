"""Detection on video, end to end: the lesson's frame-at-a-time loop against the course's pipeline.

    python benchmarks/video_detection.py                 # four detectors on the CPU: several minutes
    python benchmarks/video_detection.py --quick         # two small detectors, a few frames: seconds
    python benchmarks/video_detection.py --models ssdlite,fcos --frames 8 --device cuda

Both paths decode an MP4, detect, draw and encode an MP4, frame for frame the same work:

- the seed loop: the original lecture's loop written with today's API: imageio reads one frame at
  a time, ``ToTensor``, ``model([img])`` on that frame alone with autograd left on (the seed used
  neither ``torch.no_grad`` nor ``inference_mode``), the boxes drawn with the course's
  `draw_detections` (the seed drew with matplotlib; the same function on both sides makes the
  outputs comparable) and written with `MP4Writer`, before the next frame is read;
- the course's path: `course_lib.detection.video_detection.detect_video`: batches, inference mode,
  decoding and encoding on their own threads, overlapped with the model; the model's weights in
  channels-last memory order (the same weights: convolutions run faster on CPUs in that layout,
  mobile networks' depthwise ones above all; ``--no-channels-last`` leaves them as loaded).

The detectors have random weights (``load_detector(name, weights=None)``: no download here); the
shapes SSD has its trained weights. Inputs: the photo clip (240 x 320) for the COCO detectors and
the shapes clip (64 x 64) for the shapes SSD, each written to an MP4 in a temporary folder.

Each path runs ``--repeats`` times, in turns, after a warm-up; the table keeps each path's fastest
run (other programs on a shared machine only ever slow a run down). Times are wall-clock
milliseconds per frame end to end; "CPU" is the CPU time of this process and of its ffmpeg
processes together, per frame: the work done, which overlap does not reduce. A second table says
where each path spends its time, stage by stage.

Same detector, same output: the videos both paths wrote must be identical frame for frame, and
their detections equal (labels equal, boxes and scores up to float rounding). With random weights
and a 0.5 threshold the COCO detectors draw no box, so the raw detections of the first frames are
compared as well, with the detectors' own score thresholds set to 0 (up to 100-300 boxes a frame).
Random SSDlite and Faster R-CNN heads give every box the same score (about 1/91): which boxes make
their cut is then arbitrary, so for them only the scores are compared; the trained shapes SSD and
the random RetinaNet and FCOS give varied scores, and their boxes are compared one by one.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import imageio.v2 as imageio
import torch
import torchvision
from scipy.optimize import linear_sum_assignment
from torchvision import transforms

from course_lib.data.clips import DEFAULT_PHOTOS, photo_clip, shapes_clip
from course_lib.data.video import SWS_FLAGS, MP4Writer, read_video
from course_lib.detection.annotate import draw_detections
from course_lib.detection.pretrained import LoadedDetector, detector_info, load_detector, resolve_detector_name
from course_lib.detection.video_detection import detect_video

TARGET_SPEEDUP = 1.5
SHAPES = "shapes_ssd"
DEFAULT_MODELS = (SHAPES, "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                  "retinanet_resnet50_fpn")
#: Frames per detector: the ResNet-50 detectors take seconds per frame on a CPU.
FRAMES = {SHAPES: 96, "ssdlite320_mobilenet_v3_large": 32, "fasterrcnn_mobilenet_v3_large_320_fpn": 24,
          "fasterrcnn_mobilenet_v3_large_fpn": 8}
SLOW_MODEL_FRAMES = 4
#: The course path's batch per detector: the fastest per frame in CPU time with one thread (measured:
#: larger batches of the mobile detectors spill out of the caches and get slower per frame).
BATCH_SIZES = {SHAPES: 16, "ssdlite320_mobilenet_v3_large": 4, "fasterrcnn_mobilenet_v3_large_320_fpn": 2,
               "fasterrcnn_mobilenet_v3_large_fpn": 2, "retinanet_resnet50_fpn": 2, "fcos_resnet50_fpn": 2}
DEFAULT_BATCH_SIZE = 2
QUICK_MODELS = (SHAPES, "ssdlite320_mobilenet_v3_large")
QUICK_FRAMES = {SHAPES: 8, "ssdlite320_mobilenet_v3_large": 3}
WARMUP_FRAMES = 1
#: Boxes may move by float rounding between a batch of 1 and a batch of several (other kernels).
BOX_TOLERANCE, SCORE_TOLERANCE = 1e-2, 1e-4
#: Frames whose raw detections (the detectors' own thresholds at 0) are compared between the paths.
CHECK_FRAMES = 4
SEED_STAGES = {"decode": "decode", "to-tensor": "convert", "model": "detect", "draw": "draw", "encode": "encode"}


# --------------------------------------------------------------------------- the seed's loop


def seed_loop(path: Path, model: torch.nn.Module, categories, output: Path, num_frames: int,
              score_threshold: float, device: torch.device) -> tuple[list[dict], dict[str, float]]:
    """The lecture's per-frame loop with today's API; returns the detections and seconds per stage."""
    seconds = dict.fromkeys(SEED_STAGES, 0.0)
    detections = []
    # The course's reader asks ffmpeg for exact RGB conversion; the same flags here give the same pixels.
    reader = imageio.get_reader(path, "ffmpeg", output_params=list(SWS_FLAGS))
    try:
        with MP4Writer(output, reader.get_meta_data()["fps"]) as writer:
            for index in range(num_frames):
                tick = time.perf_counter()
                frame = reader.get_data(index)  # (H, W, 3) uint8, one frame at a time
                seconds["decode"] += (now := time.perf_counter()) - tick
                transform = transforms.Compose([transforms.ToTensor()])  # built in the loop, as in the seed
                image = transform(frame).to(device)
                seconds["to-tensor"] += (tick := time.perf_counter()) - now
                prediction = model([image])[0]  # autograd on, as in the seed
                keep = prediction["scores"] >= score_threshold
                found = {key: prediction[key][keep].detach().cpu() for key in ("boxes", "labels", "scores")}
                detections.append(found)
                seconds["model"] += (now := time.perf_counter()) - tick
                drawn = draw_detections(torch.from_numpy(frame).permute(2, 0, 1), found, categories)
                seconds["draw"] += (tick := time.perf_counter()) - now
                writer.write(drawn)
                seconds["encode"] += time.perf_counter() - tick
            tick = time.perf_counter()
        seconds["encode"] += time.perf_counter() - tick  # closing: ffmpeg finishes the file
    finally:
        reader.close()
    return detections, seconds


# --------------------------------------------------------------------------- measuring


def timed(run) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its finished children, result)."""
    before, wall = os.times(), time.perf_counter()
    result = run()
    wall, after = time.perf_counter() - wall, os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    return wall, cpu, result


def agreement(seed: list[dict], course: list[dict]) -> tuple[bool, float, float, int, int]:
    """Do both paths give the same detections in every frame? Scores must agree within float
    rounding, and labels and boxes detection by detection; detections whose scores tie (within
    twice that rounding) may come in either order, and when the last, lowest-scored group ties, which
    of its members made the detector's cut (its 100-300 boxes per image) is arbitrary: only its
    scores are compared. Returns (agree, largest box difference, largest score difference, boxes
    compared, boxes in that last tied group)."""
    agree, box, score, compared, cut = len(seed) == len(course), 0.0, 0.0, 0, 0
    for a, b in zip(seed, course):
        if len(a["scores"]) != len(b["scores"]):
            agree = False
            continue
        if not len(a["scores"]):
            continue
        first, order_a = a["scores"].sort(descending=True, stable=True)
        second, order_b = b["scores"].sort(descending=True, stable=True)
        rounding = float((first - second).abs().max())
        score = max(score, rounding)
        group = torch.cat([torch.zeros(1, dtype=torch.long), ((first[:-1] - first[1:]) > 2 * rounding).cumsum(0)])
        last = int(group[-1])
        for g in range(last + 1):  # match the detections of each tie group, one to one
            members = (group == g).nonzero().squeeze(1)
            if g == last and len(members) > 1:
                cut += len(members)
                continue
            mine, theirs = order_a[members], order_b[members]
            distance = (a["boxes"][mine][:, None] - b["boxes"][theirs][None]).abs().amax(-1).double()
            distance[a["labels"][mine][:, None] != b["labels"][theirs][None]] = math.inf
            rows, cols = linear_sum_assignment(distance.clamp(max=1e12).numpy())
            box = max(box, float(distance[rows, cols].max()))
            compared += len(members)
    return agree and box <= BOX_TOLERANCE and score <= SCORE_TOLERANCE, box, score, compared, cut


@contextlib.contextmanager
def own_threshold_zero(*models: torch.nn.Module):
    """Set the detectors' own score thresholds to 0 for a while: with random weights every score is
    about 1/91 (softmax) or the prior 0.01 (sigmoid), under most detectors' own thresholds, so they
    return nothing; at 0 they return their full lists (up to 100-300 boxes per frame) to compare."""
    owners = []
    for model in models:
        for owner in (getattr(model, "roi_heads", None), model):
            attribute = next((a for a in ("score_thresh", "score_threshold") if hasattr(owner, a)), None)
            if owner is not None and attribute is not None:
                owners.append((owner, attribute, getattr(owner, attribute)))
                setattr(owner, attribute, 0.0)
                break
    try:
        yield
    finally:
        for owner, attribute, value in owners:
            setattr(owner, attribute, value)


def same_pixels(first: Path, second: Path) -> tuple[int, int]:
    """(frames with identical pixels, frames) of two videos."""
    a, _ = read_video(first)
    b, _ = read_video(second)
    if a.shape != b.shape:
        return 0, max(len(a), len(b))
    return int((a == b).flatten(1).all(1).sum()), len(a)


def bench_model(name: str, clip_path: Path, frames: int, args, folder: Path) -> dict:
    device = torch.device(args.device)
    batch_size = args.batch_size or BATCH_SIZES.get(name, DEFAULT_BATCH_SIZE)
    torch.manual_seed(0)  # the same random weights in every run of the script
    loaded = load_detector(name, weights=None, device=device)
    info = loaded.info if name == SHAPES else detector_info(name)  # mAP of the real weights, from metadata
    seed_out, course_out = folder / f"{name}_seed.mp4", folder / f"{name}_course.mp4"
    fast = loaded  # the same weights; a copy, so that the seed loop keeps the model as loaded
    if args.channels_last:
        fast = LoadedDetector(copy.deepcopy(loaded.model).to(memory_format=torch.channels_last), loaded.info)

    def seed():
        return seed_loop(clip_path, loaded.model, loaded.categories, seed_out, frames, args.score_threshold, device)

    def course():
        return detect_video(clip_path, fast, course_out, max_frames=frames, batch_size=batch_size,
                            score_threshold=args.score_threshold, progress=False)

    # Untimed: the full lists of raw detections of the first frames, from both paths.
    with own_threshold_zero(loaded.model, fast.model):
        seed_raw, _ = seed_loop(clip_path, loaded.model, loaded.categories, seed_out, CHECK_FRAMES, 0.0, device)
        course_raw = detect_video(clip_path, fast, max_frames=CHECK_FRAMES, batch_size=batch_size, score_threshold=0.0,
                                  progress=False).detections
    raw = agreement(seed_raw, course_raw)
    seed_loop(clip_path, loaded.model, loaded.categories, seed_out, WARMUP_FRAMES, args.score_threshold, device)
    detect_video(clip_path, fast, course_out, max_frames=WARMUP_FRAMES, batch_size=batch_size, progress=False)
    best: dict[str, tuple] = {}
    for _ in range(args.repeats):  # in turns, so that a busy moment of the machine hits both
        for path, run in (("seed", seed), ("course", course)):
            wall, cpu, result = timed(run)
            if path not in best or wall < best[path][0]:
                best[path] = (wall, cpu, result)
    (seed_wall, seed_cpu, (seed_found, seed_stages)), (course_wall, course_cpu, course_result) = best["seed"], \
        best["course"]
    agree, box, score, _, _ = agreement(seed_found, course_result.detections)
    identical, total = same_pixels(seed_out, course_out)
    course_stages = course_result.timings.stage_ms_per_frame()
    return {
        "name": name, "info": info, "frames": frames, "batch": batch_size, "agree": agree, "raw": raw,
        "box": box, "score": score,
        "identical": identical, "total": total,
        "boxes": sum(len(d["labels"]) for d in seed_found) / frames,
        "seed_ms": 1000 * seed_wall / frames, "course_ms": 1000 * course_wall / frames,
        "seed_cpu": 1000 * seed_cpu / frames, "course_cpu": 1000 * course_cpu / frames,
        "seed_stages": {stage: 1000 * s / frames for stage, s in seed_stages.items()},
        "course_stages": {stage: course_stages[key] for stage, key in SEED_STAGES.items()},
    }


# --------------------------------------------------------------------------- printing


def print_tables(rows: list[dict], args) -> None:
    print("| model | params (M) | box mAP | frames | batch | boxes/frame | seed loop ms/frame | course ms/frame | "
          "speed-up | seed CPU ms/frame | course CPU ms/frame | CPU ratio | same output |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        info = r["info"]
        box_map = "-" if info.box_map is None else f"{info.box_map:.1f}" + ("*" if r["name"] == SHAPES else "")
        agree, raw_box, raw_score, compared, cut = r["raw"]
        same = (f"{'yes' if r['agree'] and agree and r['identical'] == r['total'] else 'NO'}: video "
                f"{r['identical']}/{r['total']} frames identical, boxes drawn within {r['box']:.0e} px; raw "
                f"detections of {CHECK_FRAMES} frames: {compared} boxes within {raw_box:.0e} px, scores within "
                f"{raw_score:.0e}" + (f", {cut} with tied lowest scores" if cut else ""))
        print(f"| {r['name']} | {info.num_params / 1e6:.2f} | {box_map} | {r['frames']} | {r['batch']} | "
              f"{r['boxes']:.1f} | {r['seed_ms']:.1f} | {r['course_ms']:.1f} | {r['seed_ms'] / r['course_ms']:.2f}x | "
              f"{r['seed_cpu']:.1f} | {r['course_cpu']:.1f} | {r['seed_cpu'] / r['course_cpu']:.2f}x | {same} |")
    print("box mAP: COCO val2017 from torchvision's weights metadata (the speed runs use random weights); "
          "* the shapes SSD's mAP on the course's shapes validation images. ms/frame: wall clock, end to end. "
          "CPU ms/frame: this process and its ffmpeg processes together, the work done, which overlapping "
          "does not reduce (CPU ratio = seed / course).")
    print("\nWhere the time goes, ms per frame (seed loop: one after the other; course path: each stage in its "
          "own thread, overlapped)")
    print("| model | path | " + " | ".join(SEED_STAGES) + " | end to end |")
    print("| --- | --- |" + " ---: |" * (len(SEED_STAGES) + 1))
    for r in rows:
        for path in ("seed", "course"):
            stages = r[f"{path}_stages"]
            print(f"| {r['name']} | {path} | " + " | ".join(f"{stages[s]:.1f}" for s in SEED_STAGES) +
                  f" | {r[f'{path}_ms']:.1f} |")


def summary(rows: list[dict], device: str) -> None:
    print()
    for r in rows:
        speedup = r["seed_ms"] / r["course_ms"]
        met = speedup >= TARGET_SPEEDUP and r["agree"] and r["raw"][0] and r["identical"] == r["total"]
        model_share = r["seed_stages"]["model"] / r["seed_ms"]
        bound = r["seed_ms"] / r["course_stages"]["model"]
        print(f"target {r['name']} on {device}: course path >= {TARGET_SPEEDUP}x the seed loop's frames per second "
              f"with the same detections and output: {'met' if met else 'NOT met'} ({speedup:.2f}x; the model is "
              f"{100 * model_share:.0f}% of the seed loop's time, and with everything else hidden behind it the "
              f"course path could reach {bound:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated detector names (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--frames", type=int, default=None, help="frames per detector (default: by detector)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"frames per batch in the course path (default: by detector, else {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both paths (0: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each path (default 3, --quick 1)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep the course path's model in the memory order it was loaded in")
    parser.add_argument("--quick", action="store_true", help="two small detectors, a few frames")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    models = list(QUICK_MODELS) if args.quick and args.models == parser.get_default("models") else \
        [m if m == SHAPES else resolve_detector_name(m) for m in args.models.split(",")]
    args.repeats = args.repeats or (1 if args.quick else 3)

    load = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, device {args.device}, {torch.get_num_threads()} torch thread(s) "
          f"in both paths, course path channels-last {'on' if args.channels_last else 'off'}, best of {args.repeats} "
          f"run(s); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="video-detection-") as tmp:
        folder = Path(tmp)
        clips = {}
        for name in models:
            frames = args.frames or (QUICK_FRAMES if args.quick else FRAMES).get(name, SLOW_MODEL_FRAMES)
            kind = "shapes" if name == SHAPES else "photos"
            if kind not in clips:  # long enough for every detector that reads it
                clip = shapes_clip() if kind == "shapes" else photo_clip(DEFAULT_PHOTOS[:1] if args.quick else
                                                                           DEFAULT_PHOTOS)
                clips[kind] = (clip.write(folder / f"{kind}.mp4"), clip.frames.shape[0])
                print(f"# {kind} clip: {clip.frames.shape[0]} frames of {clip.frames.shape[2]}x{clip.frames.shape[3]}"
                      f" at {clip.fps:g} fps, {clips[kind][0].name}")
            path, length = clips[kind]
            rows.append(bench_model(name, path, min(frames, length), args, folder))
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print_tables(rows, args)
    summary(rows, args.device)


if __name__ == "__main__":
    main()
