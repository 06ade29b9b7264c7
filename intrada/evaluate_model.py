"""One model file evaluated on a labelled target set, with nothing trained: a released
AdvEnt / IntraDA DeepLab-v2 state dict or a model file this pipeline wrote.

The same computation as the evaluate stage (`validation.evaluate_confusion`: predictions
upsampled to each label's resolution, IoU from the confusion matrix over every labelled
pixel), so its mIoU is comparable with `metrics/eval.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from intrada.classes import ClassSet
from intrada.compute import CPU, Compute
from intrada.config import ModelParams
from intrada.data import SegmentationSet
from intrada.evaluation import confusion_table, iou_report
from intrada.io import atomic_path, write_json
from intrada.runs import start_file_model
from intrada.validation import evaluate_confusion


def evaluate_model_file(
    path: Path,
    model_params: ModelParams,
    classes: ClassSet,
    dataset: SegmentationSet,
    batch_size: int,
    subsets: dict[str, tuple[str, ...]] | None = None,
    compute: Compute = CPU,
) -> tuple[dict[str, Any], np.ndarray]:
    """(report, confusion matrix) of the model in `path` on `dataset`.

    A model file of this pipeline brings its own architecture; any other file is read as
    a released DeepLab-v2 state dict built from `model_params` (name deeplabv2,
    weights_format deeplab, align_corners). The report is `evaluation.iou_report`'s,
    after `model` (the file's path, sha256 and stage, `released` for a state dict) and
    `images` (how many were evaluated).
    """
    model, origin = start_file_model(model_params, classes, Path(path), match_params=False)
    model = compute.module(model)
    cm = evaluate_confusion(model, dataset, batch_size, compute)
    return {"model": origin, "images": len(dataset), **iou_report(cm, classes, subsets)}, cm


def write_evaluation(out: Path, report: dict[str, Any], cm: np.ndarray, classes: ClassSet) -> None:
    """`out/metrics.json` (the report) and `out/confusion.csv` (rows truth, columns
    prediction), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "confusion.csv") as tmp:
        confusion_table(cm, classes).to_csv(tmp)
    write_json(out / "metrics.json", report)
