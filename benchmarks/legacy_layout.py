"""The layout of entropy maps and predictions before shards: one float16 `.npy` map and
one label PNG per image. Kept only for the speed benchmark (e), which compares it with
the sharded layout; the readers of `intrada.artifacts` still read it.

    python -m benchmarks.legacy_layout <the arguments of stages.score_entropy>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from intrada.checkpoint import load_model
from intrada.classes import dataset_classes
from intrada.cli import run_stage
from intrada.compute import processes, shared_atomic_dirs
from intrada.config import get, read_params
from intrada.data import SegmentationSet, load_index
from intrada.inference import score_images
from intrada.io import write_label_png, write_parquet


class FilePerImage:
    """A `MapWriter` writing `<image_id><suffix>` files into one folder; processes take
    every `world`-th image (shard_size 1), as scoring did before shards."""

    shard_size = 1

    def __init__(self, directory: Path, root: Path, kind: str):
        self.directory, self.root, self.kind = directory, root, kind
        self.suffix = ".npy" if kind == "map" else ".png"

    def add(self, position: int, image_id: str, array: np.ndarray) -> None:
        path = self.directory / f"{image_id}{self.suffix}"
        if self.kind == "map":
            np.save(path, array.astype(np.float16))
        else:
            write_label_png(path, array)

    def close(self) -> None:
        pass

    def columns(self, ids: list[str]) -> dict[str, list]:
        return {
            f"{self.kind}_path": [(self.root / f"{i}{self.suffix}").as_posix() for i in ids],
            f"{self.kind}_member": [None] * len(ids),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True)
    args = parser.parse_args()
    raw = read_params()
    data, cfg = get(raw, "data"), get(raw, "inference")
    classes = dataset_classes(data.name)
    table = load_index(args.target, labelled=False)
    model, _ = load_model(args.model, classes)
    dataset = SegmentationSet(table, classes, Path("."), labelled=False, size=data.target_size)
    with processes(get(raw, "compute"), __spec__.name) as compute:
        with shared_atomic_dirs([args.maps, args.predictions], compute) as (maps, preds):
            scores = score_images(
                compute.module(model),
                dataset,
                table,
                classes,
                cfg.batch_size,
                FilePerImage(maps, args.maps, "map"),
                FilePerImage(preds, args.predictions, "prediction"),
                rare_classes=cfg.rare_classes,
                normalize=cfg.normalize_entropy,
                compute=compute,
            )
        if compute.main:
            write_parquet(args.scores, scores)


if __name__ == "__main__":
    run_stage(main)
