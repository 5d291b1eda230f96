"""The recipe that trains the course's two-stage detector on the shapes, and the command that
reproduces ``data/faster_rcnn_shapes.pt``.

    python -m course_lib.detection.faster_rcnn.train_shapes --out data/faster_rcnn_shapes.pt

draws the synthetic shapes (64 x 64 pixels, 1 to 4 circles, squares and triangles per image),
trains a small `TwoStageDetector` (Faster R-CNN) on the CPU with two threads, measures COCO mAP on
lesson 4's held-out "val" split (the same 500 images, seed 0, that the shapes SSD is measured on,
with the same helpers and thresholds) and saves the weights with the recipe, the measurements,
the loss history and the command. Every random choice is seeded, so the same command gives the
same model (up to floating-point differences between machines and thread counts). Lesson 5 runs
the same function with `QUICK_RECIPE` when ``COURSE_QUICK=1``.

On a machine shared with other programs, start it with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's
waiting threads otherwise spin on cores other programs need, and a two-thread step took ten
times longer on a busy two-core machine (the numbers do not change, only the time).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...data.shapes import CLASSES
from ...shipped import missing_file_message, shipped_file
from ..evaluate import mean_average_precision, predict, recall_by_size
from ..train import DetectionBatches, TrainHistory, fit
from ..train_shapes_ssd import RECALL_SCORE_THRESHOLD, SMALL_OBJECT_EDGES, shapes_tensors
from .config import FasterRCNNConfig
from .detector import TwoStageDetector, load_faster_rcnn, save_faster_rcnn
from .region_proposals import ProposalSettings

if TYPE_CHECKING:  # imported when called: the pretrained-detector module loads torchvision's model zoo
    from ..pretrained import LoadedDetector

__all__ = ["ShapesFasterRCNNRecipe", "QUICK_RECIPE", "SHAPES_FASTER_RCNN_PATH", "train_shapes_faster_rcnn",
           "evaluate_faster_rcnn", "save_shapes_faster_rcnn", "load_shapes_faster_rcnn",
           "shapes_faster_rcnn_detector", "main"]

#: Where `load_shapes_faster_rcnn` finds the course's trained two-stage shapes detector.
SHAPES_FASTER_RCNN_PATH = shipped_file("faster_rcnn_shapes.pt")
#: The command that writes it (the file stores the exact command line it was made with).
COMMAND = "python -m course_lib.detection.faster_rcnn.train_shapes"


@dataclass(frozen=True)
class ShapesFasterRCNNRecipe:
    """Data, model and training settings of the shapes two-stage detector (defaults: the shipped one).

    The model fields override `FasterRCNNConfig`'s defaults (`model_config`); proposal counts are
    ``(pre_nms_top_n, post_nms_top_n)`` pairs.
    """

    # data: lesson 4's shapes and its held-out split
    image_size: int = 64
    train_images: int = 4000
    val_images: int = 500
    # training (AdamW, one-cycle learning rate, `course_lib.detection.train.fit`): 1,000 steps of 32
    # images are 8 epochs; 400 steps already give mAP@0.5 ~ 0.99, more steps tighten the boxes
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    hflip: bool = True
    vflip: bool = True
    channels_last: bool = False
    # model
    stage_channels: tuple[int, ...] = (32, 64)
    stage_depths: tuple[int, ...] = (1, 3)
    #: anchor sizes are scales x stride (4): 8 to 32 pixels, the shapes' range (9 to 32 pixels) ...
    anchor_scales: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0)
    #: ... and square: the shapes' boxes have aspect ratios between 0.73 and 1.33.
    anchor_ratios: tuple[float, ...] = (1.0,)
    #: 1,280 anchors on a 16 x 16 map, 1 to 4 objects per image: 128 sampled anchors per image,
    #: the best 200 -> NMS -> 64 proposals while training (NMS is the slowest step of a training
    #: pass on the CPU) and 150 -> 50 at test time, 32 sampled ROIs per image.
    rpn_batch_size: int = 128
    train_proposals: tuple[int, int] = (200, 64)
    test_proposals: tuple[int, int] = (150, 50)
    roi_batch_size: int = 32
    #: Objects span 2 to 8 cells of the stride-4 map: 5 x 5 bins of one bilinear sample each
    #: cover them; RoIAlign's backward pass is the costliest operation of a training step, and
    #: torchvision's 7 x 7 bins of 2 x 2 samples make it three times slower here.
    pooling: str = "roi_align"
    pooled_size: int = 5
    sampling_ratio: int = 1
    representation_size: int = 256
    seed: int = 0

    def model_config(self) -> FasterRCNNConfig:
        """The `FasterRCNNConfig` this recipe trains (its `seed` seeds the model's samplers too)."""
        return FasterRCNNConfig(
            num_classes=len(CLASSES), class_names=CLASSES, backbone="small", stage_channels=self.stage_channels,
            stage_depths=self.stage_depths, backbone_channels=self.stage_channels[-1],
            stride=2 ** len(self.stage_channels), anchor_ratios=self.anchor_ratios, anchor_scales=self.anchor_scales,
            rpn_batch_size=self.rpn_batch_size, train_proposals=ProposalSettings(*self.train_proposals),
            test_proposals=ProposalSettings(*self.test_proposals), roi_batch_size=self.roi_batch_size,
            pooling=self.pooling, pooled_size=self.pooled_size, sampling_ratio=self.sampling_ratio,
            representation_size=self.representation_size, seed=self.seed)

    @classmethod
    def from_dict(cls, values: dict) -> ShapesFasterRCNNRecipe:
        """Inverse of ``dataclasses.asdict`` (what the saved file holds): lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown ShapesFasterRCNNRecipe fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


#: The small configuration of quick runs (tests, ``COURSE_QUICK=1``): same code, far fewer steps.
QUICK_RECIPE = ShapesFasterRCNNRecipe(train_images=256, val_images=100, steps=30, batch_size=16)


def _total_and_parts(model: TwoStageDetector, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]):
    """`fit`'s loss: the sum to backpropagate, and the four losses logged as parts."""
    losses = model(images, targets)
    return {"total": sum(losses.values()), **losses}


def evaluate_faster_rcnn(model: TwoStageDetector, images: torch.Tensor,
                         targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """COCO mAP (torchmetrics) and recall by object size on a held-out set, exactly as the shapes
    SSD is measured (`course_lib.detection.train_shapes_ssd.evaluate_ssd`).

    ``map_50``, ``map`` (mAP@[.5:.95]), ``map_75``, ``mar_100`` from detections with score >=
    0.05 (at most 100 per image); ``recall[0,16)`` (small objects: sqrt(area) < 16 px),
    ``recall[16,32)``, ``recall[32,inf)``, ``recall`` count detections with score >= 0.3 (IoU
    >= 0.5, right class); ``any_recall...`` the same for every detection mAP sees.
    """
    detections = predict(model, images)
    metrics = mean_average_precision(detections, targets)
    metrics.update(recall_by_size(detections, targets, edges=SMALL_OBJECT_EDGES,
                                  score_threshold=RECALL_SCORE_THRESHOLD))
    any_score = recall_by_size(detections, targets, edges=SMALL_OBJECT_EDGES, score_threshold=0.0)
    metrics.update({f"any_{key}": value for key, value in any_score.items()})
    return metrics


def train_shapes_faster_rcnn(recipe: ShapesFasterRCNNRecipe = ShapesFasterRCNNRecipe(), progress: bool = True,
                             data=None, device: torch.device | str = "cpu",
                             ) -> tuple[TwoStageDetector, TrainHistory, dict[str, float]]:
    """Draw the data, train a `TwoStageDetector` by ``recipe``, evaluate it on the val split.

    ``data`` may hold already drawn ``(train_images, train_targets, val_images, val_targets)``.
    Returns the model (eval mode, on ``device``), its training history (the total loss and the
    four losses, `LOSS_NAMES`) and the metrics (`evaluate_faster_rcnn`) with the seconds spent
    drawing, training (wall clock ``train_seconds`` and this process's CPU time
    ``train_cpu_seconds``, all threads together), evaluating, and the load average around training.
    The global random generator is left as it was (the initial weights come from a forked one).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if data is None:
        data = (*shapes_tensors("train", recipe.train_images, recipe.image_size, recipe.seed),
                *shapes_tensors("val", recipe.val_images, recipe.image_size, recipe.seed))
    train_images, train_targets, val_images, val_targets = data
    timings["data_seconds"] = time.perf_counter() - start

    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's generator untouched
        torch.manual_seed(recipe.seed)
        model = TwoStageDetector(recipe.model_config()).to(device)
    batches = DetectionBatches(train_images, train_targets, recipe.batch_size,
                               generator=torch.Generator().manual_seed(recipe.seed),
                               hflip=recipe.hflip, vflip=recipe.vflip)
    timings["load_before"] = os.getloadavg()[0]
    cpu_start = time.process_time()
    history = fit(model, batches, _total_and_parts, steps=recipe.steps, lr=recipe.lr, progress=progress,
                  description="Faster R-CNN", channels_last=recipe.channels_last)
    timings["train_cpu_seconds"] = time.process_time() - cpu_start
    timings["train_seconds"] = history.seconds
    timings["load_after"] = os.getloadavg()[0]
    timings["threads"] = float(torch.get_num_threads())

    start = time.perf_counter()
    metrics = evaluate_faster_rcnn(model, val_images, val_targets)
    timings["eval_seconds"] = time.perf_counter() - start
    return model, history, {**metrics, **timings}


def save_shapes_faster_rcnn(model: TwoStageDetector, path: str | Path, recipe: ShapesFasterRCNNRecipe,
                            history: TrainHistory, metrics: dict[str, float], command: str) -> None:
    """`save_faster_rcnn` with what made the model: the recipe, the metrics, the loss history (total,
    the four parts and the learning rate per logged step) and the command line."""
    loss_history = {"steps": history.steps, "loss": history.loss, "parts": history.parts, "lr": history.lr}
    save_faster_rcnn(model, path, recipe=asdict(recipe), metrics=dict(metrics), loss_history=loss_history,
                     command=command)


def load_shapes_faster_rcnn(device: str | torch.device = "cpu", path: str | Path | None = None) -> TwoStageDetector:
    """The course's trained two-stage shapes detector (``data/faster_rcnn_shapes.pt``), in eval mode
    on ``device``; ``model.metadata`` holds its recipe, metrics, loss history and command."""
    searched, path = path is None, Path(path) if path is not None else SHAPES_FASTER_RCNN_PATH
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path, "the trained shapes Faster R-CNN", COMMAND, searched))
    return load_faster_rcnn(path, map_location=device)


def shapes_faster_rcnn_detector(device: torch.device | str = "cpu") -> LoadedDetector:
    """The shipped two-stage shapes detector as a torchvision-like offline detector (its
    `FixedSizeDetector` takes images of any size), for `course_lib.detection.pretrained`::

        register_fallback("shapes_faster_rcnn",
                          "course_lib.detection.faster_rcnn.train_shapes:shapes_faster_rcnn_detector")
    """
    from ..pretrained import DetectorInfo, FixedSizeDetector, LoadedDetector  # only when asked for

    model = load_shapes_faster_rcnn(device)
    metrics, recipe = model.metadata.get("metrics", {}), model.metadata.get("recipe", {})
    box_map = metrics.get("map")
    image_size = int(recipe.get("image_size", ShapesFasterRCNNRecipe.image_size))
    source = f"course shapes val split ({recipe.get('val_images', '?')} images, {image_size} px)"
    info = DetectorInfo(name="shapes_faster_rcnn", weights=SHAPES_FASTER_RCNN_PATH.name,
                        categories=tuple(model.config.class_names),
                        box_map=None if box_map is None else 100.0 * float(box_map), box_map_source=source,
                        num_params=sum(p.numel() for p in model.parameters()))
    return LoadedDetector(FixedSizeDetector(model, image_size).eval(), info)


# --------------------------------------------------------------------------- the command


TABLE_HEADER = ("| run | mAP@0.5 | mAP@[.5:.95] | mAP@0.75 | recall, small (<16 px) | recall, all | training s "
                "(wall) | training CPU s | load |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def format_row(name: str, metrics: dict[str, float]) -> str:
    """One row of `TABLE_HEADER`."""
    return (f"| {name} | {metrics['map_50']:.3f} | {metrics['map']:.3f} | {metrics['map_75']:.3f} | "
            f"{metrics['recall[0,16)']:.3f} | {metrics['recall']:.3f} | {metrics['train_seconds']:.0f} | "
            f"{metrics['train_cpu_seconds']:.0f} | {metrics['load_before']:.1f} -> {metrics['load_after']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--out", help="where to save the trained model (e.g. data/faster_rcnn_shapes.pt)")
    parser.add_argument("--quick", action="store_true", help="start from QUICK_RECIPE instead of the full recipe")
    for name in ("steps", "batch_size", "train_images", "val_images", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    recipe = QUICK_RECIPE if args.quick else ShapesFasterRCNNRecipe()
    changes = {name: getattr(args, name) for name in ("steps", "batch_size", "train_images", "val_images",
                                                     "seed", "lr") if getattr(args, name) is not None}
    recipe = replace(recipe, **changes)
    torch.set_num_threads(args.threads)
    model, history, metrics = train_shapes_faster_rcnn(recipe, progress=not args.quiet)
    print(f"data {metrics['data_seconds']:.0f} s, training {metrics['train_seconds']:.0f} s wall "
          f"({metrics['train_cpu_seconds']:.0f} s CPU), evaluation {metrics['eval_seconds']:.0f} s on "
          f"{torch.get_num_threads()} CPU threads")
    print(TABLE_HEADER)
    print(format_row(f"Faster R-CNN, {recipe.steps} steps of {recipe.batch_size}", metrics))
    if args.out:
        save_shapes_faster_rcnn(model, args.out, recipe, history, metrics,
                                command=" ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]))
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
