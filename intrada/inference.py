"""Running a trained model: softmax at a chosen resolution, and entropy scoring of a set."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from intrada.classes import ClassSet
from intrada.data import SegmentationSet, in_order, loader
from intrada.entropy import entropy_map, rare_class_normalised
from intrada.io import write_label_png
from intrada.models import upsample


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) images -> (N, C, *size) softmax of the main head."""
    model.eval()
    _, main = model(images)
    return F.softmax(upsample(main, size), dim=1)


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
) -> pd.DataFrame:
    """Entropy map (float16 .npy) and predicted label PNG per image, and a scores table.

    Maps and predictions are written to `maps_dir` / `preds_dir` (temporary folders)
    and recorded under `maps_root` / `preds_root`. The table has one row per image:
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
    batches = in_order(len(dataset), batch_size)
    for batch in tqdm(
        loader(dataset, batches), total=len(batches), desc="score", file=sys.stderr, disable=None
    ):
        images = batch["image"]
        prob = predict_probs(model, images, tuple(images.shape[-2:]))
        ent = entropy_map(prob)
        channels = prob.argmax(dim=1)
        labels = to_train_ids(channels, classes)
        # (N, K): does image n's prediction show rare class k anywhere?
        shown = (channels.flatten(1)[:, :, None] == rare_channels).any(dim=1)
        for j, index in enumerate(batch["index"].tolist()):
            image_id = dataset.ids[index]
            np.save(maps_dir / f"{image_id}.npy", ent[j].numpy().astype(np.float16))
            write_label_png(preds_dir / f"{image_id}.png", labels[j])
            entropies[index] = float(ent[j].double().mean())
            rare_present[index] = int(shown[j].sum())
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
