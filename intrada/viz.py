"""Pictures for people: colourised labels, entropy maps and side-by-side panels.

Colourised images use the Cityscapes palette and are for looking at only; the
pipeline never reads them back.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from intrada.classes import IGNORE_INDEX, ClassSet

# A dark-to-bright ramp (black, purple, orange, yellow) for entropy in [0, 1].
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


def colorize_channels(channels: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(H, W) class channels (255 = ignore) -> (H, W, 3) Cityscapes colours; ignore is black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(classes)] = np.array(classes.colors, np.uint8)
    table[IGNORE_INDEX] = 0
    return table[channels.astype(np.uint8)]


def entropy_rgb(entropy: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) colours on a dark-to-bright ramp."""
    x = np.clip(entropy, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def panel(columns: list[tuple[str, np.ndarray]], scale: float = 2) -> np.ndarray:
    """Images of equal size side by side, each under a one-word title, resized by `scale`
    (nearest: label colours stay unblended)."""
    height, width = columns[0][1].shape[:2]
    tile_w, tile_h = round(width * scale), round(height * scale)
    header = 12
    canvas = Image.new("RGB", (len(columns) * tile_w, tile_h + header), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, rgb) in enumerate(columns):
        tile = Image.fromarray(rgb).resize((tile_w, tile_h), Image.NEAREST)
        canvas.paste(tile, (i * tile_w, header))
        draw.text((i * tile_w + 3, 0), title, fill="black")
    return np.asarray(canvas)
