"""Raw dataset trees, read in place and indexed into the pipeline's tables.

Layouts (paths relative to the dataset root named in params.yaml):

- GTA5: `images/<name>.png` with `labels/<name>.png` (Cityscapes label ids, 8-bit);
- SYNTHIA-RAND-CITYSCAPES: `RGB/<name>.png` with `GT/LABELS/<name>.png` (16-bit, SYNTHIA's
  class ids in the first channel);
- Cityscapes: `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` with
  `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png` (Cityscapes label ids, 8-bit).

The embedded synthetic benchmark is written in the GTA5 layout (source) and the
Cityscapes layout (target), so the same readers serve it.

An index table has one row per image: `image_id`, `image_path` and, when labelled,
`label_path` and `label_encoding`. Paths are the root as given joined with the file's
place in the layout. `check_pairs` is the fast validation pass run before any training.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from intrada.classes import CITYSCAPES_ID, SYNTHIA_ID
from intrada.errors import IntradaError
from intrada.io import image_checked, read_label, read_rgb
from intrada.progress import progress

GTA5_LAYOUT = "GTA5 layout (images/*.png with labels/*.png)"
SYNTHIA_LAYOUT = "SYNTHIA-RAND-CITYSCAPES layout (RGB/*.png with GT/LABELS/*.png)"
CITYSCAPES_LAYOUT = (
    "Cityscapes layout (leftImg8bit/{split}/<city>/*_leftImg8bit.png with "
    "gtFine/{split}/<city>/*_gtFine_labelIds.png)"
)
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"

# Which layout each source dataset is stored in.
SOURCE_LAYOUTS = {"synthetic": "gta5", "gta5": "gta5", "synthia": "synthia"}


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


def index_gta5(root: str | Path) -> pd.DataFrame:
    """GTA5 (and the synthetic benchmark's source): images/*.png, labels/*.png."""
    root = Path(root)
    images = sorted(_require_dir(root, "images", GTA5_LAYOUT).glob("*.png"))
    _require_dir(root, "labels", GTA5_LAYOUT)
    return _paired(
        root,
        images,
        lambda image: root / "labels" / image.name,
        GTA5_LAYOUT,
        CITYSCAPES_ID,
        lambda image: image.stem,
    )


def index_synthia(root: str | Path) -> pd.DataFrame:
    """SYNTHIA-RAND-CITYSCAPES: RGB/*.png, GT/LABELS/*.png."""
    root = Path(root)
    images = sorted(_require_dir(root, "RGB", SYNTHIA_LAYOUT).glob("*.png"))
    _require_dir(root, "GT/LABELS", SYNTHIA_LAYOUT)
    return _paired(
        root,
        images,
        lambda image: root / "GT" / "LABELS" / image.name,
        SYNTHIA_LAYOUT,
        SYNTHIA_ID,
        lambda image: image.stem,
    )


def index_cityscapes(root: str | Path, split: str) -> pd.DataFrame:
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
        CITYSCAPES_ID,
        stem,
    )


def index_source(dataset: str, root: str | Path) -> pd.DataFrame:
    """The labelled source set of a source dataset, in its layout."""
    layout = SOURCE_LAYOUTS[dataset]
    return index_synthia(root) if layout == "synthia" else index_gta5(root)


SIZE_MISMATCH = ("stop", "drop", "resize")


def check_pairs(
    table: pd.DataFrame, decode: bool, size_mismatch: str = "stop", workers: int = 0
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
            sizes = pool.map(_check_pair, jobs, chunksize=8)
        else:
            sizes = map(_check_pair, jobs)
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


def _check_pair(job: tuple[str, str, str, bool]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image size, label size) of one pair, as (width, height); one process's work."""
    image_path, label_path, encoding, decode = job
    if decode:
        image = read_rgb(image_path)
        image_size = (image.shape[1], image.shape[0])
    else:
        image_size = image_checked(image_path)
    label = read_label(label_path, encoding)
    return image_size, (label.shape[1], label.shape[0])
