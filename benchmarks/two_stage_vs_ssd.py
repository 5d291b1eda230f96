"""Two-stage detector (lesson 5's Faster R-CNN) against lesson 4's SSD on the same held-out shapes.

    python benchmarks/two_stage_vs_ssd.py            # the shipped data/ssd_shapes.pt and data/faster_rcnn_shapes.pt
    python benchmarks/two_stage_vs_ssd.py --retrain  # train both by their recipes first (~10 min, 2 quiet cores)
    python benchmarks/two_stage_vs_ssd.py --quick    # quick recipes, fewer images: checks that the script runs

One table: mAP@0.5, mAP@[.5:.95], recall of small objects (< 16 px) and of all objects (score >= 0.3),
measured with the same helpers and thresholds for both (`evaluate_ssd`, `evaluate_faster_rcnn`) on
lesson 4's held-out split (the 500 "val" images, seed 0); then milliseconds of CPU time per image at
inference on one thread, one image at a time and in batches (the best of a few rounds, so that
other programs on the machine disturb it little), and the parameter count. Both detectors run
``detect`` with the score threshold mAP uses (0.05) and their own NMS settings.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace

import torch

from course_lib.detection.faster_rcnn.train_shapes import (
    QUICK_RECIPE,
    ShapesFasterRCNNRecipe,
    evaluate_faster_rcnn,
    load_shapes_faster_rcnn,
    train_shapes_faster_rcnn,
)
from course_lib.detection.ssd import load_shapes_ssd
from course_lib.detection.train_shapes_ssd import QUICK_RECIPE as SSD_QUICK_RECIPE
from course_lib.detection.train_shapes_ssd import ShapesRecipe, evaluate_ssd, shapes_tensors, fit_shapes_ssd

#: mAP's score threshold: both detectors keep every detection the metric sees.
SCORE_THRESHOLD = 0.05
#: Images timed one at a time, and the batch size of the batched timing.
TIMED_IMAGES = 100
BATCH_SIZE = 100
ROUNDS = 3


def cpu_ms_per_image(model, images: torch.Tensor, batch_size: int, rounds: int = ROUNDS) -> float:
    """Best-of-``rounds`` CPU milliseconds per image of ``model.detect`` (this process, all threads)."""
    best = float("inf")
    with torch.inference_mode():
        model.detect(images[:batch_size], score_threshold=SCORE_THRESHOLD)  # warm-up
        for _ in range(rounds):
            start = time.process_time()
            for i in range(0, images.shape[0], batch_size):
                model.detect(images[i:i + batch_size], score_threshold=SCORE_THRESHOLD)
            best = min(best, time.process_time() - start)
    return 1000.0 * best / images.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train both detectors instead of loading them")
    parser.add_argument("--quick", action="store_true", help="quick recipes (implies --retrain), fewer images")
    parser.add_argument("--train-threads", type=int, default=2, help="threads while retraining (default 2)")
    args = parser.parse_args()

    ssd_recipe = SSD_QUICK_RECIPE if args.quick else ShapesRecipe()
    frcnn_recipe = QUICK_RECIPE if args.quick else ShapesFasterRCNNRecipe()
    if ssd_recipe.val_images != frcnn_recipe.val_images or ssd_recipe.seed != frcnn_recipe.seed:
        frcnn_recipe = replace(frcnn_recipe, val_images=ssd_recipe.val_images, seed=ssd_recipe.seed)
    val_images, val_targets = shapes_tensors("val", ssd_recipe.val_images, ssd_recipe.image_size, ssd_recipe.seed)

    load_before = os.getloadavg()[0]
    trained = {}
    if args.retrain or args.quick:
        torch.set_num_threads(args.train_threads)
        ssd, _, ssd_train = fit_shapes_ssd(ssd_recipe, progress=False)
        frcnn, _, frcnn_train = train_shapes_faster_rcnn(frcnn_recipe, progress=False)
        trained = {"SSD": ssd_train["train_seconds"], "Faster R-CNN": frcnn_train["train_seconds"]}
    else:
        ssd, frcnn = load_shapes_ssd(), load_shapes_faster_rcnn()

    torch.set_num_threads(1)
    timed = val_images[:TIMED_IMAGES]
    rows = []
    for name, model, evaluate in (("SSD (lesson 4)", ssd, evaluate_ssd),
                                  ("Faster R-CNN (lesson 5)", frcnn, evaluate_faster_rcnn)):
        m = evaluate(model, val_images, val_targets)
        single = cpu_ms_per_image(model, timed, 1)
        batched = cpu_ms_per_image(model, timed, BATCH_SIZE)
        params = sum(p.numel() for p in model.parameters())
        rows.append(f"| {name} | {m['map_50']:.3f} | {m['map']:.3f} | {m['recall[0,16)']:.3f} | {m['recall']:.3f} | "
                    f"{single:.2f} | {batched:.2f} | {params:,} |")
    load_after = os.getloadavg()[0]

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}; load average "
          f"{load_before:.1f} before, {load_after:.1f} after; "
          + ("retrained: " + ", ".join(f"{k} {v:.0f} s" for k, v in trained.items()) if trained
             else "shipped weights"))
    print(f"# {val_images.shape[0]} held-out (val) images of {ssd_recipe.image_size} px, seed {ssd_recipe.seed}; "
          f"speed: CPU ms per image on 1 thread, {timed.shape[0]} images, best of {ROUNDS}, "
          f"batch 1 and batch {BATCH_SIZE}, score threshold {SCORE_THRESHOLD}")
    print("| detector | mAP@0.5 | mAP@[.5:.95] | recall, small (<16 px) | recall, all | ms/image, batch 1 | "
          f"ms/image, batch {BATCH_SIZE} | parameters |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
