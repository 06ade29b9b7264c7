"""Raw dataset trees, read in place and indexed into the pipeline's tables.

Layouts (paths relative to the dataset root named in params.yaml):

- GTA5: `images/<name>.png` with `labels/<name>.png` (Cityscapes label ids, 8-bit);
- SYNTHIA-RAND-CITYSCAPES: `RGB/<name>.png` with `GT/LABELS/<name>.png` (16-bit, SYNTHIA's
  class ids in the first channel);
- Synscapes: `img/rgb/<n>.png` with `img/class/<n>.png` (Cityscapes label ids, 8-bit),
  n = 1 ... 25000; the rest of the release (`img/depth`, `img/instance`, `img/rgb-2k`,
  `meta/<n>.json`) is not read;
- Cityscapes: `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` with
  `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png` (Cityscapes label ids, 8-bit);
- a folder of images (the user's own target): image files (`IMAGE_SUFFIXES`) at any
  depth, and for a labelled set a label folder of PNGs matched by place and name:
  `<images>/<dir>/<name>.<any image suffix>` with `<labels>/<dir>/<name>.png`.

The embedded synthetic benchmark is written in the GTA5 layout (source) and the
Cityscapes layout (target), so the same readers serve it.

An index table has one row per image: `image_id`, `image_path` and, when labelled,
`label_path` and `label_encoding` (`intrada.classes`: a built-in encoding, or
`table:<label set>` with a class table). Paths are the root as given joined with the
file's place in the layout. `check_pairs` (labelled sets) and `check_images` (unlabelled
ones) are the fast validation pass run before any training.
"""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from intrada.classes import CITYSCAPES_ID, SYNTHIA_ID, ClassSet
from intrada.errors import IntradaError
from intrada.io import image_checked, read_label, read_rgb
from intrada.progress import progress

if TYPE_CHECKING:
    from intrada.config import DataParams

GTA5_LAYOUT = "GTA5 layout (images/*.png with labels/*.png)"
SYNTHIA_LAYOUT = "SYNTHIA-RAND-CITYSCAPES layout (RGB/*.png with GT/LABELS/*.png)"
SYNSCAPES_LAYOUT = "Synscapes layout (img/rgb/*.png with img/class/*.png)"
CITYSCAPES_LAYOUT = (
    "Cityscapes layout (leftImg8bit/{split}/<city>/*_leftImg8bit.png with "
    "gtFine/{split}/<city>/*_gtFine_labelIds.png)"
)
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"

# Which layout each source dataset is stored in.
SOURCE_LAYOUTS = {
    "synthetic": "gta5",
    "gta5": "gta5",
    "synthia": "synthia",
    "synscapes": "synscapes",
}
# The encoding each source layout stores its labels in (with the built-in tables).
SOURCE_ENCODINGS = {"gta5": CITYSCAPES_ID, "synthia": SYNTHIA_ID, "synscapes": CITYSCAPES_ID}

# Image files of the folder layout (any case); labels are PNGs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIX = ".png"
FOLDER_LAYOUT = (
    "folder layout (images at any depth: " + ", ".join(s[1:] for s in IMAGE_SUFFIXES) + ")"
)


def _require_dir(root: Path, sub: str, layout: str) -> Path:
    if not root.is_dir():
        raise IntradaError(f"{root}: dataset root not found; expected a folder in the {layout}")
    folder = root / sub
    if not folder.is_dir():
        raise IntradaError(f"{root}: no {sub}/ folder; expected the {layout}")
    return folder


def _paired(
    root: Path, images: list[Path], label_of, layout: str, encoding: str, id_of
) -> pd.DataFrame:
    if not images:
        raise IntradaError(f"{root}: no images found; expected the {layout}")
    rows = []
    for image in images:
        label = label_of(image)
        if not label.is_file():
            raise IntradaError(f"{image}: image without its label; expected {label}")
        rows.append(
            {
                "image_id": id_of(image),
                "image_path": image.as_posix(),
                "label_path": label.as_posix(),
                "label_encoding": encoding,
            }
        )
    return pd.DataFrame(rows)


def index_gta5(root: str | Path, encoding: str = CITYSCAPES_ID) -> pd.DataFrame:
    """GTA5 (and the synthetic benchmark's source): images/*.png, labels/*.png."""
    root = Path(root)
    images = sorted(_require_dir(root, "images", GTA5_LAYOUT).glob("*.png"))
    _require_dir(root, "labels", GTA5_LAYOUT)
    return _paired(
        root,
        images,
        lambda image: root / "labels" / image.name,
        GTA5_LAYOUT,
        encoding,
        lambda image: image.stem,
    )


