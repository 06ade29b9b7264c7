"""Running a trained model: softmax at a chosen resolution, and entropy scoring of a set."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from intrada.classes import ClassSet
from intrada.compute import CPU, Compute
from intrada.data import SegmentationSet, loader
from intrada.entropy import entropy_map, rare_class_normalised
from intrada.io import write_label_png
from intrada.models import upsample
from intrada.progress import progress


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
    maps_dir: Path,
    preds_dir: Path,
    maps_root: Path,
    preds_root: Path,
    rare_classes: tuple[str, ...] = (),
    normalize: bool = False,
    compute: Compute = CPU,
) -> pd.DataFrame | None:
    """Entropy map (float16 .npy) and predicted label PNG per image, and a scores table.

    Maps and predictions are written to `maps_dir` / `preds_dir` (temporary folders)
    and recorded under `maps_root` / `preds_root`. With several processes each scores
    every `world`-th image (its shard) into the same folders, and the main process
    gathers the numbers: it returns the table, the others None. The table is the same
    as one process's. It has one row per image:
    `image_id`, `image_path`, `entropy` (mean of the normalised entropy map),
    `rare_present` (how many of `rare_classes` the prediction shows), `score` (the value
    ranked on: `entropy`, or with `normalize` the rare-class normalised entropy) and the
    two paths.
    """
    maps_dir.mkdir(parents=True, exist_ok=True)
    preds_dir.mkdir(parents=True, exist_ok=True)
    entropies = np.empty(len(dataset), np.float64)
    rare_present = np.zeros(len(dataset), np.int64)
    rare_channels = torch.tensor(
        [classes.names.index(name) for name in rare_classes], dtype=torch.long
    )
    shard = list(range(compute.rank, len(dataset), compute.world))
    batches = [
        [(i, False) for i in shard[s : s + batch_size]] for s in range(0, len(shard), batch_size)
    ]
    data = loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda)

    def write_batch(ids: list[str], maps: np.ndarray, labels: np.ndarray) -> None:
        for image_id, entropy, label in zip(ids, maps, labels, strict=True):
            np.save(maps_dir / f"{image_id}.npy", entropy)
            write_label_png(preds_dir / f"{image_id}.png", label)

    # Files are encoded and written by a thread while the next batch runs through the
    # network (zlib and file writes release the GIL); the contents do not depend on it.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for batch in progress(data, len(batches), "score", compute):
            images = batch["image"]
            prob = predict_probs(model, images, tuple(images.shape[-2:]), compute)
            ent = entropy_map(prob)
            channels = top_class(prob)
            # (N, K): does image n's prediction show rare class k anywhere?
            shown = (channels.flatten(1)[:, :, None] == rare_channels).any(dim=1)
            indices = batch["index"].tolist()
            entropies[indices] = ent.double().mean(dim=(1, 2)).numpy()
            rare_present[indices] = shown.sum(dim=1).numpy()
            pending.append(
                writer.submit(
                    write_batch,
                    [dataset.ids[i] for i in indices],
                    ent.numpy().astype(np.float16),
                    to_train_ids(channels, classes),
                )
            )
        for done in pending:
            done.result()  # re-raises a failed write
    if compute.distributed:
        # Each process filled its shard's entries; the others are still empty / zero.
        mine = torch.zeros(len(dataset), dtype=torch.bool)
        mine[shard] = True
        gathered = [None] * compute.world
        dist.all_gather_object(gathered, (mine.numpy(), entropies, rare_present))
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
    ids = table["image_id"]
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": table["image_path"],
            "entropy": entropies,
            "score": scores,
            "rare_present": rare_present,
            "map_path": [(maps_root / f"{i}.npy").as_posix() for i in ids],
            "prediction_path": [(preds_root / f"{i}.png").as_posix() for i in ids],
        }
    )
