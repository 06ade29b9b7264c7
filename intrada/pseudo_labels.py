"""Pseudo-labels: the inter model's prediction on each easy image becomes its label."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from intrada.errors import IntradaError


def write_pseudo_labels(
    easy: pd.DataFrame, root: Path, labels_dir: Path, labels_root: Path
) -> pd.DataFrame:
    """Copy the inter model's predicted label PNG (train ids, 255 = ignore) of every easy
    image into `labels_dir`, recorded under `labels_root`; return the index table
    (`image_id`, `image_path`, `label_path`) of a labelled set.

    The predictions were written by the inference stage with the same model, so they
    are the model's argmax: reusing them avoids a second pass over the images.
    """
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, image_path, prediction in easy[
        ["image_id", "image_path", "prediction_path"]
    ].itertuples(index=False):
        source = root / prediction
        if not source.is_file():
            raise IntradaError(
                f"{source}: prediction of easy image {image_id!r} not found; "
                "expected the inference stage's output"
            )
        shutil.copyfile(source, labels_dir / f"{image_id}.png")
        rows.append(
            {
                "image_id": image_id,
                "image_path": image_path,
                "label_path": (labels_root / f"{image_id}.png").as_posix(),
            }
        )
    return pd.DataFrame(rows, columns=["image_id", "image_path", "label_path"])
