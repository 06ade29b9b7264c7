"""Class tables: which classes a run predicts, their names and colours, and what the
pixel values of each dataset's label files mean.

A *class table* (`ClassTable`) lists classes in channel order, each with a name, a
colour and, per label set, the pixel values that are this class; values that are no
class are listed as ignored. Label sets are named after the datasets that store them
(`TABLE_COLUMNS`): a source (`gta5`, `synthia`, `synscapes`, `synthetic`), the
Cityscapes target (`cityscapes`), or the user's own target (`target`). The built-in
tables (`builtin_table`: Cityscapes' 19 classes, SYNTHIA's 16, the synthetic
benchmark's 8) and a user's file (`read_class_table`, the format in docs/datasets.md,
"Your own images") are the same thing, and a run's `ClassSet` is always built from one.

Inside the pipeline every label is a *train id* (255 = ignore): for the built-in tables
Cityscapes' train ids, for a user's table the class's position in it. Raw datasets store
other encodings (`LABEL_ENCODINGS`): GTA5, Synscapes and Cityscapes store Cityscapes
label ids, SYNTHIA its own class ids, and `table:<label set>` means "the values the class
table lists for that label set". `ClassSet.label_values` maps each to train ids, and a
network's channels map to train ids through the `ClassSet`. The Cityscapes table is
Cityscapes' own (`CITYSCAPES_LABELS`), checked against torchvision's by the tests.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from intrada.errors import IntradaError

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
TRAIN_ID = "train_id"  # train ids (8-bit): pseudo-labels, predictions
CITYSCAPES_ID = "cityscapes_id"  # Cityscapes label ids (8-bit): Cityscapes gtFine, GTA5, Synscapes
SYNTHIA_ID = "synthia_id"  # SYNTHIA's class ids in the first channel of a 16-bit PNG
LABEL_ENCODINGS = (TRAIN_ID, CITYSCAPES_ID, SYNTHIA_ID)
# `table:<label set>`: the values a class table lists for that label set.
TABLE_ENCODING = "table:"

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

# Source datasets: each is adapted to Cityscapes (or, for the synthetic benchmark, to its
# own Cityscapes-layout target), or to the user's own target images.
DATASETS = ("synthetic", "gta5", "synthia", "synscapes")
# Label sets a class table can list values for: the sources, the Cityscapes target and
# the user's own target (`data.target_layout: folder`).
TABLE_COLUMNS = (*DATASETS, "cityscapes", "target")
# Label sets whose files may be 16-bit: SYNTHIA's, and the user's own (8- or 16-bit
# single-channel PNGs). The others are 8-bit.
WIDE_COLUMNS = ("synthia", "target")


# Cityscapes' label table (name, label id, train id, colour), row for row as the
# Cityscapes scripts' `labels.py` and `torchvision.datasets.Cityscapes.classes` give it
# (tests/test_layouts.py checks it against torchvision's). Written out rather than
# imported: torchvision's import pulls in torch._dynamo, about 1.7 s of CPU at the start
# of every stage for a table of 35 rows.
CITYSCAPES_LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)


@cache
def cityscapes_label_ids() -> tuple[tuple[int, int, str], ...]:
    """(label id, train id, name) of every Cityscapes class with a non-negative id, from
    torchvision's table; classes that are not evaluated have train id 255."""
    return tuple(
        (label_id, train_id if 0 <= train_id < IGNORE_INDEX else IGNORE_INDEX, name)
        for name, label_id, train_id, _ in CITYSCAPES_LABELS
        if label_id >= 0
    )


def label_lut(encoding: str) -> np.ndarray:
    """A lookup table from a built-in encoding's pixel values to Cityscapes train ids
    (uint8, 255 = ignore): 256 entries for 8-bit encodings, 65536 for SYNTHIA's 16-bit ids."""
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
    """The highest value a label of a built-in encoding may hold (train ids also 255)."""
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
    rows = {
        train_id: (train_id, name, color)
        for name, _, train_id, color in CITYSCAPES_LABELS
        if 0 <= train_id < IGNORE_INDEX
    }
    return tuple(rows[i] for i in sorted(rows))


# --- label values -----------------------------------------------------------------------