def index_synthia(root: str | Path, encoding: str = SYNTHIA_ID) -> pd.DataFrame:
    """SYNTHIA-RAND-CITYSCAPES: RGB/*.png, GT/LABELS/*.png."""
    root = Path(root)
    images = sorted(_require_dir(root, "RGB", SYNTHIA_LAYOUT).glob("*.png"))
    _require_dir(root, "GT/LABELS", SYNTHIA_LAYOUT)
    return _paired(
        root,
        images,
        lambda image: root / "GT" / "LABELS" / image.name,
        SYNTHIA_LAYOUT,
        encoding,
        lambda image: image.stem,
    )


def index_synscapes(root: str | Path, encoding: str = CITYSCAPES_ID) -> pd.DataFrame:
    """Synscapes: img/rgb/<n>.png, img/class/<n>.png, in the order of n."""
    root = Path(root)
    images = _require_dir(root, "img/rgb", SYNSCAPES_LAYOUT).glob("*.png")
    _require_dir(root, "img/class", SYNSCAPES_LAYOUT)
    # Numbered 1 ... 25000: by number, not as text (1, 10, 100, ...).
    images = sorted(
        images, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem)
    )
    return _paired(
        root,
        images,
        lambda image: root / "img" / "class" / image.name,
        SYNSCAPES_LAYOUT,
        encoding,
        lambda image: image.stem,
    )


def index_cityscapes(root: str | Path, split: str, encoding: str = CITYSCAPES_ID) -> pd.DataFrame:
    """One Cityscapes split (`train` or `val`), every city, images with fine labels."""
    root = Path(root)
    layout = CITYSCAPES_LAYOUT.format(split=split)
    image_dir = _require_dir(root, f"leftImg8bit/{split}", layout)
    label_dir = _require_dir(root, f"gtFine/{split}", layout)
    images = sorted(image_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}"))

    def stem(image: Path) -> str:
        return image.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX)

    return _paired(
        root,
        images,
        lambda image: label_dir / image.parent.name / f"{stem(image)}{CITYSCAPES_LABEL_SUFFIX}",
        layout,
        encoding,
        stem,
    )


def index_source(dataset: str, root: str | Path, encoding: str | None = None) -> pd.DataFrame:
    """The labelled source set of a source dataset, in its layout; `encoding` replaces the
    layout's own (`table:<dataset>` with a class table)."""
    layout = SOURCE_LAYOUTS[dataset]
    index = {"gta5": index_gta5, "synthia": index_synthia, "synscapes": index_synscapes}[layout]
    return index(root, encoding or SOURCE_ENCODINGS[layout])


LABELLED = ["image_id", "image_path", "label_path", "label_encoding"]


def index_target(data: DataParams, split: str, encoding: str) -> pd.DataFrame:
    """The target's `train` or `val` set in its layout (`data.target_layout`): Cityscapes
    under `data.target_root` (labelled), or the folders of `data.target_*` (`train`
    labelled when it has labels; `val` with no rows when there is no labelled val)."""
    if data.target_layout == "cityscapes":  # data.target_*: these subfolders (check_params)
        return index_cityscapes(data.target_root, split, encoding)
    if split == "train":
        if data.has_target_train_labels:
            return index_folder_pairs(data.target_train, data.target_train_labels, encoding)
        return index_folder(data.target_train)
    if data.has_target_val:
        return index_folder_pairs(data.target_val_images, data.target_val_labels, encoding)
    return pd.DataFrame(columns=LABELLED)


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `root` (following links) whose suffix is one of `suffixes` in any case,
    by path; hidden files and folders (".name") are skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(folder) / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes
        ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _folder_key(root: Path, path: Path) -> str:
    """An image's id in the folder layout: its place under the root without suffix."""
    return path.relative_to(root).with_suffix("").as_posix()


def index_folder(images: str | Path) -> pd.DataFrame:
    """A folder of images at any depth (`IMAGE_SUFFIXES`), by path: `image_id` (the
    place under the folder, without suffix) and `image_path`."""
    root = Path(images)
    if not root.is_dir():
        raise IntradaError(f"{root}: folder not found; expected a folder in the {FOLDER_LAYOUT}")
    found = _walk(root, IMAGE_SUFFIXES)
    if not found:
        raise IntradaError(f"{root}: no images found; expected the {FOLDER_LAYOUT}")
    seen: dict[str, Path] = {}
    for path in found:
        key = _folder_key(root, path)
        if key in seen:
            raise IntradaError(
                f"{path}: {seen[key].name} has the same name in the same folder; expected one "
                "image per name (labels are matched by folder and name)"
            )
        seen[key] = path
    return pd.DataFrame(
        {"image_id": list(seen), "image_path": [p.as_posix() for p in seen.values()]}
    )


