"""Speed of course_lib.detection's NMS, IoU and ROI pooling against torchvision, on the CPU.

    python benchmarks/detection_ops.py              # about a minute
    python benchmarks/detection_ops.py --quick      # fewer repetitions
    python benchmarks/detection_ops.py --threads 0  # torch's own thread count

Prints milliseconds and ratios (ours / torchvision: below 1 is faster). Every NMS variant is
first checked to keep exactly torchvision's boxes. Two kinds of random boxes: "scattered"
(centres uniform in an 800 x 800 image, sides 10-200 px, random scores) and "clustered" (a
detector's raw output: many jittered boxes around 20 objects). The two loops below are the
textbook ways to write NMS, kept here only as baselines. A summary at the end says which
targets hold in this run.

torchvision's NMS and ROI pooling kernels run on one CPU core, so by default torch gets one
thread too and every ratio compares one core with one core. Times are then the CPU time of
this process (best of several runs, ours and torchvision's taken in turns), which other
programs busy on the same cores disturb much less than wall-clock time; with more threads
they are wall-clock times (median).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision

from course_lib.detection import box_iou, nms, roi_pool

IMAGE = 800.0
IOU_THRESHOLD = 0.5


# --------------------------------------------------------------------------- inputs


def scattered_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * IMAGE
    size = 10 + torch.rand(n, 2, generator=g) * 190
    return torch.cat((centre - size / 2, centre + size / 2), dim=1), torch.rand(n, generator=g)


def clustered_boxes(n: int, seed: int, objects: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(objects, 2, generator=g) * 600 + 100
    sizes = 30 + torch.rand(objects, 2, generator=g) * 150
    which = torch.randint(objects, (n,), generator=g)
    centre = centres[which] + torch.randn(n, 2, generator=g) * sizes[which] * 0.15
    size = sizes[which] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    return torch.cat((centre - size / 2, centre + size / 2), dim=1), torch.rand(n, generator=g)


# --------------------------------------------------------------------------- baseline loops


def nms_numpy_loop(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The Faster R-CNN walkthrough's loop, corrected: it sorts the scores (not the order) and
    measures widths without the old pixel-inclusive +1."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= threshold)[0] + 1]
    return np.array(keep, dtype=np.int64)


def nms_torch_loop(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The d2l-style loop: keep the best remaining box, drop what overlaps it, repeat."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        if order.numel() == 1:
            break
        overlap = torchvision.ops.box_iou(boxes[best][None], boxes[order[1:]])[0]
        order = order[1:][overlap <= threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.int64)


# --------------------------------------------------------------------------- timing


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}


def time_ms(fns: list[Callable[[], object]], repeats: int, clock: str) -> list[float]:
    """Milliseconds per call of each function, calling them in turns: the best of ``repeats``
    CPU times, or the median of ``repeats`` wall-clock times."""
    now = CLOCK[clock]
    for fn in fns:
        fn()  # warm up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = now()
            fn()
            spent.append(now() - start)
    pick = min if clock == "cpu" else statistics.median
    return [1000 * pick(spent) for spent in times]


def bench_nms(repeats: int, clock: str) -> dict[tuple[str, int], dict[str, float]]:
    print(f"\nNMS, IoU threshold {IOU_THRESHOLD} (ms; ratio = ours / torchvision)")
    print(f"{'boxes':>14} {'n':>6} {'kept':>5} {'torchvision':>11} {'ours':>8} {'ratio':>6} "
          f"{'numpy loop':>10} {'/ ours':>6} {'torch loop':>10} {'/ ours':>6}")
    results = {}
    for name, make in (("scattered", scattered_boxes), ("clustered", clustered_boxes)):
        for n in (2_000, 5_000, 12_000):
            boxes, scores = make(n, seed=n)
            expected = torchvision.ops.nms(boxes, scores, IOU_THRESHOLD)
            assert torch.equal(nms(boxes, scores, IOU_THRESHOLD), expected)
            assert np.array_equal(nms_numpy_loop(boxes.numpy(), scores.numpy(), IOU_THRESHOLD), expected.numpy())
            assert torch.equal(nms_torch_loop(boxes, scores, IOU_THRESHOLD), expected)
            theirs, ours = time_ms([lambda: torchvision.ops.nms(boxes, scores, IOU_THRESHOLD),
                                    lambda: nms(boxes, scores, IOU_THRESHOLD)], repeats, clock)
            numpy_loop, torch_loop = time_ms([lambda: nms_numpy_loop(boxes.numpy(), scores.numpy(), IOU_THRESHOLD),
                                              lambda: nms_torch_loop(boxes, scores, IOU_THRESHOLD)],
                                             max(1, repeats // 4), clock)
            results[name, n] = {"ratio": ours / theirs, "numpy": numpy_loop / ours, "torch": torch_loop / ours}
            print(f"{name:>14} {n:>6} {len(expected):>5} {theirs:>11.2f} {ours:>8.2f} {ours / theirs:>6.2f} "
                  f"{numpy_loop:>10.1f} {numpy_loop / ours:>6.1f} {torch_loop:>10.1f} {torch_loop / ours:>6.1f}")
    return results


def bench_box_iou(repeats: int, clock: str) -> list[float]:
    print("\nbox_iou (ms)")
    print(f"{'shape':>14} {'torchvision':>11} {'ours':>8} {'ratio':>6}")
    ratios = []
    for n, m in ((2_000, 2_000), (5_000, 5_000), (12_000, 2_000)):
        a, _ = scattered_boxes(n, seed=1)
        b, _ = scattered_boxes(m, seed=2)
        torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b))
        theirs, ours = time_ms([lambda: torchvision.ops.box_iou(a, b), lambda: box_iou(a, b)], repeats, clock)
        ratios.append(ours / theirs)
        print(f"{f'{n} x {m}':>14} {theirs:>11.2f} {ours:>8.2f} {ours / theirs:>6.2f}")
    return ratios


def bench_roi_pool(repeats: int, clock: str) -> list[float]:
    print("\nroi_pool, Faster R-CNN lesson sizes: 128 ROIs, 7 x 7 bins, stride 16 (ms)")
    print(f"{'features':>14} {'torchvision':>11} {'ours':>8} {'ratio':>6}")
    g = torch.Generator().manual_seed(0)
    ratios = []
    for channels in (64, 512):
        features = torch.randn(1, channels, 50, 50, generator=g)
        corner = torch.rand(128, 2, generator=g) * 600
        size = 16 + torch.rand(128, 2, generator=g) * 400
        rois = torch.cat((torch.zeros(128, 1), corner, corner + size), dim=1)
        assert torch.equal(roi_pool(features, rois, 7, 1 / 16), torchvision.ops.roi_pool(features, rois, 7, 1 / 16))
        theirs, ours = time_ms([lambda: torchvision.ops.roi_pool(features, rois, 7, 1 / 16),
                                lambda: roi_pool(features, rois, 7, 1 / 16)], repeats, clock)
        ratios.append(ours / theirs)
        print(f"{f'{channels} x 50 x 50':>14} {theirs:>11.2f} {ours:>8.2f} {ours / theirs:>6.2f}")
    return ratios


def summary(nms_results: dict[tuple[str, int], dict[str, float]], iou_ratios: list[float],
            roi_ratios: list[float]) -> None:
    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    small = [r for (_, n), r in nms_results.items() if n <= 5_000]
    print("\nTargets in this run")
    print(f"  nms no slower than torchvision at 2,000 and 5,000 boxes, both inputs: "
          f"{verdict(all(r['ratio'] <= 1 for r in small))} (worst ratio {max(r['ratio'] for r in small):.2f})")
    for loop in ("numpy", "torch"):
        worst = min(nms_results.items(), key=lambda item: item[1][loop])
        print(f"  nms at least 10x faster than the {loop} loop everywhere: "
              f"{verdict(worst[1][loop] >= 10)} (least {worst[1][loop]:.1f}x, {worst[0][0]} {worst[0][1]:,})")
    print(f"  box_iou within 1.5x of torchvision: {verdict(max(iou_ratios) <= 1.5)} "
          f"(worst ratio {max(iou_ratios):.2f})")
    print(f"  roi_pool / torchvision: {', '.join(f'{r:.2f}' for r in roi_ratios)} (64 and 512 channels)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice; default 1)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    repeats = 5 if args.quick else 15
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU "
          f"thread(s), {'CPU' if clock == 'cpu' else 'wall-clock'} time")
    nms_results = bench_nms(repeats, clock)
    iou_ratios = bench_box_iou(repeats, clock)
    roi_ratios = bench_roi_pool(repeats, clock)
    summary(nms_results, iou_ratios, roi_ratios)


if __name__ == "__main__":
    main()