class LabelValues:
    """What the pixel values of one kind of label file mean: `lut[value]` is the train id
    (255 = ignore), and a value that is neither a class nor ignored is an error
    (`unknown`), named by `expected`."""

    def __init__(self, lut: np.ndarray, known: np.ndarray, expected: str):
        self.lut, self.known, self.expected = lut, known, expected
        # Every value up to `highest` is known and nothing above it: a comparison then
        # finds unknown values, cheaper than a lookup.
        count = int(known.sum())
        self.highest = count - 1 if known[:count].all() else None

    def unknown(self, raw: np.ndarray) -> np.ndarray:
        """A mask of the pixels whose value this label set does not list."""
        if self.highest is not None:
            return raw > self.highest
        if np.iinfo(raw.dtype).max >= len(self.known):  # wider values than the table
            return (raw >= len(self.known)) | ~self.known[np.minimum(raw, len(self.known) - 1)]
        return ~self.known[raw]


@cache
def builtin_label_values(encoding: str) -> LabelValues:
    """The built-in encodings (`LABEL_ENCODINGS`): values up to `label_range` are known."""
    lut = label_lut(encoding)
    highest = label_range(encoding)
    known = np.zeros(len(lut), bool)
    known[: highest + 1] = True
    if encoding == TRAIN_ID:
        known[IGNORE_INDEX] = True
    expected = f"0-{highest}{' or 255' if encoding == TRAIN_ID else ''}"
    return LabelValues(lut, known, f"out of range for {encoding} labels; expected {expected}")


# --- class tables -----------------------------------------------------------------------


Values = tuple[int, ...]


@dataclass(frozen=True)
class ClassTable:
    """Classes in channel order, and what each label set's values mean.

    `ids[k]` is the train id of class k (what pseudo-labels and predictions store):
    Cityscapes' train ids for the built-in tables, k for a user's table. `values` holds,
    per label set (`TABLE_COLUMNS`), each class's values; `ignore` the values of a label
    set that are no class. `subsets` are extra mIoUs over some of the classes
    ({eval.json key: class names}). `origin` names the table in messages, `file` is the
    file a user's table was read from.
    """

    origin: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ids: tuple[int, ...]
    values: tuple[tuple[str, tuple[Values, ...]], ...]
    ignore: tuple[tuple[str, Values], ...] = ()
    subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()
    builtin: bool = False
    file: str | None = None  # the file it was read from

    def columns(self) -> tuple[str, ...]:
        """The label sets the table lists values for."""
        listed = [c for c, _ in self.values] + [c for c, _ in self.ignore]
        return tuple(c for c in TABLE_COLUMNS if c in listed)

    def class_values(self, column: str) -> tuple[Values, ...]:
        """Each class's values in a label set (empty where the table lists none)."""
        return dict(self.values).get(column, ((),) * len(self.names))

    def ignored(self, column: str) -> Values:
        return dict(self.ignore).get(column, ())

    def require(self, column: str, every_class: bool) -> None:
        """The table must list values for `column` (with `every_class`, for each class:
        a source must show every class, or no model can learn it)."""
        if column not in self.columns():
            raise IntradaError(
                f"{self.origin}: the class table lists no {column} values; expected the "
                f"{column} label values of each class (and ignore.{column})"
            )
        if every_class:
            for name, values in zip(self.names, self.class_values(column), strict=True):
                if not values:
                    raise IntradaError(
                        f"{self.origin}: class {name!r} has no {column} values; expected at "
                        f"least one (a class the source never shows cannot be learnt)"
                    )


@cache
def table_label_values(table: ClassTable, column: str) -> LabelValues:
    """A table's label set: each listed value -> its class's train id, ignored -> 255."""
    table.require(column, every_class=False)
    size = 65536 if column in WIDE_COLUMNS else 256
    lut = np.full(size, IGNORE_INDEX, np.uint8)
    known = np.zeros(size, bool)
    for train_id, values in zip(table.ids, table.class_values(column), strict=True):
        lut[list(values)] = train_id
        known[list(values)] = True
    known[list(table.ignored(column))] = True
    return LabelValues(
        lut,
        known,
        f"not in the class table {table.origin} (neither a class's {column} value nor "
        f"in ignore.{column})",
    )


@cache
def table_train_ids(table: ClassTable) -> LabelValues:
    """Train ids stored by the pipeline for a user's table: its ids, or 255."""
    known = np.zeros(256, bool)
    known[list(table.ids)] = True
    known[IGNORE_INDEX] = True
    lut = np.arange(256, dtype=np.uint8)
    lut[~known] = IGNORE_INDEX
    return LabelValues(
        lut, known, f"out of range for train_id labels; expected 0-{max(table.ids)} or 255"
    )


