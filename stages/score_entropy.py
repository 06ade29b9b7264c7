"""Stage score_entropy: run the inter model over target-train and write every image's
entropy map and predicted train ids (PNGs in shards of `inference.shard_size` images),
and the scores table ranked on next."""

import argparse
from pathlib import Path

from intrada.artifacts import EntropyShards, LabelShards
from intrada.checkpoint import load_model
from intrada.cli import run_stage
from intrada.compute import processes, shared_atomic_dirs
from intrada.config import check_class_names, class_set_of, get, read_params
from intrada.data import SegmentationSet, load_index
from intrada.inference import score_images
from intrada.io import write_parquet
from intrada.space import SpacePlan, input_size, png_member_bytes, stored_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--target", type=Path, required=True, help="unlabelled index table")
    parser.add_argument("--maps", type=Path, required=True, help="entropy map shards folder")
    parser.add_argument("--predictions", type=Path, required=True, help="prediction shards folder")
    parser.add_argument("--scores", type=Path, required=True, help="scores table (Parquet)")
    args = parser.parse_args()
    raw = read_params()
    data, cfg = get(raw, "data"), get(raw, "inference")
    classes = class_set_of(data)
    check_class_names(cfg.rare_classes, classes, "inference.rare_classes")
    table = load_index(args.target, labelled=False)
    # Enough free space for every map and prediction, or one line before any work.
    height, width = input_size(data.target_size, table)
    space = SpacePlan()
    map_bytes = png_member_bytes("map", stored_pixels(height, width, cfg.map_downsample))
    maps_space = space.add(args.maps, "maps", len(table), map_bytes)
    label_bytes = png_member_bytes("label", height * width)
    predictions_space = space.add(args.predictions, "predictions", len(table), label_bytes)
    space.check()
    model, _ = load_model(args.model, classes)
    dataset = SegmentationSet(table, classes, Path("."), labelled=False, size=data.target_size)
    # With compute.nproc > 1, torchrun processes score whole shards each (same files).
    with processes(get(raw, "compute"), __spec__.name) as compute:
        with shared_atomic_dirs([args.maps, args.predictions], compute) as (maps, preds):
            scores = score_images(
                compute.module(model),
                dataset,
                table,
                classes,
                cfg.batch_size,
                EntropyShards(
                    maps, args.maps, cfg.shard_size, cfg.map_downsample, maps_space.shard_written
                ),
                LabelShards(
                    preds,
                    args.predictions,
                    cfg.shard_size,
                    "prediction",
                    predictions_space.shard_written,
                ),
                rare_classes=cfg.rare_classes,
                normalize=cfg.normalize_entropy,
                compute=compute,
            )
        if compute.main:
            write_parquet(args.scores, scores)


if __name__ == "__main__":
    run_stage(main)
