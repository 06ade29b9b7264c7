"""Artifact I/O: atomic writes, label PNGs, images, Parquet tables, JSON.

Every output is written under a temporary name in the same directory and renamed into
place, so a failure never leaves a half-written artifact nor touches an earlier one. A
write the disk refuses is one line naming the output and the cause (`WriteFailed`), and
what a killed writer left is swept by the next writer of that output
(`sweep_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import resource
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from intrada import faults
from intrada.errors import IntradaError

if TYPE_CHECKING:
    from intrada.classes import ClassSet

# A temporary sibling of output `<name>`: `.<name>.<8 random characters>.tmp`, a folder
# (`atomic_path`). Characters of `tempfile.mkdtemp`'s names too, which earlier versions used.
TEMP_RANDOM = "[a-z0-9_]{8}"
TEMP_SUFFIX = ".tmp"
# A full disk, a file-size limit (`ulimit -f`), a disk quota: the disk said no.
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class WriteFailed(IntradaError):
    """An output could not be written (`write_failure` says which and why)."""


def temp_pattern(name: str | None = None) -> re.Pattern:
    """Names of the temporary siblings of output `name` (None: of any output)."""
    stem = ".+" if name is None else re.escape(name)
    return re.compile(rf"\.{stem}\.{TEMP_RANDOM}{re.escape(TEMP_SUFFIX)}")


def sweep_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove, from `folder`, the temporary folders that writers of output `name` (None:
    of any output) left behind when killed. A writer holds a lock on its temporary folder
    while it writes (the kernel drops it when the process dies), so a live one is left
    alone. Only folders whose names match `temp_pattern` are touched; returns them."""
    pattern = temp_pattern(name)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer's
        except OSError:
            pass  # a file system without locks: nothing tells live from stale but the name
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


def _locked_temp(path: Path) -> tuple[Path, int]:
    """A new temporary sibling folder of `path`, locked (`sweep_stale_temps` skips it)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # swept between mkdir and open by a sweeper
        with contextlib.suppress(OSError):  # no locks on this file system: go without
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.isdir(tmp) and os.stat(tmp).st_ino == os.fstat(fd).st_ino:
            return tmp, fd
        os.close(fd)  # swept between mkdir and lock by a sweeper: take another name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; rename it onto `path` on success.

    Works for a file or a directory. A directory replaces the old one as a whole. The
    temporary folders of `path` that a killed earlier writer left are removed first. A
    write the disk refuses (full, a file-size limit, a quota: `WRITE_ERRNOS`) raises
    `WriteFailed`, one line naming `path` and the cause; nothing is left half-written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path.parent, path.name)
        tmp, fd = _locked_temp(path)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise WriteFailed(write_failure(path, exc)) from exc
        raise
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to {path}")
        faults.point("rename", target)
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
    except OSError as exc:
        # An error naming a file outside this temporary folder is an enclosing writer's.
        if exc.errno in WRITE_ERRNOS and _within(exc.filename, tmp):
            raise WriteFailed(write_failure(path, exc)) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def _within(filename: str | bytes | None, folder: Path) -> bool:
    """Whether an error's file lies in `folder` (no file named: the innermost writer's)."""
    if filename is None:
        return True
    name = os.path.abspath(os.fsdecode(filename))
    return os.path.commonpath([name, os.path.abspath(folder)]) == os.path.abspath(folder)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Write errors raised inside name `path` when they name no file (a write to an open
    file), so that `atomic_path` knows whose write failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def existing_ancestor(path: str | Path) -> Path:
    """`path` or its nearest existing parent folder."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path`."""
    path = existing_ancestor(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def free_space(path: str | Path) -> int:
    """Bytes free to this user on the file system that holds (or will hold) `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def write_failure(path: str | Path, exc: OSError) -> str:
    """One line: the output, the cause and what bounds it (the free space of a full file
    system, the file-size limit of `ulimit -f`)."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    detail = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        detail = f" ({human_bytes(free_space(path))} free on {mount_point(path)})"
    elif exc.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            detail = f" (file-size limit {human_bytes(limit)}: ulimit -f)"
    return f"{Path(path).as_posix()}: writing failed: {cause}{detail}"


def save_torch(obj: Any, path: str | Path) -> None:
    """`torch.save` to a file, with a write the disk refused raised as that `OSError`.

    Written by path, as before: PyTorch names the records inside the file after it (a
    file object would change every model's bytes). Its C++ writer then reports a refused
    write as a `RuntimeError` without the cause, which is inferred here from what can be
    seen: a file at the file-size limit, or a file system with no space left.
    """
    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        cause = _refused_write(path)
        if cause is None:
            raise
        raise OSError(cause, os.strerror(cause), os.fspath(path)) from exc


def _refused_write(path: str | Path) -> int | None:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    with contextlib.suppress(OSError):
        if limit != resource.RLIM_INFINITY and os.path.getsize(path) >= limit - 65536:
            return errno.EFBIG
    if free_space(path) < 1 << 20:  # under 1 MiB left: the write most likely found it full
        return errno.ENOSPC
    return None


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp, naming(tmp):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp, naming(tmp):
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
    with naming(path):
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
    with naming(path):
        Image.fromarray(image).save(path, optimize=False)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (a photo turned upright by its EXIF
    orientation)."""
    try:
        with Image.open(path) as img:
            return np.array(_upright(img).convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise IntradaError(f"{path}: unreadable image ({exc})") from exc