@dataclass(frozen=True)
class ClassSet:
    """The classes a model predicts: channel k is train id `train_ids[k]`. `table` is the
    class table it was built from (None for an ad hoc set of Cityscapes classes)."""

    names: tuple[str, ...]
    train_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    table: ClassTable | None = None

    @classmethod
    def from_table(cls, table: ClassTable) -> ClassSet:
        return cls(names=table.names, train_ids=table.ids, colors=table.colors, table=table)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def subsets(self) -> dict[str, tuple[str, ...]]:
        """Extra mIoUs reported over some of the classes: {key: names}."""
        return dict(self.table.subsets) if self.table is not None else {}

    def label_values(self, encoding: str) -> LabelValues:
        """How label files of `encoding` map to this set's train ids."""
        if encoding.startswith(TABLE_ENCODING):
            if self.table is None:
                raise ValueError(f"label encoding {encoding!r} needs a class table")
            return table_label_values(self.table, encoding.removeprefix(TABLE_ENCODING))
        if encoding == TRAIN_ID and self.table is not None and not self.table.builtin:
            return table_train_ids(self.table)
        return builtin_label_values(encoding)

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


def label_values(encoding: str, classes: ClassSet | None = None) -> LabelValues:
    """How label files of `encoding` map to train ids: through `classes` when given,
    else the built-in encodings."""
    if classes is not None:
        return classes.label_values(encoding)
    return builtin_label_values(encoding)


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


def dataset_names(dataset: str) -> tuple[str, ...]:
    """The Cityscapes classes a source dataset is trained and evaluated on."""
    if dataset == "synthetic":
        return SYNTHETIC_CLASS_NAMES
    if dataset in ("gta5", "synscapes"):
        return tuple(name for _, name, _ in cityscapes_train_classes())
    if dataset == "synthia":
        shared = set(SYNTHIA_ID_TO_CLASS.values())
        return tuple(name for _, name, _ in cityscapes_train_classes() if name in shared)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def _complement(listed: set[int], highest: int) -> Values:
    return tuple(v for v in range(highest + 1) if v not in listed)


@cache
def builtin_table(dataset: str) -> ClassTable:
    """The built-in table of a source dataset against Cityscapes: the synthetic
    benchmark's 8 classes, GTA5's and Synscapes' 19, SYNTHIA's 16 (with the 13-class
    mIoU), each listing its source's values and Cityscapes' label ids, every other value
    of either encoding ignored."""
    names = dataset_names(dataset)
    rows = {name: (tid, color) for tid, name, color in cityscapes_train_classes()}
    label_id = {name: lid for lid, tid, name in cityscapes_label_ids() if tid != IGNORE_INDEX}
    cityscapes = tuple((label_id[n],) for n in names)
    if dataset == "synthia":
        synthia_id = {name: sid for sid, name in SYNTHIA_ID_TO_CLASS.items()}
        source, highest = tuple((synthia_id[n],) for n in names), SYNTHIA_MAX_ID
    else:
        source, highest = cityscapes, label_range(CITYSCAPES_ID)
    cityscapes_max = label_range(CITYSCAPES_ID)
    subsets = ()
    if dataset == "synthia":
        subsets = (("mIoU_13", tuple(n for n in names if n not in SYNTHIA_13_EXCLUDED)),)
    return ClassTable(
        origin=f"dataset {dataset} (built-in table)",
        names=names,
        colors=tuple(rows[n][1] for n in names),
        ids=tuple(rows[n][0] for n in names),
        values=((dataset, source), ("cityscapes", cityscapes)),
        ignore=(
            (dataset, _complement({v for (v,) in source}, highest)),
            ("cityscapes", _complement({v for (v,) in cityscapes}, cityscapes_max)),
        ),
        subsets=subsets,
        builtin=True,
    )


def dataset_classes(dataset: str) -> ClassSet:
    """The class set a source dataset is trained and evaluated on with the built-in
    tables: the synthetic benchmark's 8 classes, GTA5 / Synscapes -> Cityscapes' 19,
    SYNTHIA -> Cityscapes' 16."""
    return ClassSet.from_table(builtin_table(dataset))


def evaluation_subsets(dataset: str) -> dict[str, tuple[str, ...]]:
    """Extra mIoUs a dataset reports with the built-in tables, each over a subset of its
    classes: {key: names}."""
    return dataset_classes(dataset).subsets


# --- class table files ------------------------------------------------------------------


