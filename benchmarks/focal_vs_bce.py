"""Focal loss against binary cross-entropy: the same SSD, data and training budget, two losses.

    python benchmarks/focal_vs_bce.py                 # the full recipe's budget, 2 threads
    python benchmarks/focal_vs_bce.py --steps 600     # a shorter budget

The original SSD lesson argues that with 189 anchors, mostly background, cross-entropy makes the
detector timid and it misses small objects; focal loss turns the easy negatives down. This prints
mAP and the recall of small objects (sides under 16 px: smaller than one 4x4 grid cell; found =
a detection of the right class with IoU >= 0.5) for both, on the held-out split: at score >= 0.3
(what a user sees) and at any score (what mAP sees: score >= 0.05, 100 detections per image).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

from course_lib.detection.train_shapes_ssd import ShapesRecipe, shapes_tensors, fit_shapes_ssd


def main() -> None:
    defaults = ShapesRecipe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[defaults.seed])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for seed in args.seeds:
        recipe = replace(defaults, steps=args.steps, seed=seed)
        data = (*shapes_tensors("train", recipe.train_images, recipe.image_size, seed),
                *shapes_tensors("val", recipe.val_images, recipe.image_size, seed))
        for classification in ("bce", "focal"):
            _, _, m = fit_shapes_ssd(replace(recipe, classification=classification), progress=False, data=data)
            rows.append((classification, seed, m))
    load_after = os.getloadavg()[0]

    print(f"# {defaults.train_images} training / {defaults.val_images} held-out images, {args.steps} steps of "
          f"{defaults.batch_size}, {torch.get_num_threads()} threads; load average {load_before:.1f} before, "
          f"{load_after:.1f} after")
    print("| loss | seed | mAP@0.5 | mAP@[.5:.95] | small-object recall, score >= 0.3 | small, any score | "
          "all objects, score >= 0.3 | all, any score | training s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for classification, seed, m in rows:
        print(f"| {classification} | {seed} | {m['map_50']:.3f} | {m['map']:.3f} | {m['recall[0,16)']:.3f} | "
              f"{m['any_recall[0,16)']:.3f} | {m['recall']:.3f} | {m['any_recall']:.3f} | {m['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
