"""Stage pseudo_labels: the inter model's prediction of each easy image becomes its
label (train ids, 255 = ignore, also for pixels below the confidence threshold; PNGs in
shards of `pseudo_labels.shard_size` images), with an index table of the labelled easy
set."""

import argparse
from pathlib import Path

from intrada.artifacts import LabelShards
from intrada.checkpoint import load_model
from intrada.cli import run_stage
from intrada.compute import processes, shared_atomic_dirs
from intrada.config import class_set_of, get, read_params
from intrada.data import SegmentationSet
from intrada.io import read_parquet, write_parquet
from intrada.pseudo_labels import write_pseudo_labels
from intrada.space import SpacePlan, input_size, png_member_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=Path, required=True, help="easy split table")
    parser.add_argument("--model", type=Path, required=True, help="the inter model")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for labels/ (shards) and index.parquet"
    )
    args = parser.parse_args()
    raw = read_params()
    data, cfg = get(raw, "data"), get(raw, "pseudo_labels")
    classes = class_set_of(data)
    easy = read_parquet(args.easy, ("image_id", "image_path"))
    # Enough free space for every label, or one line before any work.
    height, width = input_size(data.target_size, easy)
    space = SpacePlan()
    labels_space = space.add(
        args.out, "labels", len(easy), png_member_bytes("label", height * width)
    )
    space.check()
    model, _ = load_model(args.model, classes)
    dataset = SegmentationSet(easy, classes, Path("."), labelled=False, size=data.target_size)
    # With compute.nproc > 1, torchrun processes label whole shards each (same files).
    with (
        processes(get(raw, "compute"), __spec__.name) as compute,
        shared_atomic_dirs([args.out], compute) as (out,),
    ):
        index = write_pseudo_labels(
            compute.module(model),
            dataset,
            easy,
            classes,
            cfg.batch_size,
            cfg.confidence_threshold,
            LabelShards(
                out / "labels",
                args.out / "labels",
                cfg.shard_size,
                "label",
                labels_space.shard_written,
            ),
            compute,
        )
        if compute.main:
            write_parquet(out / "index.parquet", index)


if __name__ == "__main__":
    run_stage(main)