TABLE_KEYS = ("classes", "ignore", "subsets")
CLASS_KEYS = ("name", "color", *TABLE_COLUMNS)
MAX_CLASSES = 255  # train ids 0-254: 255 is ignore
SUBSET_KEY = re.compile(r"mIoU_[A-Za-z0-9_]+")
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_HEX = re.compile(r"#([0-9a-fA-F]{6})")


def read_class_table(path: str | Path) -> ClassTable:
    """A class table file (YAML), checked: one `IntradaError` line naming the file and
    the entry for duplicate names, values or colours, bad colours or values, unknown
    keys, or too few or too many classes."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise IntradaError(f"{path}: file not found; expected a class table (YAML)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntradaError(f"{path}: unreadable class table ({exc})") from None
    except yaml.YAMLError as exc:
        raise IntradaError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return dataclasses.replace(parse_class_table(raw, path.as_posix()), file=path.as_posix())


def _unknown_key(origin: str, where: str, key: Any, allowed: tuple[str, ...]) -> IntradaError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return IntradaError(
        f"{origin}: {where}unknown key {key!r}{hint}; expected one of: {', '.join(allowed)}"
    )


def _values(origin: str, where: str, column: str, raw: Any) -> Values:
    """A value list: integers and "a-b" ranges (inclusive), each value once."""
    highest = 65535 if column in WIDE_COLUMNS else 255
    if not isinstance(raw, list):
        raw = [raw]
    values: list[int] = []
    for item in raw:
        if isinstance(item, int) and not isinstance(item, bool):
            span = [item]
        elif isinstance(item, str) and _RANGE.fullmatch(item):
            lo, hi = map(int, _RANGE.fullmatch(item).groups())
            if lo > hi:
                raise IntradaError(f"{origin}: {where}{column}: range {item!r} runs backwards")
            span = list(range(lo, hi + 1))
        else:
            raise IntradaError(
                f"{origin}: {where}{column}: {item!r} is not a label value; expected integers "
                'or "a-b" ranges'
            )
        for value in span:
            if not 0 <= value <= highest:
                bits = "16" if highest > 255 else "8"
                raise IntradaError(
                    f"{origin}: {where}{column}: value {value} is out of range; {column} labels "
                    f"are {bits}-bit (0-{highest})"
                )
            if value in values:
                raise IntradaError(f"{origin}: {where}{column}: value {value} is listed twice")
            values.append(value)
    return tuple(values)


def _color(origin: str, where: str, raw: Any) -> tuple[int, int, int]:
    if isinstance(raw, str) and _HEX.fullmatch(raw):
        digits = _HEX.fullmatch(raw).group(1)
        return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
    if (
        isinstance(raw, list)
        and len(raw) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in raw)
    ):
        return tuple(raw)
    raise IntradaError(
        f"{origin}: {where}color {raw!r} is invalid; expected [red, green, blue] (0-255 each) "
        "or '#rrggbb'"
    )


def parse_class_table(raw: Any, origin: str) -> ClassTable:
    """A class table from its parsed YAML (`read_class_table`); `origin` names it."""
    if not isinstance(raw, dict):
        raise IntradaError(f"{origin}: expected a mapping with a `classes` list")
    for key in raw:
        if key not in TABLE_KEYS:
            raise _unknown_key(origin, "", key, TABLE_KEYS)
    entries = raw.get("classes")
    if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_CLASSES:
        raise IntradaError(
            f"{origin}: `classes` must be a list of 2 to {MAX_CLASSES} classes (name, color "
            "and label values each)"
        )
    names: list[str] = []
    colors: list[tuple[int, int, int]] = []
    values: dict[str, list[Values]] = {}
    owner: dict[tuple[str, int], str] = {}  # (label set, value) -> class
    for k, entry in enumerate(entries):
        where = f"classes[{k}]: "
        if not isinstance(entry, dict):
            raise IntradaError(f"{origin}: {where}expected a mapping with name, color, values")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise IntradaError(
                f"{origin}: {where}name {name!r} is invalid; expected a non-empty name "
                "without leading or trailing spaces"
            )
        where = f"classes[{k}] ({name}): "
        if name in names:
            raise IntradaError(f"{origin}: {where}the name is used twice; expected unique names")
        if name.lower() == "ignore":
            raise IntradaError(f"{origin}: {where}'ignore' is reserved for ignored values")
        for key in entry:
            if key not in CLASS_KEYS:
                raise _unknown_key(origin, where, key, CLASS_KEYS)
        if "color" not in entry:
            raise IntradaError(f"{origin}: {where}color is missing; expected [red, green, blue]")
        color = _color(origin, where, entry["color"])
        if color in colors:
            other = names[colors.index(color)]
            raise IntradaError(
                f"{origin}: {where}color {list(color)} is the colour of class {other!r} too; "
                "expected a colour per class (figures tell classes apart by it)"
            )
        if color == (0, 0, 0):
            raise IntradaError(f"{origin}: {where}color [0, 0, 0] is the ignore colour of figures")
        for column in TABLE_COLUMNS:
            if column not in entry:
                continue
            listed = _values(origin, where, column, entry[column])
            for value in listed:
                if (column, value) in owner:
                    raise IntradaError(
                        f"{origin}: {where}{column} value {value} already belongs to class "
                        f"{owner[column, value]!r}; expected each value in one class"
                    )
                owner[column, value] = name
            values.setdefault(column, [()] * len(entries))[k] = listed
        names.append(name)
        colors.append(color)
    ignore = raw.get("ignore") or {}
    if not isinstance(ignore, dict):
        raise IntradaError(f"{origin}: ignore must map label sets to value lists")
    ignored: dict[str, Values] = {}
    for column, listed in ignore.items():
        if column not in TABLE_COLUMNS:
            raise _unknown_key(origin, "ignore: ", column, TABLE_COLUMNS)
        ignored[column] = _values(origin, "ignore: ", column, listed)
        for value in ignored[column]:
            if (column, value) in owner:
                raise IntradaError(
                    f"{origin}: ignore: {column} value {value} belongs to class "
                    f"{owner[column, value]!r}; expected a value either ignored or a class's"
                )
    subsets = raw.get("subsets") or {}
    if not isinstance(subsets, dict):
        raise IntradaError(f"{origin}: subsets must map mIoU_<name> keys to class name lists")
    for key, members in subsets.items():
        if not isinstance(key, str) or not SUBSET_KEY.fullmatch(key):
            raise IntradaError(f"{origin}: subsets: key {key!r} is invalid; expected mIoU_<name>")
        if (
            not isinstance(members, list)
            or not members
            or len(set(map(str, members))) != len(members)
        ):
            raise IntradaError(
                f"{origin}: subsets: {key} must list class names, each once; got {members!r}"
            )
        unknown = [m for m in members if m not in names]
        if unknown:
            raise IntradaError(
                f"{origin}: subsets: {key} names {unknown}, not classes of the table"
            )
    return ClassTable(
        origin=origin,
        names=tuple(names),
        colors=tuple(colors),
        ids=tuple(range(len(names))),
        values=tuple((c, tuple(values[c])) for c in TABLE_COLUMNS if c in values),
        ignore=tuple((c, ignored[c]) for c in TABLE_COLUMNS if c in ignored),
        subsets=tuple((k, tuple(v)) for k, v in subsets.items()),
    )


def _compact(values: Values) -> list[int | str]:
    """Values as a list with runs of three or more written as "a-b"."""
    out: list[int | str] = []
    ordered = sorted(values)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            run = ordered[start:i]
            out += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else run
            start = i
    return out


def table_yaml(table: ClassTable) -> str:
    """A class table in the file format `read_class_table` reads."""
    import yaml

    entries = []
    for k, name in enumerate(table.names):
        entry: dict[str, Any] = {"name": name, "color": list(table.colors[k])}
        for column, per_class in table.values:
            entry[column] = _compact(per_class[k])
        entries.append(entry)
    doc: dict[str, Any] = {"classes": entries}
    if table.ignore:
        doc["ignore"] = {column: _compact(listed) for column, listed in table.ignore}
    if table.subsets:
        doc["subsets"] = {key: list(names) for key, names in table.subsets}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def main() -> None:
    """`python -m intrada.classes gta5`: print a built-in table as a class table file, a
    starting point for your own."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=DATASETS, help="the source dataset's built-in table")
    args = parser.parse_args()
    sys.stdout.write(
        f"# The built-in {args.dataset} table (intrada.classes); the `cityscapes` values\n"
        "# are Cityscapes label ids. Rename `cityscapes:` to `target:` for your own\n"
        "# target labels in those ids, or write your own values and classes.\n"
    )
    sys.stdout.write(table_yaml(builtin_table(args.dataset)))


if __name__ == "__main__":
    main()
