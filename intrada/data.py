"""Datasets read from index tables, and the order in which training visits them.

Index tables (Parquet) have one row per image: `image_id`, `image_path` and, when
labelled, `label_path` and `label_encoding` (how the label file stores classes; train ids
when the column is absent), and `label_member` when the labels are stored in shards
(`intrada.artifacts`: `label_path` is then the shard file). Paths are relative to the
project root (the folder holding dvc.yaml) or absolute; readers resolve them against a
`root` they are given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from intrada.artifacts import read_member
from intrada.classes import TRAIN_ID, ClassSet
from intrada.errors import IntradaError
from intrada.io import read_label, read_parquet, read_rgb

# A set is kept decoded in memory (`SegmentationSet(keep_decoded=True)`) only when all of
# it fits in this many bytes: the embedded benchmark does, real datasets do not.
KEEP_DECODED_BYTES = 512 * 2**20


def load_index(path: str | Path, labelled: bool) -> pd.DataFrame:
    """An index table, checked for the columns a labelled/unlabelled set needs."""
    columns = ("image_id", "image_path") + (("label_path",) if labelled else ())
    df = read_parquet(path, columns)
    if df.empty:
        raise IntradaError(f"{path}: the index is empty; expected at least one image")
    if df["image_id"].duplicated().any():
        dup = df["image_id"][df["image_id"].duplicated()].iloc[0]
        raise IntradaError(f"{path}: image_id {dup!r} appears twice; expected unique ids")
    return df.reset_index(drop=True)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 resized to size = (width, height), bicubic as the reference code."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.array(Image.fromarray(image).resize(tuple(size), Image.BICUBIC))


def resize_label(label: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W) uint8 label resized to size = (width, height), nearest neighbour."""
    if size is None or (label.shape[1], label.shape[0]) == tuple(size):
        return label
    return np.array(Image.fromarray(label).resize(tuple(size), Image.NEAREST))


class SegmentationSet(Dataset):
    """Images (float [0, 1], CHW) and, when labelled, labels as class channels (255 = ignore).

    With `size` = (width, height) images are resized to it, and labels too unless
    `resize_labels` is false: evaluation keeps labels at their own resolution and
    upsamples predictions to it.

    Items are addressed by `(index, flip)` so that the sampler, not the dataset, owns
    every random choice: the visiting order is then a pure function of the seed.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        classes: ClassSet,
        root: Path,
        labelled: bool,
        size: tuple[int, int] | None = None,
        resize_labels: bool = True,
        keep_decoded: bool = False,
    ):
        self.ids = table["image_id"].tolist()
        self.image_paths = [root / p for p in table["image_path"]]
        self.label_paths = [root / p for p in table["label_path"]] if labelled else None
        # Labels stored in shards (pseudo-labels): `label_path` is the shard file and
        # `label_member` the PNG in it. Each process keeps the shards it reads open.
        members = table["label_member"] if labelled and "label_member" in table else None
        self.label_members = None if members is None else members.tolist()
        self.encodings = list(table.get("label_encoding", [TRAIN_ID] * len(table)))
        self.size = tuple(size) if size is not None else None
        self.resize_labels = resize_labels
        self.classes = classes
        self.num_classes = len(classes)
        self.lut = torch.from_numpy(classes.train_id_to_channel())
        # index -> (image, label) as decoded and resized; None: read from disk each time.
        self.decoded: dict[int, tuple] | None = {} if keep_decoded else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, bool]) -> dict[str, torch.Tensor]:
        index, flip = item
        image, label = self.read(index)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        sample = {"image": image.float().div_(255.0), "index": torch.tensor(index)}
        if label is not None:
            label = torch.from_numpy(np.ascontiguousarray(label))
            sample["label"] = self.lut[label.long()].long()
        if flip:
            sample = {k: v.flip(-1) if v.ndim >= 2 else v for k, v in sample.items()}
        return sample

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H, W, 3) uint8 and label (H, W) train ids (None if unlabelled), decoded
        and resized; with `keep_decoded`, kept in memory after the first read when the
        whole set fits in `KEEP_DECODED_BYTES` (the embedded benchmark's 6,000 source
        images: 200 MB, read 4 times over in source-only training; real datasets are
        read from disk each time). Never modified by the caller: samples are copies."""
        if self.decoded is not None and index in self.decoded:
            return self.decoded[index]
        image = resize_image(read_rgb(self.image_paths[index]), self.size)
        label = None
        if self.label_paths is not None:
            path, data = self.label_paths[index], None
            if self.label_members is not None and self.label_members[index]:
                data = read_member(path, self.label_members[index])
                path = f"{path}:{self.label_members[index]}"
            label = read_label(path, self.encodings[index], data, self.classes)
            if self.resize_labels:
                label = resize_label(label, self.size)
            if self.size is None and label.shape != image.shape[:2]:
                raise IntradaError(
                    f"{self.label_paths[index]}: label size {tuple(label.shape)} differs from "
                    f"its image {tuple(image.shape[:2])}; expected the same height and width"
                )
        if self.decoded is not None:
            if not self.decoded:
                each = image.nbytes + (label.nbytes if label is not None else 0)
                if each * len(self) > KEEP_DECODED_BYTES:
                    self.decoded = None  # too large: every read goes to disk
                    return image, label
            self.decoded[index] = (image, label)
        return image, label


