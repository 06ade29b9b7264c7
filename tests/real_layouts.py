"""Tiny dataset trees in the real GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes layouts.

Labels hold known ids, including ids that have no train id and must become 255:
Cityscapes label ids 0 (unlabeled), 9 (parking) and 30 (trailer); SYNTHIA ids 0
(void), 16 (terrain: not one of SYNTHIA's 16 classes) and 22 (lane marking).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Label id -> expected train id (Cityscapes' table): road 7 -> 0, building 11 -> 2,
# car 26 -> 13, bicycle 33 -> 18, and three ids that must be ignored.
CITYSCAPES_IDS = {7: 0, 11: 2, 26: 13, 33: 18, 0: 255, 9: 255, 30: 255}
# SYNTHIA id -> expected train id: road 3 -> 0, sky 1 -> 10, pedestrian 10 -> 11,
# wall 21 -> 3, and three ids that must be ignored.
SYNTHIA_IDS = {3: 0, 1: 10, 10: 11, 21: 3, 0: 255, 16: 255, 22: 255}


def cityscapes_target(root: str | Path) -> dict[str, str]:
    """The data params of a Cityscapes-layout target at `root` (its usual subfolders)."""
    root = str(root)
    return {
        "target_layout": "cityscapes",
        "target_root": root,
        "target_train": f"{root}/leftImg8bit/train",
        "target_train_labels": f"{root}/gtFine/train",
        "target_val_images": f"{root}/leftImg8bit/val",
        "target_val_labels": f"{root}/gtFine/val",
    }


def id_pattern(ids: list[int], width: int, height: int, shift: int = 0) -> np.ndarray:
    """Vertical stripes cycling through `ids` (every id appears when width >= len(ids))."""
    columns = np.array(ids)[(np.arange(width) + shift) % len(ids)]
    return np.repeat(columns[None, :], height, axis=0)


def rgb(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_synthia_label(path: Path, ids: np.ndarray) -> Path:
    """A 16-bit 3-channel PNG: class ids in the first channel, instance ids after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    instance = np.full_like(ids, 1000, dtype=np.uint16)
    rgb16 = np.stack([ids.astype(np.uint16), instance, np.zeros_like(instance)], axis=-1)
    cv2.imwrite(str(path), rgb16[:, :, ::-1])  # OpenCV writes BGR order
    return path


def write_gta5(root: Path, count: int = 3, size: tuple[int, int] = (96, 48)) -> Path:
    ids = list(CITYSCAPES_IDS)
    for i in range(count):
        name = f"{i + 1:05d}.png"
        save(root / "images" / name, rgb(*size, seed=i))
        save(root / "labels" / name, id_pattern(ids, *size, shift=i).astype(np.uint8))
    return root


def write_synthia(root: Path, count: int = 2, size: tuple[int, int] = (96, 48)) -> Path:
    ids = list(SYNTHIA_IDS)
    for i in range(count):
        name = f"{i:07d}.png"
        save(root / "RGB" / name, rgb(*size, seed=10 + i))
        write_synthia_label(root / "GT" / "LABELS" / name, id_pattern(ids, *size, shift=i))
    return root


def write_cityscapes(
    root: Path,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (128, 64),
) -> Path:
    """`counts` images per split, spread over two cities per split."""
    counts = counts or {"train": 4, "val": 2}
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
    ids = list(CITYSCAPES_IDS)
    for split, count in counts.items():
        for i in range(count):
            city = cities[split][i % 2]
            stem = f"{city}_{i:06d}_000019"
            save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                rgb(*size, seed=100 + i),
            )
            save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                id_pattern(ids, *size, shift=i).astype(np.uint8),
            )
    return root


def write_synscapes(root: Path, count: int = 3, size: tuple[int, int] = (96, 48)) -> Path:
    """Synscapes: img/rgb/<n>.png, img/class/<n>.png (Cityscapes label ids) and
    meta/<n>.json, n from 1 (not zero-padded, as released)."""
    ids = list(CITYSCAPES_IDS)
    for n in range(1, count + 1):
        save(root / "img" / "rgb" / f"{n}.png", rgb(*size, seed=200 + n))
        save(root / "img" / "class" / f"{n}.png", id_pattern(ids, *size, shift=n).astype(np.uint8))
        meta = root / "meta" / f"{n}.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"camera": {"intrinsic": {"resx": size[0], "resy": size[1]}}}))
    return root


# The user's own target labels of the folder fixtures: value -> class of OWN_TABLE (0 and
# 255 ignored).
OWN_TARGET_VALUES = {1: "road", 2: "building", 3: "vehicle", 0: None, 255: None}
# A class table of three classes over GTA5's Cityscapes label ids and the user's values.
OWN_TABLE = """\
# Three classes: GTA5's road, building, and its car and bicycle merged into vehicle.
classes:
  - name: road
    color: [128, 64, 128]
    gta5: [7]
    target: [1]
  - name: building
    color: "#464646"
    gta5: [11]
    target: [2]
  - name: vehicle
    color: [0, 0, 142]
    gta5: [26, 33]
    target: [3]
ignore:
  gta5: ["0-6", "8-10", "12-25", "27-32"]
  target: [0, 255]
subsets:
  mIoU_stuff: [road, building]
"""


def write_folder_target(
    root: Path,
    names: list[str],
    size: tuple[int, int] = (64, 32),
    labels: bool = False,
) -> tuple[Path, Path | None]:
    """A folder of images at `root/images` named by `names` (relative paths with their
    suffixes: png, jpg, ...) and, with `labels`, their label PNGs of the user's values at
    `root/labels/<same place and name>.png`. Returns the two folders."""
    values = list(OWN_TARGET_VALUES)
    for i, name in enumerate(names):
        image = root / "images" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(*size, seed=300 + i)).save(image)
        if labels:
            label = (root / "labels" / name).with_suffix(".png")
            save(label, id_pattern(values, *size, shift=i).astype(np.uint8))
    return root / "images", (root / "labels" if labels else None)
