"""The embedded synthetic benchmark: procedural street scenes in two domains.

A scene *layout* (which pixel belongs to which object and class, and how far away it
is) is drawn once per image and then *rendered* in one of two looks:

- source: the flat look of a game engine, saturated class colours, per-object colour
  jitter and a little noise;
- target: a transform of the source colours (desaturated, warm, darker), textures the
  source lacks (windows, lane marks, foliage, sky gradient), uneven lighting, and a
  per-image nuisance *severity* s in [0, 1] (fog, darkness, blur with sensor noise,
  colour cast) so that some target images are easy and others hard.

Everything is deterministic in (seed, set, image index): each image draws from its own
random stream, so changing a set's size never changes the images it shares.
Labels are drawn as Cityscapes train ids (255 = ignore: the ego vehicle's hood) and
stored as Cityscapes label ids, as the real datasets store them.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from intrada.classes import IGNORE_INDEX, dataset_classes, train_id_to_label_id
from intrada.config import SyntheticParams
from intrada.io import atomic_path, write_label_png, write_parquet, write_rgb_png

# Stream ids keep the three sets' random numbers apart.
SET_STREAMS = {"source": 1, "target_train": 2, "target_val": 3}
SET_DOMAIN = {"source": "source", "target_train": "target", "target_val": "target"}

# Base colours per surface kind; kinds with several entries pick one per object.
SOURCE_COLORS: dict[str, list[tuple[int, int, int]]] = {
    "sky": [(110, 165, 235)],
    "road": [(95, 88, 105)],
    "sidewalk": [(175, 160, 170)],
    "building": [(150, 115, 90), (185, 170, 145), (120, 120, 135), (165, 85, 65)],
    "pole": [(125, 125, 120)],
    "vegetation": [(55, 135, 45), (85, 150, 40)],
    "trunk": [(95, 70, 45)],
    "car": [(200, 35, 35), (35, 55, 165), (225, 225, 225), (35, 35, 40), (160, 160, 170)],
    "wheel": [(25, 25, 25)],
    "clothes": [(40, 40, 120), (150, 30, 40), (60, 60, 60), (200, 180, 60), (40, 110, 60)],
    "skin": [(225, 180, 150), (150, 100, 70)],
    "hood": [(35, 35, 40)],
}
KIND_CLASS = {
    "sky": "sky",
    "road": "road",
    "sidewalk": "sidewalk",
    "building": "building",
    "pole": "pole",
    "vegetation": "vegetation",
    "trunk": "vegetation",  # Cityscapes labels tree trunks as vegetation
    "car": "car",
    "wheel": "car",
    "clothes": "person",
    "skin": "person",
    "hood": None,  # ego vehicle: ignored
}


@dataclass
class Layout:
    """Per-pixel object ids and depth, and each object's surface kind."""

    height: int
    width: int
    obj: np.ndarray  # (H, W) int32 object id
    depth: np.ndarray  # (H, W) float32, 0 = near, 1 = far
    kinds: list[str] = field(default_factory=list)  # surface kind per object id
    windows: np.ndarray | None = None  # (H, W) bool: building windows (target texture)
    car_glass: np.ndarray | None = None  # (H, W) bool: car windows (target texture)
    lane_marks: np.ndarray | None = None  # (H, W) bool: road markings (target texture)

    def add(self, kind: str, mask: np.ndarray, depth: float | np.ndarray) -> int:
        """Paint a new object over `mask` (later objects occlude earlier ones)."""
        oid = len(self.kinds)
        self.kinds.append(kind)
        self.obj[mask] = oid
        value = depth if np.isscalar(depth) else depth[mask]
        self.depth[mask] = np.clip(value, 0.0, 1.0)
        return oid

    def labels(self, train_id_of: dict[str, int]) -> np.ndarray:
        lut = np.array(
            [train_id_of[KIND_CLASS[k]] if KIND_CLASS[k] else IGNORE_INDEX for k in self.kinds],
            dtype=np.uint8,
        )
        return lut[self.obj]


