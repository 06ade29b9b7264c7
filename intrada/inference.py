"""Running a trained model: softmax at a chosen resolution, and entropy scoring of a set."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from intrada.artifacts import owned_positions
from intrada.classes import ClassSet
from intrada.compute import CPU, Compute
from intrada.data import SegmentationSet, in_batches, loader
from intrada.entropy import entropy_map, rare_class_normalised
from intrada.models import upsample
from intrada.progress import progress


class MapWriter(Protocol):
    """Where per-image maps go (`intrada.artifacts.EntropyShards`, `LabelShards`)."""

    shard_size: int

    def add(self, position: int, image_id: str, array: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def columns(self, ids: list[str]) -> dict[str, list[str]]: ...


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, size: tuple[int, int], compute: Compute = CPU
) -> torch.Tensor:
    """(N, 3, H, W) images -> (N, C, *size) fp32 softmax of the main head, on the CPU.

    The model must already be on `compute.device`; the forward runs under its autocast,
    softmax (and everything computed from it) in fp32. Scores are upsampled the way the
    model's architecture says (`model.align_corners`)."""
    model.eval()
    with compute.autocast():
        _, main = model(compute.images(images))
    return F.softmax(upsample(main.float(), size, model.align_corners), dim=1).cpu()


def top_class(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) channel of the highest probability. `max` over the
    channel axis is several times faster than `argmax` on the CPU (PyTorch 2.14)."""
    return prob.max(dim=1).indices


def to_train_ids(channels: torch.Tensor, classes: ClassSet) -> np.ndarray:
    """Class channels (any integer array) -> uint8 train ids."""
    return classes.channel_to_train_id()[channels.cpu().numpy().astype(np.uint8)]


def score_images(
    model: nn.Module,
    dataset: SegmentationSet,
    table: pd.DataFrame,
    classes: ClassSet,
    batch_size: int,
    maps: MapWriter,
    predictions: MapWriter,
    rare_classes: tuple[str, ...] = (),
    normalize: bool = False,
    compute: Compute = CPU,
) -> pd.DataFrame | None:
    """Entropy map and predicted train ids of every image, written through `maps` and
    `predictions` (`intrada.artifacts.EntropyShards` / `LabelShards`: shards of N images
    in temporary folders), and a scores table.

    With several processes each scores the images of its shards (shard k goes to
    process k % world, so the files do not depend on the process count) and the main
    process gathers the numbers: it returns the table, the others None. The table is the
    same as one process's. It has one row per image: `image_id`, `image_path`, `entropy`
    (mean of the normalised entropy map, computed in fp32 at input resolution before the
    map is quantised for storage), `rare_present` (how many of `rare_classes` the
    prediction shows), `score` (the value ranked on: `entropy`, or with `normalize` the
    rare-class normalised entropy), and where the map and the prediction are stored
    (`map_path`, `map_member`, `prediction_path`, `prediction_member`).
    """
    entropies = np.empty(len(dataset), np.float64)
    rare_present = np.zeros(len(dataset), np.int64)
    rare_channels = [classes.names.index(name) for name in rare_classes]
    if maps.shard_size != predictions.shard_size:
        raise ValueError("maps and predictions must be sharded alike")
    mine = owned_positions(len(dataset), maps.shard_size, compute.rank, compute.world)
    batches = in_batches(mine, batch_size)
    data = loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda)

    def write_batch(indices: list[int], ent: np.ndarray, labels: np.ndarray) -> None:
        for index, entropy, label in zip(indices, ent, labels, strict=True):
            maps.add(index, dataset.ids[index], entropy)
            predictions.add(index, dataset.ids[index], label)

    # Maps are encoded and written by a thread while the next batch runs through the
    # network (zlib, CRCs and file writes release the GIL); one thread keeps the order,
    # so the files do not depend on it.
    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            pending = []
            for batch in progress(data, len(batches), "score", compute):
                images = batch["image"]
                prob = predict_probs(model, images, tuple(images.shape[-2:]), compute)
                ent = entropy_map(prob)
                channels = top_class(prob)
                # How many rare classes image n's prediction shows anywhere: one
                # comparison per rare class, half the time of one broadcast over all K.
                flat = channels.flatten(1)
                shown = torch.zeros(len(flat), dtype=torch.long)
                for channel in rare_channels:
                    shown += (flat == channel).any(dim=1)
                indices = batch["index"].tolist()
                entropies[indices] = ent.double().mean(dim=(1, 2)).numpy()
                rare_present[indices] = shown.numpy()
                pending.append(
                    writer.submit(
                        write_batch, indices, ent.numpy(), to_train_ids(channels, classes)
                    )
                )
                # Finished writes are dropped so that their maps are freed.
                while pending and pending[0].done():
                    pending.pop(0).result()  # re-raises a failed write
            for done in pending:
                done.result()
    finally:
        try:
            maps.close()
        finally:
            predictions.close()
    if compute.distributed:
        # Each process filled its images' entries; the others are still empty / zero.
        owned = np.zeros(len(dataset), dtype=bool)
        owned[mine] = True
        gathered = [None] * compute.world
        dist.all_gather_object(gathered, (owned, entropies, rare_present))
        if not compute.main:
            return None
        for owned, ent, rare in gathered:
            entropies[owned], rare_present[owned] = ent[owned], rare[owned]
    scores = entropies
    if normalize:
        scores = np.array(
            [
                rare_class_normalised(e, int(r), len(rare_classes))
                for e, r in zip(entropies, rare_present, strict=True)
            ]
        )
    ids = table["image_id"].tolist()
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": table["image_path"],
            "entropy": entropies,
            "score": scores,
            "rare_present": rare_present,
            **maps.columns(ids),
            **predictions.columns(ids),
        }
    )
