"""Evaluation of a model on a labelled set, at label resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from intrada.classes import ClassSet
from intrada.compute import CPU, Compute
from intrada.data import SegmentationSet, resize_label
from intrada.entropy import entropy_map
from intrada.inference import predict_probs, top_class
from intrada.io import atomic_path, write_json, write_rgb_png
from intrada.metrics import iou_per_class, mean_iou, percent
from intrada.validation import evaluate_confusion, snapshot_report
from intrada.viz import colorize_channels, entropy_rgb, panel


def iou_report(
    cm: np.ndarray, classes: ClassSet, subsets: dict[str, tuple[str, ...]] | None = None
) -> dict:
    """{"mIoU": %, <subset key>: %, ..., "IoU": {class: % or None}}: None for a class with
    no IoU (absent and never predicted), left out of the mean. `subsets` adds the mean over
    some of the classes (SYNTHIA's 13-class mIoU)."""
    iou = iou_per_class(cm)
    report = {"mIoU": percent(mean_iou(iou))}
    for key, names in (subsets or {}).items():
        report[key] = percent(mean_iou(iou[[classes.names.index(n) for n in names]]))
    report["IoU"] = {name: percent(v) for name, v in zip(classes.names, iou, strict=True)}
    return report


def confusion_table(cm: np.ndarray, classes: ClassSet) -> pd.DataFrame:
    """The confusion matrix with class names as index (truth) and columns (prediction)."""
    names = list(classes.names)
    return pd.DataFrame(cm, index=pd.Index(names, name="truth"), columns=names)


@torch.no_grad()
def predict_labels(
    model: nn.Module, image: torch.Tensor, size: tuple[int, int], compute: Compute = CPU
):
    """One image -> (channel prediction (H, W), entropy map (H, W)) as numpy arrays."""
    prob = predict_probs(model, image[None], size, compute)
    return top_class(prob)[0].numpy(), entropy_map(prob)[0].numpy()


def write_report(
    models: dict[str, nn.Module],
    dataset: SegmentationSet | None,
    classes: ClassSet,
    batch_size: int,
    num_panels: int,
    metrics_path: Path,
    confusion_dir: Path,
    iou_dir: Path,
    panels_dir: Path,
    diagnostics: dict | None = None,
    subsets: dict[str, tuple[str, ...]] | None = None,
    compute: Compute = CPU,
    validations: dict[str, dict | None] | None = None,
    not_available: dict[str, str] | None = None,
) -> dict:
    """Evaluate every model and write, each atomically (with several processes, each
    evaluates a share of the images and the main process writes):

    - `metrics_path`: {model: {"mIoU": %, ..., "IoU": {class: %}}}, plus `diagnostics`
      under that key when given; with `validations` (each model file's
      `meta["validation"]`), the last-iteration and best-on-val mIoU next to `mIoU`
      (`validation.snapshot_report`);
    - `confusion_dir/<model>.csv`: confusion matrices (rows truth, columns prediction);
    - `iou_dir/<model>.csv`: per-class IoU rows (`class`, `IoU`) for `dvc plots`;
    - `panels_dir/val_<k>.png`: image | truth | one prediction per model | entropy of
      the last model, for the first `num_panels` images.

    Without a labelled set (`dataset` None: the user's own target without labels) each
    model's mIoU is null and the folders are written empty. `not_available` ({what:
    why}) is written under that key, saying which numbers the report cannot give.
    """
    report, matrices = {}, {}
    if dataset is None:
        report = {name: {"mIoU": None} for name in models}
    for name, model in models.items() if dataset is not None else ():
        matrices[name] = evaluate_confusion(model, dataset, batch_size, compute)
        report[name] = iou_report(matrices[name], classes, subsets)
        snapshots = snapshot_report((validations or {}).get(name), report[name]["mIoU"])
        if snapshots:
            iou = report[name].pop("IoU")
            report[name].update(snapshots, IoU=iou)  # per-class IoU stays last
    if diagnostics is not None:
        report["diagnostics"] = diagnostics
    if not_available:
        report["not_available"] = not_available
    if not compute.main:
        return report
    # One folder after the other: a write error then names the folder it failed in.
    with atomic_path(confusion_dir) as cm_out:
        cm_out.mkdir()
        for name, cm in matrices.items():
            confusion_table(cm, classes).to_csv(cm_out / f"{name}.csv")
    with atomic_path(iou_dir) as iou_out:
        iou_out.mkdir()
        for name in matrices:
            pd.DataFrame(
                {
                    "class": list(classes.names),
                    "IoU": [report[name]["IoU"][c] for c in classes.names],
                }
            ).to_csv(iou_out / f"{name}.csv", index=False)
    write_json(metrics_path, report)
    with atomic_path(panels_dir) as out:
        out.mkdir()
        for k in range(min(num_panels, len(dataset) if dataset is not None else 0)):
            write_rgb_png(out / f"val_{k:02d}.png", val_panel(models, dataset, classes, k, compute))
    return report


# Panel tiles are drawn at most this wide: small images enlarged 2x (128x64 -> 256x128),
# Cityscapes' 1024x512 inputs shrunk to 256x128 rather than a 12,000-pixel-wide strip.
PANEL_TILE_WIDTH = 256


def val_panel(
    models: dict[str, nn.Module],
    dataset: SegmentationSet,
    classes: ClassSet,
    index: int,
    compute: Compute = CPU,
) -> np.ndarray:
    """Drawn at the network's input size (the label, if larger, is shrunk to it), each
    tile then resized to at most `PANEL_TILE_WIDTH` pixels wide."""
    sample = dataset[(index, False)]
    image = sample["image"]
    size = tuple(image.shape[-2:])
    label = resize_label(sample["label"].numpy().astype(np.uint8), (size[1], size[0]))
    columns = [
        ("image", (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)),
        ("truth", colorize_channels(label, classes)),
    ]
    for name, model in models.items():
        pred, entropy = predict_labels(model, image, size, compute)
        columns.append((name, colorize_channels(pred, classes)))
    last = list(models)[-1]
    columns.append((f"entropy ({last})", entropy_rgb(entropy)))
    return panel(columns, scale=min(2.0, PANEL_TILE_WIDTH / size[1]))