def draw_layout(rng: np.random.Generator, height: int, width: int, domain: str) -> Layout:
    """A street scene: sky, buildings, road and sidewalks in perspective, then trees,
    poles, cars and persons painted far to near. The target domain's streets are a
    little busier (a layout shift on top of the look shift)."""
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lay = Layout(h, w, np.zeros((h, w), np.int32), np.ones((h, w), np.float32))
    lay.add("sky", np.ones((h, w), bool), 1.0)

    horizon = rng.uniform(0.36, 0.5) * h
    vx = rng.uniform(0.35, 0.65) * w
    near = np.clip((yy - horizon) / (h - horizon), 0.0, 1.0)  # 0 at horizon, 1 at bottom
    ground = yy >= horizon
    road_l = vx - near * rng.uniform(0.3, 0.6) * w
    road_r = vx + near * rng.uniform(0.3, 0.6) * w
    side_l = road_l - near * rng.uniform(0.12, 0.3) * w
    side_r = road_r + near * rng.uniform(0.12, 0.3) * w
    beside_street = ground & ((xx < side_l) | (xx > side_r))

    # Buildings: a skyline of blocks, taller towards the image sides (nearer).
    x0 = 0.0
    while x0 < w:
        x1 = x0 + rng.uniform(0.05, 0.2) * w
        in_block = (xx >= x0) & (xx < x1)
        closeness = min(abs((x0 + x1) / 2 - vx) / (0.5 * w), 1.0)
        top = horizon - (horizon - 0.02 * h) * (0.25 + 0.75 * closeness) * rng.uniform(0.5, 1.0)
        depth = np.clip(1.0 - np.abs(xx - vx) / (0.6 * w), 0.05, 1.0)
        if rng.random() < 0.15:  # a gap: a park behind the sidewalk
            lay.add("vegetation", in_block & beside_street, depth)
        else:
            block = in_block & (yy >= top) & (~ground | beside_street)
            lay.add("building", block, depth)
            period_x, period_y = rng.uniform(3, 6, size=2) * w / 128
            grid = ((xx - x0) % period_x < period_x / 2) & ((yy - top) % period_y < period_y / 2)
            windows = block & grid & (yy >= top + 1) & (yy < horizon + 0.3 * (h - horizon))
            lay.windows = windows if lay.windows is None else lay.windows | windows
        x0 = x1

    street_depth = 1.0 - near
    lay.add("road", ground & (xx >= road_l) & (xx <= road_r), street_depth)
    lay.add(
        "sidewalk",
        ground & (((xx >= side_l) & (xx < road_l)) | ((xx > road_r) & (xx <= side_r))),
        street_depth,
    )
    # Dashed centre line: a road texture only the target shows.
    dash = (np.sqrt(np.maximum(yy - horizon, 0.0)) * 3.0 % 2.0) < 1.0
    lay.lane_marks = ground & (np.abs(xx - vx) < 0.012 * w + near * 0.02 * w) & dash
    for side in (-1, 1):  # hedges along the back of the sidewalk
        if rng.random() < 0.5:
            edge = side_l if side < 0 else side_r
            band = near * rng.uniform(0.03, 0.08) * w
            hedge = ground & ((edge - xx) * -side >= 0) & ((edge - xx) * -side < band + 1)
            hedge &= yy >= horizon + 1
            lay.add("vegetation", hedge, street_depth)

    busier = 2 if domain == "target" else 0
    things = []  # (nearness, draw function); painted far to near
    for _ in range(rng.integers(0, 4 + busier)):
        things.append(_car(rng, xx, yy, horizon, vx, road_l, road_r, h, w))
    for _ in range(rng.integers(0, 4 + busier)):
        things.append(_person(rng, xx, yy, horizon, side_l, road_l, road_r, side_r, h))
    for _ in range(rng.integers(0, 4)):
        things.append(_pole(rng, xx, yy, horizon, side_l, road_l, road_r, side_r, h, w))
    for _ in range(rng.integers(0, 4)):
        things.append(_tree(rng, xx, yy, horizon, side_l, side_r, h))
    for _, paint in sorted(things, key=lambda t: t[0]):
        paint(lay)

    if rng.random() < (0.5 if domain == "target" else 0.3):
        bulge = 1.0 - 0.5 * ((xx - w / 2) / (w / 2)) ** 2
        lay.add("hood", yy > h - h * rng.uniform(0.05, 0.1) * bulge, 0.0)
    return lay


