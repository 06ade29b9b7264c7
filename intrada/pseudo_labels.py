"""Pseudo-labels: the inter model's prediction on each easy image becomes its label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from intrada.artifacts import LabelShards, owned_positions
from intrada.classes import IGNORE_INDEX, ClassSet
from intrada.compute import CPU, Compute, sum_across
from intrada.data import SegmentationSet, in_batches, loader
from intrada.inference import predict_probs, to_train_ids
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
    labels: LabelShards,
    compute: Compute = CPU,
) -> pd.DataFrame | None:
    """Label every image of `dataset` (the easy split, indexed by `table`) with `model`,
    write the labels (train ids, 255 = ignore) through `labels` (PNGs in shards) and
    return the index table of a labelled set: `image_id`, `image_path`, `label_path`
    (the shard file), `label_member` (the PNG in it) and `labelled_fraction` (the share
    of pixels at or above the confidence threshold).

    With several processes each labels the images of its shards (as `score_images`)
    and the main process returns the table, the others None.
    """
    fractions = np.zeros(len(dataset), np.float64)
    mine = owned_positions(len(dataset), labels.shard_size, compute.rank, compute.world)
    batches = in_batches(mine, batch_size)
    data = loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda)
    try:
        for batch in progress(data, len(batches), "pseudo-labels", compute):
            images = batch["image"]
            prob = predict_probs(model, images, tuple(images.shape[-2:]), compute)
            batch_labels = label_from_probs(prob, classes, threshold)
            for label, index in zip(batch_labels, batch["index"].tolist(), strict=True):
                labels.add(index, dataset.ids[index], label)
                fractions[index] = float((label != IGNORE_INDEX).mean())
    finally:
        labels.close()
    if compute.distributed:
        # Each process filled its images' fractions; the others are zero.
        fractions = sum_across(fractions, compute)
        if not compute.main:
            return None
    ids = list(dataset.ids)
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": list(table["image_path"]),
            **labels.columns(ids),
            "labelled_fraction": fractions,
        }
    )