class EndlessBatches:
    """Batches of `(index, flip)` drawn without replacement, epoch after epoch.

    Epoch e is a permutation seeded by (seed, *stream, e); batches run across epoch
    boundaries. Batch k depends only on k, so training can start (or resume) anywhere.

    With `world` processes, step k draws one global batch of `batch_size * world` items
    and process `rank` takes its `batch_size` consecutive ones: together the processes
    see what one process with `batch_size * world` would.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        stream: tuple[int, ...],
        hflip: bool,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.size, self.batch_size = size, batch_size
        self.seed, self.stream, self.hflip = seed, stream, hflip
        self.start, self.stop = start, stop
        self.rank, self.world = rank, world
        self._cached: tuple[int, tuple[np.ndarray, np.ndarray]] = (-1, (np.empty(0), np.empty(0)))

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, *self.stream, epoch])
            order = rng.permutation(self.size)
            flips = rng.random(self.size) < 0.5 if self.hflip else np.zeros(self.size, bool)
            self._cached = (epoch, (order, flips))
        return self._cached[1]

    def batch(self, k: int) -> list[tuple[int, bool]]:
        items = []
        first = (k * self.world + self.rank) * self.batch_size
        for pos in range(first, first + self.batch_size):
            order, flips = self._epoch(pos // self.size)
            offset = pos % self.size
            items.append((int(order[offset]), bool(flips[offset])))
        return items

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        k = self.start
        while self.stop is None or k < self.stop:
            yield self.batch(k)
            k += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless sampler has no length")
        return self.stop - self.start


def in_order(size: int, batch_size: int) -> list[list[tuple[int, bool]]]:
    """Batches of `(index, no flip)` covering a set once, in table order."""
    return in_batches(range(size), batch_size)


def in_batches(indices: Sequence[int], batch_size: int) -> list[list[tuple[int, bool]]]:
    """Batches of `(index, no flip)` of the given indices, in their order (one process's
    share of a set)."""
    return [
        [(i, False) for i in indices[s : s + batch_size]]
        for s in range(0, len(indices), batch_size)
    ]


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Samples stacked into a batch, as PyTorch's default; labels kept at their own
    sizes (evaluation) that differ within a batch (a folder of the user's images) stay a
    list of (H, W) tensors."""
    labels = [s["label"] for s in samples if "label" in s]
    if len({tuple(label.shape) for label in labels}) <= 1:
        return default_collate(samples)
    batch = default_collate([{k: v for k, v in s.items() if k != "label"} for s in samples])
    batch["label"] = labels
    return batch


def loader(
    dataset: SegmentationSet, batches, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over explicit batches of `(index, flip)` items. Workers only read
    and decode files: the batches, hence the results, do not depend on their number."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate,
    )
