"""Artifact I/O: atomic writes, label PNGs, images, Parquet tables, JSON.

Every output is written under a temporary name in the same directory and renamed into
place, so a failure never leaves a half-written artifact nor touches an earlier one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from intrada.errors import IntradaError

if TYPE_CHECKING:
    from intrada.classes import ClassSet


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; rename it onto `path` on success.

    Works for a file or a directory. A directory replaces the old one as a whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to {path}")
        old = None
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".old"  # a directory cannot be replaced in one rename
            path.rename(old)
        try:
            os.replace(target, path)
        except OSError:
            if old is not None:
                old.rename(path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: str | Path, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Parquet table, checked for the columns the caller needs."""
    path = Path(path)
    if not path.is_file():
        raise IntradaError(f"{path}: file not found; expected a Parquet table")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise IntradaError(f"{path}: not a readable Parquet table ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IntradaError(f"{path}: missing columns {missing}; has {list(df.columns)}")
    return df


def write_label_png(path: str | Path, label: np.ndarray) -> None:
    """A single-channel 8-bit label PNG. Not atomic: call it inside an `atomic_path`
    directory. zlib level 1: label maps are mostly flat regions, and level 6 took twice
    as long for files a few per cent smaller."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label must be a 2-D uint8 array, got {label.dtype} {label.shape}")
    Image.fromarray(label).save(path, optimize=False, compress_level=1)


def read_label_png(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """An 8-bit single-channel label PNG as a (H, W) uint8 array of its pixel values:
    the file at `path`, or the encoded `data` (a shard member; `path` then names it in
    errors)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            if img.mode not in ("L", "P"):
                raise IntradaError(f"{path}: label mode {img.mode}; expected 8-bit single channel")
            return np.array(img, dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise IntradaError(f"{path}: unreadable label image ({exc})") from exc


def read_label(
    path: str | Path, encoding: str, data: bytes | None = None, classes: ClassSet | None = None
) -> np.ndarray:
    """A label file of any encoding (`intrada.classes.LABEL_ENCODINGS`, or
    `table:<label set>` of a class table) as (H, W) uint8 train ids, 255 = ignore, mapped
    through `classes` (the built-in encodings without it); with `data`, the encoded PNG
    (a shard member) named `path`. A value the encoding does not list (say 200 in a
    Cityscapes label-id PNG: a wrong file, or another dataset's labels; or a value the
    class table has neither as a class nor ignored) is an error, not ignored."""
    from intrada.classes import SYNTHIA_ID, TABLE_ENCODING, WIDE_COLUMNS, label_values

    values = label_values(encoding, classes)
    column = encoding.removeprefix(TABLE_ENCODING) if encoding.startswith(TABLE_ENCODING) else ""
    if encoding == SYNTHIA_ID or column == "synthia":
        raw = read_synthia_label(path)
    elif column in WIDE_COLUMNS:
        raw = read_label_values(path)
    else:
        raw = read_label_png(path, data)
    bad = values.unknown(raw)
    if bad.any():
        value = int(raw[bad].max())
        raise IntradaError(f"{path}: label value {value} is {values.expected}")
    return values.lut[raw]


def read_label_values(path: str | Path) -> np.ndarray:
    """A single-channel 8- or 16-bit label PNG (a user's own labels) as (H, W) uint8 or
    uint16 pixel values."""
    try:
        with Image.open(path) as img:
            if img.mode in ("L", "P"):
                return np.array(img, dtype=np.uint8)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.array(img)
                if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
                    raise IntradaError(f"{path}: label values outside 0-65535; expected 16-bit")
                return array.astype(np.uint16)
            raise IntradaError(
                f"{path}: label mode {img.mode}; expected a single-channel 8- or 16-bit PNG"
            )
    except (OSError, SyntaxError) as exc:
        raise IntradaError(f"{path}: unreadable label image ({exc})") from exc


def read_synthia_label(path: str | Path) -> np.ndarray:
    """SYNTHIA's class ids: the first channel of its 16-bit label PNGs, as (H, W) uint16.

    Pillow reduces 16-bit colour PNGs to their high bytes, which would turn every id into
    0, so OpenCV decodes these. OpenCV orders channels BGR: the file's first is the last.
    """
    import cv2  # only SYNTHIA needs it

    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise IntradaError(f"{path}: file not found; expected a SYNTHIA label PNG")
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise IntradaError(f"{path}: unreadable label image; expected a 16-bit PNG")
    if label.dtype != np.uint16:
        raise IntradaError(f"{path}: label is {label.dtype}; expected a 16-bit PNG (SYNTHIA ids)")
    return label if label.ndim == 2 else label[:, :, 2 if label.shape[2] >= 3 else 0]


def image_checked(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file that is intact, as `read_rgb` returns it.

    A PNG is not decoded: Pillow's `verify` reads it to its end and checks each chunk's
    CRC, so a truncated or corrupted file fails here (about 1 ms for a 3 MB GTA5 image,
    against 38 ms to decode it). Other formats (JPEG, WebP, TIFF, BMP) have no such
    checksums and are decoded."""
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                size = img.size
                img.verify()
                return size
            img.load()
            return _upright(img).size
    except FileNotFoundError:
        raise IntradaError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise IntradaError(f"{path}: unreadable image ({exc})") from exc


def _upright(img: Image.Image) -> Image.Image:
    """A photo turned as its EXIF orientation says (as viewers show it); PNGs, which the
    datasets store without one, are taken as they are."""
    if img.format == "PNG":
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def write_rgb_png(path: str | Path, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image as PNG. Not atomic: call it inside `atomic_path`."""
    Image.fromarray(image).save(path, optimize=False)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (a photo turned upright by its EXIF
    orientation)."""
    try:
        with Image.open(path) as img:
            return np.array(_upright(img).convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise IntradaError(f"{path}: unreadable image ({exc})") from exc