def _base_row(rng, horizon, h, low=0.08, high=1.15):
    """A ground-contact row and its nearness (0 at the horizon, 1 at the image bottom)."""
    row = horizon + rng.uniform(low, high) * (h - horizon)
    return row, (row - horizon) / (h - horizon)


def _sidewalk_x(rng, row, side_l, road_l, road_r, side_r, h):
    r = min(int(row), h - 1)
    if rng.random() < 0.5:
        return rng.uniform(side_l[r, 0], road_l[r, 0])
    return rng.uniform(road_r[r, 0], side_r[r, 0])


def _car(rng, xx, yy, horizon, vx, road_l, road_r, h, w):
    row, near = _base_row(rng, horizon, h, 0.05, 1.2)
    near = max(near, 0.04)
    cw = near * w * rng.uniform(0.22, 0.32) + 2
    ch = cw * rng.uniform(0.32, 0.42)
    r = min(int(row), h - 1)
    left, right = road_l[r, 0] + cw / 2, road_r[r, 0] - cw / 2
    xc = rng.uniform(left, right) if right > left else vx
    cabin_h = cw * rng.uniform(0.22, 0.3)

    def paint(lay: Layout) -> None:
        body = (np.abs(xx - xc) < cw / 2) & (yy < row) & (yy >= row - ch)
        cabin = (np.abs(xx - xc) < cw * 0.34) & (yy < row - ch) & (yy >= row - ch - cabin_h)
        lay.add("car", body | cabin, 1.0 - near)
        lay.car_glass = _union(
            lay.car_glass,
            (np.abs(xx - xc) < cw * 0.3)
            & (yy < row - ch - 0.2 * cabin_h)
            & (yy >= row - ch - 0.85 * cabin_h),
        )
        for wx in (xc - cw * 0.3, xc + cw * 0.3):
            wheel = ((xx - wx) / (cw * 0.1)) ** 2 + ((yy - row + 0.5) / (ch * 0.35)) ** 2 < 1
            lay.add("wheel", wheel, 1.0 - near)

    return near, paint


def _person(rng, xx, yy, horizon, side_l, road_l, road_r, side_r, h):
    row, near = _base_row(rng, horizon, h, 0.08, 1.1)
    ph = near * h * rng.uniform(0.45, 0.65) + 3
    xc = _sidewalk_x(rng, row, side_l, road_l, road_r, side_r, h)
    pw = ph * rng.uniform(0.22, 0.3)

    def paint(lay: Layout) -> None:
        body = ((xx - xc) / (pw / 2)) ** 2 + ((yy - (row - 0.42 * ph)) / (0.42 * ph)) ** 2 < 1
        lay.add("clothes", body, 1.0 - near)
        head = ((xx - xc) ** 2 + (yy - (row - 0.9 * ph)) ** 2) < (0.11 * ph) ** 2
        lay.add("skin", head, 1.0 - near)

    return near, paint


def _pole(rng, xx, yy, horizon, side_l, road_l, road_r, side_r, h, w):
    row, near = _base_row(rng, horizon, h, 0.1, 1.2)
    xc = _sidewalk_x(rng, row, side_l, road_l, road_r, side_r, h)
    height = near * h * rng.uniform(0.8, 1.4) + 4
    half = max(0.5, near * 1.6 * w / 128)

    def paint(lay: Layout) -> None:
        pole = (np.abs(xx - xc) < half) & (yy < row) & (yy >= row - height)
        lay.add("pole", pole, 1.0 - near)

    return near, paint


