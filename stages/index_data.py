"""Stage index_data: index the source and target dataset trees in place (nothing is
copied) into the tables every later stage reads, after a validation pass that stops on
a missing root, a wrong layout, an image without its label, a label of another size
(or handles it by data.size_mismatch), a label value outside its encoding or an
unreadable file. compute.num_workers processes read the files."""

import argparse
import logging
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import get, read_params
from intrada.io import atomic_path, write_parquet
from intrada.layouts import check_pairs, index_cityscapes, index_source

log = logging.getLogger("index_data")

LABELLED = ["image_id", "image_path", "label_path", "label_encoding"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the index tables")
    args = parser.parse_args()
    raw = read_params()
    data = get(raw, "data")
    decode = data.verify == "decode"
    workers = get(raw, "compute").num_workers
    # Index everything first (cheap), so a wrong root fails before the slower pass.
    source = index_source(data.name, data.source_root)
    target_train = index_cityscapes(data.target_root, "train")
    target_val = index_cityscapes(data.target_root, "val")
    checked, mismatched = check_pairs(source, decode, data.size_mismatch, workers)
    outcome = {"drop": "left out", "resize": "kept, image and label resized independently"}
    log.info(
        "%d source pairs whose label size differs from the image (data.size_mismatch: %s)%s",
        mismatched,
        data.size_mismatch,
        f": {outcome[data.size_mismatch]}" if mismatched else "",
    )
    # Target labels are never resized against their images: any mismatch stops.
    check_pairs(target_train, decode, workers=workers)
    check_pairs(target_val, decode, workers=workers)
    with atomic_path(args.out) as out:
        out.mkdir()
        write_parquet(out / "source.parquet", checked[LABELLED])
        # Training reads target-train's images only; its labels serve the diagnostics.
        write_parquet(out / "target_train.parquet", target_train[["image_id", "image_path"]])
        write_parquet(
            out / "target_train_gt.parquet",
            target_train[["image_id", "label_path", "label_encoding"]],
        )
        write_parquet(out / "target_val.parquet", target_val[LABELLED])
    log.info(
        "%d source, %d target-train, %d target-val images",
        len(checked),
        len(target_train),
        len(target_val),
    )


if __name__ == "__main__":
    run_stage(main)
