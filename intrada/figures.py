"""Pictures of the ranking and the errors, drawn from artifacts earlier stages wrote:

- a gallery of the easiest and the hardest target-train images, each with its entropy
  map, the inter model's prediction and, for easy images, its pseudo-label;
- a histogram of the entropy scores per split, with the lambda cut;
- the confusion matrices as row-normalised long tables, for heat maps.

Tables are for DVC's Vega templates (`.dvc/plots/`): `dvc plots show` draws them, and
`make report` renders the same specs offline. Nothing here runs a network. The drawing
helpers of the gallery live here rather than in `intrada.viz`, which `evaluate` imports:
a change to the gallery's look then re-runs the `figures` stage alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from intrada.artifacts import read_entropy_map, read_prediction, read_pseudo_label
from intrada.classes import ClassSet
from intrada.errors import IntradaError
from intrada.io import atomic_path, read_rgb, write_rgb_png
from intrada.viz import entropy_rgb


def colorize_train_ids(label: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(H, W) train ids as stored (predictions, pseudo-labels; 255 = ignore) -> (H, W, 3)
    Cityscapes colours; ignore and ids outside the class set are black."""
    return classes.palette()[label.astype(np.uint8)]


def thumbnail(rgb: np.ndarray, size: tuple[int, int], labels: bool = False) -> np.ndarray:
    """An (H, W, 3) image resized to `size` (width, height): nearest for label colours
    (no blended classes), bilinear otherwise (photos, entropy)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    resample = Image.NEAREST if labels else Image.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size, resample))


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's bundled scalable font: no font file needed on the machine.
    return ImageFont.load_default(size=size)


def tile_row(columns: list[tuple[str, np.ndarray]], caption: str) -> np.ndarray:
    """Tiles of equal height side by side, each under its title, with a caption line on
    top: one image of the gallery (`caption` names the image and its score)."""
    height = columns[0][1].shape[0]
    widths = [rgb.shape[1] for _, rgb in columns]
    gap, caption_h, title_h = 4, 20, 16
    canvas = Image.new(
        "RGB", (sum(widths) + gap * (len(columns) - 1), caption_h + title_h + height), "white"
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), caption, fill="black", font=_font(13))
    x = 0
    for (title, rgb), width in zip(columns, widths, strict=True):
        draw.text((x + 2, caption_h + 1), title, fill=(60, 60, 60), font=_font(11))
        canvas.paste(Image.fromarray(rgb), (x, caption_h + title_h))
        x += width + gap
    return np.asarray(canvas)


def colour_key(classes: ClassSet, ramp_width: int = 200) -> np.ndarray:
    """How to read the gallery: each class's colour and name, ignore (black), and the
    entropy ramp from 0 (certain) to 1 (uniform)."""
    entries = [*zip(classes.names, classes.colors, strict=True), ("ignore", (0, 0, 0))]
    per_row, cell_w, cell_h = 4, 150, 18
    rows = -(-len(entries) // per_row)
    ramp_h = 40
    canvas = Image.new("RGB", (per_row * cell_w, rows * cell_h + ramp_h + 8), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for i, (name, color) in enumerate(entries):
        x, y = (i % per_row) * cell_w + 4, (i // per_row) * cell_h + 4
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=tuple(color), outline=(128, 128, 128))
        draw.text((x + 18, y + 2), name, fill="black", font=font)
    y = rows * cell_h + 10
    ramp = entropy_rgb(np.tile(np.linspace(0.0, 1.0, ramp_width), (12, 1)))
    canvas.paste(Image.fromarray(ramp), (4 + 110, y))
    draw.text((4, y), "entropy  0", fill="black", font=font)
    draw.text((4 + 110 + ramp_width + 10, y), "1 (uniform)", fill="black", font=font)
    draw.text((4, y + 16), "black = certain, bright = uncertain", fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def ranked(easy: pd.DataFrame, hard: pd.DataFrame) -> pd.DataFrame:
    """Both splits as one table in ranking order (lowest score first)."""
    table = pd.concat([easy, hard], ignore_index=True)
    return table.sort_values("rank", kind="stable").reset_index(drop=True)


def gallery_picks(table: pd.DataFrame, k: int) -> dict[str, pd.DataFrame]:
    """The k easiest images (lowest score first) and the k hardest (highest first) of a
    ranked table: `easy_<i>` and `hard_<i>` in the gallery. With fewer than 2k images
    the two overlap."""
    k = min(k, len(table))
    return {"easy": table.head(k), "hard": table.iloc[::-1].head(k)}


def tile_size(image_size: tuple[int, int], tile_width: int) -> tuple[int, int]:
    """(width, height) of a thumbnail `tile_width` wide with the image's aspect ratio."""
    width, height = image_size
    return tile_width, max(1, round(tile_width * height / width))


