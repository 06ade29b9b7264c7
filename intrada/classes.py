"""Class tables: Cityscapes ids, train ids, names and palette, and the class set of each
dataset.

Inside the pipeline every label is a Cityscapes *train id* (255 = ignore). Raw datasets
store other encodings (`LABEL_ENCODINGS`): GTA5 and Cityscapes store Cityscapes label
ids, SYNTHIA its own class ids; `label_lut` maps each to train ids. A network predicts
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


# Label encodings on disk: what a label PNG's pixel values mean.
TRAIN_ID = "train_id"  # Cityscapes train ids (8-bit): pseudo-labels, predictions
CITYSCAPES_ID = "cityscapes_id"  # Cityscapes label ids (8-bit): Cityscapes gtFine, GTA5
SYNTHIA_ID = "synthia_id"  # SYNTHIA's class ids in the first channel of a 16-bit PNG
LABEL_ENCODINGS = (TRAIN_ID, CITYSCAPES_ID, SYNTHIA_ID)

# SYNTHIA-RAND-CITYSCAPES class ids (from the dataset's README) of the 16 classes it shares
# with Cityscapes; every other id (void, parking slot, road work, lane marking) is ignored.
SYNTHIA_ID_TO_CLASS = {
    1: "sky",
    2: "building",
    3: "road",
    4: "sidewalk",
    5: "fence",
    6: "vegetation",
    7: "pole",
    8: "car",
    9: "traffic sign",
    10: "person",  # SYNTHIA's "pedestrian"
    11: "bicycle",
    12: "motorcycle",
    15: "traffic light",
    17: "rider",
    19: "bus",
    21: "wall",
}
# SYNTHIA-RAND-CITYSCAPES ids run from 0 (void) to 22 (lane marking).
SYNTHIA_MAX_ID = 22
# SYNTHIA -> Cityscapes is also reported on 13 classes, without wall, fence and pole
# (the paper's mIoU*).
SYNTHIA_13_EXCLUDED = ("wall", "fence", "pole")


@cache
def cityscapes_label_ids() -> tuple[tuple[int, int, str], ...]:
    """(label id, train id, name) of every Cityscapes class with a non-negative id, from
    torchvision's table; classes that are not evaluated have train id 255."""
    from torchvision.datasets import Cityscapes  # heavy import: only where needed

    return tuple(
        (c.id, c.train_id if 0 <= c.train_id < IGNORE_INDEX else IGNORE_INDEX, c.name)
        for c in Cityscapes.classes
        if c.id >= 0
    )


def label_lut(encoding: str) -> np.ndarray:
    """A lookup table from an encoding's pixel values to train ids (uint8, 255 = ignore):
    256 entries for 8-bit encodings, 65536 for SYNTHIA's 16-bit ids."""
    if encoding == TRAIN_ID:
        return np.arange(256, dtype=np.uint8)  # 255 stays 255; unknown ids are ignored later
    if encoding == CITYSCAPES_ID:
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for label_id, train_id, _ in cityscapes_label_ids():
            lut[label_id] = train_id
        return lut
    if encoding == SYNTHIA_ID:
        lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
        train_id = {name: tid for tid, name, _ in cityscapes_train_classes()}
        for synthia_id, name in SYNTHIA_ID_TO_CLASS.items():
            lut[synthia_id] = train_id[name]
        return lut
    raise ValueError(f"unknown label encoding {encoding!r}; expected one of {LABEL_ENCODINGS}")


def label_range(encoding: str) -> int:
    """The highest value a label of this encoding may hold (train ids also 255)."""
    if encoding == TRAIN_ID:
        return len(cityscapes_train_classes()) - 1
    if encoding == CITYSCAPES_ID:
        return max(label_id for label_id, _, _ in cityscapes_label_ids())
    if encoding == SYNTHIA_ID:
        return SYNTHIA_MAX_ID
    raise ValueError(f"unknown label encoding {encoding!r}; expected one of {LABEL_ENCODINGS}")


def train_id_to_label_id() -> np.ndarray:
    """A 256-entry table: train id -> Cityscapes label id (255 -> 0, "unlabeled")."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id, _ in cityscapes_label_ids():
        if train_id != IGNORE_INDEX:
            lut[train_id] = label_id
    return lut


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


# Source datasets: each is adapted to Cityscapes (or, for the synthetic benchmark, to its
# own Cityscapes-layout target).
DATASETS = ("synthetic", "gta5", "synthia")


def dataset_classes(dataset: str) -> ClassSet:
    """The class set a source dataset is trained and evaluated on: the synthetic
    benchmark's 8 classes, GTA5 -> Cityscapes' 19, SYNTHIA -> Cityscapes' 16."""
    if dataset == "synthetic":
        return class_set(SYNTHETIC_CLASS_NAMES)
    if dataset == "gta5":
        return class_set([name for _, name, _ in cityscapes_train_classes()])
    if dataset == "synthia":
        shared = set(SYNTHIA_ID_TO_CLASS.values())
        return class_set([name for _, name, _ in cityscapes_train_classes() if name in shared])
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def evaluation_subsets(dataset: str) -> dict[str, tuple[str, ...]]:
    """Extra mIoUs a dataset reports, each over a subset of its classes: {key: names}."""
    if dataset == "synthia":
        names = dataset_classes("synthia").names
        return {"mIoU_13": tuple(n for n in names if n not in SYNTHIA_13_EXCLUDED)}
    return {}