def index_folder_pairs(images: str | Path, labels: str | Path, encoding: str) -> pd.DataFrame:
    """A labelled folder: every image of `images` (`index_folder`) with the label PNG of
    the same place and name under `labels`, and no label without its image."""
    table = index_folder(images)
    root = Path(labels)
    if not root.is_dir():
        raise IntradaError(f"{root}: folder not found; expected a folder of label PNGs")
    found = {_folder_key(root, p): p for p in _walk(root, (LABEL_SUFFIX,))}
    paths = []
    for image_id, image_path in zip(table["image_id"], table["image_path"], strict=True):
        if image_id not in found:
            raise IntradaError(
                f"{image_path}: image without its label; expected {root / image_id}{LABEL_SUFFIX}"
            )
        paths.append(found.pop(image_id).as_posix())
    if found:
        stray = next(iter(found.values()))
        raise IntradaError(
            f"{stray}: label without its image; expected an image named "
            f"{Path(images) / _folder_key(root, stray)}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>"
        )
    return table.assign(label_path=paths, label_encoding=encoding)


SIZE_MISMATCH = ("stop", "drop", "resize")


def check_pairs(
    table: pd.DataFrame,
    decode: bool,
    size_mismatch: str = "stop",
    workers: int = 0,
    classes: ClassSet | None = None,
) -> tuple[pd.DataFrame, int]:
    """The validation pass: every image and label is read and each label has its image's
    size, so that no file can stop a run later.

    Labels are always decoded: a value outside the label encoding shows only in the
    pixels, and decoding one costs a quarter of an image's (docs/datasets.md).
    Images are checked without decoding (header and every chunk's checksum, which finds
    truncated and corrupted files), or with `decode` decoded too. Raises one
    `IntradaError` naming the first bad file in table order, before any training.
    A pair whose label size differs from its image is, by `size_mismatch`: `stop`, an
    error; `drop`, left out of the returned table; `resize`, kept (training resizes the
    image bicubic and the label nearest to the same size, each on its own, as the
    released code does with GTA5). Returns the table kept and how many pairs differed.
    With `workers` > 0 that many processes read the files (the result is the same).
    Labels are mapped through `classes` (`intrada.io.read_label`): with a class table, a
    value it does not list stops the pass.
    """
    if size_mismatch not in SIZE_MISMATCH:
        raise ValueError(
            f"unknown size_mismatch {size_mismatch!r}; expected one of {SIZE_MISMATCH}"
        )
    jobs = [
        (row.image_path, row.label_path, row.label_encoding, decode)
        for row in table.itertuples(index=False)
    ]
    keep, mismatched = [], 0
    with contextlib.ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            # Stop at the first error: do not read the rest of the set first.
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            sizes = pool.map(functools.partial(_check_pair, classes=classes), jobs, chunksize=8)
        else:
            sizes = map(functools.partial(_check_pair, classes=classes), jobs)
        for (image_path, label_path, _, _), (image_size, label_size) in progress(
            zip(jobs, sizes, strict=True), len(jobs), "check"
        ):
            same = label_size == image_size
            if not same:
                mismatched += 1
                if size_mismatch == "stop":
                    raise IntradaError(
                        f"{label_path}: label is {label_size[0]}x{label_size[1]} but its image "
                        f"{image_path} is {image_size[0]}x{image_size[1]}; expected the same "
                        "size (data.size_mismatch: drop leaves such pairs out, resize keeps "
                        "them as the released code does)"
                    )
            keep.append(same or size_mismatch == "resize")
    return table[keep].reset_index(drop=True), mismatched


def _check_pair(
    job: tuple[str, str, str, bool], classes: ClassSet | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image size, label size) of one pair, as (width, height); one process's work."""
    image_path, label_path, encoding, decode = job
    image_size = _check_image((image_path, decode))
    label = read_label(label_path, encoding, classes=classes)
    return image_size, (label.shape[1], label.shape[0])


def _check_image(job: tuple[str, bool]) -> tuple[int, int]:
    image_path, decode = job
    if decode:
        image = read_rgb(image_path)
        return (image.shape[1], image.shape[0])
    return image_checked(image_path)


def check_images(table: pd.DataFrame, decode: bool, workers: int = 0) -> None:
    """The validation pass of an unlabelled set: every image is readable (checked as
    `check_pairs` checks images). Raises one `IntradaError` naming the first bad file in
    table order."""
    jobs = [(path, decode) for path in table["image_path"]]
    with contextlib.ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            sizes = pool.map(_check_image, jobs, chunksize=8)
        else:
            sizes = map(_check_image, jobs)
        for _ in progress(sizes, len(jobs), "check"):
            pass