def gallery_image(
    row: pd.Series,
    table: pd.DataFrame,
    pseudo: pd.DataFrame,
    classes: ClassSet,
    tile_width: int,
    caption: str,
    root: Path = Path("."),
) -> np.ndarray:
    """One gallery entry: image | entropy map | inter prediction | pseudo-label (easy
    images only), as thumbnails `tile_width` wide. Maps are read through
    `intrada.artifacts`, so either storage layout works."""
    image_id = row["image_id"]
    photo = read_rgb(root / row["image_path"])
    size = tile_size((photo.shape[1], photo.shape[0]), tile_width)
    columns = [
        ("image", thumbnail(photo, size)),
        ("entropy", thumbnail(entropy_rgb(read_entropy_map(table, image_id, root)), size)),
        (
            "inter prediction",
            thumbnail(
                colorize_train_ids(read_prediction(table, image_id, root), classes), size, True
            ),
        ),
    ]
    if row["split"] == "easy":
        label = read_pseudo_label(pseudo, image_id, root)
        columns.append(("pseudo-label", thumbnail(colorize_train_ids(label, classes), size, True)))
    return tile_row(columns, caption)


def score_histogram(easy: pd.DataFrame, hard: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Image counts per score bin and split: `split`, `score_from`, `score_to`,
    `images`, and `cut`, the score that separates the splits (midway between the last
    easy and the first hard score; the highest score when every image is easy). Bins
    are `bins` equal widths over the scores' range; a bin that holds both splits has a
    row for each."""
    scores = np.concatenate([easy["score"].to_numpy(), hard["score"].to_numpy()])
    if len(scores) == 0:
        raise IntradaError("score histogram: the split tables are empty; expected ranked images")
    lo, hi = float(scores.min()), float(scores.max())
    if hi == lo:  # every score equal: one bin around it
        lo, hi = lo - 0.5e-3, hi + 0.5e-3
    edges = np.linspace(lo, hi, bins + 1)
    if len(hard):
        cut = (float(easy["score"].max()) + float(hard["score"].min())) / 2
    else:
        cut = float(easy["score"].max())
    rows = []
    for split, table in (("easy", easy), ("hard", hard)):
        counts, _ = np.histogram(table["score"].to_numpy(), bins=edges)
        for i in np.flatnonzero(counts):
            rows.append((split, edges[i], edges[i + 1], int(counts[i]), cut))
    frame = pd.DataFrame(rows, columns=["split", "score_from", "score_to", "images", "cut"])
    for column in ("score_from", "score_to", "cut"):
        frame[column] = frame[column].round(6)
    return frame


def confusion_long(table: pd.DataFrame) -> pd.DataFrame:
    """A confusion matrix (index = truth, columns = prediction, class names as in
    `metrics/confusion/<model>.csv`) as one row per cell: `truth`, `prediction`, their
    class indices (the axes' order), `pixels` and `percent`, the cell's share of its
    true class (rows sum to 100); empty for a class absent from the ground truth."""
    counts = table.to_numpy(dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, 100.0 * counts / np.maximum(totals, 1), np.nan)
    names_t, names_p = list(table.index), list(table.columns)
    ti, pi = np.meshgrid(np.arange(len(names_t)), np.arange(len(names_p)), indexing="ij")
    return pd.DataFrame(
        {
            "truth": [names_t[i] for i in ti.ravel()],
            "prediction": [names_p[j] for j in pi.ravel()],
            "truth_index": ti.ravel(),
            "prediction_index": pi.ravel(),
            "pixels": counts.ravel(),
            "percent": np.round(share.ravel(), 2),
        }
    )


def caption_of(kind: str, position: int, row: pd.Series, total: int) -> str:
    order = "easiest" if kind == "easy" else "hardest"
    return (
        f"{order} #{position + 1}: {row['image_id']}   score {row['score']:.4f}   "
        f"rank {int(row['rank']) + 1} of {total} ({row['split']})"
    )


def write_figures(
    easy: pd.DataFrame,
    hard: pd.DataFrame,
    pseudo: pd.DataFrame,
    confusion: dict[str, pd.DataFrame],
    classes: ClassSet,
    *,
    gallery_k: int,
    tile_width: int,
    score_bins: int,
    gallery_dir: Path,
    ranking_dir: Path,
    confusion_dir: Path,
    root: Path = Path("."),
) -> None:
    """Write, each folder atomically:

    - `gallery_dir/easy_<i>.png` (the i-th easiest, from 00) and `hard_<i>.png` (the
      i-th hardest), and `colour_key.png` (class colours, entropy ramp; first in
      DVC's alphabetical order);
    - `ranking_dir/score_histogram.csv` (`score_histogram`);
    - `confusion_dir/<model>.csv` (`confusion_long`) for each matrix in `confusion`.
    """
    table = ranked(easy, hard)
    with atomic_path(gallery_dir) as out:
        out.mkdir()
        for kind, picks in gallery_picks(table, gallery_k).items():
            for i, (_, row) in enumerate(picks.iterrows()):
                caption = caption_of(kind, i, row, len(table))
                image = gallery_image(row, table, pseudo, classes, tile_width, caption, root)
                write_rgb_png(out / f"{kind}_{i:02d}.png", image)
        write_rgb_png(out / "colour_key.png", colour_key(classes))
    with atomic_path(ranking_dir) as out:
        out.mkdir()
        score_histogram(easy, hard, score_bins).to_csv(out / "score_histogram.csv", index=False)
    with atomic_path(confusion_dir) as out:
        out.mkdir()
        for name, matrix in confusion.items():
            confusion_long(matrix).to_csv(out / f"{name}.csv", index=False)
