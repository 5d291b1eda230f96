"""Shapes SSD: mAP on held-out images after training on the CPU, and how long that took.

    python benchmarks/ssd_shapes.py                  # the full recipe, 2 threads (target: mAP@0.5 >= 0.90 in 5 min)
    python benchmarks/ssd_shapes.py --steps 600      # a shorter run

Trains `course_lib.detection.train_shapes_ssd`'s recipe (the one that produced data/ssd_shapes.pt)
and prints one table. Timings depend on the machine and on what else runs on it: the script prints
the load average before and after, so that a busy machine shows in the numbers.
"""
from __future__ import annotations

import argparse
import os
import platform
from dataclasses import replace

import torch

from course_lib.detection.train_shapes_ssd import ShapesRecipe, fit_shapes_ssd

TARGET_MAP_50 = 0.90
TARGET_SECONDS = 300.0


def main() -> None:
    defaults = ShapesRecipe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    recipe = replace(defaults, steps=args.steps, seed=args.seed)
    load_before = os.getloadavg()[0]
    _, _, m = fit_shapes_ssd(recipe, progress=False)
    load_after = os.getloadavg()[0]

    print(f"# Shapes SSD on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"# {recipe.train_images} training images, {recipe.val_images} held-out (val) images, "
          f"{recipe.image_size} px; {recipe.steps} steps of {recipe.batch_size}; {recipe.classification} loss, "
          f"{recipe.box_coding} box coding")
    print("| mAP@0.5 | mAP@[.5:.95] | mAP@0.75 | recall, small (<16 px) | recall, all | data s | training s | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {m['map_50']:.3f} | {m['map']:.3f} | {m['map_75']:.3f} | {m['recall[0,16)']:.3f} | {m['recall']:.3f} | "
          f"{m['data_seconds']:.0f} | {m['train_seconds']:.0f} | {m['eval_seconds']:.0f} |")
    met = m["map_50"] >= TARGET_MAP_50 and m["train_seconds"] <= TARGET_SECONDS
    print(f"target mAP@0.5 >= {TARGET_MAP_50} within {TARGET_SECONDS:.0f} s of training: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
