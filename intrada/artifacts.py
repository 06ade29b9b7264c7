"""Per-image artifacts (entropy maps, predictions, pseudo-labels) stored in shards, and
the one reader API for them.

A *shard* is an uncompressed zip archive holding up to N images' PNGs, named by image:
`maps/shard-00000.zip` holds `<image_id>.png` of the first N images of the table,
`shard-00001.zip` the next N, and so on. Zip gives O(1) access to one member by name
with the standard library (`zipfile`), `unzip` makes the PNGs viewable, and DVC tracks
one file per N images instead of one per image. The tables index the shards: a
`<kind>_path` column names the shard file (relative to the project root) and a
`<kind>_member` column the member inside it.

    from intrada.artifacts import read_entropy_map
    entropy = read_entropy_map("data/entropy/scores.parquet", "aachen_000000_000019")

Entropy maps are stored as 8-bit PNGs: round(255 * entropy), so a viewer shows them as
greyscale (black = certain, white = uniform) and the reader returns them within 1/510
of the float map the score was computed from. A table without a `<kind>_member`
column (or with a null member) points at plain files: the one-file-per-image layout of
earlier versions (`.npy` float16 maps, PNG labels), which the readers still accept.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from intrada import faults
from intrada.errors import IntradaError
from intrada.io import naming, read_label_png, read_parquet

# ISA-L's deflate: 3x faster than zlib's level 1 on these maps, for files as small
# (docs/benchmarks.md): most of what scoring adds to the network's forwards. Without
# isal (a GPU machine's own Python) zlib's: the same pixels in other file bytes.
try:
    from isal.isal_zlib import compress as _deflate
except ImportError:
    from zlib import compress as _deflate

ENTROPY_LEVELS = 255  # 8-bit maps: entropy e in [0, 1] is stored as round(255 * e)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIZE_KEY = "intrada:full_size"  # PNG text of a reduced map: "<width>x<height>"
# Fixed zip metadata so that the same members give byte-identical shards.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o100644 << 16  # a regular file, rw-r--r--


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.zip"


def member_name(image_id: str) -> str:
    return f"{image_id}.png"


def shard_of(position: int, shard_size: int) -> int:
    """The shard holding the image at `position` of its table."""
    return position // shard_size


def owned_positions(count: int, shard_size: int, rank: int, world: int) -> list[int]:
    """Table positions that process `rank` of `world` writes: the images of shards
    rank, rank + world, ... in table order. The shard files are the same for any number
    of processes; with fewer shards than processes some processes have nothing to do."""
    return [p for p in range(count) if shard_of(p, shard_size) % world == rank]


def index_columns(
    kind: str, ids: Sequence[str], root: Path, shard_size: int
) -> dict[str, list[str]]:
    """`<kind>_path` (the shard file under `root`) and `<kind>_member` of each image."""
    return {
        f"{kind}_path": [
            (root / shard_name(shard_of(p, shard_size))).as_posix() for p in range(len(ids))
        ],
        f"{kind}_member": [member_name(i) for i in ids],
    }


def quantise_entropy(entropy: np.ndarray) -> np.ndarray:
    """(H, W) entropy in [0, 1] -> uint8 round(255 * entropy)."""
    return np.rint(np.clip(entropy, 0.0, 1.0) * ENTROPY_LEVELS).astype(np.uint8)


def encode_png(
    array: np.ndarray, smooth: bool = False, full_size: tuple[int, int] | None = None
) -> bytes:
    """A (H, W) uint8 array as an 8-bit greyscale PNG, deflated at level 1 (ISA-L).

    Written here rather than by Pillow: for the small maps of a large target Pillow's
    per-call work took 2-3 times as long as the encoding itself. Rows are filtered with
    PNG's "up" filter when `smooth` (entropy maps: differences to the row above are
    small; as small files as Pillow's adaptive filter) and stored as they are otherwise
    (label maps: flat regions, the smallest and fastest). `full_size` (H, W), when
    given, is recorded in a text chunk: the size a reduced map is upsampled to."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    rows = np.empty((height, width + 1), np.uint8)  # each row: its filter byte, then pixels
    rows[:, 1:] = array
    rows[:, 0] = 0
    if smooth and height > 1:
        rows[1:, 0] = 2  # "up": each byte minus the one above it, modulo 256
        np.subtract(array[1:], array[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    chunks = [_png_chunk(b"IHDR", header)]
    if full_size is not None:
        text = f"{_SIZE_KEY}\0{full_size[1]}x{full_size[0]}".encode("latin-1")
        chunks.append(_png_chunk(b"tEXt", text))
    chunks.append(_png_chunk(b"IDAT", _deflate(rows.tobytes(), 1)))
    chunks.append(_png_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def reduce_map(entropy: np.ndarray, downsample: int) -> np.ndarray:
    """(H, W) map averaged over `downsample` x `downsample` cells (partial cells at the
    right and bottom edges over the pixels they hold)."""
    if downsample == 1:
        return entropy
    height, width = entropy.shape
    size = (-(-height // downsample), -(-width // downsample))
    return F.interpolate(torch.from_numpy(entropy)[None, None], size=size, mode="area")[
        0, 0
    ].numpy()


class ShardWriter:
    """Writes members into the shard files of one folder, in table order.

    `add(position, member, data)` appends to shard `position // shard_size`; a shard is
    closed when the first member of a later one arrives (each process writes whole
    shards, in order) or at `close()`. Not atomic by itself: write into a temporary
    folder that is renamed into place (`io.atomic_path`, `compute.shared_atomic_dirs`).
    `on_shard(images, bytes)`, if given, hears of each shard closed
    (`space.Need.shard_written`). A write error names the shard file (`io.naming`).
    """

    def __init__(
        self,
        directory: Path,
        shard_size: int,
        on_shard: Callable[[int, int], None] | None = None,
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.directory, self.shard_size, self.on_shard = Path(directory), shard_size, on_shard
        self._shard: int | None = None
        self._zip: zipfile.ZipFile | None = None

    @property
    def _path(self) -> Path:
        return self.directory / shard_name(self._shard)

    def add(self, position: int, member: str, data: bytes) -> None:
        shard = shard_of(position, self.shard_size)
        if shard != self._shard:
            if self._shard is not None and shard < self._shard:
                raise ValueError(f"shard {shard} after shard {self._shard}: write in order")
            self.close()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._shard = shard
            with naming(self._path):
                self._zip = zipfile.ZipFile(self._path, "x")
        info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED  # PNGs are compressed already
        info.external_attr = _ZIP_MODE
        info.create_system = 3  # Unix, whatever the platform
        with naming(self._path):
            self._zip.writestr(info, data)
            faults.point("shard", self._path)

    def close(self) -> None:
        if self._zip is not None:
            archive, self._zip = self._zip, None
            with naming(self._path):
                archive.close()
            if self.on_shard is not None:
                self.on_shard(len(archive.filelist), os.path.getsize(self._path))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EntropyShards:
    """Entropy maps as 8-bit PNGs in shards, `map_*` columns. With `downsample` > 1 a
    map is stored averaged over `downsample` x `downsample` pixels (a quarter of the
    bytes at 2) and upsampled back to its full size on reading."""

    kind = "map"

    def __init__(
        self,
        directory: Path,
        root: Path,
        shard_size: int,
        downsample: int = 1,
        on_shard: Callable[[int, int], None] | None = None,
    ):
        self.writer = ShardWriter(directory, shard_size, on_shard)
        self.root, self.shard_size, self.downsample = root, shard_size, downsample

    def add(self, position: int, image_id: str, entropy: np.ndarray) -> None:
        stored = quantise_entropy(reduce_map(entropy, self.downsample))
        full_size = entropy.shape if stored.shape != entropy.shape else None
        data = encode_png(stored, smooth=True, full_size=full_size)
        self.writer.add(position, member_name(image_id), data)

    def close(self) -> None:
        self.writer.close()

    def columns(self, ids: Sequence[str]) -> dict[str, list[str]]:
        return index_columns(self.kind, ids, self.root, self.shard_size)


class LabelShards(EntropyShards):
    """Label maps (uint8 train ids, 255 = ignore) as PNGs in shards, `<kind>_*` columns."""

    def __init__(
        self,
        directory: Path,
        root: Path,
        shard_size: int,
        kind: str,
        on_shard: Callable[[int, int], None] | None = None,
    ):
        super().__init__(directory, root, shard_size, on_shard=on_shard)
        self.kind = kind

    def add(self, position: int, image_id: str, label: np.ndarray) -> None:
        self.writer.add(position, member_name(image_id), encode_png(label))


# ---------------------------------------------------------------------------------------
# Reading


class _OpenShards:
    """Open zip files of this process, reopened when their file changed on disk (a
    later run replaced it) and closed least-recently-used beyond `limit`. A DataLoader
    worker forked from a process with open shards starts afresh: a file offset shared
    across processes would mix their reads."""

    def __init__(self, limit: int = 64):
        self.limit, self.pid = limit, os.getpid()
        self.open: OrderedDict[str, tuple[tuple, zipfile.ZipFile]] = OrderedDict()

    def get(self, path: Path) -> zipfile.ZipFile:
        if self.pid != os.getpid():
            self.open, self.pid = OrderedDict(), os.getpid()  # the parent's handles
        key = os.fspath(path)
        try:
            stat = os.stat(key)
        except FileNotFoundError:
            raise IntradaError(f"{path}: file not found; expected a shard (zip)") from None
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self.open.pop(key, None)
        if cached is not None and cached[0] == signature:
            self.open[key] = cached
            return cached[1]
        if cached is not None:
            cached[1].close()
        try:
            archive = zipfile.ZipFile(key)
        except (zipfile.BadZipFile, OSError) as exc:
            raise IntradaError(f"{path}: not a readable shard ({exc})") from exc
        self.open[key] = (signature, archive)
        while len(self.open) > self.limit:
            self.open.popitem(last=False)[1][1].close()
        return archive


_SHARDS = _OpenShards()


def read_member(path: str | Path, member: str) -> bytes:
    """The bytes of one member of a shard; the shard stays open for the next read."""
    archive = _SHARDS.get(Path(path))
    try:
        return archive.read(member)
    except KeyError:
        raise IntradaError(f"{path}: no member {member!r} in this shard") from None
    except (zipfile.BadZipFile, zlib.error, OSError) as exc:
        raise IntradaError(f"{path}: member {member!r} unreadable ({exc})") from exc


def _has_member(member: object) -> bool:
    return isinstance(member, str) and member != ""


def read_label_member(path: str | Path, member: str | None = None) -> np.ndarray:
    """A label map (uint8 train ids) from a shard member, or from a plain PNG file when
    `member` is None."""
    if not _has_member(member):
        return read_label_png(path)
    return read_label_png(f"{path}:{member}", read_member(path, member))


def read_map_member(path: str | Path, member: str | None = None) -> np.ndarray:
    """An entropy map as float32 (H, W) in [0, 1] from a shard member (8-bit PNG), or
    from a plain file when `member` is None (`.npy` float16 of earlier versions, or an
    8-bit PNG). A map stored reduced (`inference.map_downsample`) is upsampled
    (bilinear) to the size recorded in its PNG."""
    if not _has_member(member):
        if Path(path).suffix == ".npy":
            return np.load(path).astype(np.float32)
        name, data = str(path), Path(path).read_bytes()
    else:
        name, data = f"{path}:{member}", read_member(path, member)
    entropy = read_label_png(name, data).astype(np.float32) / ENTROPY_LEVELS
    with Image.open(io.BytesIO(data)) as img:
        full_size = img.info.get(_SIZE_KEY)
    if full_size is None:
        return entropy
    width, height = (int(v) for v in full_size.split("x"))
    return F.interpolate(
        torch.from_numpy(entropy)[None, None], size=(height, width), mode="bilinear"
    )[0, 0].numpy()


def _row(table: pd.DataFrame | str | Path, image_id: str, kind: str) -> tuple[str, str | None]:
    if not isinstance(table, pd.DataFrame):
        table = read_parquet(table, ("image_id", f"{kind}_path"))
    rows = table[table["image_id"] == image_id]
    if rows.empty:
        raise IntradaError(f"image_id {image_id!r} is not in the table")
    row = rows.iloc[0]
    return row[f"{kind}_path"], row.get(f"{kind}_member")


def read_entropy_map(
    table: pd.DataFrame | str | Path, image_id: str, root: str | Path = "."
) -> np.ndarray:
    """The entropy map of `image_id` as float32 (H, W) in [0, 1]. `table`: the scores
    table, a split table, or the path of one; paths in it are relative to `root` (the
    project root)."""
    path, member = _row(table, image_id, "map")
    return read_map_member(Path(root) / path, member)


def read_prediction(
    table: pd.DataFrame | str | Path, image_id: str, root: str | Path = "."
) -> np.ndarray:
    """The inter model's predicted train ids of `image_id`, (H, W) uint8, from the scores
    or a split table (or its path)."""
    path, member = _row(table, image_id, "prediction")
    return read_label_member(Path(root) / path, member)


def read_pseudo_label(
    table: pd.DataFrame | str | Path, image_id: str, root: str | Path = "."
) -> np.ndarray:
    """The pseudo-label of `image_id`, (H, W) uint8 train ids (255 = ignore), from the
    pseudo-label index (or its path)."""
    path, member = _row(table, image_id, "label")
    return read_label_member(Path(root) / path, member)
