"""Detection on video, end to end: the lesson's frame-at-a-time loop against the course's pipeline.

    python benchmarks/video_detection.py                 # four detectors on the CPU: several minutes
    python benchmarks/video_detection.py --quick         # two small detectors, a few frames: seconds
    python benchmarks/video_detection.py --models ssdlite,fcos --frames 8 --device cuda

Both paths decode an MP4, detect, draw and encode an MP4, frame for frame the same work:

- the seed loop: the original lecture's loop written with today's API,
  `course_lib.detection.video_detection.frame_by_frame` (the lesson runs the same function):
  imageio reads one frame at a time, ``ToTensor``, ``model([img])`` on that frame alone with
  autograd left on (the seed used neither ``torch.no_grad`` nor ``inference_mode``), the boxes drawn
  with the course's `draw_detections` (the seed drew with matplotlib; the same function on both
  sides makes the outputs comparable) and written with `MP4Writer`, before the next frame is read;
- the course's path: `course_lib.detection.video_detection.detect_video`: batches, inference mode,
  decoding and encoding on their own threads, overlapped with the model, and on a CPU several
  detection workers, each running the model on its own batch with a share of torch's threads (one
  each when there are as many workers as cores); the model's weights in channels-last memory order
  (the same weights: convolutions run faster on CPUs in that layout, mobile networks' depthwise ones
  above all; ``--no-channels-last`` leaves them as loaded).

The seed loop is given its best thread setting, not a handicap: it runs with 1 torch thread and with
``--threads`` (torch's default, the number of cores, unless set), and the course path is compared
with the faster of the two; the table prints both. Small networks often run faster per frame on one
thread than on two: their operators are too small to split.

The detectors have random weights (``load_detector(name, weights=None)``: no download here); the
shapes SSD has its trained weights. Inputs: the photo clip (240 x 320) for the COCO detectors and
the shapes clip (64 x 64) for the shapes SSD, each written to an MP4 in a temporary folder.

Each path (and each thread setting of the seed loop) runs ``--repeats`` times, in turns, after a
warm-up; the table keeps each one's fastest run (other programs on a shared machine only ever slow a
run down). Times are wall-clock milliseconds per frame end to end; "CPU" is the CPU time of this
process and of its ffmpeg processes together, per frame: the work done, which overlap does not
reduce. A further table says where each path spends its time, stage by stage. The summary line of
each detector says whether the course path reaches `TARGET_SPEEDUP` and, from the measured stages
and CPU time, the most it could reach on this machine: the seed loop's time divided by the larger
of the model's own time per frame (shared among the workers) and the course path's CPU time per
frame shared among the cores.

Same detector, same output: the videos both paths wrote must be identical frame for frame (the
course path's against each thread setting's seed loop), and their detections equal (labels equal,
boxes and scores up to float rounding). With random weights and a 0.5 threshold the COCO detectors
draw no box, so the raw detections of the first frames are compared as well, with the detectors'
own score thresholds set to 0 (up to 100-300 boxes a frame). Random SSDlite and Faster R-CNN heads
give every box the same score (about 1/91): which boxes make their cut is then arbitrary, so for
them only the scores are compared; the trained shapes SSD and the random RetinaNet and FCOS give
varied scores, and their boxes are compared one by one.
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

import torch
import torchvision
from scipy.optimize import linear_sum_assignment

from course_lib.data.clips import DEFAULT_PHOTOS, photo_clip, shapes_clip
from course_lib.data.video import read_video
from course_lib.detection.pretrained import LoadedDetector, detector_info, load_detector, resolve_detector_name
from course_lib.detection.video_detection import detect_video, frame_by_frame
from course_lib.detection.video_detection.arguments import torch_threads

TARGET_SPEEDUP = 1.5
SHAPES = "shapes_ssd"
DEFAULT_MODELS = (SHAPES, "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                  "retinanet_resnet50_fpn")
#: Frames per detector: the ResNet-50 detectors take seconds per frame on a CPU.
FRAMES = {SHAPES: 96, "ssdlite320_mobilenet_v3_large": 32, "fasterrcnn_mobilenet_v3_large_320_fpn": 24,
          "fasterrcnn_mobilenet_v3_large_fpn": 8}
SLOW_MODEL_FRAMES = 4
#: The course path's batch per detector (measured on 2 cores with one worker per core: larger
#: batches of the mobile detectors spill out of the caches and get slower per frame).
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
#: The table's stage names -> `detect_video`'s and `frame_by_frame`'s stage names.
SEED_STAGES = {"decode": "decode", "to-tensor": "convert", "model": "detect", "draw": "draw", "encode": "encode"}


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
    course_out = folder / f"{name}_course.mp4"
    seed_out = {threads: folder / f"{name}_seed_{threads}.mp4" for threads in args.seed_threads}
    fast = loaded  # the same weights; a copy, so that the seed loop keeps the model as loaded
    if args.channels_last:
        fast = LoadedDetector(copy.deepcopy(loaded.model).to(memory_format=torch.channels_last), loaded.info)

    def seed(threads: int, count: int = frames, threshold: float = args.score_threshold, write: bool = True):
        return frame_by_frame(clip_path, loaded, seed_out[threads] if write else None, score_threshold=threshold,
                              max_frames=count, threads=threads)

    def course(count: int = frames, threshold: float = args.score_threshold, write: bool = True):
        with torch_threads(args.threads):  # the course path's budget: its workers share these threads
            return detect_video(clip_path, fast, course_out if write else None, max_frames=count,
                                batch_size=batch_size, workers=args.workers, score_threshold=threshold,
                                progress=False)

    for threads in args.seed_threads:  # warm-up: the first calls allocate memory and start thread pools
        seed(threads, WARMUP_FRAMES)
    course(WARMUP_FRAMES)
    best: dict[object, tuple] = {}
    for _ in range(args.repeats):  # in turns, so that a busy moment of the machine hits every one
        for key, run in [*((t, lambda t=t: seed(t)) for t in args.seed_threads), ("course", course)]:
            wall, cpu, result = timed(run)
            if key not in best or wall < best[key][0]:
                best[key] = (wall, cpu, result)
    fastest = min(args.seed_threads, key=lambda t: best[t][0])
    (seed_wall, seed_cpu, seed_result), (course_wall, course_cpu, course_result) = best[fastest], best["course"]

    # Same output: the course path's video and detections against every seed setting's, and (untimed)
    # the full lists of raw detections of the first frames, with the detectors' own thresholds at 0.
    agree, box, score, identical, total = True, 0.0, 0.0, 0, 0
    for threads in args.seed_threads:
        ok, box_t, score_t, _, _ = agreement(best[threads][2].detections, course_result.detections)
        same, count = same_pixels(seed_out[threads], course_out)
        agree, box, score = agree and ok and same == count, max(box, box_t), max(score, score_t)
        identical, total = identical + same, total + count
    with own_threshold_zero(loaded.model, fast.model):
        course_raw = course(CHECK_FRAMES, 0.0, write=False).detections
        raws = [agreement(seed(t, CHECK_FRAMES, 0.0, write=False).detections, course_raw) for t in args.seed_threads]
    raw = (all(r[0] for r in raws), max(r[1] for r in raws), max(r[2] for r in raws), raws[0][3], raws[0][4])
    timings = course_result.timings
    course_stages, seed_stages = timings.stage_ms_per_frame(), seed_result.timings.stage_ms_per_frame()
    return {
        "name": name, "info": info, "frames": frames, "batch": batch_size, "agree": agree, "raw": raw,
        "box": box, "score": score, "identical": identical, "total": total,
        "boxes": sum(len(d["labels"]) for d in seed_result.detections) / frames,
        "seed_ms": 1000 * seed_wall / frames, "course_ms": 1000 * course_wall / frames,
        "seed_cpu": 1000 * seed_cpu / frames, "course_cpu": 1000 * course_cpu / frames,
        "seed_stages": {stage: seed_stages[key] for stage, key in SEED_STAGES.items()},
        "course_stages": {stage: course_stages[key] for stage, key in SEED_STAGES.items()},
        "seed_threads": fastest, "seed_by_threads": {t: 1000 * best[t][0] / frames for t in args.seed_threads},
        "workers": timings.workers, "worker_threads": timings.threads,
    }


# --------------------------------------------------------------------------- printing


def print_tables(rows: list[dict], args) -> None:
    """Three tables: the comparison (its 13 columns are read by gpu_machine.sh's ratio), the thread
    settings, and the stages."""
    print("| model | params (M) | box mAP | frames | batch | boxes/frame | seed loop ms/frame | course ms/frame | "
          "speed-up | seed CPU ms/frame | course CPU ms/frame | CPU ratio | same output |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        info = r["info"]
        box_map = "-" if info.box_map is None else f"{info.box_map:.1f}" + ("*" if r["name"] == SHAPES else "")
        agree, raw_box, raw_score, compared, cut = r["raw"]
        settings = len(r.get("seed_by_threads", {})) or 1
        same = (f"{'yes' if r['agree'] and agree and r['identical'] == r['total'] else 'NO'}: video "
                f"{r['identical']}/{r['total']} frames identical" + (f" (against each of the {settings} seed runs)"
                                                                    if settings > 1 else "") +
                f", boxes drawn within {r['box']:.0e} px; raw detections of {CHECK_FRAMES} frames: {compared} "
                f"boxes within {raw_box:.0e} px, scores within {raw_score:.0e}" +
                (f", {cut} with tied lowest scores" if cut else ""))
        print(f"| {r['name']} | {info.num_params / 1e6:.2f} | {box_map} | {r['frames']} | {r['batch']} | "
              f"{r['boxes']:.1f} | {r['seed_ms']:.1f} | {r['course_ms']:.1f} | {r['seed_ms'] / r['course_ms']:.2f}x | "
              f"{r['seed_cpu']:.1f} | {r['course_cpu']:.1f} | {r['seed_cpu'] / r['course_cpu']:.2f}x | {same} |")
    print("box mAP: COCO val2017 from torchvision's weights metadata (the speed runs use random weights); "
          "* the shapes SSD's mAP on the course's shapes validation images. ms/frame: wall clock, end to end; "
          "the seed loop's at its faster thread setting (next table). CPU ms/frame: this process and its ffmpeg "
          "processes together, the work done, which overlapping does not reduce (CPU ratio = seed / course).")
    with_threads = [r for r in rows if "seed_by_threads" in r]
    if with_threads:
        settings = sorted({t for r in with_threads for t in r["seed_by_threads"]})
        print("\nThread settings, ms per frame end to end: the seed loop at each torch thread count, against the "
              "course path (its detection workers x torch threads per worker)")
        print("| model | " + " | ".join(f"seed loop, {t} thread{'s' if t > 1 else ''}" for t in settings) +
              " | course path | workers x threads | speed-up over the faster seed setting | " +
              " | ".join(f"over {t} thread{'s' if t > 1 else ''}" for t in settings) + " |")
        print("| --- |" + " ---: |" * (2 * len(settings) + 3))
        for r in with_threads:
            by = r["seed_by_threads"]
            print(f"| {r['name']} | " + " | ".join(f"{by[t]:.1f}" if t in by else "-" for t in settings) +
                  f" | {r['course_ms']:.1f} | {r['workers']} x {r['worker_threads']} | "
                  f"{r['seed_ms'] / r['course_ms']:.2f}x | " +
                  " | ".join(f"{by[t] / r['course_ms']:.2f}x" if t in by else "-" for t in settings) + " |")
    print("\nWhere the time goes, ms per frame (seed loop: one after the other; course path: each stage in its "
          "own thread, overlapped; its model time adds up all its workers)")
    print("| model | path | " + " | ".join(SEED_STAGES) + " | end to end |")
    print("| --- | --- |" + " ---: |" * (len(SEED_STAGES) + 1))
    for r in rows:
        for path in ("seed", "course"):
            stages = r[f"{path}_stages"]
            print(f"| {r['name']} | {path} | " + " | ".join(f"{stages[s]:.1f}" for s in SEED_STAGES) +
                  f" | {r[f'{path}_ms']:.1f} |")


def ceiling(r: dict, cores: int) -> tuple[float, str]:
    """The most the course path could gain on this machine, and why: it cannot be faster than its
    model's own time per frame (shared among its workers), nor than its CPU work per frame shared
    among the cores."""
    model_ms = r["course_stages"]["model"] / r["workers"]
    cpu_ms = r["course_cpu"] / cores
    if cpu_ms >= model_ms:
        return r["seed_ms"] / cpu_ms, (f"the course path's work is {r['course_cpu']:.0f} ms of CPU per frame, "
                                       f"{100 * r['course_stages']['model'] / r['course_cpu']:.0f}% of it the "
                                       f"model's, and {cores} cores need {cpu_ms:.0f} ms for it")
    return r["seed_ms"] / model_ms, (f"the model alone takes {model_ms:.0f} ms per frame with "
                                     f"{r['workers']} worker(s), even with everything else hidden behind it")


def summary(rows: list[dict], device: str, cores: int) -> None:
    print()
    for r in rows:
        speedup = r["seed_ms"] / r["course_ms"]
        met = speedup >= TARGET_SPEEDUP and r["agree"] and r["raw"][0] and r["identical"] == r["total"]
        model_share = r["seed_stages"]["model"] / r["seed_ms"]
        bound, why = ceiling(r, cores)
        verdict = "met" if met else ("NOT met" if bound >= TARGET_SPEEDUP or speedup >= TARGET_SPEEDUP
                                     else f"NOT met, and out of reach on {cores} cores")
        print(f"target {r['name']} on {device}: course path >= {TARGET_SPEEDUP}x the seed loop's frames per second "
              f"(the seed loop at its faster thread setting, {r['seed_threads']}) with the same detections and "
              f"output: {verdict} ({speedup:.2f}x; the model is {100 * model_share:.0f}% of the seed loop's time; "
              f"at most {bound:.2f}x here: {why})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated detector names (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--frames", type=int, default=None, help="frames per detector (default: by detector)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"frames per batch in the course path (default: by detector, else {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads: the course path's budget, shared by its workers, and the seed "
                             "loop's second setting (0: torch's default, the number of cores)")
    parser.add_argument("--seed-threads", default=None,
                        help="comma-separated thread counts the seed loop runs with (default: 1 and --threads)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the course path's detection workers (default: detect_video's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each path (default 3, --quick 1)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep the course path's model in the memory order it was loaded in")
    parser.add_argument("--quick", action="store_true", help="two small detectors, a few frames")
    args = parser.parse_args()
    args.threads = args.threads if args.threads > 0 else torch.get_num_threads()
    args.seed_threads = sorted({int(t) for t in args.seed_threads.split(",")} if args.seed_threads else
                               {1, args.threads})
    if min(args.seed_threads) < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--seed-threads and --workers must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    models = list(QUICK_MODELS) if args.quick and args.models == parser.get_default("models") else \
        [m if m == SHAPES else resolve_detector_name(m) for m in args.models.split(",")]
    args.repeats = args.repeats or (1 if args.quick else 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    load = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({cores} usable), torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}, device {args.device}; seed loop with "
          f"{' and '.join(map(str, args.seed_threads))} torch thread(s), course path with {args.threads} torch "
          f"thread(s) shared by {'its default' if args.workers is None else args.workers} detection workers, "
          f"channels-last {'on' if args.channels_last else 'off'}; best of {args.repeats} run(s); load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
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
    summary(rows, args.device, cores)


if __name__ == "__main__":
    main()
