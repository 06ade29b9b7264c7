"""Class tables: Cityscapes train ids, names and palette, and the class set of each dataset.

Label files on disk always hold Cityscapes *train ids* (255 = ignore), whatever the
dataset, so label PNGs are interchangeable with the real benchmarks. A network predicts
one channel per class of its dataset; `ClassSet` maps between train ids and channels.
The Cityscapes table comes from torchvision rather than being written out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

IGNORE_INDEX = 255

# The embedded synthetic benchmark uses these eight Cityscapes classes.
SYNTHETIC_CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "pole",
    "vegetation",
    "sky",
    "person",
    "car",
)


@cache
def cityscapes_train_classes() -> tuple[tuple[int, str, tuple[int, int, int]], ...]:
    """(train id, name, colour) for the 19 evaluated Cityscapes classes, by train id."""
    from torchvision.datasets import Cityscapes  # heavy import: only where needed

    rows = {
        c.train_id: (c.train_id, c.name, tuple(c.color))
        for c in Cityscapes.classes
        if 0 <= c.train_id < IGNORE_INDEX
    }
    return tuple(rows[i] for i in sorted(rows))


@dataclass(frozen=True)
class ClassSet:
    """The classes a model predicts: channel k is train id `train_ids[k]`."""

    names: tuple[str, ...]
    train_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)

    def train_id_to_channel(self) -> np.ndarray:
        """A 256-entry lookup table: train id -> channel, anything else -> 255."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[list(self.train_ids)] = np.arange(len(self.train_ids), dtype=np.uint8)
        return lut

    def channel_to_train_id(self) -> np.ndarray:
        """A 256-entry lookup table: channel -> train id, 255 stays 255."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(self.train_ids)] = self.train_ids
        return lut

    def palette(self) -> np.ndarray:
        """A (256, 3) uint8 palette indexed by train id; unknown ids are black."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        for tid, color in zip(self.train_ids, self.colors, strict=True):
            pal[tid] = color
        return pal


def class_set(names: tuple[str, ...] | list[str]) -> ClassSet:
    """The ClassSet for Cityscapes class names, in the order given."""
    table = {name: (tid, color) for tid, name, color in cityscapes_train_classes()}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"not Cityscapes classes: {unknown}; known: {sorted(table)}")
    return ClassSet(
        names=tuple(names),
        train_ids=tuple(table[n][0] for n in names),
        colors=tuple(table[n][1] for n in names),
    )


def dataset_classes(dataset: str) -> ClassSet:
    """The class set a dataset is trained and evaluated on."""
    if dataset == "synthetic":
        return class_set(SYNTHETIC_CLASS_NAMES)
    raise ValueError(f"unknown dataset {dataset!r}")
