"""Pseudo-labels: the inter model's prediction on each easy image becomes its label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from intrada.classes import IGNORE_INDEX, ClassSet
from intrada.compute import CPU, Compute
from intrada.data import SegmentationSet, in_order, loader
from intrada.inference import predict_probs, to_train_ids
from intrada.io import write_label_png
from intrada.progress import progress


def label_from_probs(prob: torch.Tensor, classes: ClassSet, threshold: float) -> np.ndarray:
    """(N, C, H, W) softmax -> (N, H, W) uint8 train ids of the argmax; pixels whose top
    probability is below `threshold` become 255 (ignored by the loss)."""
    confidence, channels = prob.max(dim=1)
    labels = to_train_ids(channels, classes)
    labels[(confidence < threshold).numpy()] = IGNORE_INDEX
    return labels


def write_pseudo_labels(
    model: nn.Module,
    dataset: SegmentationSet,
    table: pd.DataFrame,
    classes: ClassSet,
    batch_size: int,
    threshold: float,
    labels_dir: Path,
    labels_root: Path,
    compute: Compute = CPU,
) -> pd.DataFrame:
    """Label every image of `dataset` (the easy split, indexed by `table`) with `model`,
    write the label PNGs (train ids, 255 = ignore) into `labels_dir`, recorded under
    `labels_root`, and return the index table of a labelled set: `image_id`,
    `image_path`, `label_path` and `labelled_fraction` (the share of pixels at or above
    the confidence threshold).
    """
    labels_dir.mkdir(parents=True, exist_ok=True)
    fractions = np.empty(len(dataset), np.float64)
    batches = in_order(len(dataset), batch_size)
    data = loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda)
    for batch in progress(data, len(batches), "pseudo-labels", compute):
        images = batch["image"]
        labels = label_from_probs(
            predict_probs(model, images, tuple(images.shape[-2:]), compute), classes, threshold
        )
        for j, index in enumerate(batch["index"].tolist()):
            write_label_png(labels_dir / f"{dataset.ids[index]}.png", labels[j])
            fractions[index] = float((labels[j] != IGNORE_INDEX).mean())
    ids = list(dataset.ids)
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": list(table["image_path"]),
            "label_path": [(labels_root / f"{i}.png").as_posix() for i in ids],
            "labelled_fraction": fractions,
        }
    )
