"""The recipe that trains the course's shapes SSD, and the command that reproduces ``data/ssd_shapes.pt``.

    python -m course_lib.detection.train_shapes_ssd --out data/ssd_shapes.pt

draws the synthetic shapes (64 x 64 pixels, 1 to 4 circles, squares and triangles per image),
trains the lesson's 189-anchor SSD with focal loss on the CPU, measures COCO mAP on the held-out
"val" split and saves the weights with the recipe and the measurements. Every random choice is
seeded, so the same command gives the same model (up to floating-point differences between
machines). The lesson notebook runs the same function with a smaller `ShapesRecipe`.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..data.shapes import CLASSES, ShapesDataset
from .evaluate import mean_average_precision, predict, recall_by_size
from .ssd import SSD, SSDConfig, save_ssd
from .train import DetectionBatches, TrainHistory, fit

__all__ = ["ShapesRecipe", "QUICK_RECIPE", "shapes_tensors", "fit_shapes_ssd", "evaluate_ssd", "main"]

#: Objects smaller than one cell of the 4x4 grid (16 px on 64 px images) count as "small".
SMALL_OBJECT_EDGES = (0.0, 16.0, 32.0, float("inf"))
#: Score threshold for counting an object as found in recall figures (mAP uses every score).
RECALL_SCORE_THRESHOLD = 0.3


#: CPU threads the command-line training uses (the shipped weights were trained with 2).
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class ShapesRecipe:
    """Data, model and training settings of the shapes SSD."""

    image_size: int = 64
    train_images: int = 4000
    val_images: int = 500
    steps: int = 5000
    batch_size: int = 32
    lr: float = 4e-3
    classification: str = "focal"
    box_coding: str = "deltas"
    grids: tuple[int, ...] = (4, 2, 1)
    zooms: tuple[float, ...] = (0.75, 1.0, 1.3)
    ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5))
    stage_channels: tuple[int, ...] = (24, 48, 96)
    stage_depths: tuple[int, ...] = (1, 2, 2)
    head_channels: int = 96
    iou_threshold: float = 0.5
    seed: int = 0

    def model_config(self) -> SSDConfig:
        return SSDConfig(num_classes=len(CLASSES), image_size=self.image_size, grids=self.grids, zooms=self.zooms,
                         ratios=self.ratios, stage_channels=self.stage_channels, stage_depths=self.stage_depths,
                         head_channels=self.head_channels, box_coding=self.box_coding, class_names=CLASSES)


#: The small configuration of quick runs (tests, ``COURSE_QUICK=1``): same code, far fewer steps.
QUICK_RECIPE = ShapesRecipe(train_images=256, val_images=100, steps=20, batch_size=32)


def shapes_tensors(split: str, num_images: int, image_size: int, seed: int = 0):
    """Draw a split of the shapes data once: images (N, 3, S, S) and N target dicts."""
    return ShapesDataset(split, num_images=num_images, image_size=image_size, seed=seed).to_tensors()


def evaluate_ssd(model: SSD, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """COCO mAP (torchmetrics) and recall by object size on a held-out set.

    Recall (IoU >= 0.5, right class) at two operating points: ``recall[...]`` counts detections
    with score >= 0.3, what a user of the detector would see; ``any_recall[...]`` counts every
    detection mAP sees (score >= 0.05, at most 100 per image), whether or not the model is confident.
    """
    detections = predict(model, images)
    metrics = mean_average_precision(detections, targets)
    metrics.update(recall_by_size(detections, targets, edges=SMALL_OBJECT_EDGES,
                                  score_threshold=RECALL_SCORE_THRESHOLD))
    any_score = recall_by_size(detections, targets, edges=SMALL_OBJECT_EDGES, score_threshold=0.0)
    metrics.update({f"any_{key}": value for key, value in any_score.items()})
    return metrics


def fit_shapes_ssd(recipe: ShapesRecipe = ShapesRecipe(), progress: bool = True, data=None,
                     device: torch.device | str = "cpu") -> tuple[SSD, TrainHistory, dict[str, float]]:
    """Draw the data, train an SSD by ``recipe``, evaluate it on the val split.

    ``data`` may hold already drawn ``(train_images, train_targets, val_images, val_targets)`` (the
    notebook draws them once for several runs). Returns the model (eval mode, on ``device``), its
    training history and the metrics, with the seconds spent drawing, training and evaluating.
    """
    timings = {}
    start = time.perf_counter()
    if data is None:
        data = (*shapes_tensors("train", recipe.train_images, recipe.image_size, recipe.seed),
                *shapes_tensors("val", recipe.val_images, recipe.image_size, recipe.seed))
    train_images, train_targets, val_images, val_targets = data
    timings["data_seconds"] = time.perf_counter() - start

    torch.manual_seed(recipe.seed)  # the model's initial weights (a script-level choice, not library state)
    model = SSD(recipe.model_config()).to(device)
    batches = DetectionBatches(train_images, train_targets, recipe.batch_size,
                               generator=torch.Generator().manual_seed(recipe.seed), hflip=True, vflip=True)
    def loss(m: SSD, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]):
        return m.loss(m(images), targets, classification=recipe.classification, iou_threshold=recipe.iou_threshold)

    history = fit(model, batches, loss,
                  steps=recipe.steps, lr=recipe.lr, progress=progress,
                  description=f"SSD, {recipe.classification} loss", channels_last=True)
    timings["train_seconds"] = history.seconds

    start = time.perf_counter()
    metrics = evaluate_ssd(model, val_images, val_targets)
    timings["eval_seconds"] = time.perf_counter() - start
    return model, history, {**metrics, **timings}


def _format_row(name: str, metrics: dict[str, float]) -> str:
    return (f"| {name} | {metrics['map_50']:.3f} | {metrics['map']:.3f} | {metrics['recall[0,16)']:.3f} | "
            f"{metrics['recall']:.3f} | {metrics['train_seconds']:.0f} |")


TABLE_HEADER = ("| run | mAP@0.5 | mAP@[.5:.95] | recall, small (<16 px) | recall, all | training s |\n"
                "| --- | --- | --- | --- | --- | --- |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ShapesRecipe()
    parser.add_argument("--out", help="where to save the trained model (e.g. data/ssd_shapes.pt)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--val-images", type=int, default=defaults.val_images)
    parser.add_argument("--classification", choices=("focal", "bce"), default=defaults.classification)
    parser.add_argument("--box-coding", choices=("deltas", "tanh"), default=defaults.box_coding)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"CPU threads for torch (default {DEFAULT_THREADS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = replace(defaults, steps=args.steps, train_images=args.train_images, val_images=args.val_images,
                     classification=args.classification, box_coding=args.box_coding, lr=args.lr, seed=args.seed)
    model, history, metrics = fit_shapes_ssd(recipe, progress=not args.quiet)
    print(f"data {metrics['data_seconds']:.0f} s, training {metrics['train_seconds']:.0f} s, "
          f"evaluation {metrics['eval_seconds']:.0f} s on {torch.get_num_threads()} CPU threads")
    print(TABLE_HEADER)
    print(_format_row(f"{recipe.classification}, {recipe.box_coding}, {recipe.steps} steps", metrics))
    if args.out:
        save_ssd(model, args.out, recipe=asdict(recipe), metrics=metrics,
                 loss_history={"steps": history.steps, "loss": history.loss},
                 command="python -m course_lib.detection.train_shapes_ssd " + " ".join(argv or sys.argv[1:]))
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