def _tree(rng, xx, yy, horizon, side_l, side_r, h):
    row, near = _base_row(rng, horizon, h, 0.0, 0.9)
    r = min(int(row), h - 1)
    xc = (side_l if rng.random() < 0.5 else side_r)[r, 0] + rng.normal(0, 2)
    trunk_h = near * h * 0.35 + 2
    radius = near * h * rng.uniform(0.25, 0.45) + 3
    stretch = rng.uniform(0.8, 1.3)

    def paint(lay: Layout) -> None:
        trunk = (np.abs(xx - xc) < max(0.5, near * 1.5)) & (yy < row) & (yy >= row - trunk_h)
        lay.add("trunk", trunk, 1.0 - near)
        cy = row - trunk_h - radius * stretch * 0.8
        crown = ((xx - xc) / radius) ** 2 + ((yy - cy) / (radius * stretch)) ** 2 < 1
        lay.add("vegetation", crown, 1.0 - near)

    return near, paint


def _union(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    return b if a is None else a | b


# --- rendering ------------------------------------------------------------------------


def _object_colors(rng: np.random.Generator, kinds: list[str], jitter: float) -> np.ndarray:
    colors = np.empty((len(kinds), 3), np.float32)
    for i, kind in enumerate(kinds):
        options = SOURCE_COLORS[kind]
        colors[i] = options[rng.integers(len(options))]
    return colors + rng.normal(0.0, jitter, size=colors.shape).astype(np.float32)


def render_source(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    """The flat rendered look: one colour per object, a little sensor noise."""
    img = _object_colors(rng, lay.kinds, jitter=20.0)[lay.obj]
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return _to_uint8(img)


def render_target(lay: Layout, rng: np.random.Generator, severity: float) -> np.ndarray:
    """The real-looking domain: shifted palette, textures, lighting, then nuisances whose
    strength grows with `severity` in [0, 1]."""
    h, w = lay.height, lay.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colors = _object_colors(rng, lay.kinds, jitter=12.0)
    gray = colors.mean(axis=1, keepdims=True)
    colors = 0.6 * colors + 0.4 * gray  # desaturate
    colors = colors * 0.85 + np.array([12.0, 4.0, -12.0], np.float32)  # darker, warmer
    img = colors[lay.obj]

    kinds = np.array(lay.kinds)[lay.obj]
    sky = kinds == "sky"
    img[sky] += (yy[sky] / h * 60.0)[:, None]  # sky brightens towards the horizon
    foliage = np.isin(kinds, ["vegetation"])
    img[foliage] *= rng.uniform(0.7, 1.3, size=(int(foliage.sum()), 1)).astype(np.float32)
    road = kinds == "road"
    img[road] += rng.normal(0.0, 8.0, size=(int(road.sum()), 1)).astype(np.float32)
    if lay.windows is not None:
        img[lay.windows] = img[lay.windows] * 0.45 + np.array([10.0, 20.0, 40.0], np.float32)
    if lay.car_glass is not None:
        img[lay.car_glass] = img[lay.car_glass] * 0.3 + 20.0
    if lay.lane_marks is not None:
        marks = lay.lane_marks & road
        img[marks] = 0.3 * img[marks] + 0.7 * 220.0
    gain = rng.uniform(0.75, 1.15)
    slope = rng.uniform(-0.3, 0.3)
    img *= (gain * (1.0 + slope * (xx / w - 0.5)))[..., None]

    # Nuisances: one or two at full severity, the others weak.
    strength = np.full(4, 0.25 * severity)
    strength[rng.choice(4, size=rng.integers(1, 3), replace=False)] = severity
    fog, dark, blur, cast = strength
    haze = np.clip(0.8 * fog * lay.depth**0.8 + 0.1 * fog, 0.0, 0.9)[..., None]
    img = img * (1.0 - haze) + haze * np.array([200.0, 200.0, 205.0], np.float32)
    img *= 1.0 - 0.75 * dark
    img *= 1.0 + 0.35 * cast * rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
    if blur > 0.05:
        pil = Image.fromarray(_to_uint8(img)).filter(ImageFilter.GaussianBlur(float(1.2 * blur)))
        img = np.asarray(pil, dtype=np.float32).copy()
    img += rng.normal(0.0, 2.0 + 16.0 * blur, size=img.shape).astype(np.float32)
    return _to_uint8(img)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- sets on disk ---------------------------------------------------------------------


def generate_image(
    seed: int,
    set_name: str,
    index: int,
    height: int,
    width: int,
    severity_alpha: float = 1.0,
    severity_beta: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One (image, train-id label, severity) triple; severity is 0 for the source."""
    rng = np.random.default_rng([seed, SET_STREAMS[set_name], index])
    domain = SET_DOMAIN[set_name]
    lay = draw_layout(rng, height, width, domain)
    classes = dataset_classes("synthetic")
    label = lay.labels(dict(zip(classes.names, classes.train_ids, strict=True)))
    if domain == "source":
        return render_source(lay, rng), label, 0.0
    severity = float(rng.beta(severity_alpha, severity_beta))
    return render_target(lay, rng, severity), label, severity


CITY = "synth"  # the Cityscapes layout's city folder for the target images


def set_files(set_name: str, index: int) -> tuple[str, str, str]:
    """(image_id, image file, label file) of one image, relative to its layout root:
    the source in the GTA5 layout, the target sets in the Cityscapes layout."""
    if set_name == "source":
        name = f"{index:06d}"
        return name, f"images/{name}.png", f"labels/{name}.png"
    split = {"target_train": "train", "target_val": "val"}[set_name]
    stem = f"{CITY}_000000_{index:06d}"
    return (
        stem,
        f"leftImg8bit/{split}/{CITY}/{stem}_leftImg8bit.png",
        f"gtFine/{split}/{CITY}/{stem}_gtFine_labelIds.png",
    )


def write_images(job: tuple) -> list[dict]:
    """Write the images `start` to `stop` of one set (a worker's share) and their
    labels (Cityscapes label ids, as the real datasets store them) under `root`; return
    their (`image_id`, `set`, `severity`) rows."""
    set_name, start, stop, seed, height, width, severity_alpha, severity_beta, root = job
    to_label_id = train_id_to_label_id()
    rows = []
    for i in range(start, stop):
        image, label, severity = generate_image(
            seed, set_name, i, height, width, severity_alpha, severity_beta
        )
        image_id, image_file, label_file = set_files(set_name, i)
        for file in (image_file, label_file):
            (root / file).parent.mkdir(parents=True, exist_ok=True)
        write_rgb_png(root / image_file, image)
        write_label_png(root / label_file, to_label_id[label])
        rows.append({"image_id": image_id, "set": set_name, "severity": severity})
    return rows


# Images per job of `write_benchmark`'s processes: small enough to share the work
# evenly, large enough that a job's start-up cost does not show.
IMAGES_PER_JOB = 250


def write_benchmark(draw: int, params: SyntheticParams, out: Path, workers: int = 1) -> None:
    """Write the benchmark of draw `draw` as one folder, atomically: `source/` in the
    GTA5 layout, `target/` in the Cityscapes layout (target-train as its `train` split,
    target-val as `val`, both with labels), and `severity.parquet` (each image's nuisance
    severity, 0 for the source: for analysis, the pipeline does not read it).

    `workers` processes draw and encode the images (each image from its own random
    stream, so the files do not depend on how many).
    """
    common = (draw, params.height, params.width, params.severity_alpha, params.severity_beta)
    with atomic_path(out) as tmp:
        jobs = [
            (set_name, start, min(start + IMAGES_PER_JOB, count), *common, tmp / sub)
            for set_name, count, sub in (
                ("source", params.num_source, "source"),
                ("target_train", params.num_target_train, "target"),
                ("target_val", params.num_target_val, "target"),
            )
            for start in range(0, count, IMAGES_PER_JOB)
        ]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                rows = [row for part in pool.map(write_images, jobs) for row in part]
        else:
            rows = [row for job in jobs for row in write_images(job)]
        write_parquet(tmp / "severity.parquet", pd.DataFrame(rows))
